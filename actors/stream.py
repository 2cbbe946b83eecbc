"""``StreamServer``: the direct data path into the sessions of one actor process.

Plain asyncio, no Ray: the session actor starts one on its node's address (port 0, chosen
by the OS), registers a tick handler per session it hosts, and publishes the endpoint
(host, port, token, epoch) through its ``endpoint()`` control call. Edges connect, send
``hello`` with the token, then ``tick`` frames (``actors.wire``); each tick is applied
synchronously as its frame arrives (no task per frame) and answered on the same
connection with a ``result`` or an ``error``. Several sessions may share one server and an
edge's connection to it (requests carry their session id).

Guarantees
* Only whoever asked the actor through Ray (and so got the token) can write.
* A handler that raises ``StaleInstance`` answers ``error stale``; the owner then closes the
  server (``close``), dropping every connection, so a fenced-off instance serves nothing.
* Bounded: a frame is at most ``max_frame_bytes``; while a connection's transport buffer is
  full (the edge does not read its results) reading from it pauses; at most
  ``max_connections`` connections.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
from collections.abc import Callable
from typing import Any, cast

from actors.errors import StaleInstance
from actors.wire import (
    MAX_FRAME_BYTES,
    FrameBuffer,
    Hello,
    StreamError,
    StreamErrorCode,
    TickRequest,
    TickResult,
    WireError,
    decode_message,
    encode_frame,
)

log = logging.getLogger(__name__)

TickHandler = Callable[[TickRequest], TickResult]


class StreamServer:
    def __init__(self, *, host: str, max_frame_bytes: int = MAX_FRAME_BYTES, max_connections: int = 256) -> None:
        self.host = host
        self.token = secrets.token_urlsafe(24)
        self.max_frame_bytes = max_frame_bytes
        self.max_connections = max_connections
        self.handlers: dict[str, TickHandler] = {}
        self.connections: set[_ServerConnection] = set()
        self.ticks = 0
        self.port = 0
        self.closed = False
        self._server: asyncio.Server | None = None

    def register(self, session_id: str, handler: TickHandler) -> None:
        self.handlers[session_id] = handler

    def unregister(self, session_id: str) -> None:
        self.handlers.pop(session_id, None)

    async def start(self) -> int:
        """Listen on ``host`` (port chosen by the OS); returns the port."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _ServerConnection(self), self.host, 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    def close(self) -> None:
        """Stop listening and drop every connection (idempotent)."""
        self.closed = True
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            connection.abort()


class _ServerConnection(asyncio.Protocol):
    def __init__(self, server: StreamServer) -> None:
        self.server = server
        self.frames = FrameBuffer(server.max_frame_bytes)
        self.transport: asyncio.Transport | None = None
        self.authenticated = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it
        if self.server.closed or len(self.server.connections) >= self.server.max_connections:
            self.transport.abort()
            return
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)

    def pause_writing(self) -> None:  # the edge does not read its results: stop reading its ticks
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        try:
            for body in self.frames.feed(data):
                if self.transport is None or self.transport.is_closing():
                    return
                self._handle(decode_message(body))
        except WireError as exc:
            log.warning("session stream: closing a connection: %s", exc)
            self.abort()

    def _handle(self, message: Any) -> None:
        if not self.authenticated:
            if isinstance(message, Hello) and hmac.compare_digest(message.token, self.server.token):
                self.authenticated = True
                return
            self._send(StreamError("", StreamErrorCode.UNAUTHORISED, "send hello with the endpoint's token first"))
            self._close_after_write()
            return
        if not isinstance(message, TickRequest):
            raise WireError(f"unexpected {type(message).__name__} from an edge")
        self._send(self._tick(message))

    def _tick(self, request: TickRequest) -> TickResult | StreamError:
        handler = self.server.handlers.get(request.session)
        if handler is None:
            return StreamError(request.session, StreamErrorCode.UNKNOWN_SESSION,
                               "this process does not host the session", request.id)
        try:
            result = handler(request)
        except StaleInstance as exc:
            return StreamError(request.session, StreamErrorCode.STALE, str(exc), request.id)
        except Exception as exc:  # one bad tick never takes the stream down
            log.exception("session %s: tick over the stream failed", request.session)
            return StreamError(request.session, StreamErrorCode.BAD_REQUEST, repr(exc)[:200], request.id)
        self.server.ticks += 1
        return result

    def _send(self, message: TickResult | StreamError) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(encode_frame(message))

    def _close_after_write(self) -> None:
        if self.transport is not None:
            self.transport.close()
