"""``DeviceConnection``: one device (phone) or hub WebSocket on ``/v1/devices``.

Lifecycle: ACCEPTED -> (hello within ``handshake_timeout_s``) -> STREAMING -> CLOSED.
Every frame is decoded and validated here; a bad frame gets an error frame (or, when
fatal, a close with a reason) and never disturbs other connections or other devices of
the same hub. Valid samples go to the session's pump; rejected ones are told to the
device (``error`` with ``seqs``) and passed on as consumed seqs so accounting is exact.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from typing import TYPE_CHECKING, Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from api.metrics import CONNECTIONS, FRAMES_IN, SAMPLES_IN
from api.outbox import Outbox
from api.pump import DeviceLink, SessionPump
from devices.protocol import (
    Bye,
    CloseCode,
    ErrorCode,
    Hello,
    ProtocolError,
    Samples,
    decode_device_frame,
    encode,
    error_frame,
    sample_seq,
    validate_sample,
)

if TYPE_CHECKING:
    from api.app import Edge

log = logging.getLogger(__name__)


class LinkState(enum.Enum):
    ACCEPTED = "accepted"
    STREAMING = "streaming"
    CLOSED = "closed"


class DeviceConnection:
    def __init__(self, ws: WebSocket, edge: Edge) -> None:
        self.ws = ws
        self.edge = edge
        self.settings = edge.settings
        self.outbox = Outbox(ws, max_frames=self.settings.send_queue_frames)
        self.links: dict[str, tuple[DeviceLink, SessionPump]] = {}
        self.state = LinkState.ACCEPTED

    async def serve(self) -> None:
        await self.ws.accept()
        writer = asyncio.create_task(self.outbox.run())
        CONNECTIONS.labels("device").inc()
        try:
            await self._receive_loop()
        except WebSocketDisconnect:
            pass
        finally:
            CONNECTIONS.labels("device").dec()
            self.state = LinkState.CLOSED
            for link, pump in self.links.values():
                pump.detach(link)
            if not self.outbox.closed:
                self.outbox.closed = True
                writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)

    async def _receive_loop(self) -> None:
        while not self.outbox.closed:
            timeout = self.settings.handshake_timeout_s if self.state is LinkState.ACCEPTED else None
            try:
                message = await asyncio.wait_for(self.ws.receive(), timeout)
            except TimeoutError:
                self.outbox.close(CloseCode.TIMEOUT, "no hello within the handshake timeout")
                return
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("bytes")
            if data is None:
                data = message.get("text") or ""
            await self._handle(data)

    async def _handle(self, data: bytes | str) -> None:
        try:
            frame = decode_device_frame(data)
            FRAMES_IN.labels(type(frame).__name__.lower()).inc()
            if isinstance(frame, Samples):
                self._samples(frame)
            elif isinstance(frame, Hello):
                await self._hello(frame)
            elif isinstance(frame, Bye):
                self._bye(frame)
        except ProtocolError as exc:
            self._protocol_error(exc)

    def _protocol_error(self, exc: ProtocolError) -> None:
        self.outbox.send(encode(exc.frame()))
        if exc.fatal:
            self.outbox.close(CloseCode.PROTOCOL, exc.message[:120])

    async def _hello(self, hello: Hello) -> None:
        known = {s: await self.edge.directory.exists(s) for s in {b.session for b in hello.devices}}
        for binding in hello.devices:
            if not known[binding.session]:
                self.outbox.send(encode(error_frame(
                    ErrorCode.UNKNOWN_SESSION, f"no session {binding.session!r}", fatal=len(hello.devices) == 1,
                    device=binding.device,
                )))
                continue
            previous = self.links.get(binding.device)
            if previous is not None:
                previous[1].detach(previous[0])
            pump = self.edge.pump(binding.session)
            link = DeviceLink(binding.device, binding.participant, self.outbox)
            self.links[binding.device] = (link, pump)
            pump.attach(link)
        if not self.links:
            self.outbox.close(CloseCode.UNKNOWN_SESSION, "no known session in hello")
            return
        self.state = LinkState.STREAMING

    def _samples(self, frame: Samples) -> None:
        if self.state is not LinkState.STREAMING:
            raise ProtocolError(ErrorCode.NOT_HELLO, "send hello before samples", fatal=True)
        entry = self.links.get(frame.device)
        if entry is None:
            raise ProtocolError(ErrorCode.UNKNOWN_DEVICE, f"device {frame.device!r} was not in hello")
        link, pump = entry
        valid, rejected = self._validate(frame)
        if len(valid) + link.sent - link.acked > self.settings.max_unacked_per_device or not pump.add(
            link, valid, [seq for seq, _ in rejected]
        ):
            self.outbox.send(encode({
                "t": "throttle", "device": frame.device, "retry_after_ms": 1000,
                "reason": "too many unacknowledged samples; resend after the pause",
            }))
            SAMPLES_IN.labels("throttled").inc(len(frame.rows))
            return
        SAMPLES_IN.labels("accepted").inc(len(valid))
        if rejected:
            SAMPLES_IN.labels("rejected").inc(len(rejected))
        self._report_rejections(frame.device, rejected)

    def _validate(self, frame: Samples) -> tuple[list[list[Any]], list[tuple[int, ErrorCode]]]:
        now = time.time()
        valid: list[list[Any]] = []
        rejected: list[tuple[int, ErrorCode]] = []
        malformed = 0
        for row in frame.rows:
            reason = validate_sample(row, now)
            if reason is None:
                valid.append(row)
                continue
            seq = sample_seq(row)
            if seq is None:
                malformed += 1
            else:
                rejected.append((seq, reason))
        if malformed:
            self.outbox.send(encode(error_frame(
                ErrorCode.BAD_SAMPLE, f"{malformed} sample(s) without a usable seq ignored", device=frame.device,
            )))
        return valid, rejected

    def _report_rejections(self, device: str, rejected: list[tuple[int, ErrorCode]]) -> None:
        by_reason: dict[ErrorCode, list[int]] = {}
        for seq, reason in rejected:
            by_reason.setdefault(reason, []).append(seq)
        for reason, seqs in by_reason.items():
            self.outbox.send(encode(error_frame(
                reason, f"{len(seqs)} sample(s) rejected: {reason.value}", device=device, seqs=seqs,
            )))

    def _bye(self, bye: Bye) -> None:
        devices = [bye.device] if bye.device else list(self.links)
        for device in devices:
            entry = self.links.pop(device, None)
            if entry is not None:
                entry[1].detach(entry[0])
        if not self.links:
            self.outbox.close(CloseCode.NORMAL, "bye")
