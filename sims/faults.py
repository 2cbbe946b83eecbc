"""The faults real wearables and phones have, injected on purpose and counted.

Every injector draws from its own ``random.Random`` and counts what it did in
``injected`` (a ``Counter`` by fault name), so a test or a report can check that a
fault configured at some rate really happened, and the accounting can tell deliberate
rejections from unexpected ones.

* ``FaultConfig`` — rates and shapes, all off by default:

  - ``dup_rate``: a samples frame is sent twice (exactly-once must hold);
  - ``reorder_rate``: a sample is held back and sent after the next one;
  - ``bad_rate`` / ``bad_ts_rate``: a sample carries an out-of-range value / a
    timestamp 10 days old (the server must reject it, with that reason);
  - ``sensor_dropout_rate``: per device-second, the chance a sensor goes silent for
    ``sensor_dropout_s`` (min, max) seconds — no samples at all, a gap in the data;
  - ``link_dropout_rate``: per connection-second, the chance the phone or hub loses its
    connection for ``link_dropout_s`` seconds — samples are kept and resent on reconnect;
  - ``clock_skew_s``: standard deviation of each connection's clock offset (clamped to
    +-60 s), ``clock_drift_ppm`` its drift;
  - ``reconnect_storms``: at ``at_s`` into the class, ``fraction`` of all connections drop
    at once and reconnect together;
  - ``late_sync``: a fraction of riders whose phone was offline for the whole ride and
    uploads it ``hours_ago`` later (the server accepts samples up to 7 days old and
    applies them by device timestamp).

* ``DeviceFaults`` — per-device decisions (dup, reorder, bad values, sensor dropouts).
* ``DeviceClock`` — skewed, drifting device time.
* ``FlakyHubClient`` — a ``HubClient`` that can be knocked offline for a while.
* ``RolloverCounter`` / ``CrankCounter`` — cumulative uint16 counters that wrap, as in
  the GATT cycling power and CSC measurements (for the BLE-level mode).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field

from devices.client import HubClient

__all__ = [
    "CrankCounter",
    "DeviceClock",
    "DeviceFaults",
    "FaultConfig",
    "FlakyHubClient",
    "LateSync",
    "ReconnectStorm",
    "RolloverCounter",
]

BAD_TS_AGE_S = 10 * 24 * 3600.0  # older than the server's 7-day window
MAX_SKEW_S = 60.0


@dataclass(frozen=True)
class ReconnectStorm:
    at_s: float
    fraction: float = 0.5


@dataclass(frozen=True)
class LateSync:
    """Riders whose whole ride is uploaded late, in a wave at ``upload_at_s`` + U(0, window_s)."""

    fraction: float = 0.0
    hours_ago: float = 3.0
    ride_s: float = 2700.0
    upload_at_s: float = 5.0
    window_s: float = 10.0


@dataclass(frozen=True)
class FaultConfig:
    dup_rate: float = 0.0
    reorder_rate: float = 0.0
    bad_rate: float = 0.0
    bad_ts_rate: float = 0.0
    sensor_dropout_rate: float = 0.0
    sensor_dropout_s: tuple[float, float] = (3.0, 60.0)
    link_dropout_rate: float = 0.0
    link_dropout_s: tuple[float, float] = (2.0, 30.0)
    clock_skew_s: float = 0.0
    clock_drift_ppm: float = 0.0
    reconnect_storms: tuple[ReconnectStorm, ...] = ()
    late_sync: LateSync = field(default_factory=LateSync)


class DeviceFaults:
    """Decisions for one device stream; every ``True`` answer is counted in ``injected``."""

    def __init__(self, config: FaultConfig, rng: random.Random) -> None:
        self.config = config
        self.rng = rng
        self.injected: Counter[str] = Counter()
        self.silent_until = -1.0

    def _roll(self, rate: float, name: str) -> bool:
        if rate > 0 and self.rng.random() < rate:
            self.injected[name] += 1
            return True
        return False

    def duplicate(self) -> bool:
        return self._roll(self.config.dup_rate, "duplicated_frames")

    def reorder(self) -> bool:
        return self._roll(self.config.reorder_rate, "reordered_samples")

    def bad_value(self) -> bool:
        return self._roll(self.config.bad_rate, "bad_values")

    def bad_timestamp(self) -> bool:
        return self._roll(self.config.bad_ts_rate, "bad_timestamps")

    def silent(self, t: float, dt: float) -> bool:
        """Is the sensor silent at class time ``t`` (``dt`` since the last reading)?"""
        if t < self.silent_until:
            self.injected["dropout_samples"] += 1
            return True
        rate = self.config.sensor_dropout_rate * dt
        if self._roll(rate, "sensor_dropouts"):
            low, high = self.config.sensor_dropout_s
            self.silent_until = t + self.rng.uniform(low, high)
            self.injected["dropout_samples"] += 1
            return True
        return False


class DeviceClock:
    """A device (phone or hub) clock: ``offset_s`` off the true time, drifting by ``drift_ppm``."""

    def __init__(self, offset_s: float = 0.0, drift_ppm: float = 0.0, epoch: float | None = None) -> None:
        self.offset_s = max(-MAX_SKEW_S, min(MAX_SKEW_S, offset_s))
        self.drift = drift_ppm * 1e-6
        self.epoch = time.time() if epoch is None else epoch

    @classmethod
    def random(cls, config: FaultConfig, rng: random.Random) -> DeviceClock:
        skew = rng.gauss(0, config.clock_skew_s) if config.clock_skew_s > 0 else 0.0
        drift = rng.gauss(0, config.clock_drift_ppm) if config.clock_drift_ppm > 0 else 0.0
        return cls(skew, drift)

    def __call__(self, true_ts: float) -> float:
        return true_ts + self.offset_s + (true_ts - self.epoch) * self.drift


class FlakyHubClient(HubClient):
    """A ``HubClient`` that can lose its connection on purpose: ``go_offline(seconds)``
    closes the socket and keeps it closed that long; samples produced meanwhile stay in
    each stream's ``unacked`` and are resent after the next ``welcome``. Also records when
    it was first welcomed (``welcomed_at``) so join times can be reported."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.offline_until = 0.0
        self.dropouts = 0
        self.started_at: float | None = None

    def start(self) -> None:
        self.started_at = time.monotonic()
        super().start()

    @property
    def online(self) -> bool:
        return self.ws is not None and time.monotonic() >= self.offline_until

    async def go_offline(self, seconds: float) -> None:
        self.dropouts += 1
        self.offline_until = max(self.offline_until, time.monotonic() + seconds)
        ws = self.ws
        if ws is not None:
            await ws.close()

    async def _held_offline(self) -> bool:
        wait = self.offline_until - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
            return True
        return False


class RolloverCounter:
    """A cumulative counter of ``bits`` width that wraps like a sensor's (e.g. uint16
    crank revolutions); ``rollovers`` counts the wraps."""

    def __init__(self, bits: int = 16, start: float = 0.0) -> None:
        self.modulus = 1 << bits
        self.total = start
        self.rollovers = 0

    def add(self, amount: float) -> int:
        before = int(self.total) // self.modulus
        self.total += amount
        self.rollovers += int(self.total) // self.modulus - before
        return self.value

    @property
    def value(self) -> int:
        return int(self.total) % self.modulus


class CrankCounter:
    """Cumulative crank revolutions (uint16) and last crank event time (uint16, 1/1024 s),
    as carried by the Cycling Power and CSC measurements. ``advance(cadence_rpm, dt)``
    moves both; the event time only moves when a whole revolution completed, like a real
    sensor. Starts near the wrap point on request so tests and short runs see rollovers."""

    def __init__(self, start_revs: float = 0.0, start_time_s: float = 0.0) -> None:
        self.revs = RolloverCounter(16, start_revs)
        self.event = RolloverCounter(16, start_time_s * 1024)
        self._since_event_s = 0.0

    def advance(self, cadence_rpm: float, dt: float) -> tuple[int, int]:
        whole_before = int(self.revs.total)
        self.revs.add(max(0.0, cadence_rpm) / 60.0 * dt)
        self._since_event_s += dt
        if int(self.revs.total) != whole_before:
            fraction = self.revs.total - int(self.revs.total)
            back_s = fraction / (cadence_rpm / 60.0) if cadence_rpm > 0 else 0.0
            self.event.add((self._since_event_s - back_s) * 1024)
            self._since_event_s = back_s
        return self.revs.value, self.event.value
