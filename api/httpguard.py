"""``HttpGuard``: what every HTTP request passes before a route sees it (WebSockets pass by).

* **Body size.** A body over ``max_body_bytes`` is refused with 413, from its
  ``Content-Length`` or while it streams in (chunked), before it is all in memory.
* **Strict JSON.** A JSON body (``application/json``, ``*+json`` or no content type) must
  be standard JSON: ``NaN`` / ``Infinity`` and lone surrogates (``"\\ud800"``) are refused
  with 422 here, so no route, validator, Redis write or error body ever meets them.
  Other malformed JSON is refused with 422 too, as FastAPI would (nesting deep enough to
  hit the recursion limit included).
* **A deadline.** A request that has not started its response within ``deadline_s`` is
  cancelled and answered 503 with ``Retry-After`` (every Redis and Ray call on a request
  path also has its own, shorter time-out; this bounds the sum).

Errors are ``api.errors`` errors, answered through ``api.errors.error_response``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import BadRequest, EdgeError, Unavailable, error_response

log = logging.getLogger(__name__)


class _Refused(Exception):
    def __init__(self, error: EdgeError) -> None:
        self.error = error


def _is_json(scope: Scope) -> bool:
    for name, value in scope.get("headers", ()):
        if name == b"content-type":
            kind = value.split(b";", 1)[0].strip().lower()
            return kind == b"application/json" or (kind.startswith(b"application/") and kind.endswith(b"+json"))
    return True  # FastAPI parses a body without a content type as JSON


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _refuse_constant(name: str) -> Any:
    raise _Refused(BadRequest(f"{name} is not JSON: send numbers as finite values", status=422, code="bad_json"))


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 parses to inf without any NaN/Infinity literal
        raise _Refused(BadRequest(f"number {text[:40]} is out of range", status=422, code="bad_json"))
    return value


def _check_text(values: list[Any]) -> None:
    """Every string (keys included) in the parsed body must be valid Unicode."""
    while values:
        value = values.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise _Refused(BadRequest("strings must be valid Unicode (a lone surrogate such as \\ud800 is not)",
                                          status=422, code="bad_json")) from None
        elif isinstance(value, dict):
            values.extend(value.keys())
            values.extend(value.values())
        elif isinstance(value, list):
            values.extend(value)


def check_json_body(body: bytes) -> None:
    """Raise ``_Refused`` unless ``body`` is standard JSON with valid Unicode strings."""
    try:
        parsed = json.loads(body, parse_constant=_refuse_constant, parse_float=_finite_float)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        if isinstance(exc, json.JSONDecodeError):
            message = f"body is not valid JSON: {exc.msg} (character {exc.pos})"
        else:
            message = "body is not valid JSON (UTF-8, nesting)"
        raise _Refused(BadRequest(message, status=422, code="bad_json")) from None
    _check_text([parsed])


class HttpGuard:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int, deadline_s: float) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.deadline_s = deadline_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            body = await self._read_body(scope, receive)
        except _Refused as refused:
            await error_response(refused.error)(scope, receive, send)
            return
        await self._serve(scope, _replay(body, receive), send)

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        length = _content_length(scope)
        if length is not None and length > self.max_body_bytes:
            raise _Refused(self._too_large())
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break  # the client went away; the route will see the disconnect
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise _Refused(self._too_large())
            chunks.append(chunk)
            more = bool(message.get("more_body", False))
        body = b"".join(chunks)
        if body and _is_json(scope):
            check_json_body(body)
        return body

    def _too_large(self) -> BadRequest:
        return BadRequest(f"request body over {self.max_body_bytes} bytes", status=413, code="too_large")

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def send_tracked(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            await asyncio.wait_for(self.app(scope, receive, send_tracked), self.deadline_s)
        except TimeoutError:
            log.warning("%s %s: no response within %.1f s", scope.get("method"), scope.get("path"), self.deadline_s)
            if not started:
                await error_response(Unavailable("the request took too long; try again shortly"))(scope, receive, send)


def _replay(body: bytes, receive: Receive) -> Receive:
    delivered = False

    async def replay() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
