"""Limits that keep one client from hurting the others; every value is a setting.

=================================  =====================================================
``Settings`` field                 what happens when a client goes over it
=================================  =====================================================
``max_ws_message_bytes``           the transport closes the socket with 1009
``max_frame_bytes``                ``error`` ``too_large`` (the frame is dropped)
``max_samples_per_frame``          ``error`` ``too_many_samples``
``max_devices_per_hub``            ``error`` ``too_many_devices`` for the extra devices
``max_frames_per_s_per_connection``
``max_frames_per_s_per_device``    ``throttle`` (samples not taken: pause, then resend);
                                   after ``max_throttle_strikes`` more frames within the
                                   pause, close 4429
``max_connections_per_token``      close 4429 right after authentication
``max_connections_per_address``    close 4429 right after the WebSocket opens
``handshake_timeout_s``            close 4408 when no ``hello`` came in time
``idle_timeout_s``                 close 4408 when a device connection sent nothing
``ws_ping_interval_s`` /           uvicorn pings every interval and drops a peer that
``ws_ping_timeout_s``              does not answer in time (dead phones, half-open TCP)
``send_queue_frames``              close 4429 for a client that does not read
``http_head_timeout_s``            the TCP connection is closed when no complete HTTP
                                   request head arrived in time (idle or slowloris)
=================================  =====================================================

Throttling never loses data: a refused frame was not taken, the client keeps its
unacknowledged samples and resends them after ``retry_after_ms`` (``devices/client.py``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from devices.protocol import MAX_DEVICES_PER_HELLO, FrameLimits

from api.auth import Principal, TokenKind
from api.directws import DirectProtocol
from api.headtimeout import head_timeout_protocol

if TYPE_CHECKING:
    from cluster.settings import Settings

MIN_PAUSE_S = 1.0  # a throttle asks for at least this pause, so a backing-off client is visible


def frame_limits(settings: Settings) -> FrameLimits:
    return FrameLimits(
        max_frame_bytes=settings.max_frame_bytes,
        max_samples_per_frame=settings.max_samples_per_frame,
        max_devices_per_hello=MAX_DEVICES_PER_HELLO,  # the hub limit refuses extra devices one by one
    )


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """Transport options for ``uvicorn.Config``: limits (message size, ping/pong liveness,
    ``http_head_timeout_s`` for a request head), and no permessage-deflate — our frames
    (30 B - 2 KB of msgpack) barely compress, and each connection's zlib contexts cost
    ~90 KiB of memory plus CPU on every frame."""
    return {
        "http": head_timeout_protocol(settings.http_head_timeout_s),  # slowloris: api/headtimeout.py
        **({"ws": DirectProtocol} if settings.direct_ws else {}),
        "ws_per_message_deflate": False,
        "ws_max_size": settings.max_ws_message_bytes,
        "ws_ping_interval": settings.ws_ping_interval_s,
        "ws_ping_timeout": settings.ws_ping_timeout_s,
    }


@dataclass(slots=True)
class TokenBucket:
    """``rate`` per second, holding at most ``capacity``; starts full."""

    rate: float
    capacity: float
    tokens: float = -1.0
    updated: float = 0.0

    def wait_s(self, now: float) -> float:
        """Seconds until one token is available (0 if one is available now)."""
        if self.tokens < 0:
            self.tokens, self.updated = self.capacity, now
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        return 0.0 if self.tokens >= 1.0 else (1.0 - self.tokens) / self.rate

    def take(self) -> None:
        self.tokens -= 1.0


class Verdict(enum.Enum):
    ACCEPT = "accept"
    THROTTLE = "throttle"  # refuse the frame and tell the client to pause
    REFUSE = "refuse"  # refuse silently: the client was already told to pause
    DISCONNECT = "disconnect"  # it kept sending through its pause


@dataclass(slots=True)
class Admission:
    verdict: Verdict
    retry_after_s: float = 0.0


_ACCEPTED = Admission(Verdict.ACCEPT)  # (shared: admitting a frame allocates nothing)


@dataclass(slots=True)
class _Pause:
    until: float = 0.0
    strikes: int = 0


@dataclass
class FrameRate:
    """Frames per second for one connection, overall and per device.

    A frame over a limit opens a pause (``THROTTLE``, once per device per pause); frames
    that arrive during the pause are refused silently and counted as strikes; more than
    ``max_strikes`` in one pause disconnects.
    """

    per_connection: float
    per_device: float
    burst_s: float
    max_strikes: int
    connection: TokenBucket = field(init=False)
    devices: dict[str, TokenBucket] = field(default_factory=dict)
    pauses: dict[str, _Pause] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.connection = TokenBucket(self.per_connection, max(1.0, self.per_connection * self.burst_s))

    @classmethod
    def from_settings(cls, settings: Settings) -> FrameRate:
        return cls(
            per_connection=settings.max_frames_per_s_per_connection,
            per_device=settings.max_frames_per_s_per_device,
            burst_s=settings.rate_burst_s,
            max_strikes=settings.max_throttle_strikes,
        )

    def _device(self, device: str) -> TokenBucket:
        bucket = self.devices.get(device)
        if bucket is None:
            bucket = self.devices[device] = TokenBucket(self.per_device, max(1.0, self.per_device * self.burst_s))
        return bucket

    def forget(self, device: str) -> None:
        self.devices.pop(device, None)
        self.pauses.pop(device, None)

    def admit(self, device: str | None, now: float) -> Admission:
        """Admit one frame (of ``device``, or a frame naming no device)."""
        key = device or ""
        pause = self.pauses.get(key)
        if pause is not None and now < pause.until:
            pause.strikes += 1
            verdict = Verdict.DISCONNECT if pause.strikes > self.max_strikes else Verdict.REFUSE
            return Admission(verdict, pause.until - now)
        bucket = self._device(device) if device is not None else None
        wait = max(self.connection.wait_s(now), bucket.wait_s(now) if bucket is not None else 0.0)
        if wait == 0.0:
            self.connection.take()
            if bucket is not None:
                bucket.take()
            return _ACCEPTED
        pause_s = max(wait, MIN_PAUSE_S)
        self.pauses[key] = _Pause(until=now + pause_s)
        return Admission(Verdict.THROTTLE, pause_s)


class ConnectionCounter:
    """Open connections per key (a client address, a token id), each capped at ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open: dict[str, int] = {}

    def acquire(self, key: str) -> bool:
        count = self.open.get(key, 0)
        if count >= self.limit:
            return False
        self.open[key] = count + 1
        return True

    def release(self, key: str) -> None:
        count = self.open.get(key, 0) - 1
        if count > 0:
            self.open[key] = count
        else:
            self.open.pop(key, None)


class ConnectionLimits:
    """The edge-wide connection counters (one event loop: no locking needed).

    Operator tokens are not capped per token: a studio runs many board screens with one.
    """

    def __init__(self, settings: Settings) -> None:
        self.by_address = ConnectionCounter(settings.max_connections_per_address)
        self.by_token = ConnectionCounter(settings.max_connections_per_token)

    def acquire_token(self, principal: Principal) -> bool:
        return principal.kind is TokenKind.OPERATOR or self.by_token.acquire(principal.token_id)

    def release_token(self, principal: Principal) -> None:
        if principal.kind is not TokenKind.OPERATOR:
            self.by_token.release(principal.token_id)
