"""From cumulative revolution counters to cadence (rpm), speed (m/s) and distance (m).

CSC and Cycling Power sensors do not send a rate; they send a cumulative revolution
count and the device time of the last revolution event (16-bit ticks). A rate is
``Δrev · 60 / (Δticks / ticks_per_second)`` between two notifications, with both
counters allowed to roll over.

``RevolutionRate`` is that arithmetic alone (no clock). ``CrankCadenceTracker`` and
``WheelSpeedTracker`` wrap it with the behaviour real sensors need, driven only by the
caller's timestamps (``now_s``; nothing here reads a clock):

* first sample, or first after any fresh baseline: no value (``None``);
* repeated event time (a re-sent notification, or a sensor that keeps notifying while
  the crank is still): the last rate is held for ``hold_s``, then ``0.0``;
* same count, later event time: the crank/wheel stopped, ``0.0``;
* more than ``max_gap_s`` (default: the 16-bit tick rollover period, 64 s at 1/1024 s,
  32 s at 1/2048 s) since the baseline was taken, the caller's clock going backwards, or
  ``reset()`` (call it on reconnect): fresh baseline;
* a counter that went backwards (battery swap, reconnect) or a rate above the tracker's
  plausibility cap: fresh baseline, never a huge or negative rate.

Trackers are plain objects, not thread-safe; one per sensor counter.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

__all__ = [
    "DEFAULT_HOLD_S",
    "DEFAULT_WHEEL_CIRCUMFERENCE_M",
    "CrankCadenceTracker",
    "RateStep",
    "RevolutionRate",
    "StepKind",
    "WheelSpeedTracker",
]

EVENT_TICK_MODULUS: Final = 1 << 16
DEFAULT_WHEEL_CIRCUMFERENCE_M: Final = 2.105
DEFAULT_HOLD_S: Final = 3.0


class StepKind(enum.Enum):
    """What one counter sample meant to ``RevolutionRate``."""

    BASELINE = "baseline"  # first sample since construction or reset
    REPEAT = "repeat"  # same event time as the baseline; baseline kept
    BACKWARDS = "backwards"  # count went backwards; this sample is the new baseline
    RATE = "rate"  # a rate was computed; this sample is the new baseline


@dataclass(frozen=True, slots=True)
class RateStep:
    """The outcome of one sample: a rate only when ``kind`` is ``RATE``."""

    kind: StepKind
    rpm: float | None = None
    revolutions: int = 0
    ticks: int = 0


class RevolutionRate:
    """Revolutions per minute from a cumulative count and a 16-bit event time.

    ``update`` returns ``None`` for the first sample, for a repeated event time and for a
    count that went backwards (then re-baselines), ``0.0`` when the count is unchanged
    but time moved, else the rate. Both counters roll over: the count modulo
    ``2**revolution_bits``, event ticks modulo 65536. A count delta of half the counter
    range or more cannot be told from a backwards jump and is treated as one.
    """

    __slots__ = ("_baseline", "_revolution_modulus", "_ticks_per_second")

    def __init__(self, ticks_per_second: int = 1024, revolution_bits: int = 16) -> None:
        if ticks_per_second <= 0 or not 1 <= revolution_bits <= 64:
            raise ValueError(
                f"need ticks_per_second > 0 and 1 <= revolution_bits <= 64, "
                f"got {ticks_per_second} and {revolution_bits}"
            )
        self._ticks_per_second = ticks_per_second
        self._revolution_modulus = 1 << revolution_bits
        self._baseline: tuple[int, int] | None = None

    @property
    def ticks_per_second(self) -> int:
        return self._ticks_per_second

    def reset(self) -> None:
        """Forget the baseline; the next sample starts a fresh one."""
        self._baseline = None

    def update(self, revolutions: int, event_ticks: int) -> float | None:
        return self.step(revolutions, event_ticks).rpm

    def is_baseline(self, revolutions: int, event_ticks: int) -> bool:
        """True if this sample is exactly the baseline (a re-sent notification)."""
        return self._baseline == self._normalised(revolutions, event_ticks)

    def _normalised(self, revolutions: int, event_ticks: int) -> tuple[int, int]:
        return revolutions % self._revolution_modulus, event_ticks % EVENT_TICK_MODULUS

    def step(self, revolutions: int, event_ticks: int) -> RateStep:
        """Like ``update`` but says why there is no rate, and the deltas it used."""
        sample = self._normalised(revolutions, event_ticks)
        if self._baseline is None:
            self._baseline = sample
            return RateStep(StepKind.BASELINE)
        delta_revolutions = (sample[0] - self._baseline[0]) % self._revolution_modulus
        delta_ticks = (sample[1] - self._baseline[1]) % EVENT_TICK_MODULUS
        if delta_revolutions >= self._revolution_modulus // 2:
            self._baseline = sample
            return RateStep(StepKind.BACKWARDS)
        if delta_ticks == 0:
            return RateStep(StepKind.REPEAT)
        self._baseline = sample
        rpm = delta_revolutions * 60.0 * self._ticks_per_second / delta_ticks
        return RateStep(StepKind.RATE, rpm, delta_revolutions, delta_ticks)


class _CounterTracker:
    """Hold-then-zero, gap and plausibility handling around one ``RevolutionRate``."""

    def __init__(
        self,
        *,
        ticks_per_second: int,
        revolution_bits: int,
        hold_s: float,
        max_rpm: float,
        max_gap_s: float | None,
    ) -> None:
        self._rate = RevolutionRate(ticks_per_second, revolution_bits)
        self._hold_s = hold_s
        self._max_rpm = max_rpm
        self._max_gap_s = EVENT_TICK_MODULUS / ticks_per_second if max_gap_s is None else max_gap_s
        self._baseline_s: float | None = None  # caller time the baseline last moved
        self._fresh_s: float | None = None  # caller time the last rate was computed
        self._last_rpm: float | None = None

    def reset(self) -> None:
        """Start a fresh baseline (call on reconnect); the held rate is dropped."""
        self._rate.reset()
        self._baseline_s = None
        self._fresh_s = None
        self._last_rpm = None

    def current_rpm(self, now_s: float) -> float | None:
        """The rate as of ``now_s`` without a new sample: held, then ``0.0``."""
        if self._last_rpm is None or self._fresh_s is None:
            return None
        return self._last_rpm if now_s - self._fresh_s <= self._hold_s else 0.0

    def _step(self, revolutions: int, event_ticks: int, now_s: float) -> RateStep:
        if self._gap_lost_baseline(revolutions, event_ticks, now_s):
            self.reset()
        step = self._rate.step(revolutions, event_ticks)
        if step.kind is StepKind.REPEAT:
            return step
        self._baseline_s = now_s
        if step.kind is StepKind.RATE and step.rpm is not None and step.rpm <= self._max_rpm:
            self._fresh_s = now_s
            self._last_rpm = step.rpm
            return step
        # First, backwards or implausible: this sample is the new baseline, nothing held.
        self._fresh_s = None
        self._last_rpm = None
        return RateStep(StepKind.BACKWARDS if step.kind is StepKind.RATE else step.kind)


    def _gap_lost_baseline(self, revolutions: int, event_ticks: int, now_s: float) -> bool:
        """Too long since the baseline for 16-bit ticks to be trusted, or time ran back.

        An exact re-send of the baseline sample carries no new timing, so a stopped
        sensor that keeps notifying stays stopped (0.0) instead of losing its baseline.
        """
        if self._baseline_s is None or self._rate.is_baseline(revolutions, event_ticks):
            return False
        return not 0 <= now_s - self._baseline_s <= self._max_gap_s


class CrankCadenceTracker(_CounterTracker):
    """Cadence in rpm from crank revolutions (16-bit) and 1/1024 s event ticks.

    ``update`` returns the cadence as of ``now_s`` (see the module docstring for the
    edge cases) or ``None`` while there is no baseline.
    """

    def __init__(
        self,
        *,
        ticks_per_second: int = 1024,
        hold_s: float = DEFAULT_HOLD_S,
        max_rpm: float = 400.0,
        max_gap_s: float | None = None,
    ) -> None:
        super().__init__(
            ticks_per_second=ticks_per_second,
            revolution_bits=16,
            hold_s=hold_s,
            max_rpm=max_rpm,
            max_gap_s=max_gap_s,
        )

    def update(self, revolutions: int, event_ticks: int, now_s: float) -> float | None:
        step = self._step(revolutions, event_ticks, now_s)
        return step.rpm if step.kind is StepKind.RATE else self.current_rpm(now_s)

    def current(self, now_s: float) -> float | None:
        return self.current_rpm(now_s)


class WheelSpeedTracker(_CounterTracker):
    """Speed in m/s and distance in m from wheel revolutions (32-bit).

    ``ticks_per_second`` is 1024 for CSC and 2048 for Cycling Power wheel data.
    ``distance_m`` accumulates ``Δrev · circumference`` over every accepted interval
    since construction; it survives ``reset()`` (a reconnect does not undo the ride) and
    never counts an interval that was discarded (backwards, implausible, or across a
    gap longer than ``max_gap_s``).
    """

    def __init__(
        self,
        *,
        circumference_m: float = DEFAULT_WHEEL_CIRCUMFERENCE_M,
        ticks_per_second: int = 1024,
        hold_s: float = DEFAULT_HOLD_S,
        max_speed_mps: float = 60.0,
        max_gap_s: float | None = None,
    ) -> None:
        if circumference_m <= 0:
            raise ValueError(f"circumference_m must be > 0, got {circumference_m}")
        super().__init__(
            ticks_per_second=ticks_per_second,
            revolution_bits=32,
            hold_s=hold_s,
            max_rpm=max_speed_mps * 60.0 / circumference_m,
            max_gap_s=max_gap_s,
        )
        self._circumference_m = circumference_m
        self._distance_m = 0.0

    @property
    def circumference_m(self) -> float:
        return self._circumference_m

    @property
    def distance_m(self) -> float:
        return self._distance_m

    def update(self, revolutions: int, event_ticks: int, now_s: float) -> float | None:
        step = self._step(revolutions, event_ticks, now_s)
        if step.kind is StepKind.RATE and step.rpm is not None:
            self._distance_m += step.revolutions * self._circumference_m
            return self._to_mps(step.rpm)
        return self.current(now_s)

    def current(self, now_s: float) -> float | None:
        rpm = self.current_rpm(now_s)
        return None if rpm is None else self._to_mps(rpm)

    def _to_mps(self, rpm: float) -> float:
        return rpm * self._circumference_m / 60.0
