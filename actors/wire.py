"""The edge <-> session contract: typed tick messages and their wire encoding.

Both sides import this module: the edge (``api/pump.py``, ``api/session_stream.py``) builds
``TickRequest``s and reads ``TickResult``s; the session actor (``actors/session_actor.py``,
``actors/stream.py``) does the reverse. The same bytes travel over the direct stream (the
default data path) and, behind ``PULSELINE_SESSION_TRANSPORT=ray``, as the argument and
return value of one Ray call (``SessionActor.tick_wire``).

Messages (msgpack maps, key ``t`` names the type; numpy columns travel as little-endian bytes)

=============  ==========  =================================================================
``t``          direction   fields
=============  ==========  =================================================================
``hello``      edge->actor ``token`` (from ``SessionActor.endpoint()``), ``v`` wire version
``tick``       edge->actor ``id``, ``s`` session, ``k`` known board version, ``w`` devices
                           whose durable seq is wanted, ``dv`` [[device, participant], ...],
                           ``sd`` int32 device index per sample, ``sq`` int64 seq per sample,
                           ``sv`` float64 (n, 6) ts + metrics (NaN: absent), ``rd``/``rq``
                           device index and seq of each rejected sample, ``p`` (optional)
                           the board period of this edge's fastest viewer (s)
``result``     actor->edge ``id``, ``s``, ``e`` epoch, ``v`` board version, ``b`` board or
                           nil, ``d`` {device: durable seq}, ``a`` applied, ``u`` duplicates,
                           ``cp`` (optional) the fastest board period any edge asked for lately
``error``      actor->edge ``id``, ``s``, ``c`` code (``StreamErrorCode``), ``m`` message
=============  ==========  =================================================================

A stream frame is a 4-byte big-endian length followed by that many bytes of one message;
frames above ``MAX_FRAME_BYTES`` are refused (the connection closes). Within a tick the
rejected seqs count as coming before the samples (``SessionState.apply`` semantics).
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

from actors.errors import ActorError

WIRE_VERSION = 1
HEADER = struct.Struct(">I")
MAX_FRAME_BYTES = 64 << 20
MAX_EDGE_ID = 128  # characters of an edge id (``TickRequest.edge``)
# The metric columns of a sample after its seq, in wire-row order (devices/protocol.py).
VALUE_COLUMNS = ("ts", "hr_bpm", "power_w", "cadence_rpm", "speed_mps", "distance_m")
_ROW_WIDTH = 1 + len(VALUE_COLUMNS)
_PAD: list[Any] = [None] * _ROW_WIDTH
_EXACT_FLOAT_INT = 2**53


class WireError(ActorError):
    """A stream frame or message that cannot be decoded (the connection is closed)."""


class StreamErrorCode(str, enum.Enum):
    STALE = "stale"  # this instance was fenced off by a newer epoch: re-resolve the actor
    UNKNOWN_SESSION = "unknown_session"  # this process does not host the session (moved)
    UNAUTHORISED = "unauthorised"  # no hello, or a hello with the wrong token
    BAD_REQUEST = "bad_request"  # a tick that could not be applied (logged by the actor)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a session's stream is served, as its actor reports it (``endpoint()``)."""

    host: str
    port: int
    token: str  # sent in ``hello``: only who asked Ray may write to the stream
    epoch: int
    pid: int

    @property
    def address(self) -> tuple[str, int, str]:
        return (self.host, self.port, self.token)


@dataclass(frozen=True, slots=True)
class SampleColumns:
    """A tick's valid samples as columns: one entry per sample, in arrival order."""

    device: np.ndarray  # int32, index into ``TickRequest.devices``
    seq: np.ndarray  # int64
    values: np.ndarray  # float64, shape (n, 6): VALUE_COLUMNS, NaN where absent

    @classmethod
    def empty(cls) -> SampleColumns:
        return cls(np.zeros(0, np.int32), np.zeros(0, np.int64), np.zeros((0, len(VALUE_COLUMNS))))

    @classmethod
    def from_rows(cls, per_device: Sequence[Sequence[Sequence[Any]]]) -> SampleColumns:
        """Wire rows (``[seq, ts, hr, power, cadence, speed, distance]``, validated, possibly
        shorter or longer) of device 0, 1, ... as columns."""
        counts = [len(rows) for rows in per_device]
        total = sum(counts)
        if not total:
            return cls.empty()
        rows = [row for device_rows in per_device for row in device_rows]
        table = _as_table(rows)
        seq = table[:, 0]
        if float(seq.max()) < _EXACT_FLOAT_INT:
            seqs = seq.astype(np.int64)
        else:  # seqs up to 2^62 are legal; floats hold them exactly only below 2^53
            seqs = np.array([int(row[0]) for row in rows], dtype=np.int64)
        device = np.repeat(np.arange(len(per_device), dtype=np.int32), counts)
        return cls(device, seqs, np.ascontiguousarray(table[:, 1:]))

    def __len__(self) -> int:
        return len(self.seq)


def _as_table(rows: list[Sequence[Any]]) -> np.ndarray:
    """Rows as a float64 table of ``_ROW_WIDTH`` columns: longer rows cut, shorter ones
    (a phone sending ``[seq, ts, hr, power, cadence]``) padded with NaN (absent)."""
    try:
        table = np.array(rows, dtype=np.float64)
        if table.ndim == 2:
            width = table.shape[1]
            if width >= _ROW_WIDTH:
                return table[:, :_ROW_WIDTH]
            padded = np.full((len(table), _ROW_WIDTH), np.nan)  # (one copy, not a list per row)
            padded[:, :width] = table
            return padded
    except ValueError:  # rows of different lengths
        pass
    return np.array([(list(row) + _PAD)[:_ROW_WIDTH] for row in rows], dtype=np.float64)


@dataclass(frozen=True, slots=True)
class TickRequest:
    """One session's micro-batch from one edge."""

    session: str
    devices: tuple[tuple[str, str], ...] = ()  # (device, participant)
    samples: SampleColumns = field(default_factory=SampleColumns.empty)
    rejected_device: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    rejected_seq: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    want_durable: tuple[str, ...] = ()
    known_version: int = -1
    id: int = 0
    period_s: float | None = None  # the board period of this edge's fastest viewer (None: it has none)
    edge: str | None = None  # which edge sends it (a class keeps its edges' ticks in step; None: not said)

    @classmethod
    def from_batches(
        cls,
        session: str,
        batches: Iterable[tuple[str, str, Sequence[Sequence[Any]], Sequence[int]]],
        *,
        want_durable: Iterable[str] = (),
        known_version: int = -1,
        id: int = 0,
        period_s: float | None = None,
        edge: str | None = None,
    ) -> TickRequest:
        """From ``(device, participant, rows, rejected seqs)``, at most one per device."""
        batch_list = list(batches)
        rejected_counts = [len(b[3]) for b in batch_list]
        rejected = [seq for b in batch_list for seq in b[3]]
        return cls(
            session=session,
            devices=tuple((b[0], b[1]) for b in batch_list),
            samples=SampleColumns.from_rows([b[2] for b in batch_list]),
            rejected_device=np.repeat(np.arange(len(batch_list), dtype=np.int32), rejected_counts),
            rejected_seq=np.array(rejected, dtype=np.int64),
            want_durable=tuple(want_durable),
            known_version=known_version,
            id=id,
            period_s=period_s,
            edge=edge,
        )

    @property
    def sample_count(self) -> int:
        return len(self.samples) + len(self.rejected_seq)


@dataclass(frozen=True, slots=True)
class TickResult:
    session: str
    epoch: int
    version: int
    board: dict[str, Any] | None
    durable: dict[str, int]
    applied: int = 0
    duplicates: int = 0
    id: int = 0
    # the fastest board period an edge asked for lately (``SessionCell``): an edge whose own
    # viewers are slower ticks at it while it has devices, so their samples reach the fast
    # viewers of other edges in time (None: no edge has a viewer)
    class_period_s: float | None = None
    # seconds from now until this edge's next tick should reach the class so that the edge
    # of its fastest viewer, ticking just after it, finds its samples in the board (then
    # every ``class_period_s``); None: no other edge to keep in step with
    beat_s: float | None = None
    edges: int = 1  # the edges that ticked the class lately (more than one: keep in step, ``SessionPump``)


@dataclass(frozen=True, slots=True)
class Hello:
    token: str
    version: int = WIRE_VERSION


@dataclass(frozen=True, slots=True)
class StreamError:
    session: str
    code: StreamErrorCode
    message: str
    id: int = 0


Message = Hello | TickRequest | TickResult | StreamError


# -- encoding -----------------------------------------------------------------------------
def _pack(payload: dict[str, Any]) -> bytes:
    return msgpack.packb(payload, use_bin_type=True)  # type: ignore[no-any-return]


def encode_message(message: Message) -> bytes:
    """One message as msgpack bytes (no frame header): the Ray path's argument and result."""
    if isinstance(message, TickRequest):
        s = message.samples
        tick = {
            "t": "tick", "id": message.id, "s": message.session, "k": message.known_version,
            "w": list(message.want_durable), "dv": [list(d) for d in message.devices],
            "sd": s.device.astype("<i4", copy=False).tobytes(), "sq": s.seq.astype("<i8", copy=False).tobytes(),
            "sv": s.values.astype("<f8", copy=False).tobytes(),
            "rd": message.rejected_device.astype("<i4", copy=False).tobytes(),
            "rq": message.rejected_seq.astype("<i8", copy=False).tobytes(),
        }
        if message.period_s is not None:  # (optional keys: either side may be the older version)
            tick["p"] = message.period_s
        if message.edge is not None:
            tick["g"] = message.edge
        return _pack(tick)
    if isinstance(message, TickResult):
        result = {
            "t": "result", "id": message.id, "s": message.session, "e": message.epoch, "v": message.version,
            "b": message.board, "d": message.durable, "a": message.applied, "u": message.duplicates,
        }
        if message.class_period_s is not None:
            result["cp"] = message.class_period_s
        if message.beat_s is not None:
            result["bt"] = message.beat_s
        if message.edges != 1:
            result["n"] = message.edges
        return _pack(result)
    if isinstance(message, StreamError):
        return _pack({"t": "error", "id": message.id, "s": message.session, "c": message.code.value,
                      "m": message.message})
    return _pack({"t": "hello", "token": message.token, "v": message.version})


def encode_frame(message: Message) -> bytes:
    body = encode_message(message)
    return HEADER.pack(len(body)) + body


def decode_message(data: bytes) -> Message:
    """The message in ``data``; ``WireError`` for anything malformed."""
    try:
        raw = msgpack.unpackb(data, raw=False, strict_map_key=False)
        kind = raw["t"]
        if kind == "tick":
            return _decode_tick(raw)
        if kind == "result":
            return TickResult(
                session=str(raw["s"]), epoch=int(raw["e"]), version=int(raw["v"]), board=raw["b"],
                durable={str(k): int(v) for k, v in raw["d"].items()}, applied=int(raw["a"]),
                duplicates=int(raw["u"]), id=int(raw["id"]), class_period_s=_period(raw.get("cp")),
                beat_s=_beat(raw.get("bt")), edges=int(raw.get("n", 1)),
            )
        if kind == "error":
            return StreamError(str(raw["s"]), StreamErrorCode(raw["c"]), str(raw["m"]), int(raw["id"]))
        if kind == "hello":
            return Hello(str(raw["token"]), int(raw["v"]))
    except WireError:
        raise
    except Exception as exc:
        raise WireError(f"undecodable stream message: {exc!r}") from exc
    raise WireError(f"unknown stream message type {kind!r}")


def _decode_tick(raw: dict[str, Any]) -> TickRequest:
    devices = tuple((str(d), str(p)) for d, p in raw["dv"])
    sample_device = np.frombuffer(raw["sd"], dtype="<i4")
    seq = np.frombuffer(raw["sq"], dtype="<i8")
    values = np.frombuffer(raw["sv"], dtype="<f8").reshape(-1, len(VALUE_COLUMNS))
    rejected_device = np.frombuffer(raw["rd"], dtype="<i4")
    rejected_seq = np.frombuffer(raw["rq"], dtype="<i8")
    if not len(sample_device) == len(seq) == len(values) or len(rejected_device) != len(rejected_seq):
        raise WireError("tick columns of different lengths")
    for index in (sample_device, rejected_device):
        if len(index) and (int(index.min()) < 0 or int(index.max()) >= len(devices)):
            raise WireError("tick device index out of range")
    return TickRequest(
        session=str(raw["s"]), devices=devices, samples=SampleColumns(sample_device, seq, values),
        rejected_device=rejected_device, rejected_seq=rejected_seq,
        want_durable=tuple(str(d) for d in raw["w"]), known_version=int(raw["k"]), id=int(raw["id"]),
        period_s=_period(raw.get("p")), edge=_edge(raw.get("g")),
    )


def _period(value: Any) -> float | None:
    """An optional board period: a positive finite number of seconds, or None."""
    if value is None:
        return None
    period = float(value)
    if not 0 < period < 3600:  # (NaN fails too)
        raise WireError(f"board period {value!r} out of range")
    return period


def _beat(value: Any) -> float | None:
    """An optional wait before the next tick: a finite number of seconds in [0, 3600), or None."""
    if value is None:
        return None
    beat = float(value)
    if not 0 <= beat < 3600:  # (NaN fails too)
        raise WireError(f"tick beat {value!r} out of range")
    return beat


def _edge(value: Any) -> str | None:
    """An optional edge id: a short string, or None."""
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_EDGE_ID:
        raise WireError(f"edge id {value!r:.80} is not a string of at most {MAX_EDGE_ID} characters")
    return value


class FrameBuffer:
    """Reassembles length-prefixed frames from a byte stream (bounded by ``max_frame_bytes``)."""

    def __init__(self, max_frame_bytes: int = MAX_FRAME_BYTES) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """Append ``data``; return every complete frame body. ``WireError`` on an oversized frame."""
        self._buf += data
        bodies: list[bytes] = []
        start = 0
        buf = self._buf
        while len(buf) - start >= HEADER.size:
            (size,) = HEADER.unpack_from(buf, start)
            if size > self.max_frame_bytes:
                raise WireError(f"stream frame of {size} bytes exceeds {self.max_frame_bytes}")
            end = start + HEADER.size + size
            if len(buf) < end:
                break
            bodies.append(bytes(buf[start + HEADER.size:end]))
            start = end
        if start:
            del buf[:start]
        return bodies
