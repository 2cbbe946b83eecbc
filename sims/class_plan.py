"""Swarms against a class plan (issue 16): the server's plan as the riders' plan, and what
the swarm saw of it on the boards.

A scenario's ``[plan]`` table (``start_in_s`` and ``segments``, the server's plan format:
docs/protocol.md, "The class plan") makes the swarm create its classes with ``start_at``
= now + ``start_in_s`` and that plan, and not drive phases: the classes move lobby -> live
-> ended by themselves. The simulated riders ride the same plan (``physiology_plan``):
each segment's power target as an intensity (the middle of its % FTP range or of its
Coggan zones), its cadence range's middle as their cadence.

``PlanSeen`` is what a class's latency probe saw: the phases in order, the segments, the
cues, and how many rider-boards were below / in / above the power target.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sims.physiology import ClassPlan, Segment

__all__ = ["PlanSeen", "physiology_plan", "plan_summary"]

# Coggan zones as % of FTP (lower, upper); zone 7 is open above: 150-170 % stands for it
_ZONES = {1: (40, 55), 2: (56, 75), 3: (76, 90), 4: (91, 105), 5: (106, 120), 6: (121, 150), 7: (151, 170)}
_KINDS = {"warm-up": "warmup", "interval": "interval", "recovery": "recovery", "cool-down": "cooldown"}


def _pair(value: Any) -> tuple[float, float]:
    return (float(value), float(value)) if isinstance(value, int | float) else (float(value[0]), float(value[1]))


def _intensity(segment: Mapping[str, Any]) -> float:
    if segment.get("ftp_pct") is not None:
        lo, hi = _pair(segment["ftp_pct"])
        return (lo + hi) / 200.0
    if segment.get("power_zone") is not None:
        lo, hi = _pair(segment["power_zone"])
        return (_ZONES[int(lo)][0] + _ZONES[int(hi)][1]) / 200.0
    return 0.6


def physiology_plan(plan: Mapping[str, Any]) -> ClassPlan:
    """The server plan ``{"segments": [...]}`` as the simulated riders' ``ClassPlan``."""
    segments = []
    for raw in plan["segments"]:
        cadence = None if raw.get("cadence_rpm") is None else sum(_pair(raw["cadence_rpm"])) / 2
        segments.append(Segment(_KINDS.get(raw["kind"], raw["kind"]), float(raw["duration_s"]), _intensity(raw), cadence))
    return ClassPlan(tuple(segments))


@dataclass
class PlanSeen:
    phases: list[str] = field(default_factory=list)  # in the order boards showed them
    segments: set[int] = field(default_factory=set)
    cues: list[str] = field(default_factory=list)
    power_target: Counter[str] = field(default_factory=Counter)  # rider-boards below / in / above

    def on_board(self, frame: Mapping[str, Any]) -> None:
        phase = frame.get("phase")
        if phase and (not self.phases or self.phases[-1] != phase):
            self.phases.append(phase)
        plan = frame.get("plan")
        if not plan or plan.get("segment") is None:
            return
        if plan["segment"] not in self.segments:
            self.segments.add(plan["segment"])
            if plan.get("cue"):
                self.cues.append(plan["cue"])
        cols = frame.get("cols") or []
        if "power_target" in cols:
            at = cols.index("power_target")
            self.power_target.update(row[at] for row in frame.get("rows") or () if row[at] is not None)


def plan_summary(seen: Mapping[str, PlanSeen], final_phases: Mapping[str, str | None]) -> dict[str, Any]:
    """The report's ``plan`` block: per class the phases and segments its boards showed."""
    targets: Counter[str] = Counter()
    for s in seen.values():
        targets.update(s.power_target)
    return {
        "classes": {sid: {"phases_seen": s.phases, "segments_seen": len(s.segments), "cues_seen": s.cues,
                          "final_phase": final_phases.get(sid)} for sid, s in seen.items()},
        "power_target_rider_boards": dict(targets),
    }
