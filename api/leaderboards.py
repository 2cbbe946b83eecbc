"""HTTP routes for leaderboards on the edge; ``install(app)`` adds them (``api.app`` calls it).

Routes (JSON):

====================================================  =====  =====================================
``POST /v1/leaderboards``                              key    create a board (201; 200 if it exists
                                                              with the same spec; 409 otherwise)
``GET  /v1/leaderboards/{name}``                              the board's spec and shard layout
``POST /v1/leaderboards/{name}/scores``                key    write up to 10,000 scores;
                                                              idempotent per (user, source)
``GET  /v1/leaderboards/{name}/top``                          ``n``, ``cursor``, ``period``,
                                                              ``cohort=key:value``, ``max_age_s``
``GET  /v1/leaderboards/{name}/users/{user}/rank``            exact rank (404 if not on the board);
                                                              ``max_stale_ms``: one shard call,
                                                              answer says ``stale_ms``
``GET  /v1/leaderboards/{name}/users/{user}/around``          ``k`` above and below, exact ranks
``DELETE /v1/leaderboards/{name}/periods/{period}``    key    forget a period (retention)
``POST /v1/leaderboards/{name}/reshard``               key    move to ``shard_count`` shards
====================================================  =====  =====================================

"key": an operator JWT (docs/security.md); the other routes take any valid JWT. The interim
bearer API key for integrations was replaced when JWT auth landed: an integration gets an
operator token.

Statuses: 400 bad query or cursor, 401 missing/invalid token, 403 not an operator, 404 unknown board or user,
409 spec conflict, 422 invalid body or write, 503 a shard could not answer. Never 5xx for
bad input.
"""

from __future__ import annotations

import re
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from leaderboards.shard import (
    LeaderboardError,
    LeaderboardSpec,
    Problem,
    QueryError,
    SpecError,
    Write,
    WriteError,
)
from api.scopes import member, operator  # writes: operator tokens; reads: any token but a viewer
from leaderboards.router import (
    BadCursor,
    BoardConflict,
    BoardUnavailable,
    Leaderboards,
    LeaderboardsError,
    UnknownBoard,
)

_NAME = r"^[A-Za-z0-9_.-]{1,64}$"
_USER = r"^[^\x00]{1,128}$"
_STATUS: dict[type[Exception], tuple[int, str]] = {
    UnknownBoard: (404, "unknown_board"),
    BoardConflict: (409, "board_conflict"),
    BadCursor: (400, "bad_cursor"),
    BoardUnavailable: (503, "unavailable"),
    SpecError: (422, "bad_spec"),
    WriteError: (422, "bad_write"),
    QueryError: (400, "bad_query"),
}

router = APIRouter(prefix="/v1/leaderboards", tags=["leaderboards"])


class CreateBoard(BaseModel):
    name: str = Field(pattern=_NAME)
    metric: str = Field(pattern=_NAME)
    operator: str = Field(default="best", pattern=r"^(best|sum|latest)$")
    order: str = Field(default="desc", pattern=r"^(desc|asc)$")
    period: str = Field(default="alltime", pattern=r"^(alltime|class|daily|weekly|monthly)$")
    timezone: str = Field(default="UTC", max_length=64)
    cohort_keys: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        default_factory=list, max_length=8
    )
    shard_count: int = Field(default=1, ge=1, le=64)


class ScoreIn(BaseModel):
    user: str = Field(pattern=_USER)
    source: str = Field(min_length=1, max_length=200)
    score: float = Field(allow_inf_nan=False)
    achieved_at: float | None = Field(default=None, allow_inf_nan=False, ge=0, le=1e11)
    tags: dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=128)]] | None = (
        Field(default=None, max_length=16)
    )


class ScoresIn(BaseModel):
    scores: list[ScoreIn] = Field(min_length=1, max_length=10_000)


class ReshardIn(BaseModel):
    shard_count: int = Field(ge=1, le=64)


def client(request: Request) -> Leaderboards:
    """The app's ``Leaderboards``, made on first use from the edge's settings and Redis."""
    found: Leaderboards | None = getattr(request.app.state, "leaderboards", None)
    if found is None:
        edge = request.app.state.edge
        settings = edge.settings
        found = Leaderboards(
            edge.directory.redis,
            redis_url=settings.redis_url,
            prefix=settings.prefix,
            namespace=settings.namespace,
        )
        request.app.state.leaderboards = found
    return found


def parse_cohort(cohort: str | None) -> dict[str, str] | None:
    if cohort is None or cohort == "":
        return None
    key, sep, value = cohort.partition(":")
    if not sep or not key or not value:
        raise QueryError(Problem.COHORT_NOT_INDEXED, "cohort must be key:value")
    return {key: value}


Lb = Annotated[Leaderboards, Depends(client)]
PeriodQ = Annotated[str | None, Query(max_length=128)]
CohortQ = Annotated[str | None, Query(max_length=200)]


def _known(name: str) -> str:
    if not re.fullmatch(_NAME, name):
        raise UnknownBoard(f"no leaderboard {name!r}")
    return name


@router.post("", status_code=201, dependencies=[Depends(operator)])
async def create_board(body: CreateBoard, lb: Lb) -> Any:
    spec = LeaderboardSpec(**{**body.model_dump(), "cohort_keys": tuple(body.cohort_keys)})
    created = await lb.create(spec)
    payload = {"name": spec.name, "created": created, "spec": spec.to_dict()}
    return payload if created else JSONResponse(payload, status_code=200)


@router.get("/{name}", dependencies=[Depends(member)])
async def get_board(name: str, lb: Lb) -> dict[str, Any]:
    board = await lb.board(_known(name))
    return {"name": name, "spec": board.spec.to_dict(), "generation": board.generation}


@router.post("/{name}/scores", dependencies=[Depends(operator)])
async def write_scores(name: str, body: ScoresIn, lb: Lb) -> dict[str, Any]:
    now = time.time()
    writes = [
        Write(s.user, s.source, s.score, now if s.achieved_at is None else s.achieved_at, s.tags)
        for s in body.scores
    ]
    result = await lb.write(_known(name), writes)
    return {"accepted": result.accepted, "changed": result.changed}


@router.get("/{name}/top", dependencies=[Depends(member)])
async def top(
    name: str,
    lb: Lb,
    n: Annotated[int, Query(ge=1, le=1000)] = 10,
    cursor: Annotated[str | None, Query(max_length=4096)] = None,
    period: PeriodQ = None,
    cohort: CohortQ = None,
    max_age_s: Annotated[float, Query(ge=0, le=3600)] = 0.0,
) -> dict[str, Any]:
    page = await lb.top(
        _known(name), n, cursor=cursor or None, period=period, cohort=parse_cohort(cohort),
        max_age_s=max_age_s,
    )
    return page.to_dict()


@router.get("/{name}/users/{user}/rank", dependencies=[Depends(member)])
async def rank(
    name: str,
    user: str,
    lb: Lb,
    period: PeriodQ = None,
    cohort: CohortQ = None,
    max_stale_ms: Annotated[float | None, Query(ge=0, le=3_600_000)] = None,
) -> dict[str, Any]:
    found = await lb.rank(
        _known(name), _user(user), period=period, cohort=parse_cohort(cohort), max_stale_ms=max_stale_ms
    )
    if found is None:
        raise UnknownBoard(f"{user!r} is not on leaderboard {name!r} for this period/cohort")
    return found.to_dict()


@router.get("/{name}/users/{user}/around", dependencies=[Depends(member)])
async def around(
    name: str,
    user: str,
    lb: Lb,
    k: Annotated[int, Query(ge=0, le=100)] = 5,
    period: PeriodQ = None,
    cohort: CohortQ = None,
) -> dict[str, Any]:
    found = await lb.around(_known(name), _user(user), k, period=period, cohort=parse_cohort(cohort))
    if found is None:
        raise UnknownBoard(f"{user!r} is not on leaderboard {name!r} for this period/cohort")
    return found.to_dict()


@router.delete("/{name}/periods/{period}", dependencies=[Depends(operator)])
async def drop_period(name: str, period: str, lb: Lb) -> dict[str, Any]:
    dropped = await lb.drop_period(_known(name), period)
    return {"name": name, "period": period, "dropped_records": dropped}


@router.post("/{name}/reshard", dependencies=[Depends(operator)])
async def reshard(name: str, body: ReshardIn, lb: Lb) -> dict[str, Any]:
    moved = await lb.reshard(_known(name), body.shard_count)
    return {"name": name, "shard_count": body.shard_count, "moved": moved}


def _user(user: str) -> str:
    if not user or "\x00" in user or len(user.encode("utf-8", "surrogatepass")) > 128:
        raise UnknownBoard("no such user")
    return user


def install(app: FastAPI) -> None:
    """Add the leaderboard routes and map their errors to statuses in one place."""
    app.include_router(router)

    async def mapped(_: Request, exc: Exception) -> JSONResponse:
        status, code = next(
            (v for kind, v in _STATUS.items() if isinstance(exc, kind)), (400, "bad_request")
        )
        message = getattr(exc, "message", None) or str(exc)
        return JSONResponse({"error": code, "message": message}, status_code=status)

    app.add_exception_handler(LeaderboardsError, mapped)
    app.add_exception_handler(LeaderboardError, mapped)
