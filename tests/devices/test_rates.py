"""Revolution counters to rates: vectors, rollover, repeats, stops, gaps and resets."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devices.gatt import RevolutionRate as ReExported
from devices.rates import (
    CrankCadenceTracker,
    RateStep,
    RevolutionRate,
    StepKind,
    WheelSpeedTracker,
)

FAST = settings(max_examples=200, deadline=None, database=None)


# --- RevolutionRate -----------------------------------------------------------------


def test_reexported_from_gatt() -> None:
    assert ReExported is RevolutionRate


def test_vector_one_rev_per_second_is_60_rpm() -> None:
    rate = RevolutionRate(ticks_per_second=1024, revolution_bits=16)
    assert rate.update(1, 1024) is None
    assert rate.update(2, 2048) == 60.0


def test_vector_same_count_later_time_is_zero() -> None:
    rate = RevolutionRate()
    assert rate.update(1, 1024) is None
    assert rate.update(1, 2048) == 0.0


def test_vector_same_time_is_no_value() -> None:
    rate = RevolutionRate()
    assert rate.update(1, 1024) is None
    assert rate.update(2, 1024) is None


def test_repeat_keeps_the_baseline() -> None:
    rate = RevolutionRate()
    rate.update(1, 1024)
    assert rate.step(2, 1024) == RateStep(StepKind.REPEAT)
    assert rate.update(3, 2048) == 120.0  # 2 revolutions since (1, 1024)


def test_crank_count_rollover() -> None:
    rate = RevolutionRate()
    rate.update(65535, 64512)
    assert rate.step(1, 0) == RateStep(StepKind.RATE, 120.0, 2, 1024)


def test_event_tick_rollover() -> None:
    rate = RevolutionRate()
    rate.update(10, 65000)
    assert rate.update(11, 488) == 60.0


def test_wheel_32_bit_rollover_at_2048_ticks() -> None:
    rate = RevolutionRate(ticks_per_second=2048, revolution_bits=32)
    rate.update(2**32 - 1, 0)
    assert rate.update(1, 2048) == 120.0


def test_ticks_beyond_16_bits_are_taken_modulo() -> None:
    rate = RevolutionRate()
    rate.update(1, 1024 + 65536)
    assert rate.update(2, 2048) == 60.0


def test_count_backwards_rebaselines() -> None:
    rate = RevolutionRate()
    rate.update(100, 1024)
    assert rate.step(99, 2048) == RateStep(StepKind.BACKWARDS)
    assert rate.update(100, 3072) == 60.0


def test_reset_starts_fresh() -> None:
    rate = RevolutionRate()
    rate.update(1, 1024)
    rate.reset()
    assert rate.step(2, 2048) == RateStep(StepKind.BASELINE)
    assert rate.update(3, 3072) == 60.0


@pytest.mark.parametrize(("ticks", "bits"), [(0, 16), (-1, 16), (1024, 0), (1024, 65)])
def test_invalid_configuration(ticks: int, bits: int) -> None:
    with pytest.raises(ValueError):
        RevolutionRate(ticks, bits)


@FAST
@given(
    st.sampled_from([(1024, 16), (1024, 32), (2048, 32)]),
    st.integers(0, 2**32 - 1),
    st.integers(0, 65535),
    st.lists(st.tuples(st.integers(0, 50), st.integers(1, 65535)), min_size=1, max_size=20),
)
def test_rate_is_exact_through_any_rollover(
    config: tuple[int, int],
    revolutions: int,
    ticks: int,
    steps: list[tuple[int, int]],
) -> None:
    tps, bits = config
    rate = RevolutionRate(tps, bits)
    assert rate.update(revolutions, ticks) is None
    for delta_revolutions, delta_ticks in steps:
        revolutions = (revolutions + delta_revolutions) % 2**bits
        ticks = (ticks + delta_ticks) % 65536
        expected = delta_revolutions * 60 * tps / delta_ticks
        assert rate.update(revolutions, ticks) == pytest.approx(expected)


# --- CrankCadenceTracker ------------------------------------------------------------


def feed(
    tracker: CrankCadenceTracker | WheelSpeedTracker, samples: list[tuple[int, int, float]]
) -> list[float | None]:
    return [tracker.update(rev, ticks, now) for rev, ticks, now in samples]


def test_crank_tracker_basic_and_stop() -> None:
    tracker = CrankCadenceTracker()
    assert feed(tracker, [(1, 1024, 1.0), (2, 2048, 2.0), (2, 3072, 3.0)]) == [None, 60.0, 0.0]


def test_crank_tracker_holds_then_zeroes_on_repeats() -> None:
    tracker = CrankCadenceTracker(hold_s=3.0)
    feed(tracker, [(1, 1024, 1.0), (3, 2048, 2.0)])  # 120 rpm
    assert feed(tracker, [(3, 2048, 2.5), (3, 2048, 5.0), (3, 2048, 5.1)]) == [120.0, 120.0, 0.0]
    assert tracker.update(4, 2560, 5.6) == 120.0  # pedalling again from the kept baseline


def test_crank_tracker_current_without_samples() -> None:
    tracker = CrankCadenceTracker(hold_s=2.0)
    assert tracker.current(0.0) is None
    feed(tracker, [(1, 1024, 1.0), (2, 2048, 2.0)])
    assert (tracker.current(3.9), tracker.current(4.0), tracker.current(4.1)) == (60.0, 60.0, 0.0)


def test_crank_tracker_repeat_before_any_rate_is_none() -> None:
    tracker = CrankCadenceTracker()
    assert feed(tracker, [(1, 1024, 1.0), (1, 1024, 2.0), (1, 1024, 9.0)]) == [None, None, None]


def test_crank_tracker_rollover_of_both_counters_at_steady_cadence() -> None:
    tracker = CrankCadenceTracker()
    samples = [((65530 + k) % 65536, (64000 + 768 * k) % 65536, 0.75 * k) for k in range(20)]
    rates = feed(tracker, samples)
    assert rates[0] is None
    assert rates[1:] == [pytest.approx(80.0)] * 19


def test_crank_tracker_gap_longer_than_rollover_is_fresh_baseline() -> None:
    tracker = CrankCadenceTracker()
    feed(tracker, [(1, 1024, 1.0), (2, 2048, 2.0)])
    # 70 s later the 16-bit event clock has wrapped once: the tick delta would lie.
    assert tracker.update(72, (2048 + 70 * 1024) % 65536, 72.0) is None
    assert tracker.update(73, (2048 + 71 * 1024) % 65536, 73.0) == 60.0


def test_crank_tracker_gap_counts_from_baseline_not_from_repeats() -> None:
    tracker = CrankCadenceTracker()
    feed(tracker, [(1, 1024, 1.0), (2, 2048, 2.0)])
    for second in range(3, 70):  # stopped crank still notifying its last event
        held = tracker.update(2, 2048, float(second))
        assert held == (60.0 if second <= 5 else 0.0)
    assert tracker.update(3, (2048 + 69 * 1024) % 65536, 71.0) is None


def test_crank_tracker_gap_threshold_is_configurable() -> None:
    tracker = CrankCadenceTracker(max_gap_s=5.0)
    feed(tracker, [(1, 1024, 1.0), (2, 2048, 2.0)])
    assert tracker.update(8, 8192, 8.0) is None


def test_crank_tracker_clock_going_backwards_is_fresh_baseline() -> None:
    tracker = CrankCadenceTracker()
    feed(tracker, [(1, 1024, 10.0), (2, 2048, 11.0)])
    assert tracker.update(3, 3072, 5.0) is None
    assert tracker.update(4, 4096, 6.0) == 60.0


def test_crank_tracker_counter_backwards_is_fresh_baseline() -> None:
    tracker = CrankCadenceTracker()
    feed(tracker, [(500, 1024, 1.0), (501, 2048, 2.0)])
    assert tracker.update(3, 3072, 3.0) is None  # battery swap: count restarted
    assert tracker.current(3.5) is None  # nothing held across a fresh baseline
    assert tracker.update(4, 4096, 4.0) == 60.0


def test_crank_tracker_implausible_jump_is_fresh_baseline() -> None:
    tracker = CrankCadenceTracker()
    feed(tracker, [(40000, 1024, 1.0), (40001, 2048, 2.0)])
    # Restart at 0 looks like +25536 revolutions in 1 s: far beyond max_rpm.
    assert tracker.update(0, 3072, 3.0) is None
    assert tracker.update(1, 4096, 4.0) == 60.0


def test_crank_tracker_reset_on_reconnect() -> None:
    tracker = CrankCadenceTracker()
    feed(tracker, [(1, 1024, 1.0), (2, 2048, 2.0)])
    tracker.reset()
    assert tracker.current(2.1) is None
    assert feed(tracker, [(9, 9000, 3.0), (10, 10024, 4.0)]) == [None, 60.0]


@FAST
@given(
    st.lists(
        st.tuples(st.integers(0, 2**16 - 1), st.integers(0, 2**16 - 1), st.floats(-5.0, 100.0)),
        max_size=30,
    )
)
def test_crank_tracker_never_returns_huge_or_negative(
    samples: list[tuple[int, int, float]],
) -> None:
    tracker = CrankCadenceTracker(max_rpm=400.0)
    now = 0.0
    for revolutions, ticks, step_s in samples:
        now += step_s
        rpm = tracker.update(revolutions, ticks, now)
        assert rpm is None or 0.0 <= rpm <= 400.0


# --- WheelSpeedTracker --------------------------------------------------------------


def test_wheel_tracker_speed_and_distance_csc() -> None:
    tracker = WheelSpeedTracker()
    assert tracker.circumference_m == 2.105
    assert feed(tracker, [(0, 0, 0.0), (1, 1024, 1.0), (3, 2048, 2.0)]) == [
        None,
        pytest.approx(2.105),
        pytest.approx(4.21),
    ]
    assert tracker.distance_m == pytest.approx(3 * 2.105)


def test_wheel_tracker_power_meter_ticks() -> None:
    tracker = WheelSpeedTracker(circumference_m=2.0, ticks_per_second=2048)
    assert feed(tracker, [(10, 0, 0.0), (12, 2048, 1.0)]) == [None, 4.0]
    assert tracker.distance_m == 4.0


def test_wheel_tracker_32_bit_rollover() -> None:
    tracker = WheelSpeedTracker(circumference_m=2.0)
    assert feed(tracker, [(2**32 - 2, 65000, 0.0), (3, 488, 1.0)]) == [None, 10.0]
    assert tracker.distance_m == 10.0


def test_wheel_tracker_hold_then_zero_and_stop() -> None:
    tracker = WheelSpeedTracker(circumference_m=2.0, hold_s=2.0)
    feed(tracker, [(0, 0, 0.0), (1, 1024, 1.0)])
    assert feed(tracker, [(1, 1024, 2.0), (1, 1024, 3.5)]) == [2.0, 0.0]
    assert tracker.current(3.5) == 0.0
    assert tracker.update(1, 4096, 4.0) == 0.0  # same count, later event: stopped


def test_wheel_tracker_power_meter_gap_is_32_seconds() -> None:
    tracker = WheelSpeedTracker(circumference_m=2.0, ticks_per_second=2048)
    feed(tracker, [(0, 0, 0.0), (1, 2048, 1.0)])
    assert tracker.update(40, 30000, 35.0) is None
    assert tracker.distance_m == 2.0  # nothing credited across the gap


def test_wheel_tracker_distance_survives_reset_but_not_bad_intervals() -> None:
    tracker = WheelSpeedTracker(circumference_m=2.0)
    feed(tracker, [(100, 0, 0.0), (105, 1024, 1.0)])
    assert tracker.distance_m == 10.0
    tracker.reset()
    assert feed(tracker, [(3, 5000, 2.0), (4, 6024, 3.0)]) == [None, 2.0]
    assert tracker.update(1, 7048, 4.0) is None  # backwards
    assert tracker.distance_m == 12.0


def test_wheel_tracker_implausible_speed_is_rejected() -> None:
    tracker = WheelSpeedTracker(circumference_m=2.0, max_speed_mps=40.0)
    feed(tracker, [(0, 0, 0.0)])
    assert tracker.update(1000, 1024, 1.0) is None  # 2 km in a second
    assert tracker.distance_m == 0.0


def test_wheel_tracker_rejects_bad_circumference() -> None:
    with pytest.raises(ValueError):
        WheelSpeedTracker(circumference_m=0.0)
