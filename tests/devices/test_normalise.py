"""Normaliser: source priority, fallback when stale, bounds flags, distance stitching."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devices.gatt import (
    BatteryLevel,
    CscMeasurement,
    CyclingPowerMeasurement,
    HeartRateMeasurement,
    IndoorBikeData,
    RscMeasurement,
    TreadmillData,
    decode,
)
from devices.normalise import (
    DEFAULT_PRIORITY,
    Flag,
    FlagReason,
    NormalisedReading,
    Normaliser,
    Source,
)
from devices.sample import BOUNDS, METRICS, Sample

FAST = settings(max_examples=150, deadline=None, database=None)


def strap(bpm: int, contact: bool | None = True) -> HeartRateMeasurement:
    return HeartRateMeasurement(heart_rate_bpm=bpm, sensor_contact=contact)


def bike(**fields: float | int | None) -> IndoorBikeData:
    return IndoorBikeData(**fields)  # type: ignore[arg-type]


def power_meter(watts: int, crank: tuple[int, int] | None = None) -> CyclingPowerMeasurement:
    revolutions, ticks = crank if crank is not None else (None, None)
    return CyclingPowerMeasurement(
        power_w=watts, crank_revolutions=revolutions, crank_event_ticks=ticks
    )


def csc(
    wheel: tuple[int, int] | None = None, crank: tuple[int, int] | None = None
) -> CscMeasurement:
    return CscMeasurement(
        wheel_revolutions=wheel[0] if wheel else None,
        wheel_event_ticks=wheel[1] if wheel else None,
        crank_revolutions=crank[0] if crank else None,
        crank_event_ticks=crank[1] if crank else None,
    )


# --- priority and fallback ----------------------------------------------------------


def test_strap_heart_rate_beats_trainer_heart_rate() -> None:
    n = Normaliser()
    n.add(bike(heart_rate_bpm=140), 1.0)
    n.add(strap(150), 1.0)
    reading = n.emit(1.5)
    assert (reading.hr_bpm, reading.sources["hr_bpm"]) == (150.0, Source.HEART_RATE_STRAP)


def test_stale_strap_falls_back_to_trainer_and_wins_again_when_fresh() -> None:
    n = Normaliser(stale_after_s=5.0)
    n.add(strap(150), 0.0)
    n.add(bike(heart_rate_bpm=140), 6.0)
    assert n.emit(5.0).hr_bpm == 150.0  # exactly 5 s old is still fresh
    assert (n.emit(6.0).hr_bpm, n.emit(6.0).sources["hr_bpm"]) == (140.0, Source.INDOOR_BIKE)
    n.add(strap(152), 7.0)
    assert n.emit(7.0).hr_bpm == 152.0


def test_everything_stale_is_none() -> None:
    n = Normaliser(stale_after_s=2.0)
    n.add(strap(150), 0.0)
    n.add(power_meter(200), 0.0)
    reading = n.emit(10.0)
    assert (reading.hr_bpm, reading.power_w) == (None, None)
    assert "hr_bpm" not in reading.sources and "power_w" not in reading.sources


def test_power_meter_beats_trainer_then_falls_back() -> None:
    n = Normaliser(stale_after_s=3.0)
    n.add(power_meter(250), 0.0)
    n.add(bike(power_w=230), 0.0)
    assert n.emit(1.0).power_w == 250.0
    n.add(bike(power_w=235), 4.0)
    reading = n.emit(4.0)
    assert (reading.power_w, reading.sources["power_w"]) == (235.0, Source.INDOOR_BIKE)


def test_cadence_power_meter_crank_beats_csc_crank_beats_trainer() -> None:
    n = Normaliser()
    n.add(bike(cadence_rpm=70.0), 0.0)
    assert n.emit(0.0).cadence_rpm == 70.0
    n.add(csc(crank=(1, 1024)), 1.0)
    n.add(csc(crank=(2, 2048)), 2.0)  # 60 rpm
    reading = n.emit(2.0)
    assert (reading.cadence_rpm, reading.sources["cadence_rpm"]) == (60.0, Source.SPEED_CADENCE)
    n.add(power_meter(200, crank=(10, 1024)), 2.5)
    n.add(power_meter(200, crank=(12, 2048)), 3.0)  # 120 rpm
    reading = n.emit(3.0)
    assert (reading.cadence_rpm, reading.sources["cadence_rpm"]) == (120.0, Source.POWER_METER)


def test_first_counter_sample_gives_no_cadence() -> None:
    n = Normaliser()
    n.add(power_meter(200, crank=(10, 1024)), 1.0)
    reading = n.emit(1.0)
    assert (reading.power_w, reading.cadence_rpm) == (200.0, None)


def test_speed_csc_wheel_beats_trainer() -> None:
    n = Normaliser(wheel_circumference_m=2.0)
    n.add(bike(speed_kmh=36.0), 0.0)
    assert n.emit(0.0).speed_mps == pytest.approx(10.0)
    n.add(csc(wheel=(0, 0)), 0.0)
    n.add(csc(wheel=(4, 1024)), 1.0)  # 8 m/s
    reading = n.emit(1.0)
    assert (reading.speed_mps, reading.sources["speed_mps"]) == (8.0, Source.SPEED_CADENCE)


def test_power_meter_wheel_uses_2048_ticks() -> None:
    n = Normaliser(wheel_circumference_m=2.0)
    n.add(CyclingPowerMeasurement(power_w=100, wheel_revolutions=0, wheel_event_ticks=0), 0.0)
    n.add(CyclingPowerMeasurement(power_w=100, wheel_revolutions=3, wheel_event_ticks=2048), 1.0)
    assert n.emit(1.0).speed_mps == 6.0


def test_foot_pod_speed_cadence_and_distance() -> None:
    n = Normaliser()
    n.add(RscMeasurement(speed_mps=3.0, cadence_spm=170, total_distance_m=100.0), 0.0)
    first = n.emit(0.5)
    n.add(RscMeasurement(speed_mps=3.0, cadence_spm=172, total_distance_m=103.0), 1.0)
    reading = n.emit(1.0)
    assert (first.distance_m, reading.distance_m) == (0.0, 3.0)
    assert (reading.speed_mps, reading.cadence_rpm) == (3.0, 172.0)
    assert reading.sources["distance_m"] is Source.FOOT_POD


def test_treadmill_metrics_and_zero_heart_rate_means_absent() -> None:
    n = Normaliser()
    n.add(TreadmillData(speed_kmh=10.8, heart_rate_bpm=0, power_w=180, total_distance_m=50), 0.0)
    reading = n.emit(0.0)
    assert reading.speed_mps == pytest.approx(3.0)
    assert (reading.hr_bpm, reading.power_w, reading.flags) == (None, 180.0, ())


def test_custom_priority() -> None:
    priority = {**DEFAULT_PRIORITY, "hr_bpm": (Source.INDOOR_BIKE, Source.HEART_RATE_STRAP)}
    n = Normaliser(priority=priority)
    n.add(strap(150), 0.0)
    n.add(bike(heart_rate_bpm=140), 0.0)
    assert n.emit(0.0).hr_bpm == 140.0


# --- bounds and flags ---------------------------------------------------------------


def test_300_bpm_is_flagged_and_not_used() -> None:
    n = Normaliser()
    n.add(strap(150), 0.0)
    n.add(bike(heart_rate_bpm=141), 0.0)
    n.add(strap(300), 1.0)
    reading = n.emit(1.0)
    assert reading.hr_bpm == 141.0  # the strap's reading is dropped, the trainer takes over
    flag = Flag("hr_bpm", Source.HEART_RATE_STRAP, 300.0, FlagReason.OUT_OF_RANGE, 1.0)
    assert reading.flags == (flag,)
    assert reading.flags[0].reason.value == "out_of_range"


def test_5000_watt_spike_is_flagged_and_not_used() -> None:
    n = Normaliser()
    n.add(power_meter(5000), 2.0)
    reading = n.emit(2.0)
    assert reading.power_w is None
    assert [(f.metric, f.value, f.reason) for f in reading.flags] == [
        ("power_w", 5000.0, FlagReason.OUT_OF_RANGE)
    ]


def test_flags_are_reported_once() -> None:
    n = Normaliser()
    n.add(strap(10), 0.0)
    assert len(n.emit(0.0).flags) == 1
    assert n.emit(0.1).flags == ()


def test_custom_bounds() -> None:
    n = Normaliser(bounds={**BOUNDS, "hr_bpm": (30.0, 220.0)})
    n.add(strap(225), 0.0)
    assert n.emit(0.0).flags[0].metric == "hr_bpm"


def test_strap_without_skin_contact_is_flagged_and_not_used() -> None:
    n = Normaliser()
    n.add(strap(90, contact=False), 0.0)
    n.add(strap(91, contact=None), 0.0)  # no contact detection: trusted
    assert n.emit(0.0).hr_bpm == 91.0
    n.add(strap(92, contact=False), 1.0)
    reading = n.emit(1.0)
    assert reading.hr_bpm is None
    assert reading.flags[-1].reason is FlagReason.NO_SKIN_CONTACT


# --- distance odometer --------------------------------------------------------------


def test_distance_is_stitched_across_sources_without_jumps() -> None:
    n = Normaliser(stale_after_s=2.0, wheel_circumference_m=2.0)
    n.add(csc(wheel=(0, 0)), 0.0)
    n.add(csc(wheel=(5, 1024)), 1.0)
    assert n.emit(1.0).distance_m == 0.0  # first sight of the source anchors it
    n.add(csc(wheel=(10, 2048)), 2.0)
    assert n.emit(2.0).distance_m == 10.0
    n.add(bike(total_distance_m=5000), 3.0)  # trainer counts from its own start
    n.add(bike(total_distance_m=5008), 5.0)
    switched = n.emit(5.0)
    assert (switched.distance_m, switched.flags) == (10.0, ())  # CSC stale: re-anchor, no jump
    n.add(bike(total_distance_m=5020), 6.0)
    reading = n.emit(6.0)
    assert (reading.distance_m, reading.sources["distance_m"]) == (22.0, Source.INDOOR_BIKE)
    assert n.emit(60.0).distance_m == 22.0  # no fresh source: the total holds


def test_distance_going_backwards_is_flagged_and_reanchored() -> None:
    n = Normaliser()
    n.add(bike(total_distance_m=100), 0.0)
    n.emit(0.0)
    n.add(bike(total_distance_m=110), 1.0)
    assert n.emit(1.0).distance_m == 10.0
    n.add(bike(total_distance_m=3), 2.0)  # trainer restarted its session
    reading = n.emit(2.0)
    assert reading.distance_m == 10.0
    assert [f.reason for f in reading.flags] == [FlagReason.WENT_BACKWARDS]
    n.add(bike(total_distance_m=13), 3.0)
    assert n.emit(3.0).distance_m == 20.0


def test_distance_jump_faster_than_speed_bound_is_flagged() -> None:
    n = Normaliser()
    n.add(bike(total_distance_m=100), 0.0)
    n.emit(0.0)
    n.add(bike(total_distance_m=100 + 500), 1.0)
    reading = n.emit(1.0)
    assert reading.distance_m == 0.0
    flags = [(f.metric, f.reason) for f in reading.flags]
    assert flags == [("distance_m", FlagReason.OUT_OF_RANGE)]


def test_no_distance_source_is_none() -> None:
    n = Normaliser()
    n.add(strap(120), 0.0)
    assert n.emit(0.0).distance_m is None


# --- lifecycle and conversion -------------------------------------------------------


def test_reset_source_drops_values_and_counter_baselines() -> None:
    n = Normaliser()
    n.add(csc(crank=(1, 1024)), 1.0)
    n.add(csc(crank=(2, 2048)), 2.0)
    assert n.emit(2.0).cadence_rpm == 60.0
    n.reset_source(Source.SPEED_CADENCE)
    assert n.emit(2.0).cadence_rpm is None
    n.add(csc(crank=(3, 3072)), 3.0)  # after a reconnect: a fresh baseline, not a rate
    assert n.emit(3.0).cadence_rpm is None
    n.add(csc(crank=(4, 4096)), 4.0)
    assert n.emit(4.0).cadence_rpm == 60.0


def test_battery_is_ignored_and_foreign_objects_are_refused() -> None:
    n = Normaliser()
    n.add(BatteryLevel(battery_pct=50), 0.0)
    assert n.emit(0.0) == NormalisedReading(ts=0.0)
    with pytest.raises(TypeError):
        n.add("not a measurement", 0.0)  # type: ignore[arg-type]


def test_to_sample() -> None:
    reading = NormalisedReading(ts=12.5, hr_bpm=140.0, power_w=200.0, distance_m=3.0)
    assert reading.to_sample(7) == Sample(7, 12.5, 140.0, 200.0, None, None, 3.0)
    assert reading.to_sample(7).to_wire() == [7, 12.5, 140.0, 200.0, None, None, 3.0]


def test_from_raw_notifications() -> None:
    n = Normaliser()
    n.add(decode(0x2A37, bytes.fromhex("16 48 54 01 EC 02")), 10.0)
    n.add(decode(0x2A63, bytes.fromhex("20 00 70 01 90 01 00 04")), 10.0)
    n.add(decode("2a63", bytes.fromhex("20 00 70 01 91 01 00 08")), 11.0)
    n.add(decode(0x2AD2, bytes.fromhex("44 00 CA 0C A0 00 2C 01")), 11.0)
    sample = n.emit(11.0).to_sample(1)
    assert sample == Sample(1, 11.0, 72.0, 368.0, 60.0, pytest.approx(32.74 / 3.6), None)


# --- properties ---------------------------------------------------------------------

MEASUREMENTS = st.one_of(
    st.builds(
        HeartRateMeasurement,
        heart_rate_bpm=st.integers(0, 0xFFFF),
        sensor_contact=st.sampled_from([None, True, False]),
    ),
    st.builds(
        CyclingPowerMeasurement,
        power_w=st.integers(-0x8000, 0x7FFF),
        crank_revolutions=st.integers(0, 0xFFFF),
        crank_event_ticks=st.integers(0, 0xFFFF),
        wheel_revolutions=st.integers(0, 2**32 - 1),
        wheel_event_ticks=st.integers(0, 0xFFFF),
    ),
    st.builds(
        CscMeasurement,
        crank_revolutions=st.integers(0, 0xFFFF),
        crank_event_ticks=st.integers(0, 0xFFFF),
        wheel_revolutions=st.integers(0, 2**32 - 1),
        wheel_event_ticks=st.integers(0, 0xFFFF),
    ),
    st.builds(
        RscMeasurement,
        speed_mps=st.floats(0, 256),
        cadence_spm=st.integers(0, 255),
        total_distance_m=st.floats(0, 4e8),
    ),
    st.builds(
        IndoorBikeData,
        speed_kmh=st.floats(0, 655.35),
        cadence_rpm=st.floats(0, 32767.5),
        power_w=st.integers(-0x8000, 0x7FFF),
        heart_rate_bpm=st.integers(0, 255),
        total_distance_m=st.integers(0, 2**24 - 1),
    ),
    st.builds(
        TreadmillData,
        speed_kmh=st.floats(0, 655.35),
        power_w=st.integers(-0x8000, 0x7FFF),
        total_distance_m=st.integers(0, 2**24 - 1),
    ),
)


@FAST
@given(st.lists(st.tuples(MEASUREMENTS, st.floats(0.0, 3.0)), max_size=25))
def test_emitted_values_are_always_within_bounds(events: list[tuple[object, float]]) -> None:
    n = Normaliser()
    now = 0.0
    previous_distance = 0.0
    for measurement, step_s in events:
        now += step_s
        n.add(measurement, now)  # type: ignore[arg-type]
        reading = n.emit(now)
        for metric in METRICS[:-1]:
            value = getattr(reading, metric)
            low, high = BOUNDS[metric]
            assert value is None or low <= value <= high
            assert (value is None) == (metric not in reading.sources)
        if reading.distance_m is not None:
            assert reading.distance_m >= previous_distance
            previous_distance = reading.distance_m
        assert all(flag.ts <= now for flag in reading.flags)


def test_non_finite_values_are_flagged_not_used() -> None:
    n = Normaliser()
    nan = float("nan")
    n.add(RscMeasurement(speed_mps=nan, cadence_spm=170, total_distance_m=nan), 0.0)
    reading = n.emit(0.0)
    assert (reading.speed_mps, reading.distance_m, reading.cadence_rpm) == (None, None, 170.0)
    assert {f.metric for f in reading.flags} == {"speed_mps", "distance_m"}
