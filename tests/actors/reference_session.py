"""The per-sample ``SessionState`` as of commit e23ca92, kept verbatim as the reference the
columnar apply (``actors/columnar.py``) is compared with in ``test_session_columnar.py``.
Not used by the server."""

from __future__ import annotations

import enum
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

from actors.errors import ActorError, CheckpointError, PhaseError

CHECKPOINT_VERSION = 1
BOARD_COLUMNS = (
    "participant", "rank", "energy_kj", "hr_bpm", "power_w", "cadence_rpm",
    "speed_mps", "distance_m", "last_ts", "samples",
)


class Phase(str, enum.Enum):
    SCHEDULED = "scheduled"
    LOBBY = "lobby"
    LIVE = "live"
    COOLDOWN = "cooldown"
    ENDED = "ended"

    def can_go_to(self, other: Phase) -> bool:
        """Phases only move forward (skipping is allowed)."""
        order = list(Phase)
        return order.index(other) > order.index(self)


# Per-participant float arrays; NaN means "never seen".
_FLOAT_COLUMNS = (
    "hr_bpm", "power_w", "cadence_rpm", "speed_mps",  # latest values
    "distance_m",  # largest cumulative distance seen
    "last_ts", "energy_kj",
    "hr_sum", "power_sum", "cadence_sum", "hr_max", "power_max", "speed_max",
)
_INT_COLUMNS = ("hr_n", "power_n", "cadence_n", "samples", "rejected")
_LATEST = ("hr_bpm", "power_w", "cadence_rpm", "speed_mps")

MAX_TAGS = 8
MAX_TAG_VALUE_CHARS = 64
TAG_KEY = re.compile(r"[A-Za-z0-9_.-]{1,32}")


class TagError(ActorError, ValueError):
    """Participant tags that break the rules of ``check_tags`` (the message says which)."""


def check_tags(tags: Mapping[str, str]) -> dict[str, str]:
    """Return ``tags`` as a plain dict if valid, else raise ``TagError``.

    At most ``MAX_TAGS`` tags; keys match ``[A-Za-z0-9_.-]{1,32}``; values are str of 1 to
    ``MAX_TAG_VALUE_CHARS`` printable characters. The edge validates join bodies with this
    same function, so a bad tag is refused before it reaches a session.
    """
    if not isinstance(tags, Mapping):
        raise TagError("tags must be an object mapping names to strings")
    if len(tags) > MAX_TAGS:
        raise TagError(f"at most {MAX_TAGS} tags, got {len(tags)}")
    for key, value in tags.items():
        if not isinstance(key, str) or not TAG_KEY.fullmatch(key):
            raise TagError(f"tag name {key!r} must match [A-Za-z0-9_.-]{{1,32}}")
        if not isinstance(value, str):
            raise TagError(f"tag {key!r} must be a string")
        if not 1 <= len(value) <= MAX_TAG_VALUE_CHARS or not value.isprintable():
            raise TagError(f"tag {key!r} must be 1-{MAX_TAG_VALUE_CHARS} printable characters")
    return dict(tags)


@dataclass(slots=True)
class DeviceCursor:
    """Which seqs of one device were applied: all up to ``contig``, plus ``pending``."""

    slot: int
    contig: int = 0
    ts_contig: float | None = None
    # seq -> (ts, power) of applied samples above contig; ts None marks a rejected seq.
    pending: dict[int, tuple[float | None, float]] = field(default_factory=dict)

    def seen(self, seq: int) -> bool:
        return seq <= self.contig or seq in self.pending


@dataclass(frozen=True, slots=True)
class DeviceBatch:
    """What one tick carries for one device: valid wire rows and rejected seqs."""

    device: str
    participant: str
    rows: Sequence[Sequence[Any]] = ()
    rejected: Sequence[int] = ()


@dataclass(slots=True)
class ApplyResult:
    applied: int = 0
    duplicates: int = 0
    rejected: int = 0


class SessionState:
    """One class's roster and live numbers. Not thread-safe; one owner at a time."""

    def __init__(
        self,
        session_id: str,
        *,
        board_size: int = 10,
        max_gap_s: float = 5.0,
        max_pending_per_device: int = 4096,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.session_id = session_id
        self.board_size = board_size
        self.max_gap_s = max_gap_s
        self.max_pending_per_device = max_pending_per_device
        self.clock = clock
        self.phase = Phase.LOBBY
        self.version = 0
        self.participants: list[str] = []
        self.slots: dict[str, int] = {}
        self.active = np.zeros(0, dtype=bool)
        self.devices: dict[str, DeviceCursor] = {}
        self.tags: dict[str, dict[str, str]] = {}  # participant -> its tags (absent: none)
        self.totals = {"applied": 0, "duplicates": 0, "rejected": 0}
        self._cols: dict[str, np.ndarray] = {}
        self._allocate(16)
        self._board_cache: tuple[int, dict[str, Any]] | None = None

    # -- roster -----------------------------------------------------------------
    def _allocate(self, capacity: int) -> None:
        n = len(self.participants)
        for name in _FLOAT_COLUMNS:
            fresh = np.full(capacity, np.nan if name not in ("energy_kj",) else 0.0)
            if name in ("hr_sum", "power_sum", "cadence_sum"):
                fresh[:] = 0.0
            if name in self._cols:
                fresh[:n] = self._cols[name][:n]
            self._cols[name] = fresh
        for name in _INT_COLUMNS:
            fresh_i = np.zeros(capacity, dtype=np.int64)
            if name in self._cols:
                fresh_i[:n] = self._cols[name][:n]
            self._cols[name] = fresh_i
        active = np.zeros(capacity, dtype=bool)
        active[: len(self.active)] = self.active[:capacity]
        self.active = active

    def join(self, participant: str, tags: Mapping[str, str] | None = None) -> int:
        """Add (or re-activate) a participant; returns its slot. Idempotent.

        ``tags`` (validated by ``check_tags``, ``TagError`` before anything changes) replace
        the participant's tags; ``None`` keeps the ones it has, ``{}`` clears them.
        """
        if tags is not None:
            self._set_tags(participant, check_tags(tags))
        slot = self.slots.get(participant)
        if slot is None:
            slot = len(self.participants)
            if slot >= len(self.active):
                self._allocate(2 * len(self.active))
            self.participants.append(participant)
            self.slots[participant] = slot
        if not self.active[slot]:
            self.active[slot] = True
            self._touch()
        return slot

    def _set_tags(self, participant: str, tags: dict[str, str]) -> None:
        if self.tags.get(participant, {}) == tags:
            return
        if tags:
            self.tags[participant] = tags
        else:
            self.tags.pop(participant, None)
        self._touch()

    def leave(self, participant: str) -> bool:
        """Hide a participant from the board; its numbers are kept. Idempotent."""
        slot = self.slots.get(participant)
        if slot is None or not self.active[slot]:
            return False
        self.active[slot] = False
        self._touch()
        return True

    def set_phase(self, phase: Phase) -> None:
        if phase == self.phase:
            return
        if not self.phase.can_go_to(phase):
            raise PhaseError(self.phase.value, phase.value)
        self.phase = phase
        self._touch()

    def _touch(self) -> None:
        self.version += 1

    # -- applying samples ---------------------------------------------------------
    def apply(self, batches: Iterable[DeviceBatch]) -> ApplyResult:
        result = ApplyResult()
        for batch in batches:
            self._apply_device(batch, result)
        for key in ("applied", "duplicates", "rejected"):
            self.totals[key] += getattr(result, key)
        if result.applied or result.rejected:
            self._touch()
        return result

    def _cursor(self, device: str, participant: str) -> DeviceCursor:
        cursor = self.devices.get(device)
        if cursor is None:
            cursor = self.devices[device] = DeviceCursor(self.join(participant))
        elif not self.active[cursor.slot]:
            self.active[cursor.slot] = True
        return cursor

    def _apply_device(self, batch: DeviceBatch, result: ApplyResult) -> None:
        cursor = self._cursor(batch.device, batch.participant)
        for seq in batch.rejected:
            if cursor.seen(seq):
                continue
            self._cols["rejected"][cursor.slot] += 1
            result.rejected += 1
            self._place(cursor, seq, None, 0.0)
        for row in batch.rows:
            seq = int(row[0])
            if cursor.seen(seq):
                result.duplicates += 1
                continue
            if len(cursor.pending) >= self.max_pending_per_device and seq != cursor.contig + 1:
                continue  # far ahead of a gap: not applied, not acked; the device resends it
            self._record(cursor.slot, row)
            power = row[3] if len(row) > 3 and row[3] is not None else 0.0
            self._place(cursor, seq, float(row[1]), float(power))
            result.applied += 1

    def _record(self, slot: int, row: Sequence[Any]) -> None:
        c = self._cols
        ts = float(row[1])
        values = list(row[2:7]) + [None] * (7 - len(row))
        hr, power, cadence, speed, distance = values[:5]
        c["samples"][slot] += 1
        newest = not ts < c["last_ts"][slot]  # NaN compares False: first sample is newest
        if newest:
            c["last_ts"][slot] = ts
        for name, value in zip(_LATEST, (hr, power, cadence, speed), strict=True):
            if value is not None and (newest or np.isnan(c[name][slot])):
                c[name][slot] = value
        if hr is not None:
            c["hr_sum"][slot] += hr
            c["hr_n"][slot] += 1
            c["hr_max"][slot] = np.fmax(c["hr_max"][slot], hr)
        if power is not None:
            c["power_sum"][slot] += power
            c["power_n"][slot] += 1
            c["power_max"][slot] = np.fmax(c["power_max"][slot], power)
        if cadence is not None:
            c["cadence_sum"][slot] += cadence
            c["cadence_n"][slot] += 1
        if speed is not None:
            c["speed_max"][slot] = np.fmax(c["speed_max"][slot], speed)
        if distance is not None:
            c["distance_m"][slot] = np.fmax(c["distance_m"][slot], distance)

    def _place(self, cursor: DeviceCursor, seq: int, ts: float | None, power: float) -> None:
        if seq != cursor.contig + 1:
            cursor.pending[seq] = (ts, power)
            return
        self._advance(cursor, ts, power)
        while cursor.contig + 1 in cursor.pending:
            ts_next, power_next = cursor.pending.pop(cursor.contig + 1)
            self._advance(cursor, ts_next, power_next)

    def _advance(self, cursor: DeviceCursor, ts: float | None, power: float) -> None:
        cursor.contig += 1
        if ts is None:  # a rejected seq: consumed, baseline unchanged
            return
        if cursor.ts_contig is not None and power:
            dt = min(max(ts - cursor.ts_contig, 0.0), self.max_gap_s)
            self._cols["energy_kj"][cursor.slot] += power * dt / 1000.0
        cursor.ts_contig = ts if cursor.ts_contig is None else max(cursor.ts_contig, ts)

    def applied_seqs(self) -> dict[str, int]:
        """Per device, the highest seq up to which every sample was applied or rejected."""
        return {device: cursor.contig for device, cursor in self.devices.items()}

    # -- reading --------------------------------------------------------------------
    def _row(self, slot: int, rank: int) -> list[Any]:
        c = self._cols

        def val(name: str, digits: int = 3) -> float | None:
            v = c[name][slot]
            return None if np.isnan(v) else round(float(v), digits)

        return [
            self.participants[slot], rank, round(float(c["energy_kj"][slot]), 4),
            val("hr_bpm"), val("power_w"), val("cadence_rpm"), val("speed_mps"),
            val("distance_m"), val("last_ts", 6), int(c["samples"][slot]),
        ]

    def ranking(self) -> np.ndarray:
        """Active slots ordered by energy (desc), ties by join order."""
        n = len(self.participants)
        slots = np.flatnonzero(self.active[:n])
        energy = self._cols["energy_kj"][slots]
        return slots[np.lexsort((slots, -energy))]

    def board(self) -> dict[str, Any]:
        """Top-N plus every active participant's row (with its rank), cached per version."""
        if self._board_cache and self._board_cache[0] == self.version:
            return self._board_cache[1]
        order = self.ranking()
        rows = [self._row(int(slot), rank) for rank, slot in enumerate(order, start=1)]
        board = {
            "session": self.session_id,
            "version": self.version,
            "phase": self.phase.value,
            "n": len(rows),
            "cols": list(BOARD_COLUMNS),
            "top": rows[: self.board_size],
            "rows": rows,
        }
        self._board_cache = (self.version, board)
        return board

    def summary(self, participant: str) -> dict[str, Any] | None:
        slot = self.slots.get(participant)
        if slot is None:
            return None
        c = self._cols

        def avg(total: str, count: str) -> float | None:
            n = int(c[count][slot])
            return float(c[total][slot]) / n if n else None

        def num(name: str) -> float | None:
            v = c[name][slot]
            return None if np.isnan(v) else float(v)

        return {
            "participant": participant,
            "active": bool(self.active[slot]),
            "tags": dict(self.tags.get(participant, {})),
            "energy_kj": float(c["energy_kj"][slot]),
            "samples": int(c["samples"][slot]),
            "rejected": int(c["rejected"][slot]),
            "hr_avg": avg("hr_sum", "hr_n"),
            "power_avg": avg("power_sum", "power_n"),
            "cadence_avg": avg("cadence_sum", "cadence_n"),
            "hr_max": num("hr_max"),
            "power_max": num("power_max"),
            "speed_max": num("speed_max"),
            "distance_m": num("distance_m"),
            "latest": {k: num(k) for k in _LATEST},
            "last_ts": num("last_ts"),
        }

    def snapshot(self) -> dict[str, Any]:
        return {
            "session": self.session_id,
            "phase": self.phase.value,
            "version": self.version,
            "totals": dict(self.totals),
            "participants": [self.summary(p) for p in self.participants],
            "devices": self.applied_seqs(),
        }

    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in self._cols.values()) + self.active.nbytes)

    # -- checkpoints ----------------------------------------------------------------
    def to_checkpoint(self) -> bytes:
        n = len(self.participants)
        payload = {
            "v": CHECKPOINT_VERSION,
            "session": self.session_id,
            "phase": self.phase.value,
            "version": self.version,
            "board_size": self.board_size,
            "max_gap_s": self.max_gap_s,
            "participants": self.participants,
            "active": self.active[:n].tobytes(),
            "cols": {name: arr[:n].tobytes() for name, arr in self._cols.items()},
            "devices": {
                d: [c.slot, c.contig, c.ts_contig, [[s, t, p] for s, (t, p) in c.pending.items()]]
                for d, c in self.devices.items()
            },
            "totals": self.totals,
            "tags": self.tags,  # optional: checkpoints written before tags have none
        }
        return msgpack.packb(payload, use_bin_type=True)  # type: ignore[no-any-return]

    @classmethod
    def from_checkpoint(cls, data: bytes, *, clock: Callable[[], float] = time.time) -> SessionState:
        try:
            raw = msgpack.unpackb(data, raw=False, strict_map_key=False)
            if raw.get("v") != CHECKPOINT_VERSION:
                raise CheckpointError(f"checkpoint version {raw.get('v')!r} unsupported")
            state = cls(raw["session"], board_size=raw["board_size"], max_gap_s=raw["max_gap_s"], clock=clock)
            state._restore(raw)
        except CheckpointError:
            raise
        except Exception as exc:
            raise CheckpointError(f"corrupt checkpoint: {exc!r}") from exc
        return state

    def _restore(self, raw: dict[str, Any]) -> None:
        self.phase = Phase(raw["phase"])
        self.version = raw["version"]
        participants = list(raw["participants"])
        n = len(participants)
        self._allocate(max(16, 1 << max(n - 1, 0).bit_length()))
        self.participants = participants
        self.slots = {p: i for i, p in enumerate(participants)}
        self.active[:n] = np.frombuffer(raw["active"], dtype=bool)
        for name, buf in raw["cols"].items():
            arr = self._cols[name]
            arr[:n] = np.frombuffer(buf, dtype=arr.dtype)
        for device, (slot, contig, ts, pending) in raw["devices"].items():
            self.devices[device] = DeviceCursor(slot, contig, ts, {s: (t, p) for s, t, p in pending})
        self.totals = dict(raw["totals"])
        self.tags = {str(p): dict(t) for p, t in (raw.get("tags") or {}).items() if t and p in self.slots}
