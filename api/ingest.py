"""``DeviceConnection``: one device (phone) or hub WebSocket on ``/v1/devices``.

Lifecycle: ACCEPTED -> (authenticated ``hello`` within ``handshake_timeout_s``) ->
STREAMING -> CLOSED. Every frame is decoded and validated here; a bad frame gets an error
frame (or, when fatal, a close with a reason) and never disturbs other connections or
other devices of the same hub. Valid samples go to the session's pump; rejected ones are
told to the device (``error`` with ``seqs``) and passed on as consumed seqs so accounting
is exact.

Security (``docs/security.md``): the first ``hello`` carries a token (or the upgrade
request an ``Authorization: Bearer`` header); without a valid one the connection closes
with 4401. Each device of a hello must be allowed by the token (``api.scopes``), else it
gets a ``forbidden`` error (and, with no device left, the close 4403). An ``auth`` frame
renews the token in-band; a token that expires without renewal closes the connection
with 4401 and a reason that says to reconnect with a fresh token. Frame rates, devices
per hub, connections per address and per token, and idle time are limited
(``api.limits``): over a rate the client gets ``throttle`` first, and is closed with 4429
only if it keeps sending through the pause.

Two ways in: under the edge's uvicorn protocol (``api.directws``) each message is handled
synchronously as it arrives — a ``samples`` frame of a streaming connection goes from the
socket to the pump with no task switch — and frames that must wait for I/O (``hello``,
``auth``, ``bye``) and everything after them are handled in order by the connection's task.
Without it (plain ASGI) the task reads every message itself. Both run the same handlers.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import logging
import time
from typing import TYPE_CHECKING, Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from api.admission import Waiter
from api.auth import Principal
from api.directws import DirectChannel, channel_of
from api.errors import AuthError, Forbidden, Unauthorised, Unavailable, classify
from api.limits import FrameRate, Verdict, frame_limits
from api.metrics import (
    DEVICE_CONNECTIONS,
    FRAMES_BY_TYPE,
    HUB_CONNECTIONS,
    REJECTED_BY_REASON,
    SAMPLES_THROTTLED,
    THROTTLED_BACKLOG,
    THROTTLED_RATE,
)
from api.log_context import SESSION
from api.outbox import Outbox, close_socket
from api.pump import DeviceLink, SessionPump
from api.scopes import authorise_renewal, authorise_write, bearer_token, chosen_subprotocol
from api.viewer import CompactBoard
from devices.protocol import (
    Auth,
    BoardRequest,
    Bye,
    CloseCode,
    DeviceBinding,
    DeviceFrame,
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
    from api.edge import Edge

log = logging.getLogger(__name__)

MAX_BACKLOG = 16  # frames waiting for the task before reading pauses (direct path)
_FRAME_COUNTERS = {kind: FRAMES_BY_TYPE[kind.__name__.lower()] for kind in (Hello, Samples, Bye, Auth)}


class LinkState(enum.Enum):
    ACCEPTED = "accepted"
    STREAMING = "streaming"
    CLOSED = "closed"


class DeviceConnection:
    def __init__(self, ws: WebSocket, edge: Edge) -> None:
        self.ws = ws
        self.edge = edge
        self.settings = edge.settings
        self.channel = channel_of(ws, self.settings.direct_ws)
        self.outbox = Outbox(ws, max_frames=self.settings.send_queue_frames, channel=self.channel)
        self.links: dict[str, tuple[DeviceLink, SessionPump]] = {}
        self.bindings: dict[str, DeviceBinding] = {}
        self.state = LinkState.ACCEPTED
        self.principal: Principal | None = None
        self.hub: str | None = None
        self.counted_as_hub = False  # the connections gauge's kind (``hub`` once it names one or binds several devices)
        self.peer = ws.client.host if ws.client is not None else "?"
        self.rate = FrameRate.from_settings(self.settings)
        self.limits = frame_limits(self.settings)
        self.opened = time.monotonic()
        self.last_frame = self.opened
        self.expiry_noticed = False
        # direct path: frames waiting for the task (the first one is being handled)
        self.backlog: collections.deque[DeviceFrame] = collections.deque()
        self._ready = asyncio.Event()
        self._lost = False
        self._timer: asyncio.TimerHandle | None = None
        self.board_pump: SessionPump | None = None  # v1.1: the session whose board rides here
        self.waiters: dict[str, Waiter] = {}  # devices waiting for a seat (api.admission)
        self.pending_board: BoardRequest | None = None  # v1.1 board asked while every device waits

    # -- lifecycle --------------------------------------------------------------------------
    async def serve(self) -> None:
        await self.ws.accept(subprotocol=chosen_subprotocol(self.ws))
        if not self.edge.connections.by_address.acquire(self.peer):
            await close_socket(self.ws, CloseCode.THROTTLED, "too many open connections from this address")
            return
        writer = asyncio.create_task(self.outbox.run())
        DEVICE_CONNECTIONS.inc()
        try:
            if self.channel is not None:
                await self._direct_loop(self.channel)
            else:
                await self._receive_loop()
        except WebSocketDisconnect:
            pass
        finally:
            if self._timer is not None:
                self._timer.cancel()
            (HUB_CONNECTIONS if self.counted_as_hub else DEVICE_CONNECTIONS).dec()
            self.edge.connections.by_address.release(self.peer)
            if self.principal is not None:
                self.edge.connections.release_token(self.principal)
            self.state = LinkState.CLOSED
            for waiter in self.waiters.values():
                self.edge.admission.cancel(waiter)
            for link, pump in self.links.values():
                pump.detach(link)
                self.edge.admission.unhold(pump.session_id, link.participant, bye=False)  # (its seat: after the grace)
            if self.board_pump is not None:
                self.board_pump.remove_viewer(self.outbox)
            if not self.outbox.closed or self.channel is not None:  # (direct: all written already)
                self.outbox.abandon()
                writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)

    async def _receive_loop(self) -> None:
        while not self.outbox.closed:
            try:
                message = await asyncio.wait_for(self.ws.receive(), self._next_timer_s())
            except TimeoutError:
                self._on_timer()
                continue
            if message["type"] == "websocket.disconnect":
                return
            self.last_frame = time.monotonic()
            data = message.get("bytes")
            if data is None:
                data = message.get("text") or ""
            await self._handle(data)

    # -- the direct path (api.directws) -------------------------------------------------------
    async def _direct_loop(self, channel: DirectChannel) -> None:
        self.outbox.on_close = self._ready.set
        channel.attach(self._on_message, self._on_lost)
        self._arm_timer()
        while not self.outbox.closed and not self._lost:
            if not self.backlog:
                self._ready.clear()
                await self._ready.wait()
                continue
            try:
                await self._dispatch(self.backlog[0])
            finally:
                self.backlog.popleft()
            if len(self.backlog) == MAX_BACKLOG // 2:
                channel.resume_reading()

    def _on_message(self, data: bytes | str) -> None:
        """One message, straight from the transport: handled now unless it must wait its turn."""
        if self._lost or self.outbox.closed:
            return
        self.last_frame = time.monotonic()
        frame = self._accept(data)
        if frame is None:
            return
        if not self.backlog and isinstance(frame, Samples) and self.state is LinkState.STREAMING:
            try:
                self._samples(frame)
            except ProtocolError as exc:
                self._protocol_error(exc)
            return
        self.backlog.append(frame)
        self._ready.set()
        if len(self.backlog) == MAX_BACKLOG and self.channel is not None:
            self.channel.pause_reading()  # a client that floods us with hellos waits for us

    def _on_lost(self) -> None:
        self._lost = True
        self._ready.set()

    def _rearm_timer(self) -> None:
        """Direct path: re-arm the connection's one timer for its new nearest deadline (the
        ASGI path recomputes its wait on every receive)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._arm_timer()

    def _arm_timer(self) -> None:
        """One timer per connection for the handshake, idle and token deadlines."""
        if self.outbox.closed or self._lost:
            return
        delay = max(0.05, self._next_timer_s())
        self._timer = asyncio.get_running_loop().call_later(delay, self._timer_fired)

    def _timer_fired(self) -> None:
        self._timer = None
        self._on_timer()
        if self.outbox.closed:
            self._ready.set()
        self._arm_timer()

    # -- timers: handshake, idle, token expiry ---------------------------------------------------
    def _deadlines(self) -> tuple[float, float | None, float | None]:
        """(monotonic deadline for silence, wall-clock expiry notice, wall-clock expiry)."""
        if self.state is LinkState.ACCEPTED:
            return self.opened + self.settings.handshake_timeout_s, None, None
        silence = self.last_frame + self.settings.idle_timeout_s
        if self.principal is None:
            return silence, None, None
        expires = self.principal.expires_at + self.settings.auth_leeway_s
        notice = None if self.expiry_noticed else self.principal.expires_at - self.settings.auth_expiry_notice_s
        return silence, notice, expires

    def _next_timer_s(self) -> float:
        silence, notice, expires = self._deadlines()
        wall = time.time()
        waits = [silence - time.monotonic()] + [t - wall for t in (notice, expires) if t is not None]
        return max(0.0, min(waits))

    def _on_timer(self) -> None:
        silence, notice, expires = self._deadlines()
        if expires is not None and time.time() >= expires:
            self.outbox.send(encode(error_frame(ErrorCode.UNAUTHORISED, "token expired", fatal=True, reason="expired")))
            self.outbox.close(CloseCode.UNAUTHORISED, "token expired: reconnect with a fresh token")
        elif time.monotonic() >= silence:
            if self.state is LinkState.ACCEPTED:
                self.outbox.close(CloseCode.TIMEOUT, "no hello within the handshake timeout")
            else:
                self.outbox.close(CloseCode.TIMEOUT, f"idle: no frame for {self.settings.idle_timeout_s:g}s")
        elif notice is not None and time.time() >= notice and self.principal is not None:
            self.expiry_noticed = True
            self.outbox.send(encode(error_frame(
                ErrorCode.TOKEN_EXPIRING, "token expires soon: send an auth frame with a fresh token",
                expires_at=self.principal.expires_at,
            )))

    # -- frames ---------------------------------------------------------------------------------
    async def _handle(self, data: bytes | str) -> None:
        frame = self._accept(data)
        if frame is not None:
            await self._dispatch(frame)

    def _accept(self, data: bytes | str) -> DeviceFrame | None:
        """The decoded frame, or None when it was refused (undecodable, or over a rate)."""
        try:
            frame = decode_device_frame(data, self.limits)
        except ProtocolError as exc:
            if self._admit(None):
                self._protocol_error(exc)
            return None
        if not self._admit(frame.device if isinstance(frame, Samples) else None):
            return None
        _FRAME_COUNTERS[type(frame)].inc()
        return frame

    async def _dispatch(self, frame: DeviceFrame) -> None:
        try:
            if isinstance(frame, Samples):
                self._samples(frame)
            elif isinstance(frame, Hello):
                await self._hello(frame)
            elif isinstance(frame, Auth):
                await self._auth(frame)
            elif isinstance(frame, Bye):
                self._bye(frame)
        except ProtocolError as exc:
            self._protocol_error(exc)
        except Exception as exc:  # Redis or Ray down or slow (hello, auth): 1013, never internals
            self._dependency_failed(exc)

    def _dependency_failed(self, exc: Exception) -> None:
        error = classify(exc)
        if isinstance(error, Unavailable):
            log.warning("closing a connection from %s: %s (%s)", self.peer, error.message, type(exc).__name__)
            self.outbox.close(CloseCode.TRY_AGAIN, error.message)
        else:
            self.outbox.close(CloseCode.INTERNAL, error.message)

    def _admit(self, device: str | None) -> bool:
        admission = self.rate.admit(device, time.monotonic())
        if admission.verdict is Verdict.ACCEPT:
            return True
        if admission.verdict is Verdict.THROTTLE:
            THROTTLED_RATE.inc()
            self._throttle(device, admission.retry_after_s, "over the frame rate limit")
        elif admission.verdict is Verdict.DISCONNECT:
            log.warning("closing a connection from %s that kept sending while throttled", self.peer)
            self.outbox.close(CloseCode.THROTTLED, "kept sending while throttled: back off, then reconnect")
        return False

    def _throttle(self, device: str | None, retry_after_s: float, reason: str) -> None:
        frame: dict[str, Any] = {
            "t": "throttle", "retry_after_ms": int(retry_after_s * 1000),
            "reason": f"{reason}; pause, then resend unacknowledged samples",
        }
        if device is not None:
            frame["device"] = device
        self.outbox.send(encode(frame))

    def _protocol_error(self, exc: ProtocolError) -> None:
        self.outbox.send(encode(exc.frame()))
        if exc.fatal:
            self.outbox.close(CloseCode.PROTOCOL, exc.message)

    def _refuse(self, exc: AuthError, *, fatal: bool, device: str | None = None) -> None:
        code = ErrorCode.UNAUTHORISED if isinstance(exc, Unauthorised) else ErrorCode.FORBIDDEN
        extra = {"device": device} if device is not None else {}
        self.outbox.send(encode(error_frame(code, exc.message, fatal=fatal, reason=exc.reason.value, **extra)))

    def _close_refused(self, exc: AuthError) -> None:
        close = CloseCode.UNAUTHORISED if isinstance(exc, Unauthorised) else CloseCode.FORBIDDEN
        self.outbox.close(close, f"{exc.reason.value}: {exc.message}")

    # -- hello and auth ---------------------------------------------------------------------
    async def _authenticate(self, token: str | None) -> Principal | None:
        try:
            return await self.edge.gate.authenticate(token, where="ws /v1/devices", peer=self.peer)
        except Unauthorised as exc:
            self._refuse(exc, fatal=self.principal is None)
            if self.principal is None:
                self._close_refused(exc)
        except Unavailable as exc:
            self.outbox.send(encode(error_frame(ErrorCode.UNAVAILABLE, exc.message, fatal=self.principal is None)))
            if self.principal is None:
                self.outbox.close(CloseCode.TRY_AGAIN, "token issuer unavailable: retry later")
        return None

    async def _hello(self, hello: Hello) -> None:
        if self.principal is None:
            principal = await self._authenticate(hello.token or bearer_token(self.ws))
            if principal is None:
                return
            if not self.edge.connections.acquire_token(principal):
                log.warning("too many connections for token of %s from %s", principal.describe(), self.peer)
                self.outbox.close(CloseCode.THROTTLED, "too many open connections with this token")
                return
            self.principal = principal
            self.hub = hello.hub
        elif hello.token is not None:
            await self._auth(Auth(hello.token))
        allowed, forbidden = self._authorised(hello)
        unknown = await self._bind(allowed, single=len(hello.devices) == 1)
        if not self.links and self.waiters:  # every device queued for a seat: it waits here
            self.state = LinkState.STREAMING
            self._rearm_timer()
            self.pending_board = hello.board
            return
        if not self.links:
            if forbidden is not None and not unknown:
                self._close_refused(forbidden)
            else:
                self.outbox.close(CloseCode.UNKNOWN_SESSION, "no known session in hello")
            return
        self.state = LinkState.STREAMING
        SESSION.set(",".join(sorted({b.session for d, b in self.bindings.items() if d in self.links})))
        if not self.counted_as_hub and (self.hub is not None or len(self.links) > 1):
            self.counted_as_hub = True  # a named hub, or several devices: a hub from now on
            DEVICE_CONNECTIONS.dec()
            HUB_CONNECTIONS.inc()
        self._rearm_timer()  # the deadlines changed: the token's expiry notice may come before the handshake's
        if hello.board is not None:
            try:
                self._subscribe(hello.board)
            except ProtocolError:
                if not self.waiters:
                    raise
                self.pending_board = hello.board  # its session's devices wait for a seat

    # -- protocol v1.1: the board on this connection ----------------------------------------
    def _subscribe(self, request: BoardRequest) -> None:
        """Push ``request``'s session board on this connection (acks ride in it): a session
        and participant this connection writes for, so the token already allows it."""
        sessions = {b.session for d, b in self.bindings.items() if d in self.links}
        session = request.session or (next(iter(sessions)) if len(sessions) == 1 else None)
        if session is None or session not in sessions:
            raise ProtocolError(ErrorCode.BAD_FIELD, "board: name a session this connection sends samples for")
        riders = {b.participant for d, b in self.bindings.items() if d in self.links and b.session == session}
        participant = request.participant or (next(iter(riders)) if len(riders) == 1 else None)
        if participant is not None and participant not in riders:
            raise ProtocolError(ErrorCode.BAD_FIELD, "board: participant must be one this connection sends samples for")
        if self.board_pump is not None:
            self.board_pump.remove_viewer(self.outbox)
        self.outbox.encode_board = CompactBoard(participant)
        self.outbox.board_interval_s = 1.0 / request.rate_hz
        self.outbox.carries_acks = True
        self.board_pump = self.edge.pump(session)
        self.board_pump.add_viewer(self.outbox)

    def _authorised(self, hello: Hello) -> tuple[list[DeviceBinding], Forbidden | None]:
        assert self.principal is not None
        allowed: list[DeviceBinding] = []
        refused: Forbidden | None = None
        devices = set(self.links)
        for binding in hello.devices:
            try:
                self.edge.gate.check(self.principal, authorise_write, binding, hub=hello.hub,
                                     where="ws /v1/devices hello", peer=self.peer)
            except Forbidden as exc:
                refused = exc
                self._refuse(exc, fatal=len(hello.devices) == 1 and not self.links, device=binding.device)
                continue
            if binding.device not in devices and len(devices) >= self.settings.max_devices_per_hub:
                self.outbox.send(encode(error_frame(
                    ErrorCode.TOO_MANY_DEVICES, f"at most {self.settings.max_devices_per_hub} devices per connection",
                    device=binding.device,
                )))
                continue
            devices.add(binding.device)
            allowed.append(binding)
        return allowed, refused

    async def _bind(self, bindings: list[DeviceBinding], *, single: bool) -> int:
        """Attach each binding whose session exists; returns how many named unknown sessions."""
        known = {s: await self.edge.directory.exists(s) for s in {b.session for b in bindings}}
        unknown = 0
        for binding in bindings:
            if not known[binding.session]:
                unknown += 1
                self.outbox.send(encode(error_frame(
                    ErrorCode.UNKNOWN_SESSION, f"no session {binding.session!r}", fatal=single,
                    device=binding.device,
                )))
                continue
            if binding.device not in self.links and not self._ended(binding.session):  # (re-bound: keeps its seat)
                position = await self.edge.admission.admit(binding.session, binding.participant)
                if position:
                    self._queue(binding, position)
                    continue
            self._attach(binding)
        return unknown

    def _ended(self, session: str) -> bool:
        """The class is over as this edge knows it: its late data is let in unqueued."""
        pump = self.edge.pumps.get(session)
        return pump is not None and (pump.board or {}).get("phase") == "ended"

    def _attach(self, binding: DeviceBinding) -> None:
        self.edge.admission.hold(binding.session, binding.participant)  # (first: a re-bound rider keeps its seat)
        previous = self.links.get(binding.device)
        if previous is not None:
            previous[1].detach(previous[0])
            self.edge.admission.unhold(previous[1].session_id, previous[0].participant, bye=False)
        pump = self.edge.pump(binding.session)
        link = DeviceLink(binding.device, binding.participant, self.outbox)
        self.links[binding.device] = (link, pump)
        self.bindings[binding.device] = binding
        pump.attach(link)

    # -- seats and admission (api.admission) --------------------------------------------------
    def _queue(self, binding: DeviceBinding, position: int) -> None:
        """The class has no seat for this rider yet: it waits on this connection, told its
        place by ``queue`` frames, and is bound (its ``welcome`` follows) when admitted."""
        old = self.waiters.pop(binding.device, None)
        if old is not None:
            self.edge.admission.cancel(old)
        waiter = Waiter(binding.session, binding.participant,
                        on_position=lambda place, after_s: self._send_queue(binding, place, after_s),
                        on_admitted=lambda: self._admitted(binding))
        self.waiters[binding.device] = waiter
        self.edge.admission.wait(waiter, position)

    def _send_queue(self, binding: DeviceBinding, position: int, retry_after_s: float) -> None:
        self.outbox.send(encode({"t": "queue", "session": binding.session, "device": binding.device,
                                 "participant": binding.participant, "position": position,
                                 "retry_after_ms": int(retry_after_s * 1000)}))

    def _admitted(self, binding: DeviceBinding) -> None:
        if self.waiters.pop(binding.device, None) is None or self.state is LinkState.CLOSED:
            return
        self._attach(binding)
        board, self.pending_board = self.pending_board, None
        if board is not None:
            try:
                self._subscribe(board)
            except ProtocolError as exc:
                if self.waiters:  # the board's rider is one of those still waiting
                    self.pending_board = board
                else:
                    self._protocol_error(exc)

    async def _auth(self, frame: Auth) -> None:
        """Renew the token in-band: same subject, covering every device already bound."""
        old = self.principal
        if old is None:
            raise ProtocolError(ErrorCode.NOT_HELLO, "send hello before auth", fatal=True)
        new = await self._authenticate(frame.token)
        if new is None:
            return
        try:
            self.edge.gate.check(old, authorise_renewal, new, list(self.bindings.values()), self.hub,
                                 where="ws /v1/devices auth", peer=self.peer)
        except Forbidden as exc:
            self._refuse(exc, fatal=False)
            return
        if new.token_id != old.token_id:
            self.edge.connections.release_token(old)
            if not self.edge.connections.acquire_token(new):
                self.principal = None
                self.outbox.close(CloseCode.THROTTLED, "too many open connections with this token")
                return
        self.principal = new
        self.expiry_noticed = False
        self._rearm_timer()
        self.outbox.send(encode({"t": "auth_ok", "expires_at": new.expires_at}))

    # -- samples ------------------------------------------------------------------------------
    def _samples(self, frame: Samples) -> None:
        if self.state is not LinkState.STREAMING:
            raise ProtocolError(ErrorCode.NOT_HELLO, "send hello before samples", fatal=True)
        entry = self.links.get(frame.device)
        if entry is None:
            waiter = self.waiters.get(frame.device)
            if waiter is not None:  # (clients send nothing before their welcome; this one did)
                self._throttle(frame.device, self.edge.admission.retry_after_s(waiter.position), "waiting for a seat")
                return
            raise ProtocolError(ErrorCode.UNKNOWN_DEVICE, f"device {frame.device!r} was not in hello")
        link, pump = entry
        valid, rejected = self._validate(frame)
        if len(valid) + link.sent - link.acked > self.settings.max_unacked_per_device or not pump.add(
            link, valid, [seq for seq, _ in rejected]
        ):
            self._throttle(frame.device, 1.0, "too many unacknowledged samples")
            THROTTLED_BACKLOG.inc()
            SAMPLES_THROTTLED.inc(len(frame.rows))
            return
        if rejected:
            self._report_rejections(frame.device, rejected)

    def _validate(self, frame: Samples) -> tuple[list[list[Any]], list[tuple[int, ErrorCode]]]:
        now = time.time()
        valid: list[list[Any]] = []
        rejected: list[tuple[int, ErrorCode]] = []
        malformed: list[int] = []
        for index, row in enumerate(frame.rows):
            reason = validate_sample(row, now)
            if reason is None:
                valid.append(row)
                continue
            seq = sample_seq(row)
            if seq is None:
                malformed.append(index)
            else:
                rejected.append((seq, reason))
        if malformed:
            REJECTED_BY_REASON[ErrorCode.BAD_SAMPLE].inc(len(malformed))
            self.outbox.send(encode(_unusable_seqs(frame, malformed)))
        return valid, rejected

    def _report_rejections(self, device: str, rejected: list[tuple[int, ErrorCode]]) -> None:
        by_reason: dict[ErrorCode, list[int]] = {}
        for seq, reason in rejected:
            by_reason.setdefault(reason, []).append(seq)
        for reason, seqs in by_reason.items():
            REJECTED_BY_REASON[reason].inc(len(seqs))
            self.outbox.send(encode(error_frame(
                reason, f"{len(seqs)} sample(s) rejected: {reason.value}", device=device, seqs=seqs,
            )))

    def _bye(self, bye: Bye) -> None:
        devices = [bye.device] if bye.device else list(self.links) + list(self.waiters)
        for device in devices:
            waiter = self.waiters.pop(device, None)
            if waiter is not None:
                self.edge.admission.cancel(waiter)
            entry = self.links.pop(device, None)
            self.bindings.pop(device, None)
            self.rate.forget(device)
            if entry is not None:
                entry[1].detach(entry[0])
                self.edge.admission.unhold(entry[1].session_id, entry[0].participant, bye=True)
        if not self.links and not self.waiters:
            self.outbox.close(CloseCode.NORMAL, "bye")


MAX_NAMED = 50  # offending rows named in one error frame


def _unusable_seqs(frame: Samples, indices: list[int]) -> dict[str, Any]:
    """A ``bad_sample`` error naming the rows whose seq is unusable and what they sent as seq
    (``bad_seqs``: the value when it is an integer, a short repr otherwise, None if absent);
    not ``seqs``, which would tell the client those samples are settled."""
    named = indices[:MAX_NAMED]
    bad = [_seq_as_sent(frame.rows[i]) for i in named]
    shown = ", ".join(str(v) for v in bad[:10]) + (", ..." if len(bad) > 10 else "")
    return error_frame(
        ErrorCode.BAD_SAMPLE,
        f"{len(indices)} sample(s) ignored: unusable seq ({shown}); a seq is an integer from 1 to 2^62",
        device=frame.device, rows=named, bad_seqs=bad,
    )


def _seq_as_sent(row: Any) -> Any:
    value = row[0] if isinstance(row, list) and row else None
    if isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**64:
        return value
    if value is None:
        return None
    text = repr(value)  # escapes surrogates and control characters; the frame is <= 64 KiB
    return text if len(text) <= 40 else text[:37] + "..."
