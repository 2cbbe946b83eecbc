"""The edge's exceptions and the one place every error becomes an HTTP status or a close code.

``EdgeError``
    ``UnknownSession``   404
    ``BadRequest``       400 / 422 (``status`` per instance: 413 for a body over the limit)
    ``Conflict``         409 (e.g. an illegal phase transition: ``code`` ``bad_phase``)
    ``Unavailable``      503 + ``Retry-After`` (Redis or Ray could not be reached in time)
    ``Unauthorised``     401 (no token, or a token that does not verify; ``reason`` says why)
    ``Forbidden``        403 (a valid token that does not allow this; ``reason`` says why)

``classify(exc)`` turns anything a route can raise into one of these: our own errors as
they are; a ``PhaseError`` (also wrapped in Ray's ``RayTaskError``) into ``Conflict``;
Redis connection errors and time-outs, Ray's unavailable / dead / timed-out actor errors
and ``TimeoutError`` into ``Unavailable``; anything else into a 500 whose body carries only
an id that the log line also carries (a ``StaleInstance`` — the actor was just replaced — is
a 503 too). Messages of ``Unavailable`` and 500s are ours, never
the exception's text: Ray tracebacks, pids, addresses and colour codes go to the logs only.

Every error body is ``{"error": code, "message": ..., "reason"?: ..., "details"?: ...}``
and can always be encoded: ``encodable`` replaces non-finite floats and escapes lone
surrogates, and request-validation errors never echo the input back.
"""

from __future__ import annotations

import asyncio
import logging
import math
import uuid
from typing import Any

import redis.exceptions as redis_errors
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from ray import exceptions as ray_errors

from actors.errors import ActorError, CheckpointError, NotReplicated, PhaseError, StaleInstance
from actors.plan import PlanError
from actors.replay import ReplayError
from history.errors import BadCursor, HistoryError, RideNotFound
from history.webhooks import UnknownWebhook

log = logging.getLogger(__name__)

RETRY_AFTER_S = 2
MAX_TEXT = 300  # characters of any string in an error body
MAX_DETAILS = 20  # validation errors listed in one body

PHASES = "scheduled → lobby → live → cooldown → ended"


class EdgeError(Exception):
    status = 500
    code = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def body(self) -> dict[str, Any]:
        return {"error": self.code, "message": self.message}

    def headers(self) -> dict[str, str] | None:
        return None


class UnknownSession(EdgeError):
    status = 404
    code = "unknown_session"


class BadRequest(EdgeError):
    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, status: int = 400, code: str = "bad_request",
                 details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.details = details

    def body(self) -> dict[str, Any]:
        body = super().body()
        if self.details is not None:
            body["details"] = self.details
        return body


class Conflict(EdgeError):
    status = 409
    code = "conflict"

    def __init__(self, message: str, *, code: str = "conflict") -> None:
        super().__init__(message)
        self.code = code


class Unavailable(EdgeError):
    """A dependency (Redis, Ray, the token issuer) did not answer in time: try again later."""

    status = 503
    code = "unavailable"

    def __init__(self, message: str, *, retry_after_s: int = RETRY_AFTER_S) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str] | None:
        return {"Retry-After": str(self.retry_after_s)}


class Queued(EdgeError):
    """No seat in the class for this rider yet: its place in the queue, and when to ask again."""

    status = 429
    code = "queued"

    def __init__(self, position: int, retry_after_s: float) -> None:
        super().__init__(f"the class is admitting riders in order: you are number {position} in the queue; "
                         f"ask again in {max(1, math.ceil(retry_after_s))} s (your place is kept)")
        self.position = position
        self.retry_after_s = retry_after_s

    def body(self) -> dict[str, Any]:
        return {**super().body(), "position": self.position, "retry_after_s": max(1, math.ceil(self.retry_after_s))}

    def headers(self) -> dict[str, str] | None:
        return {"Retry-After": str(max(1, math.ceil(self.retry_after_s)))}


class Internal(EdgeError):
    """A bug: the body says only that, with an id to find the traceback in the log."""

    def __init__(self, incident: str) -> None:
        super().__init__(f"internal error (incident {incident}); the server log has the details")
        self.incident = incident


class AuthError(EdgeError):
    """Refused by authentication or authorisation; ``reason`` is a stable enum value."""

    def __init__(self, reason: Any, message: str) -> None:
        super().__init__(message)
        self.reason = reason

    def body(self) -> dict[str, Any]:
        return {**super().body(), "reason": getattr(self.reason, "value", str(self.reason))}


class Unauthorised(AuthError):
    status = 401
    code = "unauthorised"

    def headers(self) -> dict[str, str] | None:
        return {"WWW-Authenticate": 'Bearer error="invalid_token"'}


class Forbidden(AuthError):
    status = 403
    code = "forbidden"


# -- classification -------------------------------------------------------------------------

_REDIS_UNAVAILABLE = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.BusyLoadingError,
    redis_errors.ReadOnlyError,
    redis_errors.TryAgainError,
    redis_errors.MaxConnectionsError,
    redis_errors.ClusterDownError,  # a primary failing over, slots not covered yet
    redis_errors.SlotNotCoveredError,
    redis_errors.RedisClusterException,  # e.g. no node of the cluster answers
)
_RAY_UNAVAILABLE = (
    ray_errors.RayActorError,  # ActorDiedError, ActorUnavailableError
    ray_errors.GetTimeoutError,
    ray_errors.RaySystemError,
    ray_errors.NodeDiedError,
    ray_errors.WorkerCrashedError,
    ray_errors.ObjectLostError,
    ray_errors.OwnerDiedError,
    ray_errors.PendingCallsLimitExceeded,
    ray_errors.TaskCancelledError,
    ray_errors.ActorUnschedulableError,
    ray_errors.LocalRayletDiedError,
    ray_errors.RpcError,
)


def phase_conflict(exc: PhaseError) -> Conflict:
    current, requested = getattr(exc, "current", "?"), getattr(exc, "requested", "?")
    return Conflict(
        f"cannot go from phase {current!r} to {requested!r}: phases only move forward ({PHASES})",
        code="bad_phase",
    )


def _cause(exc: BaseException) -> BaseException:
    """The user exception inside Ray's wrapper (``RayTaskError``), else ``exc`` itself."""
    cause = getattr(exc, "cause", None) if isinstance(exc, ray_errors.RayTaskError) else None
    return cause if isinstance(cause, BaseException) else exc


def classify(exc: BaseException) -> EdgeError:
    """What the client is told about ``exc`` (the one place that decides it)."""
    if isinstance(exc, EdgeError):
        return exc
    inner = _cause(exc)
    if isinstance(inner, EdgeError):
        return inner
    if isinstance(inner, PhaseError):
        return phase_conflict(inner)
    if isinstance(inner, ReplayError):
        return Conflict(str(inner), code="no_recording")
    if isinstance(inner, PlanError):  # (a bad plan is refused at the edge, 422: this is "too late")
        return Conflict(str(inner), code="plan_locked")
    if isinstance(inner, RideNotFound):
        return BadRequest(_text(str(inner)), status=404, code="unknown_ride")
    if isinstance(inner, BadCursor):
        return BadRequest(_text(str(inner)), code="bad_cursor")
    if isinstance(inner, UnknownWebhook):
        return BadRequest(_text(str(inner)), status=404, code="unknown_webhook")
    if isinstance(inner, _REDIS_UNAVAILABLE):
        return Unavailable("storage (Redis) is unavailable or slow; try again shortly")
    if isinstance(inner, _RAY_UNAVAILABLE) or isinstance(exc, _RAY_UNAVAILABLE):
        return Unavailable("the session's actor is unavailable or slow (restarting?); try again shortly")
    if isinstance(inner, (TimeoutError, asyncio.TimeoutError)):
        return Unavailable("a dependency did not answer in time; try again shortly")
    if isinstance(inner, NotReplicated):
        return Unavailable("storage (Redis) could not replicate in time; try again shortly")
    if isinstance(inner, StaleInstance):  # the actor was just replaced by a newer instance
        return Unavailable("the session moved to a new instance; try again shortly", retry_after_s=1)
    if isinstance(inner, ActorError) and not isinstance(inner, CheckpointError):
        return Conflict(_text(str(inner)))  # our own exceptions carry messages meant for clients
    incident = uuid.uuid4().hex[:12]
    log.error("internal error (incident %s): %s", incident, type(exc).__name__, exc_info=exc)
    return Internal(incident)


# -- bodies that always encode ---------------------------------------------------------------


def _text(value: str) -> str:
    """``value`` as valid UTF-8 text (lone surrogates escaped), at most ``MAX_TEXT`` chars."""
    text = value.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


def encodable(value: Any, depth: int = 0) -> Any:
    """A JSON value that ``json.dumps(allow_nan=False)`` and UTF-8 always accept."""
    if depth > 8:
        return "…"
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, bool) or value is None or isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {_text(str(k)): encodable(v, depth + 1) for k, v in list(value.items())[:MAX_DETAILS]}
    if isinstance(value, (list, tuple)):
        return [encodable(v, depth + 1) for v in list(value)[:MAX_DETAILS]]
    return _text(type(value).__name__)


def error_response(error: EdgeError) -> JSONResponse:
    return JSONResponse(encodable(error.body()), status_code=error.status, headers=error.headers())


def validation_error(exc: RequestValidationError) -> BadRequest:
    """FastAPI's validation error without the ``input`` it would echo (NaN, surrogates, MBs)."""
    details = [
        {"loc": [part if isinstance(part, int) else _text(str(part)) for part in error.get("loc", ())],
         "type": _text(str(error.get("type", ""))), "message": _text(str(error.get("msg", "")))}
        for error in list(exc.errors())[:MAX_DETAILS]
    ]
    first = details[0] if details else {"loc": [], "message": "invalid request"}
    where = ".".join(str(part) for part in first["loc"])
    return BadRequest(f"invalid request: {where}: {first['message']}" if where else "invalid request",
                      status=422, code="invalid_request", details=details)


_HTTP_CODES = {400: "bad_request", 401: "unauthorised", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 413: "too_large", 503: "unavailable"}


def http_error(exc: HTTPException) -> BadRequest:
    """Starlette's own refusals (unknown route, wrong method, unreadable body) in our body."""
    message = exc.detail if isinstance(exc.detail, str) else "refused"
    error = BadRequest(message, status=exc.status_code, code=_HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}"))
    error.headers = lambda: dict(exc.headers) if exc.headers else None  # type: ignore[method-assign]
    return error


class CatchAll:
    """Unexpected exceptions of an HTTP request become our 500 body (``classify``) here, just
    outside the routes, and are not raised further. Starlette's ``ServerErrorMiddleware`` would
    answer too, but then re-raise, and uvicorn closes (resets) a connection whose app raised
    after it had answered: the client lost its answer and its keep-alive connection. An
    exception after the response started is raised on as before (nothing else can be sent)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: dict[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:
            if started:
                raise
            await error_response(classify(exc))(scope, receive, send)


def install_handlers(app: FastAPI) -> None:
    async def _any(_: Request, exc: Exception) -> JSONResponse:
        return error_response(classify(exc))

    async def _http(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        return error_response(http_error(exc))

    async def _validation(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return error_response(validation_error(exc))

    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(HTTPException, _http)
    for kind in (EdgeError, PhaseError, ActorError, HistoryError, redis_errors.RedisError, ray_errors.RayError,
                 TimeoutError):
        app.add_exception_handler(kind, _any)
    # Anything else: ``CatchAll`` (the innermost middleware) answers and logs it (``classify``);
    # Starlette's ServerErrorMiddleware only sees what a middleware outside it raises.
    app.add_exception_handler(Exception, _any)
    app.add_middleware(CatchAll)
