"""``Recording``: every rider's per-second series in a class, kept as numpy columns.

What it holds: for each rider (participant slot) and each second of the class, the power
(W), heart rate (bpm), cadence (rpm), speed (m/s) and cumulative distance (m) of the newest
sample applied in that second. The class state (``SessionState``) feeds it the applied
samples of every tick (``add``: numpy per tick, a loop over the one or two chunks a tick
touches, never per sample); late data fills its seconds the same way, however late.

Values are kept at the resolution of a FIT ``record`` message (what an export can carry),
in fixed-width integers, with the type's largest value meaning "no value in that second":

=============  ======  ========  =========================
column         dtype   unit      absent
=============  ======  ========  =========================
``power_w``    uint16  1 W       65535
``hr_bpm``     uint8   1 bpm     255
``cadence``    uint8   1 rpm     255
``speed``      uint16  1 mm/s    65535
``distance``   uint32  1 cm      4294967295
=============  ======  ========  =========================

Rule per second, field by field: a sample sets the fields it carries (an absent field never
erases one) and the newest sample by device timestamp wins within a tick; across ticks the
one applied later wins (a resend is a duplicate and never reaches here). Seconds are counted
from ``t0``, the first recorded second of the class (``floor(ts)``); a sample more than
``max_span_s`` (6 h) away from ``t0`` is not recorded (``dropped`` counts it), so memory is
bounded: at most ``2 * max_span_s`` seconds x riders x 10 bytes.

Storage: the seconds are cut into *chunks* of ``chunk_s`` (2) seconds for every rider.
Chunks changed since the last checkpoint are written with it, atomically and fenced by the
same epoch (``storage.checkpoint``: the side hash ``{p}:session:{{id}}:rec``, one field per
chunk, the chunk number as decimal text; short chunks keep what each checkpoint carries
small: ~20 KB at 1,000 riders), so a second is durable exactly when the samples
that made it are acknowledged; a restarted class reads them back (``restore``). A chunk is
msgpack ``{"r": riders, "c": {column: bytes}}``, each column ``riders x chunk_s`` values,
little-endian, row-major (rider by rider). The checkpoint itself carries only ``meta()``
(``t0``, ``chunk_s``, the chunk numbers, ``dropped``).
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Mapping
from typing import Any

import msgpack
import numpy as np

from actors.columnar import _distinct  # (no key twice: the usual tick)

CHUNK_S = 2
MAX_SPAN_S = 6 * 3600
# The best-effort windows of a ride (personal records: history/records.py, the class summary)
POWER_WINDOWS_S = {"power_5s_w": 5, "power_1m_w": 60, "power_5m_w": 300, "power_20m_w": 1200}


@dataclass(frozen=True, slots=True)
class Field:
    name: str
    value_column: int  # in ``actors.wire.VALUE_COLUMNS``: ts, hr, power, cadence, speed, distance
    dtype: type[np.unsignedinteger[Any]]
    scale: float  # stored = round(value * scale)

    @property
    def absent(self) -> int:
        return int(np.iinfo(self.dtype).max)

    def quantise(self, values: np.ndarray) -> np.ndarray:
        return np.clip(np.rint(values * self.scale), 0, self.absent - 1).astype(self.dtype)

    def store(self, values: np.ndarray) -> np.ndarray:
        """Floats (NaN: no value) as the stored integers (``absent`` where NaN)."""
        stored = self.quantise(np.nan_to_num(values, nan=0.0))
        stored[np.isnan(values)] = self.absent
        return stored

    def value(self, stored: np.ndarray) -> np.ndarray:
        """Stored integers back as floats (NaN where absent)."""
        out = stored.astype(np.float64) / self.scale
        out[stored == self.absent] = np.nan
        return out


FIELDS = (
    Field("power_w", 2, np.uint16, 1.0),
    Field("hr_bpm", 1, np.uint8, 1.0),
    Field("cadence_rpm", 3, np.uint8, 1.0),
    Field("speed_mps", 4, np.uint16, 1000.0),
    Field("distance_m", 5, np.uint32, 100.0),
)
FIELD_NAMES = tuple(f.name for f in FIELDS)


@dataclass(frozen=True, slots=True)
class Series:
    """One rider's seconds that hold at least one value: ``t`` seconds from the recording's
    ``t0`` (ascending) and each field as float64 (NaN: no value in that second)."""

    t0: int
    t: np.ndarray
    values: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.t)


def best_mean(power: np.ndarray, window_s: int) -> float | None:
    """The highest mean of ``window_s`` consecutive values (None when fewer)."""
    if len(power) < window_s:
        return None
    running = np.concatenate([[0.0], np.cumsum(power, dtype=np.float64)])
    return float(np.max(running[window_s:] - running[:-window_s]) / window_s)


def power_bests(t: np.ndarray, power_w: np.ndarray) -> dict[str, float | None]:
    """A ride's best mean power per ``POWER_WINDOWS_S`` window from its recorded seconds
    ``t`` (ascending) and their power (NaN: none): a second between the first and the last
    without power counts as 0 W; a ride shorter than a window has no value for it."""
    dense = np.zeros(int(t[-1] - t[0]) + 1 if len(t) else 0)
    if len(t):
        dense[t - t[0]] = np.nan_to_num(power_w, nan=0.0)
    has_power = bool(len(t)) and not bool(np.isnan(power_w).all())
    out: dict[str, float | None] = {}
    for name, window in POWER_WINDOWS_S.items():
        value = best_mean(dense, window) if has_power else None
        out[name] = None if value is None else round(value, 1)
    return out


def _last_per_key(keys: np.ndarray) -> np.ndarray:
    """Indices of the last occurrence of each distinct key (in index order)."""
    reverse = keys[::-1]
    _, first = np.unique(reverse, return_index=True)
    return np.sort(len(keys) - 1 - first)


class Recording:
    """Per-rider per-second columns in chunks (see the module docstring). Not thread-safe."""

    def __init__(self, *, chunk_s: int = CHUNK_S, max_span_s: int = MAX_SPAN_S) -> None:
        self.chunk_s = chunk_s
        self.max_span_s = max_span_s
        self.t0: int | None = None
        self.rows = 0  # rider rows every chunk has
        self.used = 0  # riders (slots) seen: 1 + the highest slot recorded
        self.chunks: dict[int, dict[str, np.ndarray]] = {}
        self.dirty: set[int] = set()  # chunks changed since the last ``take_dirty``
        self.changed = np.zeros(0, bool)  # riders changed since the last ``take_changed``
        self.dropped = 0

    # -- recording -----------------------------------------------------------------------
    def add(self, slot: np.ndarray, values: np.ndarray) -> None:
        """Record applied samples: ``slot`` per sample, ``values`` (n, 6) as in
        ``actors.wire.VALUE_COLUMNS`` (NaN: absent)."""
        timed = ~np.isnan(values[:, 0]) if len(slot) else np.zeros(0, bool)
        if not timed.all():
            slot, values = slot[timed], values[timed]
        if not len(slot):
            return
        sec = np.floor(values[:, 0]).astype(np.int64)
        if self.t0 is None:
            self.t0 = int(sec.min())
        offset = sec - self.t0
        inside = np.abs(offset) <= self.max_span_s
        if not inside.all():
            self.dropped += int(np.count_nonzero(~inside))
            slot, values, offset = slot[inside], values[inside], offset[inside]
            if not len(slot):
                return
        key = slot * (2 * self.max_span_s + 1) + offset + self.max_span_s
        unique = _distinct(key)
        if not unique:  # newest by device time last, so "last per second" is the newest
            order = np.argsort(values[:, 0], kind="stable")
            slot, values, offset, key = slot[order], values[order], offset[order], key[order]
        self._grow(int(slot.max()) + 1)
        chunk = np.floor_divide(offset, self.chunk_s)
        pos = offset - chunk * self.chunk_s
        low, high = int(chunk.min()), int(chunk.max())
        numbers = [low] if low == high else np.unique(chunk).tolist()  # (a tick: one chunk, or two)
        present = ~np.isnan(values)
        for number in numbers:
            mine = slice(None) if low == high else chunk == number
            arrays = self._chunk(number)
            self.dirty.add(number)
            for field in FIELDS:
                column = field.value_column
                rows = np.flatnonzero(present[mine, column])
                if not unique and len(rows):
                    rows = rows[_last_per_key(key[mine][rows])]
                if len(rows):
                    arrays[field.name][slot[mine][rows], pos[mine][rows]] = field.quantise(values[mine][rows, column])
        self.changed[slot] = True

    def _chunk(self, number: int) -> dict[str, np.ndarray]:
        found = self.chunks.get(number)
        if found is None:
            found = self.chunks[number] = {f.name: np.full((self.rows, self.chunk_s), f.absent, f.dtype) for f in FIELDS}
        return found

    def _grow(self, riders: int) -> None:
        self.used = max(self.used, riders)
        if riders > len(self.changed):
            changed = np.zeros(max(16, 1 << (riders - 1).bit_length()), bool)
            changed[: len(self.changed)] = self.changed
            self.changed = changed
        if riders <= self.rows:
            return
        rows = max(16, 1 << (riders - 1).bit_length())
        for arrays in self.chunks.values():
            for f in FIELDS:
                grown = np.full((rows, self.chunk_s), f.absent, f.dtype)
                grown[: self.rows] = arrays[f.name]
                arrays[f.name] = grown
        self.rows = rows

    def take_changed(self) -> np.ndarray:
        """The slots changed since the last call (and forget them)."""
        slots = np.flatnonzero(self.changed[: self.used])
        self.changed[:] = False
        return slots

    # -- reading -------------------------------------------------------------------------
    def series(self, slot: int) -> Series:
        """One rider's recorded seconds (empty when it has none)."""
        return self.series_many([slot])[0]

    def series_many(self, slots: list[int]) -> list[Series]:
        """The series of several riders, from one pass over the chunks."""
        t0 = self.t0 or 0
        if not self.chunks or not slots:
            return [Series(t0, np.zeros(0, np.int64), {f.name: np.zeros(0) for f in FIELDS}) for _ in slots]
        numbers = sorted(self.chunks)
        rows = np.array([s if s < self.rows else -1 for s in slots], np.int64)
        known = rows >= 0
        columns: dict[str, np.ndarray] = {}
        for f in FIELDS:
            block = np.concatenate([self.chunks[n][f.name][np.where(known, rows, 0)] for n in numbers], axis=1)
            block[~known] = f.absent
            columns[f.name] = block
        t = np.concatenate([np.arange(n * self.chunk_s, (n + 1) * self.chunk_s) for n in numbers])
        out = []
        for i in range(len(slots)):
            has = np.zeros(len(t), bool)
            for f in FIELDS:
                has |= columns[f.name][i] != f.absent
            out.append(Series(t0, t[has], {f.name: f.value(columns[f.name][i][has]) for f in FIELDS}))
        return out

    def nbytes(self) -> int:
        return sum(a.nbytes for arrays in self.chunks.values() for a in arrays.values())

    # -- checkpoints ---------------------------------------------------------------------
    def meta(self) -> dict[str, Any]:
        """What the session checkpoint carries (the chunks travel beside it)."""
        return {"t0": self.t0, "chunk_s": self.chunk_s, "span": self.max_span_s, "used": self.used,
                "chunks": sorted(self.chunks), "dropped": self.dropped}

    def encode_chunk(self, number: int) -> bytes:
        arrays = self.chunks[number]
        return msgpack.packb(  # type: ignore[no-any-return]
            {"r": self.used, "c": {f.name: arrays[f.name][: self.used].tobytes() for f in FIELDS}}, use_bin_type=True)

    def take_dirty(self) -> dict[str, bytes]:
        """The chunks changed since the last call, encoded, keyed by chunk number (text).
        A caller whose write fails gives them back with ``mark_dirty``."""
        taken = {str(n): self.encode_chunk(n) for n in sorted(self.dirty)}
        self.dirty.clear()
        return taken

    def mark_dirty(self, numbers: list[str]) -> None:
        self.dirty.update(int(n) for n in numbers)

    @classmethod
    def restore(cls, meta: dict[str, Any] | None, chunks: Mapping[bytes, bytes] | Mapping[str, bytes]) -> Recording:
        """A recording from ``meta()`` and the stored chunks (missing meta: an empty one)."""
        if not meta:
            return cls()
        rec = cls(chunk_s=int(meta["chunk_s"]), max_span_s=int(meta["span"]))
        rec.t0 = meta["t0"]
        rec.dropped = int(meta.get("dropped", 0))
        rec._grow(int(meta.get("used", 0)))
        wanted = {int(n) for n in meta["chunks"]}
        for raw_number, data in chunks.items():
            number = int(raw_number)
            if number not in wanted:
                continue
            raw = msgpack.unpackb(data, raw=False)
            riders = int(raw["r"])
            arrays = rec._chunk(number)
            for f in FIELDS:
                arrays[f.name][:riders] = np.frombuffer(raw["c"][f.name], f.dtype).reshape(riders, rec.chunk_s)
        missing = wanted - set(rec.chunks)
        if missing:
            raise ValueError(f"recording chunks {sorted(missing)} are missing from Redis")
        return rec
