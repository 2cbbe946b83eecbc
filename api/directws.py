"""``DirectProtocol``: uvicorn's WebSocket protocol with a direct path for the edge's hot frames.

Under plain ASGI every frame costs the edge two hops through the event loop: a received
message is queued for the app (and reading is paused until the app takes it), and a sent
one goes app -> Starlette -> uvicorn's ``send`` coroutine -> the websockets serializer.
At 1 Hz per device those hops, not our own work, were most of the edge's CPU
(``docs/benchmarks.md``).

This subclass of uvicorn's sans-I/O protocol keeps everything that happens once per
connection as it is — the HTTP upgrade, routing, middleware, ``accept``, the close
handshake, keepalive pings, size limits, UTF-8 checks, fragmentation (the websockets
parser still reads every frame) — and offers the app a :class:`DirectChannel` through the
ASGI scope (``scope["extensions"]["pulseline.direct"]``):

* ``attach(on_message, on_lost)``: from then on each complete message is handed to
  ``on_message`` synchronously, from ``data_received``, instead of through the receive
  queue, and reading is never paused for it (the app applies its own backpressure with
  ``pause_reading``). Messages queued before ``attach`` are handed over first, in order.
* ``write(frame)``: a binary (or text) frame goes straight to the transport. The server
  never masks and no extension is negotiated (permessage-deflate is off: ``api.limits``),
  so the frame is a 2-10 byte header plus the payload.
* ``can_write`` / ``wait_writable``: the transport's flow control, for bounded queues.
* ``close(code, reason)``: starts the close handshake, exactly as ``websocket.close`` would.

Used by ``uvicorn_options`` (``PULSELINE_DIRECT_WS=false`` turns it off: everything then
goes through plain ASGI, which the app still supports).
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import Opcode

log = logging.getLogger(__name__)

EXTENSION = "pulseline.direct"
_LOST = object()


def frame_header(opcode: int, size: int) -> bytes:
    """An unmasked, final, server frame's header for a ``size``-byte payload (RFC 6455 5.2)."""
    first = 0x80 | opcode
    if size < 126:
        return bytes((first, size))
    if size < 1 << 16:
        return struct.pack("!BBH", first, 126, size)
    return struct.pack("!BBQ", first, 127, size)


class DirectProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol plus :class:`DirectChannel` (see the module doc)."""

    _on_message: Callable[[bytes | str], None] | None = None
    _on_lost: Callable[[], None] | None = None

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        # only a plain accepted connection: an extension would change the frame format
        if self.response.status_code == 101 and not self.conn.extensions and hasattr(self, "scope"):
            extensions: dict[str, Any] = self.scope["extensions"]  # type: ignore[assignment]
            extensions[EXTENSION] = DirectChannel(self)

    def send_receive_event_to_app(self) -> None:
        on_message = self._on_message
        if on_message is None:
            super().send_receive_event_to_app()
            return
        data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
        self.frames = []
        if self.close_sent:
            return  # past our close: discard, as the ASGI path does
        message: bytes | str = data
        if self.curr_msg_data_type == "text":
            try:
                message = data.decode()
            except UnicodeDecodeError:
                self.conn.send_close(1007, "invalid UTF-8 in a text message")
                self.handle_parser_exception()
                return
        try:
            on_message(message)
        except Exception:  # the app's bug must not take the transport down with it
            log.exception("direct WebSocket handler failed on a %d-byte message", len(data))

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        on_lost, self._on_lost = self._on_lost, None
        self._on_message = None
        if on_lost is not None:
            on_lost()

    def handle_parser_exception(self) -> None:
        super().handle_parser_exception()
        # the parent only queues the disconnect for an ASGI reader; a direct app must hear it too
        on_lost, self._on_lost = self._on_lost, None
        self._on_message = None
        if on_lost is not None:
            on_lost()


class DirectChannel:
    """What an app may do with a :class:`DirectProtocol` connection (see the module doc)."""

    __slots__ = ("_p",)

    def __init__(self, protocol: DirectProtocol) -> None:
        self._p = protocol

    def attach(self, on_message: Callable[[bytes | str], None], on_lost: Callable[[], None]) -> None:
        p = self._p
        lost = p.disconnected
        while not p.queue.empty():  # what arrived between the upgrade and now, in order
            event = p.queue.get_nowait()
            if event["type"] == "websocket.receive":
                data = event.get("bytes")
                on_message(data if data is not None else event.get("text") or "")
            elif event["type"] == "websocket.disconnect":
                lost = True
        if lost:
            on_lost()
            return
        p._on_message, p._on_lost = on_message, on_lost
        if p.read_paused:
            p.read_paused = False
            p.transport.resume_reading()

    @property
    def open(self) -> bool:
        p = self._p
        return not (p.close_sent or p.disconnected or p.transport.is_closing())

    @property
    def can_write(self) -> bool:
        return self._p.writable.is_set() and self.open

    async def wait_writable(self) -> None:
        await self._p.writable.wait()

    def write(self, frame: bytes | str) -> bool:
        """Send one message now (the transport buffers it); False if the connection is closing."""
        if not self.open:
            return False
        if isinstance(frame, str):
            payload = frame.encode()
            self._p.transport.write(frame_header(Opcode.TEXT, len(payload)) + payload)
        else:
            self._p.transport.write(frame_header(Opcode.BINARY, len(frame)) + frame)
        return True

    def pause_reading(self) -> None:
        if self.open:
            self._p.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.open:
            self._p.transport.resume_reading()

    def close(self, code: int, reason: str) -> None:
        """Start the close handshake (the peer's echo, or ``close_timeout``, ends it)."""
        p = self._p
        if p.close_sent or p.disconnected or p.transport.is_closing():
            return
        p.conn.send_close(code, reason)
        p.transport.write(b"".join(p.conn.data_to_send()))
        p.close_sent = True
        if p.read_paused:
            p.read_paused = False
            p.transport.resume_reading()
        p.close_timer = p.loop.call_later(p.close_timeout, p.transport.close)


def channel_of(ws: Any, enabled: bool = True) -> DirectChannel | None:
    """The direct channel of a Starlette ``WebSocket``, if its server offers one (and ``enabled``)."""
    if not enabled:
        return None
    channel = ws.scope.get("extensions", {}).get(EXTENSION)
    return channel if isinstance(channel, DirectChannel) else None
