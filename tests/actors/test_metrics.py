"""Live metrics (``actors/metrics.py``) against hand-computed values of the published formulas.

Plain functions and ``SessionState`` only (no Ray, no Redis): the math. Every expected
number below is worked out in the docstring or the comment next to it.
"""

from __future__ import annotations

import math

import msgpack
import numpy as np
import pytest

from actors.metrics import KCAL_PER_KJ, hr_zone, keytel_kcal_per_min, power_zone, training_stress
from actors.profile import Profile, ProfileError, Sex, check_profile
from actors.session import BOARD_COLUMNS, DeviceBatch, SessionState

pytestmark = pytest.mark.timeout(60)


def textbook_np(watts: list[float]) -> float:
    """Normalized Power as Allen & Coggan (*Training and Racing with a Power Meter*, 2nd ed.,
    2010, ch. 7) state it for 1 s data: 30 s rolling average from the 30th second on, each
    raised to the 4th power, averaged, 4th root. Written the slow obvious way on purpose."""
    rolling = [sum(watts[k - 29:k + 1]) / 30 for k in range(29, len(watts))]
    return float((sum(r**4 for r in rolling) / len(rolling)) ** 0.25)


def ride(watts: list[float] | None = None, *, hr: list[float] | None = None, profile: Profile | None = None,
         per_tick: int = 1, start: float = 1_000.0) -> SessionState:
    """One rider sending 1 Hz samples (power and/or heart rate), ``per_tick`` per tick, plus
    one last sample a second later that closes the final second."""
    n = len(watts if watts is not None else hr or [])
    state = SessionState("m", clock=lambda: 1_764_979_200.0)  # 2025-12-06
    state.join("ann")
    state.set_profile("ann", profile or Profile(ftp_w=250.0, weight_kg=70.0, birth_year=1995, sex=Sex.MALE,
                                                hr_max_bpm=190.0, hr_rest_bpm=50.0))
    rows = []
    for i in range(n + 1):
        k = min(i, n - 1)
        rows.append([i + 1, start + i, None if hr is None else hr[k], None if watts is None else watts[k]])
    for at in range(0, len(rows), per_tick):
        state.apply([DeviceBatch("ann-dev", "ann", rows[at:at + per_tick])])
    return state


def metrics_of(state: SessionState, who: str = "ann") -> dict:  # type: ignore[type-arg]
    summary = state.summary(who)
    assert summary is not None
    return summary["metrics"]  # type: ignore[no-any-return]


def test_np_of_steady_power_is_that_power_and_an_hour_at_ftp_is_100_tss() -> None:
    """Coggan's definition of TSS: one hour at FTP (NP = FTP, IF = 1.0) scores exactly 100."""
    m = metrics_of(ride([250.0] * 3600))
    assert m["np_w"] == pytest.approx(250.0)
    assert m["if"] == pytest.approx(1.0) and m["tss"] == pytest.approx(100.0)
    assert m["power_seconds"] == 3600


def test_np_of_a_step_matches_the_textbook_algorithm_by_hand() -> None:
    """30 s at 100 W then 30 s at 300 W: the 31 rolling means (seconds 30..60) are
    100 + 200 j / 30 W for j = 0..30, so NP = (mean of (100 + 20 j / 3)^4)^(1/4) = 223.07 W
    (Allen & Coggan's algorithm, worked by hand); IF at FTP 250 = 0.8923; TSS = 60 s x
    223.07 x 0.8923 / (250 x 3600) x 100 = 1.327."""
    watts = [100.0] * 30 + [300.0] * 30
    by_hand = (sum((100 + 20 * j / 3) ** 4 for j in range(31)) / 31) ** 0.25
    assert by_hand == pytest.approx(223.0695, abs=1e-4) and textbook_np(watts) == pytest.approx(by_hand)
    m = metrics_of(ride(watts))
    assert m["np_w"] == pytest.approx(by_hand)
    assert m["if"] == pytest.approx(by_hand / 250)
    assert m["tss"] == pytest.approx(60 * by_hand * (by_hand / 250) / (250 * 3600) * 100)
    assert m["tss"] == pytest.approx(1.327, abs=1e-3)


@pytest.mark.parametrize("per_tick", [1, 7, 10_000])
def test_np_is_the_same_sample_by_sample_and_as_one_late_burst(per_tick: int) -> None:
    """A varied 5-minute ride sent 1, 7, or all samples per tick (a late health-store sync):
    NP and seconds in zone agree with the textbook algorithm either way."""
    rng = np.random.default_rng(16)
    watts = list(np.round(rng.gamma(4.0, 55.0, 300), 1))
    beats = list(np.round(rng.normal(150.0, 20.0, 300)))
    m = metrics_of(ride(watts, hr=beats, per_tick=per_tick))
    assert m["np_w"] == pytest.approx(textbook_np(watts), rel=1e-7)  # (the ring keeps float32 watts)
    zones = power_zone(np.array(watts), np.full(300, 250.0))
    assert m["power_zone_s"] == [int((zones == z).sum()) for z in range(1, 8)]
    # heart rate: sample k (k = 1..300, the last one repeated) counts the second before it
    heart = hr_zone(np.array(beats[1:] + beats[-1:]), np.full(300, 190.0), np.full(300, 50.0))
    assert m["hr_zone_s"] == [float((heart == z).sum()) for z in range(1, 6)]


def test_np_is_unknown_before_30_seconds() -> None:
    assert metrics_of(ride([200.0] * 20))["np_w"] is None


def test_a_short_gap_is_filled_with_the_later_power_and_a_long_one_is_a_pause() -> None:
    """Samples at 0..29 s (100 W), then at 32 s (400 W): a 3 s gap (<= max_gap_s 5) adds two
    filled seconds of 400 W before second 32; then 400 W on at 100 s (a pause: 4 filled
    seconds, like energy, which credits at most max_gap_s)."""
    state = SessionState("gap", clock=lambda: 1_764_979_200.0)
    state.join("ann")
    rows = [[i + 1, 1000.0 + i, None, 100.0] for i in range(30)]
    rows += [[31, 1032.0, None, 400.0], [32, 1100.0, None, 400.0], [33, 1101.0, None, 400.0]]
    state.apply([DeviceBatch("d", "ann", rows)])
    # closed seconds: 30 x 100, 2 filled + 1 at 400 (second 32), 4 filled + 1 at 400 (second 100)
    expected = [100.0] * 30 + [400.0] * 3 + [400.0] * 5
    m = metrics_of(state)
    assert m["power_seconds"] == len(expected) and m["np_w"] == pytest.approx(textbook_np(expected))


def test_coggan_power_zones_at_their_bounds() -> None:
    """Coggan's levels at FTP 200 W: Z1 up to 55 % (110 W), Z2 to 75 % (150), Z3 to 90 %
    (180), Z4 to 105 % (210), Z5 to 120 % (240), Z6 to 150 % (300), Z7 above."""
    watts = np.array([0, 110, 111, 150, 151, 180, 181, 210, 211, 240, 241, 300, 301, 1200, np.nan])
    assert power_zone(watts, np.full(len(watts), 200.0)).tolist() == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 0]


def test_karvonen_heart_rate_zones() -> None:
    """Karvonen's worked numbers for max 180 / rest 60 bpm (reserve 120): 60 % = 60 + 0.6 x
    120 = 132 bpm, 70 % = 144, 80 % = 156, 90 % = 168."""
    hr = np.array([40, 100, 131, 132, 143.9, 144, 156, 167, 168, 200, np.nan])
    got = hr_zone(hr, np.full(len(hr), 180.0), np.full(len(hr), 60.0))
    assert got.tolist() == [1, 1, 1, 2, 2, 3, 4, 4, 5, 5, 0]


def test_keytel_calories_from_heart_rate() -> None:
    """Keytel et al. 2005 (J Sports Sci 23(3):289-297), without VO2max. Male, 70 kg, 30 y,
    150 bpm: -55.0969 + 0.6309 x 150 + 0.1988 x 70 + 0.2017 x 30 = 59.5051 kJ/min =
    14.2221 kcal/min. Female, 60 kg, 40 y, 140 bpm: -20.4022 + 0.4472 x 140 - 0.1263 x 60
    + 0.074 x 40 = 37.5878 kJ/min = 8.9837 kcal/min."""
    got = keytel_kcal_per_min(np.array([150.0, 140.0, 40.0]), np.array([70.0, 60.0, 70.0]),
                              np.array([30.0, 40.0, 30.0]), np.array([1.0, 2.0, 1.0]))
    assert got[0] == pytest.approx(14.2221, abs=1e-4) and got[1] == pytest.approx(8.9837, abs=1e-4)
    assert got[2] == 0.0  # (negative at rest: never below zero)


def test_a_heart_rate_rider_burns_keytel_calories_and_fills_hr_zones() -> None:
    """Ten minutes at 150 bpm (600 s of 1 Hz samples) for the male rider above: 600 / 60 x
    14.2221 = 142.22 kcal; max 190 / rest 50: 150 bpm is 71 % of reserve, zone 3."""
    profile = Profile(weight_kg=70.0, birth_year=1995, sex=Sex.MALE, hr_max_bpm=190.0, hr_rest_bpm=50.0)
    state = ride(hr=[150.0] * 600, profile=profile)  # (born 1995, the class in 2025: 30 y)
    m = metrics_of(state)
    assert m["kcal_method"] == "heart_rate" and m["kcal"] == pytest.approx(142.221, abs=1e-3)
    assert m["hr_zone"] == 3 and m["hr_zone_s"] == [0, 0, 600.0, 0, 0]
    assert m["np_w"] is None and m["power_zone"] is None


def test_a_power_rider_burns_the_work_at_24_percent_efficiency() -> None:
    """An hour at 250 W is 900 kJ of work; at 24 % gross efficiency 900 / (4.184 x 0.24) =
    896.27 kcal (Allen & Coggan's "kJ ~ kcal")."""
    m = metrics_of(ride([250.0] * 3600))
    assert m["kcal_method"] == "work" and m["kcal"] == pytest.approx(896.27, abs=0.01)
    assert KCAL_PER_KJ == pytest.approx(0.99586, abs=1e-5)


def test_if_and_tss_formulas() -> None:
    intensity, tss = training_stress(np.array([1800.0]), np.array([225.0]), np.array([250.0]))
    assert intensity[0] == pytest.approx(0.9) and tss[0] == pytest.approx(40.5)  # 0.5 h x 0.9^2 x 100


def test_the_board_row_carries_zone_np_and_kcal_at_the_end() -> None:
    state = ride([250.0] * 60)
    cols = state.board()["cols"]
    assert cols == list(BOARD_COLUMNS) and cols[:10] == [
        "participant", "rank", "energy_kj", "hr_bpm", "power_w", "cadence_rpm", "speed_mps", "distance_m",
        "last_ts", "samples"]
    row = dict(zip(cols, state.board()["rows"][0], strict=True))
    assert row["power_zone"] == 4 and row["hr_zone"] is None  # 250 W at FTP 250: 100 %, Z4
    assert row["np_w"] == 250.0 and row["if"] == 1.0 and row["kcal"] == pytest.approx(15.0 * KCAL_PER_KJ, abs=0.05)


def test_profile_estimates_are_flagged() -> None:
    """Nothing set: weight 75 kg, age 35, max HR 220 - 35 = 185 (Fox 1971), rest 60, FTP
    2.0 W/kg x 75 = 150 W; born 1985 in 2025: age 40, max HR 180."""
    none = Profile().effective(2025)
    assert (none.weight_kg, none.age_y, none.hr_max_bpm, none.hr_rest_bpm, none.ftp_w) == (75, 35, 185, 60, 150)
    assert set(none.estimated) == {"weight_kg", "age", "hr_max_bpm", "hr_rest_bpm", "ftp_w", "sex"}
    some = Profile(birth_year=1985, weight_kg=80.0, ftp_w=280.0).effective(2025)
    assert (some.age_y, some.hr_max_bpm, some.ftp_w) == (40, 180, 280)
    assert set(some.estimated) == {"hr_max_bpm", "hr_rest_bpm", "sex"}


@pytest.mark.parametrize(("raw", "message"), [
    ({"ftp_w": 5}, "ftp_w must be between 30 and 700"),
    ({"ftp_w": "lots"}, "ftp_w must be a finite number"),
    ({"ftp_w": math.nan}, "ftp_w must be a finite number"),
    ({"hr_max_bpm": 110, "hr_rest_bpm": 115}, "hr_rest_bpm (115) must be below hr_max_bpm (110)"),
    ({"birth_year": 2024}, "birth_year must be between 1900 and 2020"),
    ({"birth_year": 1990.5}, "birth_year must be an integer year"),
    ({"sex": "x"}, "sex must be one of 'female', 'male'"),
    ({"units": "furlongs"}, "units must be one of 'metric', 'imperial'"),
    ({"vo2max": 50}, "unknown profile field(s): vo2max"),
])
def test_bad_profiles_say_what_is_wrong(raw: dict, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ProfileError) as caught:
        check_profile(raw, year=2025)
    assert message in str(caught.value)


def test_metrics_and_profiles_survive_a_checkpoint_and_old_checkpoints_load() -> None:
    state = ride([100.0] * 30 + [300.0] * 30)
    restored = SessionState.from_checkpoint(state.to_checkpoint(), clock=state.clock)
    assert restored.snapshot() == state.snapshot() and restored.board() == state.board()
    more = [[62 + i, 1061.0 + i, None, 300.0] for i in range(40)]
    for s in (state, restored):
        s.apply([DeviceBatch("ann-dev", "ann", more)])
    assert metrics_of(restored) == metrics_of(state)  # the 30 s ring came back too

    raw = msgpack.unpackb(state.to_checkpoint(), raw=False, strict_map_key=False)
    assert restored.profiles == state.profiles and state.profiles["ann"].ftp_w is not None
    assert raw["profiles"]["ann"] == state.profiles["ann"].as_dict()  # what a checkpoint holds of a profile
    del raw["metrics"], raw["profiles"]  # what a checkpoint from before profiles looked like
    old = SessionState.from_checkpoint(msgpack.packb(raw, use_bin_type=True), clock=state.clock)
    assert old.summary("ann")["energy_kj"] == state.summary("ann")["energy_kj"]  # type: ignore[index]
    assert old.summary("ann")["profile"]["loaded"] is False  # type: ignore[index]
    assert metrics_of(old)["np_w"] is None and "ftp_w" in old.summary("ann")["profile"]["effective"]["estimated"]  # type: ignore[index]


def test_a_checkpoint_carries_about_220_bytes_of_metrics_per_rider() -> None:
    """Checkpoints are written several times a second: the metrics' share stays small (the
    profile columns are rebuilt from the profiles, the 30 s ring is float32)."""
    state = SessionState("size", clock=lambda: 1_764_979_200.0)
    rows = {f"p{i}": [[1, 1000.0, 140.0, 200.0], [2, 1001.0, 141.0, 210.0]] for i in range(500)}
    state.apply([DeviceBatch(f"{p}-dev", p, r) for p, r in rows.items()])
    raw = msgpack.unpackb(state.to_checkpoint(), raw=False, strict_map_key=False)
    assert len(msgpack.packb(raw["metrics"])) / 500 < 225
    restored = SessionState.from_checkpoint(state.to_checkpoint(), clock=state.clock)
    assert restored.snapshot() == state.snapshot()
