"""Merge one participant's sensors into one stream of canonical readings.

A participant may wear several sensors: a strap and a power meter, a trainer that also
reports heart rate, a foot pod on a treadmill. ``Normaliser.add`` takes every decoded
measurement with its timestamp; ``Normaliser.emit(ts_s)`` returns one
``NormalisedReading`` with the five ``devices.sample`` metrics, which source each came
from, and the flags raised since the previous emit.

Source priority, per metric (first fresh source wins; see ``DEFAULT_PRIORITY``):

* ``hr_bpm``: heart-rate strap > indoor bike > treadmill
* ``power_w``: power meter > indoor bike > treadmill
* ``cadence_rpm``: power-meter crank > CSC crank > indoor bike > foot pod (steps/min)
* ``speed_mps`` and ``distance_m``: CSC wheel > foot pod > power-meter wheel > indoor
  bike > treadmill

A source is fresh while its last accepted value is at most ``stale_after_s`` old
(by the caller's timestamps; nothing here reads a clock); a stale source falls back
to the next, and wins again as soon as it is fresh.

Bounds (``devices.sample.BOUNDS`` by default): a value outside them is not used; it is
reported once as a ``Flag`` (reason ``out_of_range``) and the source's previous value
for that metric is dropped, so the next source in priority takes over. Distance is
cumulative and per-source counters start anywhere, so ``distance_m`` is an odometer
since the normaliser was created: it adds the winning source's increments, re-anchors
without a jump when the winner changes, and flags an increment that went backwards or
implies a speed above the speed bound. It is ``None`` until a distance source has been
seen, and keeps its total while no source is fresh.

Not thread-safe; one ``Normaliser`` per participant, fed from one consumer.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from devices.gatt import (
    BatteryLevel,
    CscMeasurement,
    CyclingPowerMeasurement,
    HeartRateMeasurement,
    IndoorBikeData,
    Measurement,
    RscMeasurement,
    TreadmillData,
)
from devices.rates import (
    DEFAULT_HOLD_S,
    DEFAULT_WHEEL_CIRCUMFERENCE_M,
    CrankCadenceTracker,
    WheelSpeedTracker,
)
from devices.sample import BOUNDS, METRICS, Sample

__all__ = [
    "DEFAULT_PRIORITY",
    "DEFAULT_STALE_AFTER_S",
    "Flag",
    "FlagReason",
    "NormalisedReading",
    "Normaliser",
    "Source",
]

DEFAULT_STALE_AFTER_S: Final = 5.0
KMH_PER_MPS: Final = 3.6


class Source(enum.Enum):
    """A kind of sensor, identified by the measurement type it sends."""

    HEART_RATE_STRAP = "heart_rate_strap"  # 0x2A37
    POWER_METER = "power_meter"  # 0x2A63
    SPEED_CADENCE = "speed_cadence"  # 0x2A5B (CSC)
    FOOT_POD = "foot_pod"  # 0x2A53 (RSC)
    INDOOR_BIKE = "indoor_bike"  # 0x2AD2 (FTMS)
    TREADMILL = "treadmill"  # 0x2ACD (FTMS)


_SOURCE_OF: Final[dict[type, Source]] = {
    HeartRateMeasurement: Source.HEART_RATE_STRAP,
    CyclingPowerMeasurement: Source.POWER_METER,
    CscMeasurement: Source.SPEED_CADENCE,
    RscMeasurement: Source.FOOT_POD,
    IndoorBikeData: Source.INDOOR_BIKE,
    TreadmillData: Source.TREADMILL,
}

_SPEED_SOURCES: Final = (
    Source.SPEED_CADENCE,
    Source.FOOT_POD,
    Source.POWER_METER,
    Source.INDOOR_BIKE,
    Source.TREADMILL,
)
DEFAULT_PRIORITY: Final[Mapping[str, tuple[Source, ...]]] = {
    "hr_bpm": (Source.HEART_RATE_STRAP, Source.INDOOR_BIKE, Source.TREADMILL),
    "power_w": (Source.POWER_METER, Source.INDOOR_BIKE, Source.TREADMILL),
    "cadence_rpm": (Source.POWER_METER, Source.SPEED_CADENCE, Source.INDOOR_BIKE, Source.FOOT_POD),
    "speed_mps": _SPEED_SOURCES,
    "distance_m": _SPEED_SOURCES,
}


class FlagReason(enum.Enum):
    OUT_OF_RANGE = "out_of_range"  # outside the metric's bounds; not used
    NO_SKIN_CONTACT = "no_skin_contact"  # strap says it is not touching skin; not used
    WENT_BACKWARDS = "went_backwards"  # a cumulative distance decreased; re-anchored


@dataclass(frozen=True, slots=True)
class Flag:
    """A value that was seen and not used, and why."""

    metric: str
    source: Source
    value: float
    reason: FlagReason
    ts: float


@dataclass(frozen=True, slots=True)
class NormalisedReading:
    """One merged reading; ``sources`` names the winner of every present metric."""

    ts: float
    hr_bpm: float | None = None
    power_w: float | None = None
    cadence_rpm: float | None = None
    speed_mps: float | None = None
    distance_m: float | None = None
    sources: Mapping[str, Source] = field(default_factory=dict)
    flags: tuple[Flag, ...] = ()

    def to_sample(self, seq: int) -> Sample:
        return Sample(
            seq=seq,
            ts=self.ts,
            hr_bpm=self.hr_bpm,
            power_w=self.power_w,
            cadence_rpm=self.cadence_rpm,
            speed_mps=self.speed_mps,
            distance_m=self.distance_m,
        )


@dataclass(frozen=True, slots=True)
class _Value:
    value: float
    ts: float


class _Odometer:
    """Stitches cumulative distances from whichever source wins into one total."""

    def __init__(self, max_speed_mps: float) -> None:
        self._max_speed_mps = max_speed_mps
        self.total_m: float | None = None
        self._anchor: tuple[Source, _Value] | None = None

    def advance(self, source: Source, reading: _Value) -> Flag | None:
        if self.total_m is None:
            self.total_m = 0.0
        anchor, self._anchor = self._anchor, (source, reading)
        if anchor is None or anchor[0] is not source:
            return None
        increment = reading.value - anchor[1].value
        allowed = self._max_speed_mps * max(reading.ts - anchor[1].ts, 1.0)
        if increment < 0:
            return Flag("distance_m", source, reading.value, FlagReason.WENT_BACKWARDS, reading.ts)
        if increment > allowed:
            return Flag("distance_m", source, reading.value, FlagReason.OUT_OF_RANGE, reading.ts)
        self.total_m += increment
        return None


class _Trackers:
    """Crank and wheel trackers for one counter-based source."""

    def __init__(self, *, wheel_ticks_per_second: int, circumference_m: float, hold_s: float):
        self.crank = CrankCadenceTracker(hold_s=hold_s)
        self.wheel = WheelSpeedTracker(
            circumference_m=circumference_m, ticks_per_second=wheel_ticks_per_second, hold_s=hold_s
        )

    def read(
        self,
        crank: tuple[int | None, int | None],
        wheel: tuple[int | None, int | None],
        ts_s: float,
    ) -> dict[str, float | None]:
        values: dict[str, float | None] = {}
        if crank[0] is not None and crank[1] is not None:
            values["cadence_rpm"] = self.crank.update(crank[0], crank[1], ts_s)
        if wheel[0] is not None and wheel[1] is not None:
            values["speed_mps"] = self.wheel.update(wheel[0], wheel[1], ts_s)
            values["distance_m"] = self.wheel.distance_m
        return values


class Normaliser:
    """Per-participant merge of decoded measurements; see the module docstring.

    ``add`` and ``emit`` take the caller's timestamps (device or receive time, seconds,
    one clock for both). ``reset_source`` is for a reconnect: it drops the source's
    values and gives its counter trackers a fresh baseline.
    """

    def __init__(
        self,
        *,
        stale_after_s: float = DEFAULT_STALE_AFTER_S,
        wheel_circumference_m: float = DEFAULT_WHEEL_CIRCUMFERENCE_M,
        hold_s: float = DEFAULT_HOLD_S,
        bounds: Mapping[str, tuple[float, float]] = BOUNDS,
        priority: Mapping[str, Sequence[Source]] = DEFAULT_PRIORITY,
    ) -> None:
        self._stale_after_s = stale_after_s
        self._bounds = dict(bounds)
        self._priority = {metric: tuple(priority.get(metric, ())) for metric in METRICS}
        self._values: dict[tuple[str, Source], _Value] = {}
        self._flags: list[Flag] = []
        self._odometer = _Odometer(max_speed_mps=self._bounds["speed_mps"][1])
        self._trackers = {
            Source.POWER_METER: _Trackers(
                wheel_ticks_per_second=2048, circumference_m=wheel_circumference_m, hold_s=hold_s
            ),
            Source.SPEED_CADENCE: _Trackers(
                wheel_ticks_per_second=1024, circumference_m=wheel_circumference_m, hold_s=hold_s
            ),
        }

    def add(self, measurement: Measurement, ts_s: float) -> None:
        """Offer a decoded measurement taken at ``ts_s``. Battery levels are ignored."""
        if isinstance(measurement, BatteryLevel):
            return
        source = _SOURCE_OF.get(type(measurement))
        if source is None:
            raise TypeError(f"not a decoded measurement: {type(measurement).__name__}")
        for metric, value in self._extract(source, measurement, ts_s).items():
            if value is not None:
                self._offer(metric, source, float(value), ts_s)

    def emit(self, ts_s: float) -> NormalisedReading:
        """The merged reading as of ``ts_s``, with the flags raised since the last emit."""
        values: dict[str, float | None] = {}
        sources: dict[str, Source] = {}
        for metric in METRICS:
            winner = self._winner(metric, ts_s)
            if winner is not None:
                sources[metric] = winner[0]
                values[metric] = winner[1].value
        values["distance_m"] = self._distance(sources.get("distance_m"))
        if values["distance_m"] is None:
            sources.pop("distance_m", None)
        flags, self._flags = tuple(self._flags), []
        return NormalisedReading(ts=ts_s, **values, sources=sources, flags=flags)

    def reset_source(self, source: Source) -> None:
        """Forget ``source``'s values and counter baselines (call on reconnect)."""
        for key in [key for key in self._values if key[1] is source]:
            del self._values[key]
        trackers = self._trackers.get(source)
        if trackers is not None:
            trackers.crank.reset()
            trackers.wheel.reset()

    def _winner(self, metric: str, ts_s: float) -> tuple[Source, _Value] | None:
        for source in self._priority[metric]:
            value = self._values.get((metric, source))
            if value is not None and ts_s - value.ts <= self._stale_after_s:
                return source, value
        return None

    def _distance(self, winner: Source | None) -> float | None:
        if winner is not None:
            flag = self._odometer.advance(winner, self._values[("distance_m", winner)])
            if flag is not None:
                self._flags.append(flag)
        return self._odometer.total_m

    def _offer(self, metric: str, source: Source, value: float, ts_s: float) -> None:
        # Cumulative distances start anywhere; the odometer checks their increments.
        low, high = (0.0, math.inf) if metric == "distance_m" else self._bounds[metric]
        if low <= value <= high:
            self._values[(metric, source)] = _Value(value, ts_s)
        else:
            self._reject(metric, source, value, FlagReason.OUT_OF_RANGE, ts_s)

    def _reject(
        self, metric: str, source: Source, value: float, reason: FlagReason, ts_s: float
    ) -> None:
        self._values.pop((metric, source), None)
        self._flags.append(Flag(metric, source, value, reason, ts_s))

    def _extract(
        self, source: Source, m: Measurement, ts_s: float
    ) -> Mapping[str, float | None]:
        if isinstance(m, HeartRateMeasurement):
            if m.sensor_contact is False:
                self._reject("hr_bpm", source, m.heart_rate_bpm, FlagReason.NO_SKIN_CONTACT, ts_s)
                return {}
            return {"hr_bpm": m.heart_rate_bpm}
        if isinstance(m, CyclingPowerMeasurement | CscMeasurement):
            counters = self._trackers[source].read(
                (m.crank_revolutions, m.crank_event_ticks),
                (m.wheel_revolutions, m.wheel_event_ticks),
                ts_s,
            )
            power = {"power_w": m.power_w} if isinstance(m, CyclingPowerMeasurement) else {}
            return {**counters, **power}
        if isinstance(m, RscMeasurement):
            return {
                "speed_mps": m.speed_mps,
                "cadence_rpm": m.cadence_spm,
                "distance_m": m.total_distance_m,
            }
        if isinstance(m, IndoorBikeData):
            return {**_ftms_common(m), "cadence_rpm": m.cadence_rpm}
        if isinstance(m, TreadmillData):
            return _ftms_common(m)
        return {}


def _ftms_common(m: IndoorBikeData | TreadmillData) -> dict[str, float | None]:
    """Fields both FTMS machines share. A heart rate of 0 means "no HR source"."""
    return {
        "speed_mps": None if m.speed_kmh is None else m.speed_kmh / KMH_PER_MPS,
        "power_w": m.power_w,
        "hr_bpm": m.heart_rate_bpm or None,
        "distance_m": m.total_distance_m,
    }
