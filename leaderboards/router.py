"""Leaderboards across shards: create boards, route writes, merge queries, reshard.

``Leaderboards`` is the Python API (the edge's HTTP routes and session actors use it). It is
async throughout (no blocking call on the event loop) and holds no board state of its own:
every board is ``spec.shard_count`` ``LeaderboardShardActor``s (``leaderboards/shard_actor.py``)
found by name, plus its spec in Redis.

Queries, with S shards:

* exact rank of users: ``locate`` on each owner shard (entry + its position in that shard),
  then ``count_better`` of those keys on every other shard; rank = 1 + the sum. Two rounds of
  parallel calls, whatever the batch size;
* top / page: every shard's keyset page after the cursor, k-way merged; the cursor carries
  the last key and each shard's ``as_of`` version (see docs/leaderboards.md for the
  no-skip/no-repeat guarantee while scores change);
* around a user: owner ``locate``, then ``around_key`` on every shard, merged.

Periods: a query without ``period`` means the period containing ``now()`` *of this client*
(one clock for every shard). Per-class boards always need ``period`` (the class id).

Redis keys (prefix ``p``, default ``pl``) owned here:

==========================  ======  ==================================================
``{p}:lb:{name}:spec``      string  JSON ``{"spec": LeaderboardSpec.to_dict(), "generation": g}``
``{p}:lb:boards``           set     names of every board
==========================  ======  ==================================================

Shard actors own ``{p}:lbshard:{{name:g:shard}}:{epoch,ckpt,ckpt_epoch,log}`` (one Redis
Cluster hash tag per shard). No command here spans keys of two slots: a retired board's keys
are deleted shard by shard.

Errors: ``LeaderboardsError`` (``UnknownBoard``, ``BoardConflict``, ``BadCursor``,
``BoardUnavailable``) from here; ``leaderboards.shard.LeaderboardError`` subclasses
(``SpecError``, ``WriteError``, ``QueryError``) pass through unwrapped from the actors.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple, TypeVar

import msgpack
import numpy as np
import ray
from ray.exceptions import RayActorError, RayError, RayTaskError

from leaderboards.shard import (
    Entry,
    LeaderboardError,
    LeaderboardSpec,
    Problem,
    QueryError,
    Record,
    SortKey,
    Write,
    WriteBatch,
    WriteError,
    batch_periods,
    merge_around,
    merge_top,
    period_key,
    shard_of,
    shards_of,
)
from leaderboards.writes import check_users, user_bytes
from leaderboards.shard_actor import LeaderboardShardActor, actor_name, shard_keys
from storage.redis_url import AsyncRedis, connect

__all__ = [
    "AroundAnswer",
    "BadCursor",
    "Board",
    "BoardConflict",
    "BoardUnavailable",
    "Leaderboards",
    "LeaderboardsError",
    "RankedEntry",
    "TopPage",
    "UnknownBoard",
    "WriteResult",
]

log = logging.getLogger(__name__)
T = TypeVar("T")
Cohort = Mapping[str, str] | None

_CURSOR_VERSION = 1
_SPEC_TTL_S = 1.0
_MOVED_WAIT_S = 0.05
_MOVED_DEADLINE_S = 60.0
_EXPORT_PAGE = 100_000


# -- errors ------------------------------------------------------------------------------


class LeaderboardsError(Exception):
    """Root of the router's own errors; ``message`` is for humans."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UnknownBoard(LeaderboardsError):
    """No board of that name."""


class BoardConflict(LeaderboardsError):
    """A board of that name exists with a different spec."""


class BadCursor(LeaderboardsError):
    """A cursor that was not made by this board (or by its current shard layout)."""


class BoardUnavailable(LeaderboardsError):
    """A shard actor could not answer (Ray failure), or a reshard did not finish in time."""


class _Moved(Exception):
    """A shard refused a write because the board is being resharded."""


# -- results -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Board:
    spec: LeaderboardSpec
    generation: int = 0

    def to_json(self) -> str:
        return json.dumps({"spec": self.spec.to_dict(), "generation": self.generation})

    @classmethod
    def from_json(cls, raw: bytes | str) -> Board:
        data = json.loads(raw)
        return cls(LeaderboardSpec.from_dict(data["spec"]), int(data["generation"]))


class RankedEntry(NamedTuple):
    """An entry with its exact global rank (1 = best).

    ``stale_ms`` is None when the rank is exact now, else how old the other shards' part
    of it may be (answers from the peer replicas, see ``Leaderboards.rank``)."""

    rank: int
    user: str
    score: float
    achieved_at: float
    tags: dict[str, str]
    stale_ms: float | None = None

    @classmethod
    def of(cls, rank: int, entry: Entry) -> RankedEntry:
        return cls(rank, entry.user, entry.score, entry.achieved_at, entry.tags)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "user": self.user,
            "score": self.score,
            "achieved_at": self.achieved_at,
            "tags": self.tags,
            "stale_ms": self.stale_ms,
        }


@dataclass(frozen=True)
class TopPage:
    """A page of the merged board. ``rank`` of an entry is its position in this pagination
    (exact on the first page; later pages count entries already handed out). ``age_s`` is
    how old a cached answer is (0.0 when computed for this call)."""

    entries: list[RankedEntry]
    next_cursor: str | None
    period: str
    age_s: float = 0.0
    cached: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "entries": [e.to_dict() for e in self.entries],
            "next_cursor": self.next_cursor,
            "period": self.period,
            "age_s": self.age_s,
            "cached": self.cached,
        }


@dataclass(frozen=True)
class AroundAnswer:
    above: list[RankedEntry]
    entry: RankedEntry
    below: list[RankedEntry]
    period: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "above": [e.to_dict() for e in self.above],
            "entry": self.entry.to_dict(),
            "below": [e.to_dict() for e in self.below],
            "period": self.period,
        }


@dataclass(frozen=True)
class WriteResult:
    accepted: int
    changed: int


# -- cursors -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Cursor:
    generation: int
    period: str
    cohort: tuple[str, str] | None
    after: SortKey
    as_of: list[int]
    seen: int

    def encode(self) -> str:
        body = [
            _CURSOR_VERSION, self.generation, self.period,
            list(self.cohort) if self.cohort else None, list(self.after), self.as_of, self.seen,
        ]
        return base64.urlsafe_b64encode(msgpack.packb(body)).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> _Cursor:
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            v, gen, period, cohort, after, as_of, seen = msgpack.unpackb(raw, raw=False)
            if v != _CURSOR_VERSION:
                raise ValueError("version")
            key = SortKey(float(after[0]), float(after[1]), str(after[2]))
            cohort_t = (str(cohort[0]), str(cohort[1])) if cohort else None
            return cls(int(gen), str(period), cohort_t, key, [int(a) for a in as_of], int(seen))
        except (ValueError, TypeError, IndexError, binascii.Error, msgpack.UnpackException):
            raise BadCursor("malformed cursor") from None


def _cohort_tuple(cohort: Cohort) -> tuple[str, str] | None:
    if not cohort:
        return None
    if len(cohort) != 1:
        raise QueryError(Problem.COHORT_NOT_INDEXED, "filter on exactly one cohort key")
    key, value = next(iter(cohort.items()))
    return (str(key), str(value))


# -- the client --------------------------------------------------------------------------


class Leaderboards:
    """Create boards, write scores and answer queries across shards (async).

    ``redis`` is an asyncio Redis client for the board specs (the caller owns it unless made
    by ``connect``); ``redis_url`` and ``prefix`` are handed to the shard actors.
    """

    def __init__(
        self,
        redis: AsyncRedis,
        *,
        redis_url: str,
        prefix: str = "pl",
        namespace: str = "pulseline",
        resources: dict[str, float] | None = None,
        now: Callable[[], float] = time.time,
        snapshot_min_writes: int | None = None,
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.namespace = namespace
        self.resources = resources if resources is not None else {"session_slot": 1}
        self.now = now
        self.actor_settings: dict[str, Any] = {"redis_url": redis_url, "prefix": prefix}
        if snapshot_min_writes is not None:
            self.actor_settings["lb_snapshot_min_writes"] = snapshot_min_writes
        self._boards: dict[str, tuple[float, Board]] = {}
        self._handles: dict[tuple[str, int, int], Any] = {}
        self._cache: dict[tuple[Any, ...], tuple[float, TopPage]] = {}
        self._owns_redis = False

    @classmethod
    def connect(cls, redis_url: str, **kwargs: Any) -> Leaderboards:
        client = cls(connect(redis_url), redis_url=redis_url, **kwargs)
        client._owns_redis = True
        return client

    async def aclose(self) -> None:
        if self._owns_redis:
            await self.redis.aclose()

    # -- boards -------------------------------------------------------------------------

    def _spec_key(self, name: str) -> str:
        return f"{self.prefix}:lb:{name}:spec"

    async def create(self, spec: LeaderboardSpec) -> bool:
        """Create a board; False if it already exists with this spec (``BoardConflict`` if
        with another one). The shard actors start now, not on the first write."""
        board = Board(spec, 0)
        created = await self.redis.set(self._spec_key(spec.name), board.to_json(), nx=True)
        if not created:
            existing = await self.board(spec.name, fresh=True)
            if replace(existing.spec, shard_count=spec.shard_count) != spec:
                raise BoardConflict(f"board {spec.name!r} exists with another spec")
            return False
        await self.redis.sadd(f"{self.prefix}:lb:boards", spec.name)
        self._boards[spec.name] = (time.monotonic(), board)
        await self._handles_of(board)
        return True

    async def board(self, name: str, *, fresh: bool = False) -> Board:
        cached = self._boards.get(name)
        if cached and not fresh and time.monotonic() - cached[0] < _SPEC_TTL_S:
            return cached[1]
        raw = await self.redis.get(self._spec_key(name))
        if raw is None:
            raise UnknownBoard(f"no leaderboard {name!r}")
        board = Board.from_json(raw)
        self._boards[name] = (time.monotonic(), board)
        return board

    async def spec(self, name: str) -> LeaderboardSpec:
        return (await self.board(name)).spec

    async def names(self) -> list[str]:
        members = await self.redis.smembers(f"{self.prefix}:lb:boards")
        return sorted(m.decode() if isinstance(m, bytes) else m for m in members)

    # -- actors -------------------------------------------------------------------------

    async def _handles_of(self, board: Board) -> list[Any]:
        name, gen = board.spec.name, board.generation
        missing = [i for i in range(board.spec.shard_count) if (name, gen, i) not in self._handles]
        if missing:
            made = await asyncio.to_thread(self._get_or_create, board, missing)
            self._handles.update({(name, gen, i): h for i, h in zip(missing, made, strict=True)})
        return [self._handles[(name, gen, i)] for i in range(board.spec.shard_count)]

    def _get_or_create(self, board: Board, shards: Sequence[int]) -> list[Any]:
        spec = board.spec.to_dict()
        return [
            LeaderboardShardActor.options(  # type: ignore[attr-defined]
                name=actor_name(board.spec.name, i, board.generation),
                namespace=self.namespace,
                get_if_exists=True,
                lifetime="detached",
                num_cpus=0,
                resources=self.resources,
                max_restarts=-1,
                max_task_retries=-1,
            ).remote(board.spec.name, i, board.generation, spec, self.actor_settings)
            for i in shards
        ]

    async def _call(self, board: Board, shard: int, method: str, **kwargs: Any) -> Any:
        handle = (await self._handles_of(board))[shard]
        try:
            return await getattr(handle, method).remote(**kwargs)
        except RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, WriteError) and cause.problem is Problem.MOVED:
                raise _Moved() from None
            if isinstance(cause, LeaderboardError):
                raise cause from None
            raise BoardUnavailable(f"shard {shard} of {board.spec.name!r} failed: {exc}") from exc
        except RayActorError as exc:
            self._forget(board)
            raise BoardUnavailable(f"shard {shard} of {board.spec.name!r} is gone") from exc
        except RayError as exc:
            raise BoardUnavailable(f"shard {shard} of {board.spec.name!r}: {exc}") from exc

    async def _fan(self, board: Board, method: str, per_shard: Mapping[int, dict[str, Any]]) -> dict[int, Any]:
        shards = list(per_shard)
        results = await asyncio.gather(*(self._call(board, s, method, **per_shard[s]) for s in shards))
        return dict(zip(shards, results, strict=True))

    def _forget(self, board: Board) -> None:
        self._boards.pop(board.spec.name, None)
        for key in [k for k in self._handles if k[0] == board.spec.name and k[1] == board.generation]:
            del self._handles[key]

    async def _read(self, name: str, op: Callable[[Board], Awaitable[T]]) -> T:
        """Run a read; once more on a fresh spec if its shards vanished (a finished reshard)."""
        board = await self.board(name)
        try:
            return await op(board)
        except BoardUnavailable:
            fresh = await self.board(name, fresh=True)
            if fresh.generation == board.generation:
                raise
            return await op(fresh)

    def _period(self, spec: LeaderboardSpec, period: str | None) -> str:
        if period is not None:
            if not isinstance(period, str) or not period or len(period) > 128:
                raise QueryError(Problem.PERIOD_REQUIRED, "period must be a non-empty str")
            return period
        return period_key(spec, self.now())

    # -- writes -------------------------------------------------------------------------

    async def write(self, name: str, writes: Iterable[Write | tuple[Any, ...]] | WriteBatch) -> WriteResult:
        """Write a batch; idempotent per ``(user, source)`` and safe to retry.

        ``writes`` is rows (``Write`` or tuples) or, fastest, a ``WriteBatch`` of columns
        (``WriteBatch.columns(users, scores, achieved_at, source=..., tags=...)``).

        The whole batch is validated before any shard sees it. Durable when this returns.
        During a reshard the call waits (bounded) for the new layout and writes there.
        """
        deadline = time.monotonic() + _MOVED_DEADLINE_S
        board = await self.board(name)
        batch = writes if isinstance(writes, WriteBatch) else WriteBatch.of(writes)
        batch_periods(board.spec, batch)  # class tags: refused here, before any shard sees it
        while True:
            try:
                return await self._write_once(board, batch)
            except _Moved:
                if time.monotonic() > deadline:
                    raise BoardUnavailable(f"board {name!r} is being resharded") from None
                await asyncio.sleep(_MOVED_WAIT_S)
                board = await self.board(name, fresh=True)

    async def _write_once(self, board: Board, batch: WriteBatch) -> WriteResult:
        count = board.spec.shard_count
        if count == 1:
            parts = {0: batch} if len(batch) else {}
        else:
            owners = shards_of(batch.users, count)
            parts = {int(s): batch.take(np.flatnonzero(owners == s)) for s in np.unique(owners).tolist()}
        done = await self._fan(board, "write", {s: {"batch": part} for s, part in parts.items()})
        return WriteResult(len(batch), sum(r["changed"] for r in done.values()))

    # -- ranks --------------------------------------------------------------------------

    async def rank(
        self,
        name: str,
        user: str,
        *,
        period: str | None = None,
        cohort: Cohort = None,
        max_stale_ms: float | None = None,
    ) -> RankedEntry | None:
        """Global rank (1 = best) and entry of one user; None if not on the board.

        Exact now by default: two rounds of one small call each, the owner shard's
        ``locate_one`` then every other shard's ``count_better_one`` in parallel. With
        ``max_stale_ms`` (and no cohort), one call: the owner adds its peer replica's count
        (``leaderboards/peers.py``) if that view is at most ``max_stale_ms`` old, and the answer's
        ``stale_ms`` says how old it is; otherwise the second round runs as usual.
        """
        if max_stale_ms is not None and (not math.isfinite(max_stale_ms) or max_stale_ms < 0):
            raise QueryError(Problem.BAD_NUMBER, "max_stale_ms must be a finite number >= 0")
        return await self._read(name, lambda b: self._rank_one(b, user, period, cohort, max_stale_ms))

    async def _rank_one(
        self, board: Board, user: str, period: str | None, cohort: Cohort, max_stale_ms: float | None
    ) -> RankedEntry | None:
        p, c = self._period(board.spec, period), dict(cohort) if cohort else None
        _cohort_tuple(c)
        user_bytes(user, QueryError)
        count = board.spec.shard_count
        owner = shard_of(user, count)
        if max_stale_ms is not None and c is None and count > 1:
            fast = await self._call(board, owner, "locate_fast", user=user, period=p, max_stale_s=max_stale_ms / 1e3)
            if fast is None:
                return None
            position, score, achieved_at, tags, age_s = fast
            if age_s is not None:
                return RankedEntry(1 + position, user, score, achieved_at, dict(tags), age_s * 1e3)
        else:
            got = await self._call(board, owner, "locate_one", user=user, period=p, cohort=c)
            if got is None:
                return None
            position, score, achieved_at, tags = got
        ask = {"score": score, "achieved_at": achieved_at, "user": user, "period": p, "cohort": c}
        others = await self._fan(board, "count_better_one", {s: ask for s in range(count) if s != owner})
        return RankedEntry(1 + position + sum(others.values()), user, score, achieved_at, dict(tags))

    async def ranks(
        self, name: str, users: Sequence[str], *, period: str | None = None, cohort: Cohort = None
    ) -> list[RankedEntry | None]:
        """``rank`` for many users in two rounds of parallel shard calls."""
        return await self._read(name, lambda b: self._ranks(b, list(users), period, cohort))

    async def _ranks(
        self, board: Board, users: list[str], period: str | None, cohort: Cohort
    ) -> list[RankedEntry | None]:
        spec, count = board.spec, board.spec.shard_count
        p, c = self._period(spec, period), dict(cohort) if cohort else None
        _cohort_tuple(c)
        n = len(users)
        check_users(users, QueryError)
        owners = shards_of(users, count)
        groups = {s: np.flatnonzero(owners == s) for s in range(count)}
        groups = {s: idx for s, idx in groups.items() if idx.size}
        found = await self._fan(board, "locate", {
            s: {"users": [users[i] for i in idx.tolist()], "period": p, "cohort": c}
            for s, idx in groups.items()
        })
        totals = np.full(n, -1, np.int64)
        scores, times = np.zeros(n), np.zeros(n)
        tags: list[Any] = [()] * n
        for s, idx in groups.items():
            got = found[s]
            totals[idx], scores[idx], times[idx] = got.positions, got.scores, got.achieved_at
            for i, t in zip(idx.tolist(), got.tags, strict=True):
                tags[i] = t
        present = totals >= 0
        asks: dict[int, dict[str, Any]] = {}
        for s in range(count):
            idx = np.flatnonzero(present & (owners != s))
            if idx.size:
                asks[s] = {
                    "scores": scores[idx], "achieved_at": times[idx],
                    "users": [users[i] for i in idx.tolist()], "period": p, "cohort": c,
                }
        counts = await self._fan(board, "count_better", asks)
        for s in asks:
            totals[np.flatnonzero(present & (owners != s))] += counts[s]
        return [
            RankedEntry(int(totals[i]) + 1, users[i], float(scores[i]), float(times[i]), dict(tags[i]))
            if present[i] else None
            for i in range(n)
        ]

    # -- pages --------------------------------------------------------------------------

    async def top(
        self,
        name: str,
        n: int = 10,
        *,
        cursor: str | None = None,
        period: str | None = None,
        cohort: Cohort = None,
        max_age_s: float = 0.0,
    ) -> TopPage:
        """The best ``n`` (first page), or the next page after ``cursor``.

        A cursor carries its period and cohort; the arguments are then ignored. With
        ``max_age_s > 0`` a first page computed at most that long ago may be served from this
        client's cache (``cached``/``age_s`` say so).
        """
        if not 1 <= n <= 1000:
            raise QueryError(Problem.BAD_NUMBER, "n must be in 1..1000")
        return await self._read(name, lambda b: self._top(b, n, cursor, period, cohort, max_age_s))

    async def _top(
        self, board: Board, n: int, cursor: str | None, period: str | None, cohort: Cohort,
        max_age_s: float,
    ) -> TopPage:
        if cursor is not None:
            return await self._page(board, n, _Cursor.decode(cursor))
        p, c = self._period(board.spec, period), _cohort_tuple(cohort)
        key = (board.spec.name, board.generation, n, p, c)
        hit = self._cache.get(key)
        if hit is not None and max_age_s > 0 and time.monotonic() - hit[0] <= max_age_s:
            return replace(hit[1], age_s=time.monotonic() - hit[0], cached=True)
        page = await self._page(board, n, _Cursor(board.generation, p, c, SortKey(0, 0, ""), [], 0))
        if len(self._cache) >= 1024:  # bounded: the cache only serves max_age_s readers
            self._cache.clear()
        self._cache[key] = (time.monotonic(), page)
        return page

    async def _page(self, board: Board, n: int, cur: _Cursor) -> TopPage:
        count = board.spec.shard_count
        if cur.generation != board.generation or (cur.as_of and len(cur.as_of) != count):
            raise BadCursor("cursor from another shard layout; start again")
        first = not cur.as_of
        cohort = dict([cur.cohort]) if cur.cohort else None
        pages = await self._fan(board, "top", {
            s: {
                "n": n, "after": None if first else cur.after, "as_of": None if first else cur.as_of[s],
                "period": cur.period, "cohort": cohort,
            }
            for s in range(count)
        })
        merged = merge_top([pages[s].entries for s in range(count)], n, board.spec.order)
        more = sum(len(pages[s].entries) for s in range(count)) > n or any(
            pages[s].next_after is not None for s in range(count)
        )
        next_cursor = None
        if merged and more:
            as_of = [pages[s].as_of for s in range(count)]
            seen = cur.seen + len(merged)
            next_cursor = replace(cur, after=merged[-1].key, as_of=as_of, seen=seen).encode()
        ranked = [RankedEntry.of(cur.seen + i + 1, e) for i, e in enumerate(merged)]
        return TopPage(ranked, next_cursor, cur.period)

    async def around(
        self, name: str, user: str, k: int = 5, *, period: str | None = None, cohort: Cohort = None
    ) -> AroundAnswer | None:
        """The user's exact rank with up to ``k`` entries just above and below; None if absent."""
        if not 0 <= k <= 100:
            raise QueryError(Problem.BAD_NUMBER, "k must be in 0..100")
        return await self._read(name, lambda b: self._around(b, user, k, period, cohort))

    async def _around(
        self, board: Board, user: str, k: int, period: str | None, cohort: Cohort
    ) -> AroundAnswer | None:
        p, c = self._period(board.spec, period), dict(cohort) if cohort else None
        _cohort_tuple(c)
        owner = shard_of(user, board.spec.shard_count)
        got = await self._call(board, owner, "locate", users=[user], period=p, cohort=c)
        if got.positions[0] < 0:
            return None
        me = Entry(user, float(got.scores[0]), float(got.achieved_at[0]), dict(got.tags[0]))
        key = me.key
        parts = await self._fan(board, "around_key", {
            s: {"key": key, "k": k, "period": p, "cohort": c} for s in range(board.spec.shard_count)
        })
        merged = merge_around([a for a, _ in parts.values()], k, board.spec.order)
        rank = 1 + sum(better for _, better in parts.values())
        above = [RankedEntry.of(rank - len(merged.above) + i, e) for i, e in enumerate(merged.above)]
        below = [RankedEntry.of(rank + 1 + i, e) for i, e in enumerate(merged.below)]
        return AroundAnswer(above, RankedEntry.of(rank, me), below, p)

    async def size(self, name: str, *, period: str | None = None, cohort: Cohort = None) -> int:
        board = await self.board(name)
        p = self._period(board.spec, period)
        sizes = await self._fan(board, "size", {
            s: {"period": p, "cohort": dict(cohort) if cohort else None}
            for s in range(board.spec.shard_count)
        })
        return int(sum(sizes.values()))

    # -- operations ---------------------------------------------------------------------

    async def drop_period(self, name: str, period: str) -> int:
        """Forget one period of a board on every shard (retention); return the records
        dropped. Durable when this returns; a past period is gone for queries at once."""
        board = await self.board(name)
        p = self._period(board.spec, period)
        self._cache = {k: v for k, v in self._cache.items() if k[0] != name}
        done = await self._fan(board, "drop_period", {s: {"period": p} for s in range(board.spec.shard_count)})
        return int(sum(done.values()))

    async def shard_infos(self, name: str) -> list[dict[str, Any]]:
        board = await self.board(name)
        infos = await self._fan(board, "info", {s: {} for s in range(board.spec.shard_count)})
        return [infos[s] for s in range(board.spec.shard_count)]

    async def memory(self, name: str) -> list[dict[str, Any]]:
        board = await self.board(name)
        found = await self._fan(board, "memory", {s: {} for s in range(board.spec.shard_count)})
        return [found[s] for s in range(board.spec.shard_count)]

    async def reshard(self, name: str, shard_count: int) -> int:
        """Move every record of a board into ``shard_count`` new shards; return how many.

        Steps: freeze the old shards (writes get MOVED and wait), copy their records into
        new-generation shards (idempotent loads), switch the spec in Redis, then retire the
        old actors and their Redis keys. Re-running after a crash at any step is safe.
        """
        old = await self.board(name, fresh=True)
        new = Board(replace(old.spec, shard_count=shard_count), old.generation + 1)
        if shard_count == old.spec.shard_count:
            return 0
        counts = await self._fan(old, "freeze", {
            s: {"moved_to": new.generation} for s in range(old.spec.shard_count)
        })
        await self._handles_of(new)
        moved = 0
        for s, total in counts.items():
            for start in range(0, total, _EXPORT_PAGE):
                records = await self._call(old, s, "export", start=start, limit=_EXPORT_PAGE)
                moved += await self._load(new, records)
        await self._fan(new, "checkpoint", {s: {} for s in range(shard_count)})
        await self.redis.set(self._spec_key(name), new.to_json())
        self._boards[name] = (time.monotonic(), new)
        await self._retire(old)
        log.info("board %s resharded %s -> %s shards (%s records)", name, old.spec.shard_count, shard_count, moved)
        return moved

    async def _load(self, board: Board, records: Sequence[Record]) -> int:
        groups: dict[int, list[tuple[Any, ...]]] = {}
        for r in records:
            groups.setdefault(shard_of(r.user, board.spec.shard_count), []).append(tuple(r))
        await self._fan(board, "load", {s: {"records": g} for s, g in groups.items()})
        return len(records)

    async def _retire(self, board: Board) -> None:
        handles = await self._handles_of(board)
        self._forget(board)
        for handle in handles:
            ray.kill(handle, no_restart=True)
        for s in range(board.spec.shard_count):  # one slot per shard: one DEL each
            await self.redis.delete(*shard_keys(self.prefix, board.spec.name, s, board.generation))

    async def drop(self, name: str) -> None:
        """Delete a board: its actors and every Redis key (tests and operators)."""
        board = await self.board(name, fresh=True)
        await self._retire(board)
        await self.redis.delete(self._spec_key(name))
        await self.redis.srem(f"{self.prefix}:lb:boards", name)
