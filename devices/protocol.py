"""Protocol v1: msgpack frames over binary WebSocket messages (JSON text frames too).

Every frame is a map with a type key ``"t"``. The full reference, with every field and
error code, is ``docs/protocol.md``; this module is its executable form:

* ``decode_device_frame(data)`` turns bytes (msgpack) or str (JSON) from a device into
  a typed frame or raises ``ProtocolError`` with an ``ErrorCode``; it never raises
  anything else.
* ``validate_sample(row, now_s)`` checks one wire sample and returns the reason it is
  rejected, or ``None``.
* ``encode(frame_dict)`` packs a server (or device) frame.
"""

from __future__ import annotations

import enum
import json
import math
from dataclasses import dataclass, field
from typing import Any

import msgpack

from devices.sample import BOUNDS, METRICS

VERSION = 1
MAX_FRAME_BYTES = 64 * 1024
MAX_SAMPLES_PER_FRAME = 1000
MAX_DEVICES_PER_HELLO = 256
MAX_ID_LEN = 128
# How far a device clock may run ahead of the server, and how old a sample may be.
MAX_FUTURE_S = 300.0
MAX_AGE_S = 7 * 24 * 3600.0


class ErrorCode(str, enum.Enum):
    """Codes carried by ``error`` frames (and close reasons). See docs/protocol.md."""

    BAD_FRAME = "bad_frame"
    UNKNOWN_TYPE = "unknown_type"
    BAD_FIELD = "bad_field"
    BAD_VERSION = "bad_version"
    TOO_LARGE = "too_large"
    TOO_MANY_SAMPLES = "too_many_samples"
    NOT_HELLO = "hello_required"
    UNKNOWN_DEVICE = "unknown_device"
    UNKNOWN_SESSION = "unknown_session"
    OUT_OF_RANGE = "out_of_range"
    BAD_SAMPLE = "bad_sample"
    BAD_TIMESTAMP = "bad_timestamp"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"


class CloseCode(enum.IntEnum):
    """WebSocket close codes the edge uses (4xxx mirror HTTP statuses)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    TOO_BIG = 1009
    PROTOCOL = 4400
    UNAUTHORISED = 4401
    FORBIDDEN = 4403
    UNKNOWN_SESSION = 4404
    TIMEOUT = 4408
    THROTTLED = 4429


class ProtocolError(ValueError):
    """A frame that breaks protocol v1; ``fatal`` frames close the connection."""

    def __init__(self, code: ErrorCode, message: str, *, fatal: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.fatal = fatal

    def frame(self, **extra: Any) -> dict[str, Any]:
        return error_frame(self.code, self.message, fatal=self.fatal, **extra)


@dataclass(frozen=True, slots=True)
class DeviceBinding:
    device: str
    participant: str
    session: str


@dataclass(frozen=True, slots=True)
class Hello:
    devices: tuple[DeviceBinding, ...]
    token: str | None = None
    hub: str | None = None


@dataclass(frozen=True, slots=True)
class Samples:
    device: str
    rows: list[list[Any]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Bye:
    device: str | None = None


DeviceFrame = Hello | Samples | Bye


def encode(frame: dict[str, Any]) -> bytes:
    return msgpack.packb(frame, use_bin_type=True)  # type: ignore[no-any-return]


def error_frame(code: ErrorCode, message: str, *, fatal: bool = False, **extra: Any) -> dict[str, Any]:
    return {"t": "error", "code": code.value, "message": message, "fatal": fatal, **extra}


def decode_device_frame(data: bytes | str) -> DeviceFrame:
    raw = _unpack(data)
    kind = raw.get("t")
    if kind == "samples":
        return _samples(raw)
    if kind == "hello":
        return _hello(raw)
    if kind == "bye":
        device = raw.get("device")
        if device is not None:
            _check_id(device, "device")
        return Bye(device)
    raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown frame type {kind!r}")


def _unpack(data: bytes | str) -> dict[str, Any]:
    if len(data) > MAX_FRAME_BYTES:
        raise ProtocolError(ErrorCode.TOO_LARGE, f"frame of {len(data)} bytes exceeds {MAX_FRAME_BYTES}")
    try:
        if isinstance(data, str):
            raw = json.loads(data)
        else:
            raw = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack and json raise many kinds; all mean "not a frame"
        raise ProtocolError(ErrorCode.BAD_FRAME, f"undecodable frame: {type(exc).__name__}") from None
    if not isinstance(raw, dict):
        raise ProtocolError(ErrorCode.BAD_FRAME, "a frame must be a map with a 't' key")
    return raw


def _check_id(value: Any, name: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_ID_LEN:
        raise ProtocolError(ErrorCode.BAD_FIELD, f"{name} must be a string of 1-{MAX_ID_LEN} chars")
    return value


def _hello(raw: dict[str, Any]) -> Hello:
    if raw.get("v", VERSION) != VERSION:
        raise ProtocolError(ErrorCode.BAD_VERSION, f"protocol version {raw.get('v')!r} unsupported; use {VERSION}", fatal=True)
    devices = raw.get("devices")
    if not isinstance(devices, list) or not 0 < len(devices) <= MAX_DEVICES_PER_HELLO:
        raise ProtocolError(ErrorCode.BAD_FIELD, f"hello needs 1-{MAX_DEVICES_PER_HELLO} devices", fatal=True)
    bindings = []
    for entry in devices:
        if not isinstance(entry, dict):
            raise ProtocolError(ErrorCode.BAD_FIELD, "each device must be a map", fatal=True)
        bindings.append(
            DeviceBinding(
                _check_id(entry.get("device"), "device"),
                _check_id(entry.get("participant"), "participant"),
                _check_id(entry.get("session"), "session"),
            )
        )
    token = raw.get("token")
    hub = raw.get("hub")
    if token is not None and not isinstance(token, str):
        raise ProtocolError(ErrorCode.BAD_FIELD, "token must be a string", fatal=True)
    if hub is not None:
        _check_id(hub, "hub")
    return Hello(tuple(bindings), token, hub)


def _samples(raw: dict[str, Any]) -> Samples:
    device = _check_id(raw.get("device"), "device")
    rows = raw.get("samples")
    if not isinstance(rows, list):
        raise ProtocolError(ErrorCode.BAD_FIELD, "samples must be a list of sample arrays")
    if len(rows) > MAX_SAMPLES_PER_FRAME:
        raise ProtocolError(ErrorCode.TOO_MANY_SAMPLES, f"{len(rows)} samples in one frame; max {MAX_SAMPLES_PER_FRAME}")
    return Samples(device, rows)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def sample_seq(row: Any) -> int | None:
    """The seq of a wire sample, if it has a usable one (needed to reject it by seq)."""
    if isinstance(row, list) and row and isinstance(row[0], int) and not isinstance(row[0], bool):
        return row[0] if 0 < row[0] < 2**62 else None
    return None


def validate_sample(row: Any, now_s: float) -> ErrorCode | None:
    """Why this wire sample must be rejected, or None if it may be applied.

    Rows may be longer than the v1 field list (newer fields are ignored) but not shorter
    than ``[seq, ts]``; missing trailing metrics count as absent.
    """
    if not isinstance(row, list) or len(row) < 2 or sample_seq(row) is None:
        return ErrorCode.BAD_SAMPLE
    ts = row[1]
    if not _is_number(ts) or not now_s - MAX_AGE_S <= ts <= now_s + MAX_FUTURE_S:
        return ErrorCode.BAD_TIMESTAMP
    for name, value in zip(METRICS, row[2:7], strict=False):
        if value is None:
            continue
        if not _is_number(value):
            return ErrorCode.BAD_SAMPLE
        low, high = BOUNDS[name]
        if not low <= value <= high:
            return ErrorCode.OUT_OF_RANGE
    return None
