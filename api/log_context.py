"""What every log line of the edge says it belongs to: the request (or WebSocket connection)
and the class, as context variables (``launch/logs.py`` puts them on each line).

``RequestIds`` (pure ASGI middleware) gives each HTTP request and WebSocket connection an id
(the client's ``X-Request-ID`` when it is a short plain token, else a new one), sends it
back in ``X-Request-ID``, and notes the class of ``/v1/sessions/{id}/...`` paths. A device
connection names its class in its ``hello`` (``api.ingest`` sets it then); a pump's loop
runs as its class, with no request (``api.pump``).
"""

from __future__ import annotations

import contextvars
import re
import uuid
from typing import Any

REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
SESSION: contextvars.ContextVar[str | None] = contextvars.ContextVar("session", default=None)

_CLIENT_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_SESSION_PATH = re.compile(r"^/v1/sessions/([A-Za-z0-9_.:-]{1,128})(?:/|$)")


def new_id() -> str:
    return uuid.uuid4().hex[:16]


def request_id_of(headers: list[tuple[bytes, bytes]]) -> str:
    for name, value in headers:
        if name == b"x-request-id":
            text = value.decode("latin-1")
            return text if _CLIENT_ID.match(text) else new_id()
    return new_id()


class RequestIds:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        rid = request_id_of(scope.get("headers") or [])
        REQUEST_ID.set(rid)
        match = _SESSION_PATH.match(scope.get("path", ""))
        SESSION.set(match.group(1) if match else None)
        if scope["type"] == "websocket":
            await self.app(scope, receive, send)
            return

        async def send_with_id(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", rid.encode())]}
            await send(message)

        await self.app(scope, receive, send_with_id)
