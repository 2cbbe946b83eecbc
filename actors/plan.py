"""The class plan: a scheduled start and segments with targets and cues, and where a class
stands in it at any moment. Plain data and arithmetic: no Ray, no I/O, an injected ``now``.

A plan is a list of ``Segment``\\ s, each with a ``kind`` (``warm-up``, ``interval``,
``recovery``, ``cool-down``), a ``duration_s``, optional targets — a power target as a
Coggan zone range (``power_zone``, 1-7) *or* a share of the rider's FTP (``ftp_pct``, in
%), a ``cadence_rpm`` range, a heart-rate zone range (``hr_zone``, 1-5, Karvonen) — and an
optional ``cue`` (what the instructor says, shown as the segment starts and as the *next*
cue before that). A zone range may be given as one zone (``3``) or ``[lo, hi]``.

``ClassClock`` is a class's plan in time: the scheduled start (``start_at``, Unix s, may
be absent), when it actually went live (``live_at``: the scheduled start, or the moment an
operator forced it live earlier), and the lobby lead. ``due_phase(now)`` says which phase
the clock wants (``scheduled`` until ``start_at - lobby_lead_s``, then ``lobby``, ``live``
from the start, ``ended`` once the plan's segments are over; ``None``: the clock has no
opinion, e.g. no start and no plan); the session only ever moves *forward* to it, so a
manual phase change (``POST .../phase``) always wins. ``position(now)`` is the board's
``plan`` block. Both are a few comparisons (a bisect over the segment ends), cheap enough
for every tick.

``check_plan(raw)`` validates a plan given as JSON-like data and raises ``PlanError`` (a
``ValueError``: the edge answers 422 with its message) naming the field at fault.
"""

from __future__ import annotations

import bisect
import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from actors.errors import ActorError
from actors.metrics import hr_zone, power_zone
from devices.text import TextError, clean_text

__all__ = ["TARGET_COLUMNS", "ClassClock", "ClassPlan", "PlanError", "Segment", "SegmentKind", "check_plan",
           "target_codes", "target_labels"]

MAX_SEGMENTS = 200
MIN_SEGMENT_S = 5.0
MAX_SEGMENT_S = 4 * 3600.0
MAX_PLAN_S = 6 * 3600.0
MAX_CUE_CHARS = 200
N_POWER_ZONES, N_HR_ZONES = 7, 5


class PlanError(ActorError, ValueError):
    """A plan that breaks the rules of ``check_plan`` (the message names the field)."""


class SegmentKind(str, enum.Enum):
    WARM_UP = "warm-up"
    INTERVAL = "interval"
    RECOVERY = "recovery"
    COOL_DOWN = "cool-down"


Range = tuple[float, float]


@dataclass(frozen=True, slots=True)
class Segment:
    kind: SegmentKind
    duration_s: float
    power_zone: Range | None = None  # Coggan zones lo..hi (inclusive)
    ftp_pct: Range | None = None  # % of the rider's FTP, lo..hi
    cadence_rpm: Range | None = None
    hr_zone: Range | None = None  # Karvonen zones lo..hi (inclusive)
    cue: str | None = None

    def targets(self) -> dict[str, list[float]]:
        """The targets that are set, as JSON lists (zones as whole numbers)."""
        out: dict[str, list[float]] = {}
        for name in ("power_zone", "ftp_pct", "cadence_rpm", "hr_zone"):
            value = getattr(self, name)
            if value is not None:
                out[name] = [_plain(v) for v in value]
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind.value, "duration_s": _plain(self.duration_s), **self.targets(),
                **({"cue": self.cue} if self.cue is not None else {})}


@dataclass(frozen=True, slots=True)
class ClassPlan:
    segments: tuple[Segment, ...]
    ends: tuple[float, ...] = field(default=(), compare=False)  # cumulative segment ends, s

    def __post_init__(self) -> None:
        object.__setattr__(self, "ends", tuple(_cumsum(s.duration_s for s in self.segments)))

    @property
    def total_s(self) -> float:
        return self.ends[-1] if self.ends else 0.0

    def index_at(self, elapsed_s: float) -> int | None:
        """The segment running ``elapsed_s`` into the class (None before 0 and after the end)."""
        if elapsed_s < 0 or elapsed_s >= self.total_s:
            return None
        return bisect.bisect_right(self.ends, elapsed_s)

    def as_dict(self) -> dict[str, Any]:
        return {"segments": [s.as_dict() for s in self.segments]}


def _cumsum(values: Any) -> list[float]:
    total, out = 0.0, []
    for v in values:
        total += v
        out.append(total)
    return out


def _plain(value: float) -> float:
    return int(value) if float(value).is_integer() else value  # type: ignore[return-value]


# -- validation ----------------------------------------------------------------------------
_SEGMENT_KEYS = {"kind", "duration_s", "power_zone", "ftp_pct", "cadence_rpm", "hr_zone", "cue"}


def check_plan(raw: Any) -> ClassPlan:
    """A ``ClassPlan`` from ``{"segments": [...]}`` (or a ``ClassPlan``), else ``PlanError``."""
    if isinstance(raw, ClassPlan):
        return raw
    if not isinstance(raw, Mapping) or set(raw) - {"segments"}:
        raise PlanError("plan must be an object with just 'segments'")
    segments = raw.get("segments")
    if not isinstance(segments, Sequence) or isinstance(segments, str) or not 1 <= len(segments) <= MAX_SEGMENTS:
        raise PlanError(f"plan.segments must be a list of 1-{MAX_SEGMENTS} segments")
    plan = ClassPlan(tuple(_segment(s, f"plan.segments[{i}]") for i, s in enumerate(segments)))
    if plan.total_s > MAX_PLAN_S:
        raise PlanError(f"plan lasts {plan.total_s:g} s; at most {MAX_PLAN_S:g} s")
    return plan


def _segment(raw: Any, where: str) -> Segment:
    if not isinstance(raw, Mapping):
        raise PlanError(f"{where} must be an object")
    unknown = sorted(set(raw) - _SEGMENT_KEYS)
    if unknown:
        raise PlanError(f"{where}.{unknown[0]}: unknown field (allowed: {', '.join(sorted(_SEGMENT_KEYS))})")
    try:
        kind = SegmentKind(raw.get("kind"))
    except ValueError:
        raise PlanError(f"{where}.kind must be one of {', '.join(k.value for k in SegmentKind)}") from None
    duration = _number(raw.get("duration_s"), f"{where}.duration_s", MIN_SEGMENT_S, MAX_SEGMENT_S)
    if raw.get("power_zone") is not None and raw.get("ftp_pct") is not None:
        raise PlanError(f"{where}: give power_zone or ftp_pct, not both")
    return Segment(
        kind=kind, duration_s=duration,
        power_zone=_range(raw.get("power_zone"), f"{where}.power_zone", 1, N_POWER_ZONES, whole=True),
        ftp_pct=_range(raw.get("ftp_pct"), f"{where}.ftp_pct", 1, 300),
        cadence_rpm=_range(raw.get("cadence_rpm"), f"{where}.cadence_rpm", 20, 250),
        hr_zone=_range(raw.get("hr_zone"), f"{where}.hr_zone", 1, N_HR_ZONES, whole=True),
        cue=_cue(raw.get("cue"), f"{where}.cue"),
    )


def _number(value: Any, where: str, low: float, high: float, *, whole: bool = False) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not low <= value <= high or (whole and not float(value).is_integer()):
        kind = "a whole number" if whole else "a number"
        raise PlanError(f"{where} must be {kind} in [{low:g}, {high:g}], got {value!r}"[:300])
    return float(value)


def _range(value: Any, where: str, low: float, high: float, *, whole: bool = False) -> Range | None:
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        v = _number(value, where, low, high, whole=whole)
        return (v, v)
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 2:
        raise PlanError(f"{where} must be a number or [low, high]")
    lo = _number(value[0], f"{where}[0]", low, high, whole=whole)
    hi = _number(value[1], f"{where}[1]", low, high, whole=whole)
    if lo > hi:
        raise PlanError(f"{where}: low {lo:g} is above high {hi:g}")
    return (lo, hi)


def _cue(value: Any, where: str) -> str | None:
    if value is None:
        return None
    try:
        return clean_text(value, where, max_chars=MAX_CUE_CHARS)
    except TextError as exc:
        raise PlanError(str(exc)) from None


# -- the plan in time ------------------------------------------------------------------------
@dataclass(slots=True)
class ClassClock:
    """A class's schedule and plan in time (see the module docstring). Mutable: ``live_at``
    is set when the class goes live. Survives restarts through ``as_dict`` / ``of``."""

    plan: ClassPlan | None = None
    start_at: float | None = None
    live_at: float | None = None
    lobby_lead_s: float = 300.0

    @property
    def active(self) -> bool:
        return self.plan is not None or self.start_at is not None

    @property
    def ends_at(self) -> float | None:
        base = self.live_at if self.live_at is not None else self.start_at
        return None if base is None or self.plan is None else base + self.plan.total_s

    def due_phase(self, now: float) -> str | None:
        """The phase this clock wants at ``now`` (None: no opinion)."""
        ends_at = self.ends_at
        if ends_at is not None and now >= ends_at:
            return "ended"
        if self.live_at is not None:
            return "live"
        if self.start_at is None:
            return None
        if now >= self.start_at:
            return "live"
        return "lobby" if now >= self.start_at - self.lobby_lead_s else "scheduled"

    def went_live(self, now: float) -> None:
        """The class went live at ``now`` (or at its scheduled start, if that has passed: a
        class the clock starts keeps the plan's times, however late the tick that saw it)."""
        if self.live_at is None:
            self.live_at = self.start_at if self.start_at is not None and self.start_at <= now else now

    def segment_at(self, now: float) -> int | None:
        if self.plan is None or self.live_at is None:
            return None
        return self.plan.index_at(now - self.live_at)

    def position(self, now: float) -> dict[str, Any] | None:
        """The board's ``plan`` block at ``now`` (None without a plan or a start)."""
        if not self.active:
            return None
        out: dict[str, Any] = {"start_at": self.start_at, "live_at": self.live_at, "ends_at": self.ends_at}
        if self.live_at is None:
            out["starts_in_s"] = None if self.start_at is None else max(0, math.ceil(self.start_at - now))
        if self.plan is None:
            return out
        plan = self.plan
        out["segments"] = len(plan.segments)
        out["class_s"] = _plain(plan.total_s)
        index = self.segment_at(now)
        base = self.live_at if self.live_at is not None else None
        if index is None:
            after = base is not None and now >= base + plan.total_s
            out.update(segment=None, class_left_s=0 if after else _plain(plan.total_s))
            upcoming = None if after else plan.segments[0]
            out["next"] = _next(upcoming, out.get("starts_in_s"))
            return out
        assert base is not None
        seg = plan.segments[index]
        ends = base + plan.ends[index]
        out.update(
            segment=index, kind=seg.kind.value, cue=seg.cue, targets=seg.targets(),
            segment_s=_plain(seg.duration_s), segment_left_s=max(0, math.ceil(ends - now)),
            class_left_s=max(0, math.ceil(base + plan.total_s - now)),
        )
        upcoming = plan.segments[index + 1] if index + 1 < len(plan.segments) else None
        out["next"] = _next(upcoming, out["segment_left_s"])
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"plan": None if self.plan is None else self.plan.as_dict(), "start_at": self.start_at,
                "live_at": self.live_at, "lobby_lead_s": self.lobby_lead_s}

    @classmethod
    def of(cls, raw: Mapping[str, Any] | None, *, lobby_lead_s: float = 300.0) -> ClassClock:
        if not raw:
            return cls(lobby_lead_s=lobby_lead_s)
        plan = raw.get("plan")
        return cls(plan=None if plan is None else check_plan(plan), start_at=raw.get("start_at"),
                   live_at=raw.get("live_at"), lobby_lead_s=float(raw.get("lobby_lead_s", lobby_lead_s)))


def _next(segment: Segment | None, in_s: int | None) -> dict[str, Any] | None:
    if segment is None:
        return None
    return {"kind": segment.kind.value, "cue": segment.cue, "targets": segment.targets(), "in_s": in_s}


# -- riders against the segment's targets ----------------------------------------------------
BELOW, IN, ABOVE = -1, 0, 1
TARGET_COLUMNS = ("power_target", "cadence_target", "hr_target")
_LABELS = np.array(["below", "in", "above", None], dtype=object)  # code + 1 -> label (2: none)


def _against(value: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """-1 / 0 / 1 where ``value`` is below / within / above ``[lo, hi]``; 2 where NaN."""
    code = np.where(value < lo, BELOW, np.where(value > hi, ABOVE, IN))
    return np.where(np.isnan(value), 2, code)  # type: ignore[no-any-return]


def target_codes(segment: Segment | None, *, power_w: np.ndarray, cadence_rpm: np.ndarray, hr_bpm: np.ndarray,
                 ftp_w: np.ndarray, hr_max: np.ndarray, hr_rest: np.ndarray) -> dict[str, np.ndarray]:
    """Per rider and target (``TARGET_COLUMNS``), -1 below / 0 in / 1 above, 2 where the
    segment sets no such target or the rider's latest value is unknown. Power against
    ``power_zone`` compares the rider's Coggan zone of its latest power (from its FTP);
    against ``ftp_pct``, the latest power as % of FTP; heart rate its Karvonen zone."""
    none = np.full(len(power_w), 2, np.int8)
    if segment is None:
        return {name: none for name in TARGET_COLUMNS}
    out = {name: none for name in TARGET_COLUMNS}
    if segment.power_zone is not None:
        zone = power_zone(power_w, ftp_w).astype(float)
        out["power_target"] = _against(np.where(zone > 0, zone, np.nan), *segment.power_zone)
    elif segment.ftp_pct is not None:
        out["power_target"] = _against(power_w / ftp_w * 100.0, *segment.ftp_pct)
    if segment.cadence_rpm is not None:
        out["cadence_target"] = _against(cadence_rpm, *segment.cadence_rpm)
    if segment.hr_zone is not None:
        zone = hr_zone(hr_bpm, hr_max, hr_rest).astype(float)
        out["hr_target"] = _against(np.where(zone > 0, zone, np.nan), *segment.hr_zone)
    return out


def target_labels(codes: np.ndarray) -> np.ndarray:
    """``below`` / ``in`` / ``above`` / None for the codes of ``target_codes``."""
    return _LABELS[np.where(codes == 2, 3, codes + 1)]  # type: ignore[no-any-return]
