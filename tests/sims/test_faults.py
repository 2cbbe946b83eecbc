"""Fault injection does what it claims: each fault happens at its configured rate, dropouts
last as long as configured, clocks skew, counters roll over."""

from __future__ import annotations

import random

import pytest

from sims.faults import CrankCounter, DeviceClock, DeviceFaults, FaultConfig, RolloverCounter

N = 20_000


def _binomial_ok(count: int, n: int, p: float) -> bool:
    sd = (n * p * (1 - p)) ** 0.5
    return abs(count - n * p) <= 5 * sd


@pytest.mark.parametrize(("rate_field", "method", "counter"), [
    ("dup_rate", "duplicate", "duplicated_frames"),
    ("reorder_rate", "reorder", "reordered_samples"),
    ("bad_rate", "bad_value", "bad_values"),
    ("bad_ts_rate", "bad_timestamp", "bad_timestamps"),
])
def test_per_sample_faults_happen_at_their_rate(rate_field: str, method: str, counter: str) -> None:
    faults = DeviceFaults(FaultConfig(**{rate_field: 0.05}), random.Random(3))
    hits = sum(getattr(faults, method)() for _ in range(N))
    assert _binomial_ok(hits, N, 0.05)
    assert faults.injected[counter] == hits


def test_no_faults_by_default() -> None:
    faults = DeviceFaults(FaultConfig(), random.Random(3))
    assert not any(faults.duplicate() or faults.reorder() or faults.bad_value() or faults.bad_timestamp()
                   or faults.silent(float(t), 1.0) for t in range(N))
    assert not faults.injected


def test_sensor_dropouts_are_silent_stretches_of_the_configured_length() -> None:
    config = FaultConfig(sensor_dropout_rate=0.01, sensor_dropout_s=(5.0, 20.0))
    faults = DeviceFaults(config, random.Random(5))
    silent = [faults.silent(float(t), 1.0) for t in range(N)]
    stretches, run = [], 0
    for s in silent + [False]:
        if s:
            run += 1
        elif run:
            stretches.append(run)
            run = 0
    assert faults.injected["sensor_dropouts"] == len(stretches) > 50
    assert faults.injected["dropout_samples"] == sum(silent)
    # a stretch is one dropout (5-20 s) or two back to back
    assert min(stretches) >= 5 and max(stretches) <= 40
    assert 8 <= sum(stretches) / len(stretches) <= 17


def test_device_clock_skews_and_drifts() -> None:
    clock = DeviceClock(offset_s=2.5, drift_ppm=100, epoch=1000.0)
    assert clock(1000.0) == pytest.approx(1002.5)
    assert clock(11_000.0) == pytest.approx(11_003.5)  # +1 s after 10,000 s at 100 ppm
    assert DeviceClock(offset_s=1e6).offset_s == 60.0  # clamped inside the server's window
    skews = [DeviceClock.random(FaultConfig(clock_skew_s=2.0), random.Random(i)).offset_s for i in range(500)]
    assert 1.5 < (sum(s * s for s in skews) / len(skews)) ** 0.5 < 2.5


def test_rollover_counter_wraps_like_a_uint16() -> None:
    counter = RolloverCounter(16, start=65_530)
    assert counter.add(3) == 65_533
    assert counter.add(10) == 7 and counter.rollovers == 1
    counter.add(65_536 * 2)
    assert counter.value == 7 and counter.rollovers == 3


def test_crank_counter_rolls_over_and_still_encodes_the_cadence() -> None:
    crank = CrankCounter(start_revs=65_500, start_time_s=63.0)  # event time wraps at 64 s
    revs_prev, time_prev = crank.revs.value, crank.event.value
    cadences = []
    for _ in range(120):
        revs, event = crank.advance(90.0, 1.0)
        d_revs = (revs - revs_prev) % 65_536
        d_time = (event - time_prev) % 65_536
        if d_revs and d_time:
            cadences.append(d_revs * 60 * 1024 / d_time)
        revs_prev, time_prev = revs, event
    assert crank.revs.rollovers == 1 and crank.event.rollovers >= 1
    assert sum(cadences) / len(cadences) == pytest.approx(90.0, rel=0.01)
