"""Simulated riders: personal fitness, a class plan, and the physiology that links them.

* ``RiderProfile`` — one rider's fitness: FTP (W), resting and maximum heart rate (bpm),
  mass (kg), preferred cadence (rpm), and how noisy and how compliant they are.
* ``ClassPlan`` — the instructor's plan as ``Segment``s (warm-up, intervals, climbs,
  recovery, cool-down), each an intensity as a fraction of FTP and a cadence target.
  ``standard_plan(duration_s)`` scales a typical 45-minute spin class to any length.
* ``RiderModel`` — steps one rider through the plan, one reading per call:

  - power follows ``intensity x FTP x compliance`` with a slow personal wander
    (an Ornstein-Uhlenbeck process) and per-second noise; it is never negative;
  - cadence follows the segment's target (climbs are slow, sprints fast) plus noise;
  - heart rate moves towards a steady-state target set by power (a linear HR/power
    relation between resting HR and max HR, reached at ~1.15 x FTP) through a
    first-order lag (tau ~ 30 s rising, ~ 50 s recovering), plus *cardiac drift*: the
    steady-state target rises by ``drift_bpm_per_h`` per hour of effort. It is clamped
    to ``[hr_rest, hr_max]``;
  - speed solves the road-bike power equation for a flat road
    (``P = Crr m g v + 1/2 rho CdA v^3``), and distance integrates speed.

Everything is deterministic for a given ``random.Random``; nothing here does I/O.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

__all__ = [
    "ClassPlan",
    "Reading",
    "RiderModel",
    "RiderProfile",
    "Segment",
    "flat_speed_mps",
    "random_profile",
    "standard_plan",
]

G = 9.81
RHO = 1.225  # air density, kg/m^3
CRR = 0.004
CDA = 0.32  # m^2, hoods position


@dataclass(frozen=True, slots=True)
class RiderProfile:
    ftp_w: float
    hr_rest_bpm: float
    hr_max_bpm: float
    mass_kg: float = 75.0
    cadence_rpm: float = 88.0
    noise: float = 0.04  # per-second power noise, fraction of target
    compliance: float = 1.0  # how hard this rider follows the plan (0.8 = takes it easy)
    drift_bpm_per_h: float = 8.0


def random_profile(rng: random.Random) -> RiderProfile:
    """A plausible member of a gym class: FTP 120-360 W, HR max from age, HR rest 45-75."""
    age = rng.uniform(20, 65)
    hr_max = 208 - 0.7 * age + rng.gauss(0, 5)
    return RiderProfile(
        ftp_w=min(360.0, max(120.0, rng.gauss(215, 45))),
        hr_rest_bpm=rng.uniform(45, 75),
        hr_max_bpm=min(205.0, max(160.0, hr_max)),
        mass_kg=rng.uniform(55, 100),
        cadence_rpm=rng.uniform(78, 98),
        noise=rng.uniform(0.02, 0.07),
        compliance=min(1.1, max(0.75, rng.gauss(0.97, 0.08))),
        drift_bpm_per_h=rng.uniform(4, 12),
    )


@dataclass(frozen=True, slots=True)
class Segment:
    kind: str  # warmup | steady | interval | recovery | climb | sprint | cooldown
    duration_s: float
    intensity: float  # fraction of FTP at the end of the segment
    cadence_rpm: float | None = None  # None: the rider's own preferred cadence
    start_intensity: float | None = None  # ramps (warm-up, cool-down) start here


@dataclass(frozen=True)
class ClassPlan:
    segments: tuple[Segment, ...]
    _starts: tuple[float, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        starts, t = [], 0.0
        for seg in self.segments:
            starts.append(t)
            t += seg.duration_s
        object.__setattr__(self, "_starts", tuple(starts))

    @property
    def duration_s(self) -> float:
        return sum(s.duration_s for s in self.segments)

    def at(self, t: float) -> tuple[Segment, float]:
        """The segment at class time ``t`` and the intensity there (ramps interpolated).
        Before the start it is the first segment; after the end, the last one."""
        index = 0
        for i, start in enumerate(self._starts):
            if t >= start:
                index = i
        seg = self.segments[index]
        if seg.start_intensity is None:
            return seg, seg.intensity
        frac = min(1.0, max(0.0, (t - self._starts[index]) / seg.duration_s))
        return seg, seg.start_intensity + frac * (seg.intensity - seg.start_intensity)


def standard_plan(duration_s: float = 2700.0) -> ClassPlan:
    """A typical spin class, scaled to ``duration_s``: 15% warm-up ramp, 4 x (interval +
    recovery), a climb block, two sprints, 12% cool-down."""
    base = [
        Segment("warmup", 400, 0.70, 85, start_intensity=0.40),
        Segment("steady", 200, 0.75),
        *[s for _ in range(4) for s in (Segment("interval", 120, 1.10, 95), Segment("recovery", 90, 0.55, 85))],
        Segment("climb", 240, 0.95, 65),
        Segment("recovery", 60, 0.55, 80),
        Segment("climb", 180, 1.00, 60),
        Segment("sprint", 30, 1.60, 115),
        Segment("recovery", 90, 0.50, 80),
        Segment("sprint", 30, 1.60, 115),
        Segment("cooldown", 326, 0.35, 75, start_intensity=0.65),
    ]
    total = sum(s.duration_s for s in base)
    scale = duration_s / total
    return ClassPlan(tuple(
        Segment(s.kind, s.duration_s * scale, s.intensity, s.cadence_rpm, s.start_intensity) for s in base
    ))


def flat_speed_mps(power_w: float, mass_kg: float) -> float:
    """Speed on a flat road for this power (Newton on ``Crr m g v + 1/2 rho CdA v^3 = P``)."""
    if power_w <= 0:
        return 0.0
    a, b = 0.5 * RHO * CDA, CRR * (mass_kg + 9.0) * G  # + bike mass
    v = (power_w / a) ** (1 / 3)
    for _ in range(6):
        f = a * v**3 + b * v - power_w
        v -= f / (3 * a * v**2 + b)
    return max(0.0, v)


@dataclass(frozen=True, slots=True)
class Reading:
    hr_bpm: float
    power_w: float
    cadence_rpm: float
    speed_mps: float
    distance_m: float


class RiderModel:
    """One rider going through ``plan``; ``step(t, dt)`` returns the reading at class time ``t``.

    State: heart rate (lagged), accumulated effort for drift, a slow power wander, distance.
    Call with increasing ``t``; ``dt`` is the time since the previous step (the first call
    uses ``dt`` only for distance).
    """

    TAU_UP_S = 30.0
    TAU_DOWN_S = 50.0
    WANDER_TAU_S = 60.0

    def __init__(self, profile: RiderProfile, plan: ClassPlan, rng: random.Random) -> None:
        self.profile = profile
        self.plan = plan
        self.rng = rng
        self.hr = profile.hr_rest_bpm + 10.0  # on the bike, a little above resting
        self.effort_s = 0.0  # seconds spent above 50% FTP, drives cardiac drift
        self.wander = 0.0
        self.distance_m = 0.0

    def hr_target(self, power_w: float) -> float:
        """Steady-state heart rate for this power, before drift."""
        p = self.profile
        frac = min(1.0, max(0.0, power_w / (1.15 * p.ftp_w)))
        return p.hr_rest_bpm + 15.0 + frac * (p.hr_max_bpm - p.hr_rest_bpm - 15.0)

    def step(self, t: float, dt: float = 1.0) -> Reading:
        p = self.profile
        seg, intensity = self.plan.at(t)
        power = self._power(intensity, dt)
        cadence = self._cadence(seg, power)
        self._heart(power, dt)
        speed = flat_speed_mps(power, p.mass_kg)
        self.distance_m += speed * max(dt, 0.0)
        return Reading(self.hr, power, cadence, speed, self.distance_m)

    def _power(self, intensity: float, dt: float) -> float:
        p = self.profile
        decay = math.exp(-max(dt, 0.0) / self.WANDER_TAU_S)
        self.wander = self.wander * decay + math.sqrt(1 - decay * decay) * self.rng.gauss(0, 0.05)
        target = intensity * p.ftp_w * p.compliance * (1.0 + self.wander)
        return max(0.0, target * (1.0 + self.rng.gauss(0, p.noise)))

    def _cadence(self, seg: Segment, power: float) -> float:
        if power < 5:
            return 0.0
        target = seg.cadence_rpm if seg.cadence_rpm is not None else self.profile.cadence_rpm
        personal = self.profile.cadence_rpm - 88.0
        return max(0.0, target + personal * 0.5 + self.rng.gauss(0, 2.0))

    def _heart(self, power: float, dt: float) -> None:
        p = self.profile
        if power > 0.5 * p.ftp_w:
            self.effort_s += dt
        target = self.hr_target(power) + p.drift_bpm_per_h * self.effort_s / 3600.0
        tau = self.TAU_UP_S if target > self.hr else self.TAU_DOWN_S
        self.hr += (target - self.hr) * (1.0 - math.exp(-max(dt, 0.0) / tau))
        self.hr = min(p.hr_max_bpm, max(p.hr_rest_bpm, self.hr + self.rng.gauss(0, 0.3)))
