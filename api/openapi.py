"""The HTTP API as a generated client sees it: a response model, a summary, a description
and the error responses of every route, in one table (``document(app)``, called last by
``create_app``).

The models describe what the routes return (``model_config`` allows more fields: a newer
edge may add some, and clients must ignore what they do not know); the routes themselves
are unchanged (their handlers keep returning plain dicts), so the models are the contract
written down, checked by ``tests/api/test_openapi_client.py``, which generates a Python
client from ``/openapi.json`` and parses real answers of a running edge with it. Error
bodies are always ``ErrorBody`` (``api/errors.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.utils import create_model_field
from pydantic import BaseModel, ConfigDict, Field

from history.exports import MEDIA_TYPES

Phase = Literal["scheduled", "lobby", "live", "cooldown", "ended"]


class Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ErrorBody(Open):
    """Every error: a stable code to branch on, a message for people, and for some codes a
    ``reason`` (auth), ``position`` (queued) or ``details`` (validation)."""

    error: str = Field(description="stable code, e.g. unauthorised, forbidden, unknown_session, not_ended, unavailable")
    message: str = Field(description="what went wrong and what to do, for people")
    reason: str | None = Field(default=None, description="why a token was refused (auth errors)")
    model_config = ConfigDict(extra="allow", json_schema_extra={
        "example": {"error": "unknown_session", "message": "no session 'spin-7'"}})


class Health(Open):
    ok: bool
    model_config = ConfigDict(extra="allow", json_schema_extra={"example": {"ok": True}})


class Readiness(Open):
    ok: bool = Field(description="every check passed")
    checks: dict[str, dict[str, Any]] = Field(description="redis, ray, edge: ok and a detail each")
    sessions: int = Field(description="classes this edge serves")
    model_config = ConfigDict(extra="allow", json_schema_extra={"example": {
        "ok": True, "sessions": 3, "checks": {"redis": {"ok": True, "detail": "ok"}, "ray": {"ok": True, "detail": "ok"},
                                              "edge": {"ok": True, "detail": "ok"}}}})


class SessionCreated(Open):
    id: str
    created: bool = Field(description="false when the class existed already (creating is idempotent)")
    schedule: dict[str, Any] | None = Field(default=None, description="the class plan's schedule, when one was given")
    prescale: dict[str, Any] | None = Field(default=None, description="capacity booked ahead for a scheduled class")
    model_config = ConfigDict(extra="allow", json_schema_extra={"example": {"id": "spin-7", "created": True}})


class SessionSnapshot(Open):
    """A class as its actor holds it: phase, roster and per-rider totals, the board."""

    session: str | None = None
    phase: Phase | None = None
    participants: list[dict[str, Any]] = Field(default_factory=list, description="one entry per rider")
    board: dict[str, Any] | None = None
    epoch: int | None = Field(default=None, description="the actor instance (grows at every restart)")
    durable: dict[str, int] = Field(default_factory=dict, description="device -> highest durable seq")
    meta: dict[str, Any] = Field(default_factory=dict, description="the class's record: title, phase, created_at, ...")


class SessionSummary(Open):
    id: str
    phase: Phase | None = None
    title: str | None = None
    created_at: float | None = None


class SessionPage(Open):
    sessions: list[SessionSummary]
    next: str | None = Field(description="cursor of the next page (null: the last page)")
    model_config = ConfigDict(extra="allow", json_schema_extra={"example": {
        "sessions": [{"id": "spin-7", "phase": "live", "title": "Morning spin", "created_at": 1796600000.0}],
        "next": None}})


class Purged(Open):
    id: str
    deleted: bool
    keys: int = Field(description="Redis keys deleted")


class Joined(Open):
    participant: str
    slot: int = Field(description="the rider's row in the class")
    model_config = ConfigDict(extra="allow", json_schema_extra={"example": {"participant": "rider-1", "slot": 0}})


class Left(Open):
    participant: str
    left: bool


class Seats(Open):
    session: str
    capacity: int | None
    seated: int
    waiting: int


class PhaseSet(Open):
    phase: Phase


class Flushed(Open):
    durable: dict[str, int] = Field(description="device -> highest durable seq, after a checkpoint")


class Card(Open):
    id: str
    title: str | None = None
    phase: str


class Names(Open):
    names: dict[str, str] = Field(description="participant id -> display name, for the asked riders of the class's "
                                              "board that set one (docs/protocol.md)")


class ViewLink(Open):
    token: str = Field(description="a viewer token for this class only")
    expires_at: int = Field(description="Unix time")
    url: str = Field(description="the class page, the token in the fragment (never sent to a server)")


class ClusterStatus(Open):
    """Nodes, session slots, classes per node, autoscaler demand, prescaling and this edge."""


class Booked(Open):
    """A scheduled class's pre-scaling booking."""


class Passivated(Open):
    session: str
    passivated: bool


class Profile(Open):
    rider: str
    set: dict[str, Any] = Field(description="what was set (FTP, max HR, weight, ...)")
    effective: dict[str, Any] = Field(description="what the metrics use: set values, else estimates")
    records: dict[str, Any] | None = None


class Records(Open):
    rider: str
    records: dict[str, Any]


class RideSummary(Open):
    """One ride: its class, times, totals, rank among the class's riders, zones and bests
    (docs/history.md); ``revision`` grows when late data changes it."""

    id: str = Field(description="the ride's id: its class's id")
    rider: str
    sport: str
    start_ts: float = Field(description="Unix time of its first recorded second")
    end_ts: float
    elapsed_s: int
    recorded_s: int = Field(description="seconds that hold a value")
    totals: dict[str, float | None] = Field(description="energy_kj, kcal, distance_m, samples, avg/max power, ...")
    rank: int | None = Field(description="by work among the class's riders with samples (1 = most)")
    riders: int
    zones: dict[str, list[float]] = Field(description="seconds per power zone (power_s) and heart-rate zone (hr_s)")
    bests: dict[str, float | None] = Field(description="best powers over durations (W) and the class output (kJ)")
    revision: int
    updated_at: float
    records: dict[str, float] | None = Field(default=None, description="metric -> value of the personal records "
                                                                        "this ride holds (the single-ride route)")
    model_config = ConfigDict(extra="allow", json_schema_extra={"example": {
        "id": "spin-7", "rider": "ann", "class": "spin-7", "sport": "cycling", "start_ts": 1796600000,
        "end_ts": 1796602700, "elapsed_s": 2700, "recorded_s": 2698, "totals": {"energy_kj": 512.3, "avg_power_w": 190.2},
        "rank": 3, "riders": 24, "zones": {"power_s": [600, 900, 800, 300, 98, 0, 0], "hr_s": []},
        "bests": {"power_5s_w": 612.0, "class_output_kj": 512.3}, "revision": 1, "updated_at": 1796602710.0,
        "records": {"power_5s_w": 612.0}}})


class RideColumns(Open):
    """A ride's per-second series as columns: ``t`` (seconds from its first one) and each
    field's value in that second (null: none)."""

    start_ts: float
    t: list[int]
    power_w: list[float | None]
    hr_bpm: list[float | None]
    cadence_rpm: list[float | None]
    speed_mps: list[float | None]
    distance_m: list[float | None]


class RideSeries(RideColumns):
    """A ride's per-second series, with the revision it is of."""

    id: str
    rider: str
    revision: int


class RideDocument(RideSummary):
    """A whole ride as one JSON document: its summary and its series."""

    series: RideColumns


class Rides(Open):
    rider: str
    rides: list[RideSummary] = Field(description="newest first")
    next: str | None = Field(description="cursor of the next page (`before`; null: the last page)")


class Board(Open):
    name: str
    spec: dict[str, Any]
    generation: int


class BoardCreated(Open):
    """The leaderboard's spec, created (201) or as it existed (200)."""


class Scores(Open):
    accepted: int
    changed: int


class RankedEntry(Open):
    """One entry with its exact rank in the whole board (1 = best): also a user's rank."""

    rank: int = Field(ge=1)
    user: str
    score: float
    achieved_at: float = Field(description="unix time (s) the score was achieved")
    tags: dict[str, str] = Field(description="the user's cohort values")
    stale_ms: float | None = Field(default=None, description="None: exact now; else how old other shards' part may be")


class RankPage(Open):
    """A page of the top of a board: ``next_cursor`` asks for the next page (None: the last)."""

    entries: list[RankedEntry]
    next_cursor: str | None
    period: str
    age_s: float = Field(description="how old a cached answer is (0: computed for this call)")
    cached: bool


class Around(Open):
    """A user's entry with up to ``k`` entries above and below it."""

    above: list[RankedEntry]
    entry: RankedEntry
    below: list[RankedEntry]
    period: str


class PeriodDropped(Open):
    name: str
    period: str
    dropped_records: int


class Resharded(Open):
    name: str
    shard_count: int
    moved: int


class OnDemand(Open):
    id: str = Field(description="the on-demand class (`{id}:od`)")
    of: str = Field(description="the class it replays")
    created: bool
    replay: dict[str, Any] | None = None


class Webhook(Open):
    """A subscription: its id, URL and events (the secret only in the answer that created it)."""

    id: str
    url: str | None = None
    events: list[str] = Field(default_factory=list)


class Webhooks(Open):
    webhooks: list[Webhook]


class Deliveries(Open):
    id: str
    deliveries: list[dict[str, Any]] = Field(description="the newest deliveries: event, status, attempts, ...")


class Unsubscribed(Open):
    id: str
    deleted: bool


@dataclass(frozen=True)
class Doc:
    model: type[BaseModel] | None
    summary: str
    description: str = ""
    errors: tuple[int, ...] = ()
    operation_id: str = ""  # default: the route function's name (what generated clients call it)
    media_type: str = ""  # a file's media type (routes without a model): the spec says it is binary


AUTH = (401, 403)
ERROR_TEXT = {
    400: "Bad request: a value the edge cannot use (the message says which)",
    401: "No valid token: send `Authorization: Bearer <token>`",
    403: "The token may not do this (the reason says why)",
    404: "No such class, rider, ride or leaderboard",
    409: "Conflicts with the current state (e.g. a phase that cannot follow, a class not ended)",
    413: "Body too large",
    422: "The body or a parameter is invalid (details name it)",
    429: "Over a limit, or queued for a seat (Retry-After, and the position)",
    503: "Redis or Ray is unavailable or slow: retry after Retry-After seconds",
}

S = "/v1/sessions/{session_id}"
W = "/v1/webhooks"
R = "/v1/riders/{rider}"
L = "/v1/leaderboards"
FIT, TCX = MEDIA_TYPES["fit"], MEDIA_TYPES["tcx"]
ROUTES: dict[tuple[str, str], Doc] = {
    ("GET", "/livez"): Doc(Health, "Liveness", "The process answers (nothing else is checked): for liveness probes."),
    ("GET", "/readyz"): Doc(Readiness, "Readiness", "Redis and Ray answer and the edge has started; 503 with "
                            "Retry-After and the failed check otherwise. For readiness probes and load balancers.", (503,)),
    ("GET", "/healthz"): Doc(Readiness, "Readiness (alias of /readyz)", "Same as /readyz.", (503,), "healthz"),
    ("GET", "/metrics"): Doc(None, "Prometheus metrics", "Every family of this edge (docs/operations.md), "
                             "Prometheus text format; needs an operator token unless PULSELINE_PUBLIC_METRICS.", AUTH),
    ("POST", "/v1/sessions"): Doc(SessionCreated, "Create a class", "Creates the class (idempotent by id) and starts "
                                  "its actor; optional plan, start time, capacity, placement. Operators only.", (*AUTH, 422, 503)),
    ("GET", "/v1/sessions"): Doc(SessionPage, "List classes", "Classes in creation order, optionally one phase, "
                                 "keyset-paged with `after` (a page neither skips nor repeats). Operators only.", (*AUTH, 422, 503)),
    ("GET", S): Doc(SessionSnapshot, "A class's state", "Phase, roster, per-rider totals and the board. A participant "
                    "sees the other riders' output only (no heart rate, tags or devices).", (*AUTH, 404, 503)),
    ("DELETE", S): Doc(Purged, "Purge a class", "Stops its actor for good and deletes its keys; only an ended class "
                       "unless `force=true` (409 `not_ended`). Operators only.", (*AUTH, 404, 409, 503)),
    ("POST", f"{S}/participants"): Doc(Joined, "Join a class", "Adds the rider (idempotent). Over the class's "
                                       "capacity: 429 `queued` with the position and Retry-After; ask again to keep "
                                       "the place.", (*AUTH, 404, 422, 429, 503)),
    ("DELETE", f"{S}/participants/{{participant}}"): Doc(Left, "Leave a class", "The rider leaves (totals kept); "
                                                         "its seat goes to the next in the queue.", (*AUTH, 404, 503)),
    ("PUT", f"{S}/capacity"): Doc(Seats, "Set a class's seats", "", (*AUTH, 404, 422, 503)),
    ("POST", f"{S}/phase"): Doc(PhaseSet, "Move a class's phase", "scheduled → lobby → live → cooldown → ended, "
                                "forward only (409 otherwise). Operators only.", (*AUTH, 404, 409, 422, 503)),
    ("POST", f"{S}/on-demand"): Doc(OnDemand, "The on-demand class of an ended class", "", (*AUTH, 404, 409, 422, 503)),
    ("POST", f"{S}/flush"): Doc(Flushed, "Checkpoint a class now", "Returns every device's durable seq. Operators only.",
                                (*AUTH, 404, 503)),
    ("GET", f"{S}/card"): Doc(Card, "A class's card", "", (*AUTH, 404, 503)),
    ("GET", f"{S}/names"): Doc(Names, "Display names of a class's riders", "For `riders` (comma-separated ids, "
                               "at most 200) on the class's live board; riders without one, or not on it, are left "
                               "out. For whoever may watch the board.", (*AUTH, 404, 422, 503)),
    ("POST", f"{S}/view-links"): Doc(ViewLink, "A view link", "", (*AUTH, 404, 422, 503)),
    ("GET", "/v1/cluster/status"): Doc(ClusterStatus, "Cluster status", "Nodes, session slots, classes per node, "
                                       "autoscaler demand, pre-scaling and this edge's pumps. Operators only.", (*AUTH, 503)),
    ("POST", f"{S}/schedule"): Doc(Booked, "Schedule a class", "Books capacity ahead of `start_at` (the autoscaler "
                                   "adds nodes before the class starts). Operators only.", (400, *AUTH, 422, 503)),
    ("POST", f"{S}/passivate"): Doc(Passivated, "Passivate a class", "Stops an ended class's actor (its state stays "
                                    "in Redis; the next call brings it back). Operators only.", (*AUTH, 404, 503)),
    ("PUT", f"{R}/profile"): Doc(Profile, "Set a rider's profile", "FTP, max and resting heart rate, weight, ... "
                                 "(the rider or an operator).", (*AUTH, 422, 503)),
    ("GET", f"{R}/profile"): Doc(Profile, "A rider's profile", "What was set, what the metrics use, and the "
                                 "rider's records.", (*AUTH, 503)),
    ("GET", f"{R}/rides"): Doc(Rides, "A rider's rides", "Newest first, paged with `before`.", (*AUTH, 422, 503)),
    ("GET", f"{R}/records"): Doc(Records, "A rider's records", "", (*AUTH, 503)),
    ("GET", f"{R}/rides/{{ride}}"): Doc(RideSummary, "A ride", "Its summary and the records it holds.",
                                        (*AUTH, 404, 503)),
    ("GET", f"{R}/rides/{{ride}}.json"): Doc(RideDocument, "A ride as JSON", "The whole recording: the summary "
                                             "and the per-second series.", (*AUTH, 404, 503)),
    ("GET", f"{R}/rides/{{ride}}/series"): Doc(RideSeries, "A ride's per-second series", "", (*AUTH, 404, 503)),
    ("GET", f"{R}/rides/{{ride}}.fit"): Doc(None, "A ride as a FIT file", "A FIT activity file (binary, "
                                            "`application/vnd.ant.fit`).", (*AUTH, 404, 503), media_type=FIT),
    ("GET", f"{R}/rides/{{ride}}.tcx"): Doc(None, "A ride as a TCX file", "TrainingCenterDatabase v2 XML "
                                            "(`application/vnd.garmin.tcx+xml`).", (*AUTH, 404, 503), media_type=TCX),
    ("POST", W): Doc(Webhook, "Subscribe a webhook", "Events (class phases, results, ...) are POSTed to `url`, "
                     "signed with HMAC; the secret is returned once. Operators only.", (*AUTH, 422, 503)),
    ("GET", W): Doc(Webhooks, "List webhooks", "Operators only.", (*AUTH, 503)),
    ("GET", f"{W}/{{ident}}"): Doc(Webhook, "A webhook", "Operators only.", (*AUTH, 404, 422, 503)),
    ("GET", f"{W}/{{ident}}/deliveries"): Doc(Deliveries, "A webhook's deliveries", "The newest first. Operators only.",
                                             (*AUTH, 404, 422, 503)),
    ("DELETE", f"{W}/{{ident}}"): Doc(Unsubscribed, "Unsubscribe a webhook", "Operators only.", (*AUTH, 404, 422, 503)),
    ("POST", L): Doc(BoardCreated, "Create a leaderboard", "201 created, 200 when it existed with the same spec.",
                     (*AUTH, 409, 422, 503)),
    ("GET", f"{L}/{{name}}"): Doc(Board, "A leaderboard's spec", "", (*AUTH, 404, 503)),
    ("POST", f"{L}/{{name}}/scores"): Doc(Scores, "Write scores", "", (*AUTH, 404, 422, 503)),
    ("GET", f"{L}/{{name}}/top"): Doc(RankPage, "Top of a leaderboard", "", (*AUTH, 404, 422, 503)),
    ("GET", f"{L}/{{name}}/users/{{user}}/rank"): Doc(RankedEntry, "A user's rank", "", (*AUTH, 404, 422, 503)),
    ("GET", f"{L}/{{name}}/users/{{user}}/around"): Doc(Around, "Entries around a user", "", (*AUTH, 404, 422, 503)),
    ("DELETE", f"{L}/{{name}}/periods/{{period}}"): Doc(PeriodDropped, "Drop a period", "", (*AUTH, 404, 503)),
    ("POST", f"{L}/{{name}}/reshard"): Doc(Resharded, "Reshard a leaderboard", "", (*AUTH, 404, 422, 503)),
}


def document(app: FastAPI) -> list[str]:
    """Apply ``ROUTES`` to the app's routes (summaries, descriptions, error responses) and
    to its spec (response models); returns the documented routes it found no entry for (a
    test keeps that empty)."""
    missing = []
    for route in _api_routes(app.routes):
        if not route.include_in_schema:
            continue
        for method in sorted(route.methods or ()):
            doc = ROUTES.get((method, route.path))
            if doc is None:
                missing.append(f"{method} {route.path}")
                continue
            route.operation_id = route.operation_id or doc.operation_id or route.name
            route.summary = route.summary or doc.summary
            route.description = route.description or doc.description or doc.summary
            for code in doc.errors:
                route.responses.setdefault(code, {"model": ErrorBody, "description": ERROR_TEXT[code]})
                route.response_fields[code] = create_model_field(
                    name=f"Error_{code}_{route.unique_id}", type_=ErrorBody, mode="serialization")
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            _typed(generate())
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]
    return missing


def _typed(spec: dict[str, Any]) -> None:
    """Each documented route's success response refers to its model (schema only: the
    handlers keep returning what they return)."""
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    for (method, path), doc in ROUTES.items():
        operation = spec.get("paths", {}).get(path, {}).get(method.lower())
        if operation is None:
            continue
        for code, response in operation["responses"].items():  # errors are JSON, even from /metrics
            if code[0] in "45" and response.get("content"):
                response["content"] = {"application/json": next(iter(response["content"].values()))}
        code = next(c for c in operation["responses"] if c.startswith("2"))
        if doc.media_type:
            operation["responses"][code]["content"] = {doc.media_type: {"schema": {"type": "string", "format": "binary"}}}
        if doc.model is None:
            continue
        schema = doc.model.model_json_schema(ref_template="#/components/schemas/{model}", mode="serialization")
        schemas.update(schema.pop("$defs", {}))
        schemas[doc.model.__name__] = schema
        operation["responses"][code]["content"] = {
            "application/json": {"schema": {"$ref": f"#/components/schemas/{doc.model.__name__}"}}}


def _api_routes(routes: list[Any]) -> list[APIRoute]:
    """Every ``APIRoute``, also those of included routers (kept whole by FastAPI, which
    derives the app's routes from them)."""
    found = []
    for route in routes:
        if isinstance(route, APIRoute):
            found.append(route)
        elif hasattr(route, "original_router"):
            found.extend(_api_routes(route.original_router.routes))
    return found
