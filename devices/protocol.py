"""Protocol v1: msgpack frames over binary WebSocket messages (JSON text frames too).

Every frame is a map with a type key ``"t"``. The full reference, with every field and
error code, is ``docs/protocol.md``; this module is its executable form:

* ``decode_device_frame(data, limits)`` turns bytes (msgpack) or str (JSON) from a
  device into a typed frame or raises ``ProtocolError`` with an ``ErrorCode``; it never
  raises anything else (property-tested with arbitrary bytes in
  ``tests/devices/test_protocol_fuzz.py``). ``FrameLimits`` carries the configurable
  size limits; the module constants are their defaults.
* ``validate_sample(row, now_s)`` checks one wire sample and returns the reason it is
  rejected, or ``None``.
* ``encode(frame_dict)`` packs a server (or device) frame; ``encode_value(value)`` packs
  any msgpack value the same way (for frames spliced from pre-encoded pairs).
"""

from __future__ import annotations

import enum
import json
import logging
import math
import reprlib
from dataclasses import dataclass, field
from typing import Any

import msgpack

from devices.sample import BOUNDS, METRICS
from devices.text import TextError, clean_id
from devices.errors import DevicesError

log = logging.getLogger(__name__)
_short = reprlib.Repr()
_short.maxstring = _short.maxother = 40
_short.maxlevel = 2


def _brief(value: Any, limit: int = 60) -> str:
    """A repr short enough for an error message, whatever the (hostile) value."""
    text = _short.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."

VERSION = 1
VERSIONS = (1, 1.1, "1.1")  # 1.1 = 1 + the board on the device connection (docs/protocol.md)
MAX_BOARD_RATE_HZ = 10.0
MAX_FRAME_BYTES = 64 * 1024
MAX_SAMPLES_PER_FRAME = 1000
MAX_DEVICES_PER_HELLO = 256
MAX_ID_LEN = 128
MAX_TOKEN_LEN = 8192
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
    # authentication, authorisation and limits (docs/security.md)
    UNAUTHORISED = "unauthorised"
    FORBIDDEN = "forbidden"
    TOKEN_EXPIRING = "token_expiring"
    TOO_MANY_DEVICES = "too_many_devices"


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
    INTERNAL = 1011
    TRY_AGAIN = 1013


class ProtocolError(DevicesError, ValueError):
    """A frame that breaks protocol v1; ``fatal`` frames close the connection."""

    def __init__(self, code: ErrorCode, message: str, *, fatal: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.fatal = fatal

    def frame(self, **extra: Any) -> dict[str, Any]:
        return error_frame(self.code, self.message, fatal=self.fatal, **extra)


@dataclass(frozen=True, slots=True)
class FrameLimits:
    """Per-frame size limits (configurable through the edge's settings)."""

    max_frame_bytes: int = MAX_FRAME_BYTES
    max_samples_per_frame: int = MAX_SAMPLES_PER_FRAME
    max_devices_per_hello: int = MAX_DEVICES_PER_HELLO


DEFAULT_LIMITS = FrameLimits()


@dataclass(frozen=True, slots=True)
class DeviceBinding:
    device: str
    participant: str
    session: str


@dataclass(frozen=True, slots=True)
class BoardRequest:
    """Protocol v1.1: push this session's board on the device connection, ``rate_hz`` times
    a second, with ``participant``'s own row (None: the connection's only participant)."""

    rate_hz: float = 1.0
    session: str | None = None
    participant: str | None = None


@dataclass(frozen=True, slots=True)
class Hello:
    devices: tuple[DeviceBinding, ...]
    token: str | None = None
    hub: str | None = None
    board: BoardRequest | None = None


@dataclass(frozen=True, slots=True)
class Samples:
    device: str
    rows: list[list[Any]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Bye:
    device: str | None = None


@dataclass(frozen=True, slots=True)
class Auth:
    """In-band re-authentication: a fresh token for the same connection."""

    token: str


DeviceFrame = Hello | Samples | Bye | Auth


def encode(frame: dict[str, Any]) -> bytes:
    return encode_value(frame)


def encode_value(value: Any) -> bytes:
    """One msgpack value (a key, a row, a whole frame) packed exactly as ``encode`` packs it."""
    return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]


def error_frame(code: ErrorCode, message: str, *, fatal: bool = False, **extra: Any) -> dict[str, Any]:
    return {"t": "error", "code": code.value, "message": message, "fatal": fatal, **extra}


def decode_device_frame(data: bytes | str, limits: FrameLimits = DEFAULT_LIMITS) -> DeviceFrame:
    try:
        return _decode(data, limits)
    except ProtocolError:
        raise
    except Exception as exc:  # a bug, not the client's fault: still never crash the caller
        log.exception("decoder bug on a %d-byte frame", len(data))
        raise ProtocolError(ErrorCode.INTERNAL, f"frame could not be decoded: {type(exc).__name__}") from None


def _decode(data: bytes | str, limits: FrameLimits) -> DeviceFrame:
    raw = _unpack(data, limits.max_frame_bytes)
    kind = raw.get("t")
    if kind == "samples":
        return _samples(raw, limits.max_samples_per_frame)
    if kind == "hello":
        return _hello(raw, limits.max_devices_per_hello)
    if kind == "bye":
        device = raw.get("device")
        if device is not None:
            _check_id(device, "device")
        return Bye(device)
    if kind == "auth":
        return Auth(_check_token(raw.get("token"), fatal=False))
    raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown frame type {_brief(kind)}")


def _byte_length(data: bytes | str, limit: int) -> int:
    if isinstance(data, bytes):
        return len(data)
    if len(data) > limit or len(data) * 4 <= limit:
        return len(data)  # decided without encoding: too many characters, or surely small
    return len(data.encode("utf-8", "surrogatepass"))


def _unpack(data: bytes | str, max_bytes: int) -> dict[str, Any]:
    size = _byte_length(data, max_bytes)
    if size > max_bytes:
        raise ProtocolError(ErrorCode.TOO_LARGE, f"frame of {size} bytes exceeds {max_bytes}")
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


def _check_id(value: Any, name: str, *, fatal: bool = False) -> str:
    """An id as ``devices.text.clean_id`` defines it, NFC-normalised (ASCII ids, nearly all
    of them, are their own normal form and skip the normaliser: this runs per frame)."""
    if isinstance(value, str) and value.isascii() and 0 < len(value) <= MAX_ID_LEN and value.isprintable():
        if value[0] != " " and value[-1] != " ":
            return value
    try:
        return clean_id(value, name, max_chars=MAX_ID_LEN)
    except TextError as exc:
        raise ProtocolError(ErrorCode.BAD_FIELD, str(exc), fatal=fatal) from None


def _check_token(value: Any, *, fatal: bool) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_TOKEN_LEN or not value.isascii():
        raise ProtocolError(ErrorCode.BAD_FIELD, f"token must be an ASCII string of 1-{MAX_TOKEN_LEN} chars", fatal=fatal)
    return value


def _hello(raw: dict[str, Any], max_devices: int) -> Hello:
    version = raw.get("v", VERSION)
    if isinstance(version, bool) or version not in VERSIONS:
        raise ProtocolError(ErrorCode.BAD_VERSION, f"protocol version {_brief(version)} unsupported; use 1 or 1.1", fatal=True)
    devices = raw.get("devices")
    if not isinstance(devices, list) or not 0 < len(devices) <= max_devices:
        raise ProtocolError(ErrorCode.BAD_FIELD, f"hello needs 1-{max_devices} devices", fatal=True)
    bindings = []
    for entry in devices:
        if not isinstance(entry, dict):
            raise ProtocolError(ErrorCode.BAD_FIELD, "each device must be a map", fatal=True)
        bindings.append(
            DeviceBinding(
                _check_id(entry.get("device"), "device", fatal=True),
                _check_id(entry.get("participant"), "participant", fatal=True),
                _check_id(entry.get("session"), "session", fatal=True),
            )
        )
    named = [binding.device for binding in bindings]
    if len(set(named)) != len(named):
        twice = sorted({d for d in named if named.count(d) > 1})
        raise ProtocolError(ErrorCode.BAD_FIELD, f"hello names device(s) {', '.join(twice)[:200]} more than once", fatal=True)
    token = raw.get("token")
    hub = raw.get("hub")
    if token is not None:
        _check_token(token, fatal=True)
    if hub is not None:
        _check_id(hub, "hub", fatal=True)
    board = raw.get("board")
    return Hello(tuple(bindings), token, hub, None if board is None else _board_request(board))


def _board_request(raw: Any) -> BoardRequest:
    if raw is True:
        return BoardRequest()
    if not isinstance(raw, dict):
        raise ProtocolError(ErrorCode.BAD_FIELD, "board must be a map (or true)", fatal=True)
    rate = raw.get("rate", 1.0)
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 1.0 <= rate <= MAX_BOARD_RATE_HZ:
        raise ProtocolError(ErrorCode.BAD_FIELD, f"board rate must be a number from 1 to {MAX_BOARD_RATE_HZ:g} (Hz)", fatal=True)
    session, participant = raw.get("session"), raw.get("participant")
    return BoardRequest(
        float(rate),
        None if session is None else _check_id(session, "board session", fatal=True),
        None if participant is None else _check_id(participant, "board participant", fatal=True),
    )


def _samples(raw: dict[str, Any], max_samples: int) -> Samples:
    device = _check_id(raw.get("device"), "device")
    rows = raw.get("samples")
    if not isinstance(rows, list):
        raise ProtocolError(ErrorCode.BAD_FIELD, "samples must be a list of sample arrays")
    if len(rows) > max_samples:
        raise ProtocolError(ErrorCode.TOO_MANY_SAMPLES, f"{len(rows)} samples in one frame; max {max_samples}")
    return Samples(device, rows)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


_METRIC_BOUNDS = tuple(BOUNDS[name] for name in METRICS)  # in wire order


def _plainly_valid(row: Any, now_s: float) -> bool:
    """The common case, a well-formed row of plain ints and floats, in one pass with exact
    types (a bool is not an int here, and NaN and infinities fail every bound). It accepts
    only rows the checks in ``validate_sample`` accept; any other row goes through those,
    which name the reason."""
    if type(row) is not list or len(row) < 2:
        return False
    seq, ts = row[0], row[1]
    if type(seq) is not int or not 0 < seq < 2**62 or (type(ts) is not float and type(ts) is not int):
        return False
    if not now_s - MAX_AGE_S <= ts <= now_s + MAX_FUTURE_S:
        return False
    for (low, high), value in zip(_METRIC_BOUNDS, row[2:7]):
        if value is not None and ((type(value) is not float and type(value) is not int) or not low <= value <= high):
            return False
    return True


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
    return None if _plainly_valid(row, now_s) else _why_invalid(row, now_s)


def _why_invalid(row: Any, now_s: float) -> ErrorCode | None:
    """``validate_sample``'s every check, in order (what names the reason)."""
    if not isinstance(row, list) or len(row) < 2 or sample_seq(row) is None:
        return ErrorCode.BAD_SAMPLE
    ts = row[1]
    if not _is_number(ts) or not now_s - MAX_AGE_S <= ts <= now_s + MAX_FUTURE_S:
        return ErrorCode.BAD_TIMESTAMP
    for (low, high), value in zip(_METRIC_BOUNDS, row[2:7], strict=False):
        if value is None:
            continue
        if not _is_number(value):
            return ErrorCode.BAD_SAMPLE
        if not low <= value <= high:
            return ErrorCode.OUT_OF_RANGE
    return None
