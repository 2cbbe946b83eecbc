"""How the edge's pumps reach their sessions on the data path: a ``TickChannel``.

``StreamTicks`` (the default) sends each tick over a direct connection to the process that
owns the session (``actors/stream.py``): the endpoint comes from the actor's ``endpoint()``
control call through Ray, once, and is cached; ``StreamPool`` keeps one connection per
actor process (keyed by host, port and token) shared by every session it hosts, and
matches results to requests by id. ``RayTicks`` (``PULSELINE_SESSION_TRANSPORT=ray``)
sends the same ``actors.wire`` bytes as one Ray call per tick, the way every tick went
before the stream.

On any failure (connection lost or refused, a timeout, ``error stale`` from a fenced-off
instance, ``error unknown_session`` from a process that no longer hosts the session) the
channel forgets the endpoint and the Ray handle and raises ``SessionStreamError``; the pump
asks every device to resume from its durable seq (``welcome``), and its next tick
re-resolves the actor through Ray -- which restarts it if it died -- and connects to the
new endpoint. Nothing is acknowledged that a checkpoint does not hold, so what was in
flight is resent by the devices.

Bounded: at most ``max_inflight`` requests wait per connection; each waits at most
``timeout_s``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
from collections.abc import Callable
from typing import Protocol, cast

from actors.wire import (
    MAX_FRAME_BYTES,
    Endpoint,
    FrameBuffer,
    Hello,
    StreamError,
    StreamErrorCode,
    TickRequest,
    TickResult,
    WireError,
    decode_message,
    encode_frame,
    encode_message,
)
from cluster.directory import SessionDirectory

log = logging.getLogger(__name__)


class SessionStreamError(Exception):
    """A tick that did not get a result; ``code`` says why (None: the connection failed)."""

    def __init__(self, message: str, code: StreamErrorCode | None = None) -> None:
        super().__init__(message)
        self.code = code


class TickChannel(Protocol):
    async def tick(self, request: TickRequest) -> TickResult: ...

    def forget(self, session_id: str) -> None: ...

    async def close(self) -> None: ...


# -- the Ray path ---------------------------------------------------------------------------
class RayTicks:
    """One Ray actor call per tick (``SessionActor.tick_wire``)."""

    def __init__(self, directory: SessionDirectory) -> None:
        self.directory = directory

    async def tick(self, request: TickRequest) -> TickResult:
        handle = await self.directory.handle(request.session)
        result = decode_message(await handle.tick_wire.remote(data=encode_message(request)))
        if not isinstance(result, TickResult):
            raise SessionStreamError(f"tick_wire answered {type(result).__name__}")
        return result

    def forget(self, session_id: str) -> None:
        self.directory.forget(session_id)

    async def close(self) -> None:
        return None


# -- the stream path ------------------------------------------------------------------------
class StreamConnection(asyncio.Protocol):
    """One connection to one actor process's stream server."""

    def __init__(self, endpoint: Endpoint, *, timeout_s: float, max_inflight: int,
                 max_frame_bytes: int = MAX_FRAME_BYTES,
                 on_lost: Callable[[StreamConnection], None] | None = None) -> None:
        self.endpoint = endpoint
        self.on_lost = on_lost
        self.timeout_s = timeout_s
        self.max_inflight = max_inflight
        self.frames = FrameBuffer(max_frame_bytes)
        self.transport: asyncio.Transport | None = None
        self.waiting: dict[int, asyncio.Future[TickResult]] = {}
        self.closed = False
        self.requests = 0
        self._ids = itertools.count(1)

    async def open(self) -> StreamConnection:
        loop = asyncio.get_running_loop()
        await asyncio.wait_for(
            loop.create_connection(lambda: self, self.endpoint.host, self.endpoint.port), self.timeout_s)
        assert self.transport is not None
        self.transport.write(encode_frame(Hello(self.endpoint.token)))
        return self

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail_all(SessionStreamError(f"stream to {self._where()} lost: {exc or 'closed by the actor'}"))
        if self.on_lost is not None:
            self.on_lost(self)

    def data_received(self, data: bytes) -> None:
        try:
            for body in self.frames.feed(data):
                self._on_message(decode_message(body))
        except WireError as exc:
            log.warning("session stream %s: %s; closing", self._where(), exc)
            self.close()

    def _on_message(self, message: object) -> None:
        if isinstance(message, TickResult):
            future = self.waiting.get(message.id)
            if future is not None and not future.done():
                future.set_result(message)
        elif isinstance(message, StreamError):
            error = SessionStreamError(f"{message.code.value}: {message.message}", message.code)
            future = self.waiting.get(message.id)
            if future is None:  # not about one request (e.g. refused hello): the connection is done
                self._fail_all(error)
                self.close()
            elif not future.done():
                future.set_exception(error)
        else:
            raise WireError(f"unexpected {type(message).__name__} from a session")

    # requests
    async def tick(self, request: TickRequest) -> TickResult:
        if self.closed or self.transport is None or self.transport.is_closing():
            raise SessionStreamError(f"stream to {self._where()} is closed")
        if len(self.waiting) >= self.max_inflight:
            raise SessionStreamError(f"stream to {self._where()}: {len(self.waiting)} ticks in flight")
        rid = next(self._ids)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[TickResult] = loop.create_future()
        self.waiting[rid] = future
        timer = loop.call_later(self.timeout_s, self._expire, rid)
        try:
            self.transport.write(encode_frame(dataclasses.replace(request, id=rid)))
            self.requests += 1
            return await future
        finally:
            timer.cancel()
            self.waiting.pop(rid, None)

    def _expire(self, rid: int) -> None:
        future = self.waiting.get(rid)
        if future is not None and not future.done():
            # a result that never came: the peer may be gone without a FIN; start afresh
            future.set_exception(SessionStreamError(f"no result from {self._where()} in {self.timeout_s:g} s"))
            self.close()

    def _fail_all(self, error: SessionStreamError) -> None:
        self.closed = True
        for future in self.waiting.values():
            if not future.done():
                future.set_exception(error)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _where(self) -> str:
        return f"{self.endpoint.host}:{self.endpoint.port} (pid {self.endpoint.pid})"


class StreamPool:
    """One open connection per actor process endpoint; a lost one is forgotten at once (and
    ``on_lost`` told), so the pool holds only live connections."""

    def __init__(self, *, timeout_s: float, max_inflight: int,
                 on_lost: Callable[[Endpoint], None] | None = None) -> None:
        self.timeout_s = timeout_s
        self.max_inflight = max_inflight
        self.on_lost = on_lost
        self.connections: dict[tuple[str, int, str], StreamConnection] = {}
        self.opened = 0
        self._opening: dict[tuple[str, int, str], asyncio.Future[StreamConnection]] = {}

    async def connection(self, endpoint: Endpoint) -> StreamConnection:
        key = endpoint.address
        existing = self.connections.get(key)
        if existing is not None and not existing.closed:
            return existing
        opening = self._opening.get(key)
        if opening is not None:  # another session of the same process is connecting right now
            return await asyncio.shield(opening)
        future: asyncio.Future[StreamConnection] = asyncio.get_running_loop().create_future()
        self._opening[key] = future
        try:
            connection = await StreamConnection(endpoint, timeout_s=self.timeout_s, max_inflight=self.max_inflight,
                                                on_lost=self._lost).open()
        except (OSError, TimeoutError) as exc:
            error = SessionStreamError(f"cannot connect to {endpoint.host}:{endpoint.port}: {exc!r}")
            future.set_exception(error)
            future.exception()  # retrieved: waiters get their own copy through shield
            raise error from exc
        finally:
            self._opening.pop(key, None)
        self.opened += 1
        self.connections[key] = connection
        future.set_result(connection)
        return connection

    def _lost(self, connection: StreamConnection) -> None:
        key = connection.endpoint.address
        if self.connections.get(key) is connection:
            del self.connections[key]
        if self.on_lost is not None:
            self.on_lost(connection.endpoint)

    def drop(self, endpoint: Endpoint) -> None:
        connection = self.connections.pop(endpoint.address, None)
        if connection is not None:
            connection.close()

    async def close(self) -> None:
        for connection in self.connections.values():
            connection.close()
        self.connections.clear()


class StreamTicks:
    """Ticks over the direct stream; endpoints resolved through Ray and cached per session."""

    def __init__(self, directory: SessionDirectory, *, timeout_s: float = 5.0, max_inflight: int = 4096) -> None:
        self.directory = directory
        self.pool = StreamPool(timeout_s=timeout_s, max_inflight=max_inflight, on_lost=self._endpoint_lost)
        self.endpoints: dict[str, Endpoint] = {}  # only endpoints of live connections (or not yet connected)
        self.resolved = 0  # endpoint() calls made through Ray
        self.failures = 0

    async def endpoint(self, session_id: str) -> Endpoint:
        endpoint = self.endpoints.get(session_id)
        if endpoint is None:
            handle = await self.directory.handle(session_id)
            endpoint = await handle.endpoint.remote()
            assert isinstance(endpoint, Endpoint)
            self.endpoints[session_id] = endpoint
            self.resolved += 1
        return endpoint

    async def tick(self, request: TickRequest) -> TickResult:
        endpoint = await self.endpoint(request.session)
        try:
            connection = await self.pool.connection(endpoint)
            result = await connection.tick(request)
        except SessionStreamError as exc:
            self.failures += 1
            if exc.code not in (StreamErrorCode.BAD_REQUEST, StreamErrorCode.UNKNOWN_SESSION):
                self.pool.drop(endpoint)  # (a class a host released or lost: its other classes go on)
            raise
        if result.epoch != endpoint.epoch:  # another instance answered on a reused address
            self.pool.drop(endpoint)
            raise SessionStreamError(f"session {request.session}: epoch {result.epoch}, expected {endpoint.epoch}",
                                     StreamErrorCode.STALE)
        return result

    def forget(self, session_id: str) -> None:
        self.endpoints.pop(session_id, None)
        self.directory.forget(session_id)

    def _endpoint_lost(self, endpoint: Endpoint) -> None:
        """A process went away: forget its sessions' endpoints (ended and passivated
        classes do not leave entries behind)."""
        for session_id, known in list(self.endpoints.items()):
            if known.address == endpoint.address:
                del self.endpoints[session_id]

    async def close(self) -> None:
        await self.pool.close()


def tick_channel(transport: str, directory: SessionDirectory, *, timeout_s: float) -> TickChannel:
    """``"stream"`` (default) or ``"ray"``: how this edge's pumps send their ticks."""
    if transport == "ray":
        return RayTicks(directory)
    if transport == "stream":
        return StreamTicks(directory, timeout_s=timeout_s)
    raise ValueError(f"unknown session transport {transport!r} (stream or ray)")
