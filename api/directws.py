"""``DirectProtocol``: uvicorn's WebSocket protocol with a direct path for the edge's hot frames.

Under plain ASGI every frame costs the edge two hops through the event loop: a received
message is queued for the app (and reading is paused until the app takes it), and a sent
one goes app -> Starlette -> uvicorn's ``send`` coroutine -> the websockets serializer.
At 1 Hz per device those hops, not our own work, were most of the edge's CPU
(``docs/benchmarks.md``).

This subclass of uvicorn's sans-I/O protocol keeps everything that happens once per
connection as it is — the HTTP upgrade, routing, middleware, ``accept``, the close
handshake, keepalive pings, size limits, UTF-8 checks, fragmentation (the websockets
parser reads every frame until the app attaches) — and offers the app a
:class:`DirectChannel` through the ASGI scope (``scope["extensions"]["pulseline.direct"]``):

* ``attach(on_message, on_lost)``: from then on each complete message is handed to
  ``on_message`` synchronously, from ``data_received``, instead of through the receive
  queue, and reading is never paused for it (the app applies its own backpressure with
  ``pause_reading``). Messages queued before ``attach`` are handed over first, in order.
  An attached connection's frames are read by :class:`FrameReader`, a plain RFC 6455
  parser for a server (client frames masked, no extensions) that does the same checks as
  the websockets parser — reserved bits and opcodes, control frame rules, fragment order,
  ``ws_max_size`` per message, UTF-8 of text — at a fraction of its cost per frame.
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
from websockets.exceptions import ProtocolError as FrameError
from websockets.frames import Close, CloseCode, Opcode
from websockets.protocol import State

from api.metrics import count_close

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - the wheels ship the C speedups

    def apply_mask(data: bytes, mask: bytes) -> bytes:  # type: ignore[misc]
        repeated = (mask * (len(data) // 4 + 1))[: len(data)]
        return (int.from_bytes(data, "big") ^ int.from_bytes(repeated, "big")).to_bytes(len(data), "big")

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


class Violation(Exception):
    """A client broke RFC 6455: close the connection with ``code``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


_DATA = (Opcode.CONT, Opcode.TEXT, Opcode.BINARY)
_CONTROL = (Opcode.CLOSE, Opcode.PING, Opcode.PONG)


class FrameReader:
    """Client frames out of a byte stream: ``feed(data)`` yields ``(opcode, payload)`` for
    each complete message (TEXT as ``str``, BINARY as ``bytes``) and each control frame;
    raises :class:`Violation` for anything RFC 6455 forbids a client to send."""

    __slots__ = ("buf", "max_size", "parts", "part_size", "part_opcode")

    def __init__(self, max_size: int) -> None:
        self.buf = bytearray()
        self.max_size = max_size
        self.parts: list[bytes] = []
        self.part_size = 0
        self.part_opcode = 0

    def feed(self, data: bytes) -> list[tuple[int, bytes | str]]:
        buf = self.buf
        buf += data
        out: list[tuple[int, bytes | str]] = []
        pos, end = 0, len(buf)
        while end - pos >= 2:
            first, second = buf[pos], buf[pos + 1]
            if first & 0x70:
                raise Violation(CloseCode.PROTOCOL_ERROR, "reserved bits must be 0")
            if not second & 0x80:
                raise Violation(CloseCode.PROTOCOL_ERROR, "client frames must be masked")
            fin, opcode, size, head = first & 0x80, first & 0x0F, second & 0x7F, 6
            if size == 126:
                if end - pos < 4:
                    break
                size, head = (buf[pos + 2] << 8) | buf[pos + 3], 8
            elif size == 127:
                if end - pos < 10:
                    break
                size, head = int.from_bytes(buf[pos + 2:pos + 10], "big"), 14
            if opcode >= 8:
                if opcode not in _CONTROL:
                    raise Violation(CloseCode.PROTOCOL_ERROR, f"unknown opcode {opcode}")
                if not fin or size > 125:
                    raise Violation(CloseCode.PROTOCOL_ERROR, "control frames must be final and at most 125 bytes")
            elif opcode not in _DATA:
                raise Violation(CloseCode.PROTOCOL_ERROR, f"unknown opcode {opcode}")
            elif self.part_size + size > self.max_size:
                raise Violation(CloseCode.MESSAGE_TOO_BIG, f"message over {self.max_size} bytes")
            if end - pos < head + size:
                break
            mask = bytes(buf[pos + head - 4:pos + head])
            payload = apply_mask(bytes(buf[pos + head:pos + head + size]), mask) if size else b""
            pos += head + size
            if opcode >= 8:
                out.append((opcode, payload))
                continue
            if opcode == Opcode.CONT:
                if not self.part_opcode:
                    raise Violation(CloseCode.PROTOCOL_ERROR, "continuation without a message to continue")
            elif self.part_opcode:
                raise Violation(CloseCode.PROTOCOL_ERROR, "a new message before the last one's final fragment")
            else:
                self.part_opcode = opcode
            if not fin:
                self.parts.append(payload)
                self.part_size += size
                continue
            if self.parts:
                self.parts.append(payload)
                payload = b"".join(self.parts)
                self.parts, self.part_size = [], 0
            kind, self.part_opcode = self.part_opcode, 0
            if kind == Opcode.TEXT:
                try:
                    out.append((kind, payload.decode()))
                except UnicodeDecodeError:
                    raise Violation(CloseCode.INVALID_DATA, "invalid UTF-8 in a text message") from None
            else:
                out.append((kind, payload))
        del buf[:pos]
        return out


class DirectProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol plus :class:`DirectChannel` (see the module doc)."""

    _on_message: Callable[[bytes | str], None] | None = None
    _on_lost: Callable[[], None] | None = None
    _reader: FrameReader | None = None
    _heard = False  # a message came in since the last keepalive check

    def send_keepalive_ping(self) -> None:
        """uvicorn's keepalive ping, skipped when a message came in since the last check: a
        device sending samples every second shows it is alive without one (pings to 6,000
        connections every 20 s were ~5 % of the edge at 3,000 riders). A silent peer (a v1
        board socket) is pinged every interval as before, so a dead peer is closed within
        two intervals plus the ping timeout, instead of one."""
        if self._heard and not self.close_sent:
            self._heard = False
            self.ping_timer = None
            self.schedule_ping()
            return
        super().send_keepalive_ping()

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        if reader is None:
            if not self.close_sent:  # the upgrade request (after a violation: nothing)
                super().data_received(data)
            return
        try:
            frames = reader.feed(data)
        except Violation as exc:
            self._fail(exc.code, exc.reason)
            return
        for opcode, payload in frames:
            if opcode == Opcode.TEXT or opcode == Opcode.BINARY:
                self._heard = True
                on_message = self._on_message
                if self.close_sent:
                    continue  # past our close: discard, as the ASGI path does
                if on_message is None:
                    self._to_asgi(payload)
                    continue
                try:
                    on_message(payload)
                except Exception:  # the app's bug must not take the transport down with it
                    log.exception("direct WebSocket handler failed on a %d-byte message", len(payload))
            elif opcode == Opcode.PING:
                if not self.close_sent:
                    self.transport.write(frame_header(Opcode.PONG, len(payload)) + payload)  # type: ignore[operator]
            elif opcode == Opcode.PONG:
                if self.pending_ping_payload is not None and payload == self.pending_ping_payload:
                    self.last_ping_rtt = self.loop.time() - self.ping_sent_at
                    self.pending_ping_payload = None
                    if self.pong_timer is not None:
                        self.pong_timer.cancel()
                        self.pong_timer = None
                        self.schedule_ping()
            else:
                self._closed_by_peer(payload)  # type: ignore[arg-type]
                return

    def _to_asgi(self, message: bytes | str) -> None:
        """A message for an app that reads through ASGI (not attached, or not yet)."""
        if isinstance(message, str):
            self.queue.put_nowait({"type": "websocket.receive", "text": message})
        else:
            self.queue.put_nowait({"type": "websocket.receive", "bytes": message})
        if not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    def _closed_by_peer(self, payload: bytes) -> None:
        if self.close_sent:  # the echo of our close: the closing handshake is complete
            if self.close_timer is not None:
                self.close_timer.cancel()
                self.close_timer = None
            self.transport.close()
            return
        try:
            close = Close.parse(payload) if payload else None
        except (FrameError, ValueError, UnicodeDecodeError):
            self._fail(CloseCode.PROTOCOL_ERROR, "malformed close frame")
            return
        code = close.code if close is not None else CloseCode.NO_STATUS_RCVD
        self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": close.reason if close else ""})
        if self.conn.state is State.OPEN:  # echo it (an empty close is echoed empty)
            self.send_close_frame(close.code if close is not None else None, close.reason if close is not None else "")
        self.close_sent = True
        self.transport.close()

    def send_close_frame(self, code: int | None, reason: str) -> None:
        """Our close frame (``code`` None: an empty one), built by the websockets state machine."""
        self.conn.send_close(code, reason)
        self.transport.write(b"".join(self.conn.data_to_send()))

    def _fail(self, code: int, reason: str) -> None:
        log.info("closing a WebSocket from %s with %d: %s", self.client, code, reason)
        if not self.close_sent:  # (after our own close, the outbox counted it)
            count_close(code)
        self._reader = None
        self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        if not self.close_sent and not self.transport.is_closing() and self.conn.state is State.OPEN:
            self.send_close_frame(code, reason)
        self.close_sent = True
        self.transport.close()

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        # only a plain accepted connection: an extension would change the frame format
        if self.response.status_code == 101 and not self.conn.extensions and hasattr(self, "scope"):
            extensions: dict[str, Any] = self.scope["extensions"]  # type: ignore[assignment]
            extensions[EXTENSION] = DirectChannel(self)
            # uvicorn hands over exactly the upgrade request (a client may not send frames
            # before our 101), so every byte from here on starts at a frame boundary
            self._reader = FrameReader(self.config.ws_max_size)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
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
        p.send_close_frame(code, reason)
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
