"""``SessionState``: the whole logic of one live class, with no Ray and no I/O.

What it owns: the roster (participant id -> slot), per-participant numpy arrays indexed
by slot (latest values, energy, sums for averages, maxima, samples applied), and one
``DeviceCursor`` per device (which seqs were applied).

Contracts
* ``apply`` is idempotent: a (device, seq) pair counts at most once, whatever order or
  how often it arrives. Seqs start at 1 per (device, session) and grow by exactly 1.
* Energy is integrated over *device* timestamps: sample k of a device contributes
  ``power_k * clamp(ts_k - ts_prev, 0, max_gap_s)`` where ``ts_prev`` is the timestamp of
  the device's previous valid sample by seq. A sample whose predecessor has not arrived
  yet waits in the cursor's ``pending`` map and is credited when the gap fills, so the
  result does not depend on arrival order. A rejected sample consumes its seq without
  moving ``ts_prev``. The first sample of a device only sets the baseline.
* Participant tags (cohort values such as ``{"age": "30-39"}``, see ``check_tags``) are
  per participant, set by ``join`` and never touched by ``apply``.
* Each participant's profile (``actors.profile``: what the rider set, estimates for the
  rest) is set by ``set_profile`` when they join (the shell reads it from Redis) and kept
  here and in checkpoints; live metrics (NP, IF, TSS, zones, calories: ``actors.metrics``)
  are updated from the applied samples of every tick, as columns.
* Presence (``actors.presence``): each rider is ``active``, ``reconnecting`` or ``left``,
  from when its samples or join last arrived; ``age_presence`` (called from the tick path)
  moves riders along and takes those gone for the grace period off the board.
* The class plan (``actors.plan``): ``set_plan`` gives the class a scheduled start and
  segments; ``advance_plan`` (called from the tick path and the shell's own loop) moves the
  phase forward to what the plan's clock says (scheduled, lobby, live, ended) and marks the
  board changed once a second while the class is in the lobby or live, so boards carry
  the time left; a manual ``set_phase`` still moves it (forward only). Every board has a
  ``plan`` block and each rider's ``power_target`` / ``cadence_target`` / ``hr_target``.
* Everything survives a restart through ``to_checkpoint`` / ``from_checkpoint``; a
  checkpoint written before profiles and metrics restores with default profiles and
  metrics counted from then on.
"""

from __future__ import annotations

import enum
import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

from actors.columnar import ApplyResult, DeviceCursor, DeviceTable, TickColumns, apply_tick
from actors.errors import ActorError, CheckpointError, PhaseError
from actors.metrics import METRIC_BOARD_COLUMNS, RiderMetrics
from actors.recording import Recording, power_bests
from actors.replay import REPLAY_COLUMNS, Replay
from actors.plan import TARGET_COLUMNS, ClassClock, ClassPlan, PlanError, target_codes, target_labels
from actors.presence import DEFAULT_GRACE_S, DEFAULT_QUIET_S, LEFT, PresenceTable
from actors.profile import Profile, check_profile
from actors.wire import SampleColumns, TickRequest
from devices.text import TextError, clean_text

log = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1
BOARD_COLUMNS = (
    "participant", "rank", "energy_kj", "hr_bpm", "power_w", "cadence_rpm",
    "speed_mps", "distance_m", "last_ts", "samples",
    *METRIC_BOARD_COLUMNS,  # (added later: trailing, so clients reading by position keep working)
    "presence",
    *TARGET_COLUMNS,  # (issue 16's class plan: below / in / above the segment's targets)
    *REPLAY_COLUMNS,  # (on-demand classes: rank among the recorded riders and here now; actors.replay)
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
_BOARD_VALUES = (("hr_bpm", 3), ("power_w", 3), ("cadence_rpm", 3), ("speed_mps", 3), ("distance_m", 3), ("last_ts", 6))
_METRIC_DIGITS = {"power_zone": 0, "hr_zone": 0, "np_w": 1, "kcal": 1, "if": 3, "tss": 1}
# The numeric board columns (``board_matrix``): those between rank and presence.
_PRESENCE_AT = BOARD_COLUMNS.index("presence")
BOARD_VALUE_COLUMNS = BOARD_COLUMNS[2:_PRESENCE_AT]
_INT_VALUES = tuple(BOARD_VALUE_COLUMNS.index(c) for c in ("samples", "power_zone", "hr_zone"))


def rows_of(ids: np.ndarray, ranks: np.ndarray, matrix: np.ndarray, presence: np.ndarray,
            targets: Sequence[np.ndarray], hidden: Sequence[int] = (),
            whole: Mapping[int, np.ndarray] | None = None) -> list[list[Any]]:
    """Board rows from columns: ids and presence/target labels (object arrays), ranks, the
    ``board_matrix`` numbers (NaN: None; whole-number columns as int); ``hidden`` board
    columns blanked; ``whole``: more board columns by index, whole numbers (NaN: None)."""
    table = np.empty((len(ids), len(BOARD_COLUMNS)), dtype=object)
    table[:, 0] = ids
    table[:, 1] = ranks.astype(object)
    values = matrix.astype(object)
    unknown = np.isnan(matrix)
    values[unknown] = None
    for j in _INT_VALUES:
        known = ~unknown[:, j]
        values[known, j] = matrix[known, j].astype(np.int64).astype(object)
    table[:, 2:_PRESENCE_AT] = values
    table[:, _PRESENCE_AT] = presence
    for j, labels in enumerate(targets, start=_PRESENCE_AT + 1):
        table[:, j] = labels
    for j, numbers in (whole or {}).items():
        known = ~np.isnan(numbers)
        table[known, j] = numbers[known].astype(np.int64).astype(object)
    for j in hidden:
        table[:, j] = None
    return table.tolist()  # type: ignore[no-any-return]


def board_row(participant: str, rank: int, values: Sequence[float], presence: str,
              targets: Sequence[str | None]) -> list[Any]:
    """One board row from one ``board_matrix`` row, its presence and its target labels (what
    ``rows_of`` builds for many at once, without numpy's per-call cost)."""
    row: list[Any] = [participant, rank]
    row.extend(None if v != v else v for v in values)  # (NaN != NaN)
    for j in _INT_VALUES:
        if row[2 + j] is not None:
            row[2 + j] = int(row[2 + j])
    row.append(presence)
    row.extend(targets)
    row.extend([None] * len(REPLAY_COLUMNS))  # (a sharded class is never an on-demand one)
    return row

MAX_TAGS = 8
MAX_TAG_VALUE_CHARS = 64
TAG_KEY = re.compile(r"[A-Za-z0-9_.-]{1,32}")


class TagError(ActorError, ValueError):
    """Participant tags that break the rules of ``check_tags`` (the message says which)."""


def check_tags(tags: Mapping[str, str]) -> dict[str, str]:
    """Return ``tags`` as a plain dict if valid, else raise ``TagError``.

    At most ``MAX_TAGS`` tags; keys match ``[A-Za-z0-9_.-]{1,32}``; values are str of 1 to
    ``MAX_TAG_VALUE_CHARS`` printable characters, returned NFC-normalised
    (``devices.text.clean_text``). The edge validates join bodies with this
    same function, so a bad tag is refused before it reaches a session.
    """
    if not isinstance(tags, Mapping):
        raise TagError("tags must be an object mapping names to strings")
    if len(tags) > MAX_TAGS:
        raise TagError(f"at most {MAX_TAGS} tags, got {len(tags)}")
    for key, value in tags.items():
        if not isinstance(key, str) or not TAG_KEY.fullmatch(key):
            raise TagError(f"tag name {key!r} must match [A-Za-z0-9_.-]{{1,32}}")
    try:
        return {key: clean_text(value, f"tag {key!r}", max_chars=MAX_TAG_VALUE_CHARS) for key, value in tags.items()}
    except TextError as exc:
        raise TagError(str(exc)) from None


@dataclass(frozen=True, slots=True)
class DeviceBatch:
    """What one tick carries for one device: valid wire rows and rejected seqs."""

    device: str
    participant: str
    rows: Sequence[Sequence[Any]] = ()
    rejected: Sequence[int] = ()


class SessionState:
    """One class's roster and live numbers. Not thread-safe; one owner at a time."""

    def __init__(
        self,
        session_id: str,
        *,
        board_size: int = 10,
        max_gap_s: float = 5.0,
        max_pending_per_device: int = 4096,
        presence_grace_s: float = DEFAULT_GRACE_S,
        presence_quiet_s: float = DEFAULT_QUIET_S,
        lobby_lead_s: float = 300.0,
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
        self.device_table = DeviceTable()
        self.tags: dict[str, dict[str, str]] = {}  # participant -> its tags (absent: none)
        self.totals = {"applied": 0, "duplicates": 0, "rejected": 0}
        self.profiles: dict[str, Profile] = {}  # participant -> what it set (absent: not read yet)
        self._profile_dicts: dict[str, dict[str, Any]] = {}  # the same, as checkpoints hold them
        self.metrics = RiderMetrics(0)
        self.metrics_errors = 0
        self.presence = PresenceTable(quiet_s=presence_quiet_s, grace_s=presence_grace_s)
        self.recording = Recording()
        self.gone: list[str] = []  # riders the grace took off the board since the cell last looked (seats)
        self.replay: Replay | None = None  # an on-demand class: the recorded class's riders
        self.replay_of: str | None = None  # (the source's id: kept while the ghosts load)
        self._replay_starts: dict[str, Any] | None = None
        self.recording_errors = 0
        self.records_set: dict[str, list[str]] = {}  # participant -> personal records set in this class
        self.records_known = False  # the history sink has reported (a summary's records: None before)
        self.schedule = ClassClock(lobby_lead_s=lobby_lead_s)
        self._plan_second = -1  # the whole second of the clock the board last counted down in
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
        self.metrics.grow(capacity, n)
        self.presence.grow(capacity, n)
        if self.replay is not None:
            self.replay.grow(capacity, n)

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
        back = not self.active[slot]
        self.active[slot] = True
        if self.presence.seen(slot, self.clock()) or back:
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

    def set_profile(self, participant: str, profile: Profile | None) -> None:
        """Take a joined participant's profile (``None``: it has none, estimates only).
        Metrics from then on use it; what was counted before stays."""
        slot = self.slots[participant]
        profile = profile or Profile()
        if self.profiles.get(participant) == profile:
            return
        self.profiles[participant] = profile
        self._profile_dicts[participant] = profile.as_dict()
        self.metrics.set_profile(slot, profile.effective(self._year()))
        self._touch()

    def _year(self) -> int:
        return time.gmtime(self.clock()).tm_year

    def leave(self, participant: str) -> bool:
        """Hide a participant from the board; its numbers are kept. Idempotent."""
        slot = self.slots.get(participant)
        if slot is None or not self.active[slot]:
            return False
        self.active[slot] = False
        self.presence.leave(slot)
        self._touch()
        return True

    def set_phase(self, phase: Phase) -> None:
        if phase == self.phase:
            return
        if not self.phase.can_go_to(phase):
            raise PhaseError(self.phase.value, phase.value)
        if phase is Phase.LIVE:  # the grace of riders quiet in the lobby starts now
            self.presence.restart(len(self.participants), self.clock())
        if phase in (Phase.LIVE, Phase.COOLDOWN, Phase.ENDED):
            self.schedule.went_live(self.clock())  # (the plan starts now if forced live early)
        self.phase = phase
        self._touch()

    # -- the class plan ---------------------------------------------------------------
    def set_plan(self, plan: ClassPlan | None, start_at: float | None) -> None:
        """Give the class its plan and scheduled start (either may be None). Only before it
        goes live (``PlanError`` after, unless nothing changes); a class still in the lobby
        or scheduled takes the phase its new clock says, even an earlier one (rescheduled)."""
        if plan == self.schedule.plan and start_at == self.schedule.start_at:
            return
        if self.phase not in (Phase.SCHEDULED, Phase.LOBBY):
            raise PlanError(f"the class is {self.phase.value}: its plan can no longer change")
        self.schedule.plan, self.schedule.start_at = plan, start_at
        due = self.schedule.due_phase(self.clock())
        if due in ("scheduled", "lobby"):
            self.phase = Phase(due)
        self._touch()
        self.advance_plan()

    def follow(self, phase: Phase, clock: ClassClock) -> bool:
        """Take another shard's class phase and clock (a class shard added while its class runs:
        ``cluster.class_shards``): its plan and start if this one has none, its live time, and
        its phase if that is ahead (phases only move forward). Idempotent; True if anything changed."""
        own, before = self.schedule, (self.phase, self.schedule.as_dict())
        if not own.active and clock.active:
            own.plan, own.start_at = clock.plan, clock.start_at
        if own.live_at is None and clock.live_at is not None:
            own.live_at = clock.live_at  # (the plan's segments keep the class's times)
        if self.phase.can_go_to(phase):
            self.set_phase(phase)
        changed = (self.phase, own.as_dict()) != before
        if changed:
            self._touch()
        return changed

    def set_replay(self, replay: Replay) -> None:
        """Make this an on-demand class of ``replay.source`` (ghosts built by the cell);
        riders' starts from a restored checkpoint are kept."""
        replay.grow(len(self.active), len(self.participants))
        if self._replay_starts is not None and self._replay_starts.get("source") == replay.source:
            replay.restore_starts(self._replay_starts, len(self.participants))
        self.replay, self.replay_of = replay, replay.source
        self._touch()

    def advance_plan(self) -> bool:
        """Move to the phase the plan's clock wants (forward only), and count the board down
        once a second in the lobby and live (once a minute when scheduled); an on-demand
        class's board moves once a second too (its ghosts ride on). Cheap: a few
        comparisons; True if the board changed."""
        now = self.clock()
        if self.replay is not None and self.phase is Phase.LIVE and int(now) != self._plan_second:
            self._plan_second = int(now)
            self._touch()
            return True
        if not self.schedule.active:
            return False
        due = self.schedule.due_phase(now)
        moved = due is not None and self.phase.can_go_to(Phase(due))
        if moved:
            self.set_phase(Phase(due))  # type: ignore[arg-type]
        step = 60 if self.phase is Phase.SCHEDULED else 1
        second = int(now) // step
        if self.phase in (Phase.SCHEDULED, Phase.LOBBY, Phase.LIVE) and second != self._plan_second:
            self._plan_second = second
            self._touch()
            return True
        return moved

    def age_presence(self, *, force: bool = False) -> bool:
        """Move quiet riders to ``reconnecting`` and, after the grace period, off the board
        (``left``); only while live or in cooldown. At most every ``AGE_INTERVAL_S`` unless
        ``force``. True if a rider's presence changed."""
        now = self.clock()
        if self.phase not in (Phase.LIVE, Phase.COOLDOWN) or not (force or self.presence.due(now)):
            return False
        changed = self.presence.age(self.active, len(self.participants), now)
        if changed is None:
            return False
        gone = changed[self.presence.code[changed] == LEFT]
        gone = gone[self.active[gone]]  # (riders who left by the grace now, not by a leave)
        self.active[gone] = False
        self.gone.extend(self.participants[slot] for slot in gone.tolist())
        self._touch()
        return True

    def _touch(self) -> None:
        self.version += 1

    # -- applying samples ---------------------------------------------------------
    def apply(self, batches: Iterable[DeviceBatch]) -> ApplyResult:
        """Apply device batches in order (each one's rejected seqs before its rows)."""
        batch_list = list(batches)
        request = TickRequest.from_batches(
            self.session_id, ((b.device, b.participant, b.rows, b.rejected) for b in batch_list))
        n_rejected = np.array([len(b.rejected) for b in batch_list], np.int64)
        n_rows = np.array([len(b.rows) for b in batch_list], np.int64)
        starts = np.cumsum(n_rejected + n_rows) - n_rejected - n_rows
        return self.apply_columns(
            request.devices, request.samples, request.rejected_device, request.rejected_seq,
            sample_pos=_positions(starts + n_rejected, n_rows), rejected_pos=_positions(starts, n_rejected),
        )

    def apply_tick(self, request: TickRequest) -> ApplyResult:
        """Apply one tick from the edge (its rejected seqs count as before its samples)."""
        return self.apply_columns(request.devices, request.samples, request.rejected_device, request.rejected_seq)

    def apply_columns(
        self,
        devices: Sequence[tuple[str, str]],
        samples: SampleColumns,
        rejected_device: np.ndarray,
        rejected_seq: np.ndarray,
        *,
        sample_pos: np.ndarray | None = None,
        rejected_pos: np.ndarray | None = None,
    ) -> ApplyResult:
        """Apply columns (``actors.wire``) as numpy, no Python per sample (``actors.columnar``)."""
        numbers = self._device_numbers(devices)
        if len(numbers) and self.presence.seen(self.device_table.slot[numbers], self.clock()):
            self._touch()
        m = len(rejected_seq)
        tick = TickColumns(
            sample_device=numbers[samples.device], seq=samples.seq, values=samples.values,
            rejected_device=numbers[rejected_device], rejected_seq=rejected_seq,
            sample_pos=np.arange(m, m + len(samples.seq)) if sample_pos is None else sample_pos,
            rejected_pos=np.arange(m) if rejected_pos is None else rejected_pos,
        )
        result = apply_tick(self._cols, self.device_table, tick, max_gap_s=self.max_gap_s,
                            max_pending=self.max_pending_per_device)
        for key in ("applied", "duplicates", "rejected"):
            self.totals[key] += getattr(result, key)
        if self.replay is not None and result.applied:
            self.replay.note(result.slot, self.clock())
        self._update_metrics(result)
        self._record(result)
        if result.applied or result.rejected:
            self._touch()
        return result

    def _update_metrics(self, result: ApplyResult) -> None:
        """Metrics are derived numbers: a bug there is logged (and counted in
        ``metrics_errors``) but never fails a tick, whose samples are already applied."""
        try:
            self.metrics.update(result.slot, result.values, self.max_gap_s)
        except Exception:
            self.metrics_errors += 1
            if self.metrics_errors == 1 or self.metrics_errors % 1000 == 0:
                log.exception("session %s: live metrics failed (%d times)", self.session_id, self.metrics_errors)

    def _record(self, result: ApplyResult) -> None:
        """The per-second recording, derived like the metrics: a bug there is logged and
        counted (``recording_errors``), never fails a tick."""
        if not result.applied:
            return
        try:
            self.recording.add(result.slot, result.values)
        except Exception:
            self.recording_errors += 1
            if self.recording_errors == 1 or self.recording_errors % 1000 == 0:
                log.exception("session %s: recording failed (%d times)", self.session_id, self.recording_errors)

    def _device_numbers(self, devices: Sequence[tuple[str, str]]) -> np.ndarray:
        """Each device's number in the table, adding new devices (and joining their participant)."""
        table = self.device_table
        get = table.index.get
        known = [get(device) for device, _ in devices]
        if None in known:  # a device's first tick: join in order, as the per-sample apply did
            numbers = np.empty(len(devices), np.int64)
            for i, (device, participant) in enumerate(devices):
                number = get(device)
                if number is None:
                    number = table.add(device, self.join(participant))
                else:
                    self.active[table.slot[number]] = True
                numbers[i] = number
            return numbers
        numbers = np.array(known, dtype=np.int64)
        self.active[table.slot[numbers]] = True  # a device's samples bring its participant back
        return numbers

    @property
    def devices(self) -> dict[str, DeviceCursor]:
        """Every device's cursor, as copies (for inspection and tests)."""
        return self.device_table.cursors()

    def applied_seqs(self) -> dict[str, int]:
        """Per device, the highest seq up to which every sample was applied or rejected."""
        return self.device_table.applied_seqs()

    # -- reading --------------------------------------------------------------------
    def board_rows(self, order: np.ndarray) -> list[list[Any]]:
        """Board rows of the slots in ``order`` (ranked from 1), built as columns: numbers
        rounded by numpy (``board_matrix``), None where never seen."""
        if not len(order):
            return []
        replay = {} if self.replay is None else dict(zip(
            (BOARD_COLUMNS.index(c) for c in REPLAY_COLUMNS), self.replay.ranks(order, self._cols["energy_kj"], self.clock())))
        return rows_of(np.array(self.participants, dtype=object)[order], np.arange(1, len(order) + 1),
                       self.board_matrix(order), self.presence.labels(order),
                       [target_labels(codes) for codes in self.targets(order).values()], whole=replay)

    def targets(self, order: np.ndarray) -> dict[str, np.ndarray]:
        """Each rider's place against the running segment's targets (``actors.plan``)."""
        index = self.schedule.segment_at(self.clock()) if self.phase is Phase.LIVE else None
        segment = None if index is None or self.schedule.plan is None else self.schedule.plan.segments[index]
        c, m = self._cols, self.metrics.cols
        return target_codes(segment, power_w=c["power_w"][order], cadence_rpm=c["cadence_rpm"][order],
                            hr_bpm=c["hr_bpm"][order], ftp_w=m["ftp_w"][order], hr_max=m["hr_max_bpm"][order],
                            hr_rest=m["hr_rest_bpm"][order])

    def board_matrix(self, order: np.ndarray) -> np.ndarray:
        """The numbers of the board rows of the slots in ``order``: float64, one row per slot,
        one column per ``BOARD_VALUE_COLUMNS`` entry, rounded as the board shows them (energy
        4 digits, last_ts 6, zones whole, ...), NaN where never seen. What a class shard
        sends the edge instead of rows (``actors/board_part.py``)."""
        c = self._cols
        metrics = self.metrics.board_columns(order, power_w=c["power_w"], hr_bpm=c["hr_bpm"],
                                             energy_kj=c["energy_kj"], has_power=c["power_n"] > 0)
        columns = [np.round(c["energy_kj"][order], 4),
                   *(np.round(c[name][order], digits) for name, digits in _BOARD_VALUES),
                   c["samples"][order].astype(np.float64),
                   *(np.round(metrics[name], _METRIC_DIGITS[name]) for name in METRIC_BOARD_COLUMNS)]
        return np.column_stack(columns) if len(order) else np.zeros((0, len(BOARD_VALUE_COLUMNS)))

    def scores(self) -> np.ndarray:
        """Every slot's ranking score (energy, kJ, unrounded): a view, do not modify."""
        return self._cols["energy_kj"][: len(self.participants)]

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
        rows = self.board_rows(self.ranking())
        board = {
            "session": self.session_id,
            "version": self.version,
            "phase": self.phase.value,
            "n": len(rows),
            "cols": list(BOARD_COLUMNS),
            "top": rows[: self.board_size],
            "rows": rows,
        }
        plan = self.schedule.position(self.clock())
        if plan is not None:
            board["plan"] = plan
        if self.phase is Phase.ENDED:
            board["summaries"] = self.class_summaries(rows)
        if self.replay is not None:
            board["replay"] = self._replay_block(len(rows))
        self._board_cache = (self.version, board)
        return board

    def class_summaries(self, rows: list[list[Any]]) -> dict[str, dict[str, Any]]:
        """Each ranked rider's end-of-class summary (``docs/protocol.md``, "summary"): final
        rank, totals, zones, best efforts from the recording, and the personal records the
        class set (``records``: None until the history sink said, [] for none)."""
        ranked = [row[0] for row in rows]
        series = self.recording.series_many([self.slots[p] for p in ranked])
        out = {}
        for participant, rank, ride in zip(ranked, range(1, len(ranked) + 1), series, strict=True):
            whole = self.summary(participant) or {}
            metrics = whole.get("metrics") or {}
            out[participant] = {
                "rank": rank, "riders": len(ranked), "energy_kj": _rounded(whole.get("energy_kj"), 2),
                "kcal": _rounded(metrics.get("kcal"), 1), "distance_m": _rounded(whole.get("distance_m"), 1),
                "duration_s": int(ride.t[-1] - ride.t[0] + 1) if len(ride) else 0,
                "power_avg": _rounded(whole.get("power_avg"), 1), "power_max": _rounded(whole.get("power_max"), 1),
                "np_w": _rounded(metrics.get("np_w"), 1), "hr_avg": _rounded(whole.get("hr_avg"), 1),
                "hr_max": _rounded(whole.get("hr_max"), 1), "cadence_avg": _rounded(whole.get("cadence_avg"), 1),
                "power_zone_s": metrics.get("power_zone_s"), "hr_zone_s": metrics.get("hr_zone_s"),
                "bests": power_bests(ride.t, ride.values["power_w"]),
                "records": self.records_set.get(participant, []) if self.records_known else None,
            }
        return out

    def set_records(self, records: Mapping[str, list[str]]) -> None:
        """The personal records the history sink says riders set in this class (metric
        names; a rider not named set none). Shown in the end-of-class summaries."""
        merged = {p: sorted(set(self.records_set.get(p, [])) | set(m)) for p, m in records.items()}
        if self.records_known and all(self.records_set.get(p) == m for p, m in merged.items()):
            return
        self.records_set.update(merged)
        self.records_known = True
        self._touch()

    def _replay_block(self, here_now: int) -> dict[str, Any]:
        """The board's ``replay``: the source, ghosts and riders here now, and the leading
        ghosts at the offset of the rider furthest into the class (``ghosts_at``)."""
        assert self.replay is not None
        offsets = self.replay.offsets(np.flatnonzero(self.active[: len(self.participants)]), self.clock())
        started = offsets[~np.isnan(offsets)]
        furthest = int(max(0.0, started.max())) if len(started) else 0
        return {**self.replay.block(here_now), "offset_s": furthest,
                "ghosts": self.replay.ghosts_at(furthest, self.board_size)}

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
            "presence": self.presence.label(slot),
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
            "profile": self._profile_view(participant),
            "metrics": self.metrics.summary(slot, power_w=c["power_w"], hr_bpm=c["hr_bpm"],
                                            energy_kj=c["energy_kj"], has_power=c["power_n"] > 0),
        }

    def _profile_view(self, participant: str) -> dict[str, Any]:
        """What the rider set and what the class computes with (``estimated`` names the guesses)."""
        profile = self.profiles.get(participant) or Profile()
        return {"set": profile.as_dict(), "effective": profile.effective(self._year()).as_dict(),
                "loaded": participant in self.profiles}

    def snapshot(self) -> dict[str, Any]:
        return {
            "session": self.session_id,
            "phase": self.phase.value,
            "version": self.version,
            "totals": dict(self.totals),
            "presence": self.presence.counts(len(self.participants)),
            "schedule": self.schedule.as_dict(),
            "plan": self.schedule.position(self.clock()),
            "replay": None if self.replay is None else self.replay.block(int(self.active[: len(self.participants)].sum())),
            "participants": [self.summary(p) for p in self.participants],
            "devices": self.applied_seqs(),
        }

    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in self._cols.values()) + self.active.nbytes + self.metrics.nbytes())

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
            "devices": self.device_table.to_lists(),
            "totals": self.totals,
            "tags": self.tags,  # optional: checkpoints written before tags have none
            "metrics": self.metrics.to_checkpoint(n),  # optional too (before issue 16)
            "profiles": self._profile_dicts,
            "recording": self.recording.meta(),  # its chunks are written beside (actors.recording)
            "records": self.records_set if self.records_known else None,  # optional (issue 18)
            "schedule": self.schedule.as_dict(),  # optional: before the class plan, none
            **({"replay": self.replay.to_checkpoint(n)} if self.replay is not None else {}),
        }
        return msgpack.packb(payload, use_bin_type=True)  # type: ignore[no-any-return]

    @staticmethod
    def checkpoint_results(data: bytes) -> list[dict[str, Any]]:
        """From a checkpoint, without restoring it: every rider (slot order) with what a class
        result shows of it (``participant``, ``energy_kj``, ``samples``, ``distance_m``,
        ``power_avg``, ``hr_avg``, as ``summary`` gives them): what another shard of the
        class ranks it by and publishes of it."""
        raw = msgpack.unpackb(data, raw=False, strict_map_key=False)
        cols = {name: np.frombuffer(raw["cols"][name], np.int64 if name in _INT_COLUMNS else np.float64).tolist()
                for name in ("energy_kj", "samples", "distance_m", "power_sum", "power_n", "hr_sum", "hr_n")}

        def avg(total: str, count: str, i: int) -> float | None:
            return cols[total][i] / cols[count][i] if cols[count][i] else None

        return [{"participant": str(p), "energy_kj": cols["energy_kj"][i], "samples": cols["samples"][i],
                 "distance_m": None if math.isnan(cols["distance_m"][i]) else cols["distance_m"][i],
                 "power_avg": avg("power_sum", "power_n", i), "hr_avg": avg("hr_sum", "hr_n", i)}
                for i, p in enumerate(raw["participants"])]

    @classmethod
    def from_checkpoint(cls, data: bytes, *, clock: Callable[[], float] = time.time,
                        recording: Mapping[bytes, bytes] | Mapping[str, bytes] | None = None) -> SessionState:
        """``recording``: the recording's chunks as stored beside the checkpoint (a missing
        chunk is a ``CheckpointError``); ``None``: the recording is not restored (starts
        empty: for tools and tests of the state alone)."""
        try:
            raw = msgpack.unpackb(data, raw=False, strict_map_key=False)
            if raw.get("v") != CHECKPOINT_VERSION:
                raise CheckpointError(f"checkpoint version {raw.get('v')!r} unsupported")
            state = cls(raw["session"], board_size=raw["board_size"], max_gap_s=raw["max_gap_s"], clock=clock)
            state._restore(raw)
            if recording is not None:
                state.recording = Recording.restore(raw.get("recording"), recording)
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
        self.presence.code[:n] = np.where(self.active[:n], 0, LEFT)  # (reconnecting riders: active again,
        self.presence.restart(n, self.clock())                       # with a fresh grace)
        for name, buf in raw["cols"].items():
            arr = self._cols[name]
            arr[:n] = np.frombuffer(buf, dtype=arr.dtype)
        for device, (slot, contig, ts, pending) in raw["devices"].items():
            self.device_table.restore(device, slot, contig, ts, [(s, t, p) for s, t, p in pending])
        self.totals = dict(raw["totals"])
        self.schedule = ClassClock.of(raw.get("schedule"), lobby_lead_s=self.schedule.lobby_lead_s)
        self._replay_starts = raw.get("replay")  # (the cell rebuilds the ghosts: set_replay)
        self.replay_of = (raw.get("replay") or {}).get("source")
        self.tags = {str(p): dict(t) for p, t in (raw.get("tags") or {}).items() if t and p in self.slots}
        self.metrics.restore(raw.get("metrics") or {}, n)
        self.profiles = {str(p): check_profile(v, year=self._year()) for p, v in (raw.get("profiles") or {}).items()
                         if p in self.slots}
        self._profile_dicts = {p: profile.as_dict() for p, profile in self.profiles.items()}
        if raw.get("records") is not None:
            self.records_set = {str(p): list(m) for p, m in raw["records"].items()}
            self.records_known = True
        for participant, profile in self.profiles.items():  # (once per restore, not per tick)
            self.metrics.set_profile(self.slots[participant], profile.effective(self._year()))


def _rounded(value: Any, digits: int) -> float | None:
    return None if value is None else round(float(value), digits)


def _positions(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``starts[i], starts[i] + 1, ...`` (``counts[i]`` of them) for every i, concatenated."""
    total = int(counts.sum())
    offsets = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
    return np.repeat(starts, counts) + offsets  # type: ignore[no-any-return]
