"""Rider models: plausible numbers, heart rate bounded and lagging power, drift, speed from power."""

from __future__ import annotations

import random

import numpy as np
import pytest

from sims.physiology import (
    ClassPlan,
    RiderModel,
    RiderProfile,
    Segment,
    flat_speed_mps,
    random_profile,
    standard_plan,
)

PROFILE = RiderProfile(ftp_w=250, hr_rest_bpm=55, hr_max_bpm=190, noise=0.03)


def _ride(plan: ClassPlan, profile: RiderProfile = PROFILE, seed: int = 1) -> dict[str, np.ndarray]:
    model = RiderModel(profile, plan, random.Random(seed))
    readings = [model.step(float(t), 1.0) for t in range(int(plan.duration_s))]
    return {k: np.array([getattr(r, k) for r in readings]) for k in ("hr_bpm", "power_w", "cadence_rpm", "speed_mps", "distance_m")}


def test_standard_plan_has_the_class_structure_and_length() -> None:
    plan = standard_plan(1800)
    kinds = [s.kind for s in plan.segments]
    assert plan.duration_s == pytest.approx(1800)
    assert kinds[0] == "warmup" and kinds[-1] == "cooldown"
    assert {"interval", "climb", "sprint", "recovery"} <= set(kinds)
    assert plan.at(0)[1] == pytest.approx(0.40) and plan.at(1e9)[0].kind == "cooldown"


@pytest.mark.parametrize("seed", range(20))
def test_random_riders_stay_within_physiological_bounds(seed: int) -> None:
    rng = random.Random(seed)
    profile = random_profile(rng)
    assert 120 <= profile.ftp_w <= 360 and 45 <= profile.hr_rest_bpm < profile.hr_max_bpm <= 205
    ride = _ride(standard_plan(2700), profile, seed)
    assert ride["hr_bpm"].min() >= profile.hr_rest_bpm and ride["hr_bpm"].max() <= profile.hr_max_bpm
    assert ride["power_w"].min() >= 0 and ride["power_w"].max() < 3 * profile.ftp_w
    assert 0 <= ride["cadence_rpm"].min() and ride["cadence_rpm"].max() < 140
    assert 0 <= ride["speed_mps"].max() < 20
    assert np.all(np.diff(ride["distance_m"]) >= 0)
    # average power over the class is a believable fraction of FTP
    assert 0.5 * profile.ftp_w < ride["power_w"].mean() < 1.0 * profile.ftp_w


def test_heart_rate_lags_a_step_in_power() -> None:
    plan = ClassPlan((Segment("recovery", 300, 0.4), Segment("interval", 300, 1.05)))
    ride = _ride(plan)
    hr, power = ride["hr_bpm"], ride["power_w"]
    before, after = hr[290:300].mean(), hr[560:600].mean()
    assert power[300:305].mean() > 2 * power[290:300].mean()  # power jumps at once
    assert after - before > 40  # the heart follows...
    assert hr[305] - before < 0.3 * (after - before)  # ...but not at once (first-order lag)
    assert hr[330] - before > 0.4 * (after - before)  # tau ~ 30 s
    reach = int(np.argmax(hr[300:] >= before + 0.63 * (after - before)))
    assert 15 <= reach <= 60


def test_heart_rate_recovers_slower_than_it_rises() -> None:
    plan = ClassPlan((Segment("interval", 400, 1.0), Segment("recovery", 400, 0.4)))
    hr = _ride(plan)["hr_bpm"]
    top, bottom = hr[380:400].mean(), hr[760:800].mean()
    down = int(np.argmax(hr[400:] <= top - 0.63 * (top - bottom)))
    assert 30 <= down <= 90


def test_heart_rate_drifts_up_at_constant_power() -> None:
    plan = ClassPlan((Segment("steady", 3600, 0.75),))
    base = dict(ftp_w=250, hr_rest_bpm=55, hr_max_bpm=190)
    flat = _ride(plan, RiderProfile(**base, drift_bpm_per_h=0))
    drifting = _ride(plan, RiderProfile(**base, drift_bpm_per_h=10))
    np.testing.assert_array_equal(flat["power_w"], drifting["power_w"])  # same effort...
    gap = drifting["hr_bpm"] - flat["hr_bpm"]
    assert gap[60] < 1.0 and 8.0 < gap[-300:].mean() < 10.5  # ...the heart works harder with time
    assert np.all(np.diff(gap[::300]) > 0)


def test_cadence_follows_the_segment() -> None:
    plan = ClassPlan((Segment("climb", 120, 0.95, 60), Segment("sprint", 60, 1.5, 115)))
    cadence = _ride(plan)["cadence_rpm"]
    assert cadence[20:120].mean() < 70 and cadence[130:180].mean() > 105


def test_speed_grows_with_power_and_distance_integrates_it() -> None:
    speeds = [flat_speed_mps(p, 75) for p in (0, 100, 200, 300, 400)]
    assert speeds[0] == 0 and all(a < b for a, b in zip(speeds, speeds[1:], strict=False))
    assert 8 < flat_speed_mps(200, 75) < 11  # ~33 km/h at 200 W on the hoods
    ride = _ride(ClassPlan((Segment("steady", 100, 0.8),)))
    assert ride["distance_m"][-1] == pytest.approx(ride["speed_mps"].sum(), rel=1e-9)
