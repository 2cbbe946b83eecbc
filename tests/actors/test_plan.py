"""The class plan as plain logic: validation, the clock's phases, the board's plan block and
the riders' place against the targets, on ``SessionState`` with an injected clock."""

from __future__ import annotations

import numpy as np
import pytest

from actors.plan import ClassClock, PlanError, check_plan, target_codes, target_labels
from actors.profile import Profile
from actors.session import BOARD_COLUMNS, DeviceBatch, Phase, SessionState

PLAN = {"segments": [
    {"kind": "warm-up", "duration_s": 60, "power_zone": [1, 2], "cue": "Easy spin"},
    {"kind": "interval", "duration_s": 30, "ftp_pct": [100, 120], "cadence_rpm": [90, 110], "hr_zone": 4,
     "cue": "Go!"},
    {"kind": "cool-down", "duration_s": 60},
]}


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _planned(*, start: float, now: float = 1000.0) -> tuple[Clock, SessionState]:
    """A class at ``now`` (an injected clock) with ``PLAN`` starting at ``start``."""
    t = Clock(now)
    state = SessionState("s", clock=t)
    state.set_plan(check_plan(PLAN), start)
    return t, state


@pytest.mark.parametrize("raw, says", [
    ({}, "segments"),
    ({"segments": []}, "1-200 segments"),
    ({"segments": [{"kind": "sprint", "duration_s": 60}]}, "plan.segments[0].kind must be one of"),
    ({"segments": [{"kind": "interval", "duration_s": 1}]}, "plan.segments[0].duration_s must be a number in [5"),
    ({"segments": [{"kind": "interval", "duration_s": float("nan")}]}, "duration_s must be a number"),
    ({"segments": [{"kind": "interval", "duration_s": 60, "power_zone": 8}]}, "power_zone must be a whole number in [1, 7]"),
    ({"segments": [{"kind": "interval", "duration_s": 60, "power_zone": 2.5}]}, "whole number"),
    ({"segments": [{"kind": "interval", "duration_s": 60, "power_zone": 3, "ftp_pct": [90, 100]}]}, "not both"),
    ({"segments": [{"kind": "interval", "duration_s": 60, "cadence_rpm": [110, 90]}]}, "low 110 is above high 90"),
    ({"segments": [{"kind": "interval", "duration_s": 60, "hr_zone": [1, 2, 3]}]}, "[low, high]"),
    ({"segments": [{"kind": "interval", "duration_s": 60, "cue": "bad\x00cue"}]}, "cue"),
    ({"segments": [{"kind": "interval", "duration_s": 60, "watts": 200}]}, "watts: unknown field"),
    ({"segments": [{"kind": "interval", "duration_s": 14_400}] * 2}, "at most 21600 s"),
])
def test_a_bad_plan_is_refused_naming_the_field(raw: object, says: str) -> None:
    with pytest.raises(PlanError) as caught:
        check_plan(raw)
    assert says in str(caught.value)


def test_a_plan_round_trips_and_knows_its_segments() -> None:
    plan = check_plan(PLAN)
    assert plan.total_s == 150 and plan.ends == (60, 90, 150)
    assert [plan.index_at(t) for t in (-1, 0, 59.9, 60, 89.9, 90, 149.9, 150)] == [None, 0, 0, 1, 1, 2, 2, None]
    assert check_plan(plan.as_dict()) == plan
    assert plan.segments[1].targets() == {"ftp_pct": [100, 120], "cadence_rpm": [90, 110], "hr_zone": [4, 4]}


def test_the_clock_moves_scheduled_lobby_live_ended_at_the_plan_times() -> None:
    clock = ClassClock(plan=check_plan(PLAN), start_at=1000.0, lobby_lead_s=300.0)
    assert [clock.due_phase(t) for t in (0, 699.9, 700, 999.9)] == ["scheduled", "scheduled", "lobby", "lobby"]
    assert clock.due_phase(1000) == "live"
    clock.went_live(1003.5)  # seen by a tick 3.5 s late: the plan keeps its own times
    assert clock.live_at == 1000.0 and clock.due_phase(1149.9) == "live" and clock.due_phase(1150) == "ended"
    assert ClassClock().due_phase(5.0) is None  # no plan, no start: no opinion


def test_going_live_early_by_hand_starts_the_plan_then() -> None:
    t, state = _planned(start=1000.0, now=500.0)
    assert state.phase is Phase.SCHEDULED
    state.set_phase(Phase.LIVE)  # the instructor starts 500 s early
    assert state.schedule.live_at == 500.0
    t.t = 500 + 61
    state.advance_plan()
    plan = state.board()["plan"]
    assert plan["segment"] == 1 and plan["kind"] == "interval" and plan["segment_left_s"] == 29
    t.t = 650
    state.advance_plan()
    assert state.phase is Phase.ENDED


def test_the_board_carries_segment_time_left_next_cue_and_targets() -> None:
    t, state = _planned(start=1300.0)
    assert state.phase is Phase.LOBBY  # 300 s ahead is inside the default lead
    lobby = state.board()["plan"]
    assert lobby["starts_in_s"] == 300 and lobby["segment"] is None and lobby["next"]["cue"] == "Easy spin"
    assert lobby["next"]["in_s"] == 300 and lobby["class_left_s"] == 150
    t.t = 1300 + 65.2
    state.join("ann")
    state.set_profile("ann", Profile(ftp_w=200, hr_max_bpm=190, hr_rest_bpm=50))
    # 210 W = 105 % of FTP (in 100-120), cadence 80 (below 90-110), heart rate 176 = 90 % of
    # the reserve: Karvonen zone 5 (above zone 4)
    state.apply([DeviceBatch("ann-bike", "ann", [[1, 1365.0, 176, 210, 80]])])
    state.advance_plan()
    assert state.phase is Phase.LIVE
    board = state.board()
    plan = board["plan"]
    assert (plan["segment"], plan["kind"], plan["cue"]) == (1, "interval", "Go!")
    assert plan["segment_left_s"] == 25 and plan["class_left_s"] == 85
    assert plan["next"] == {"kind": "cool-down", "cue": None, "targets": {}, "in_s": 25}
    row = dict(zip(BOARD_COLUMNS, board["rows"][0], strict=True))
    assert (row["power_target"], row["cadence_target"], row["hr_target"]) == ("in", "below", "above")


def test_the_board_counts_down_once_a_second_without_data() -> None:
    t, state = _planned(start=1000.0)
    v0 = state.version
    t.t = 1000.4
    state.advance_plan()
    v1 = state.version
    t.t = 1001.1
    assert state.advance_plan() and state.version == v1 + 1 >= v0
    assert state.board()["plan"]["class_left_s"] == 149


def test_the_plan_survives_a_checkpoint_and_resumes_at_the_right_place() -> None:
    t, state = _planned(start=1000.0)
    t.t = 1070.0
    state.advance_plan()
    restored = SessionState.from_checkpoint(state.to_checkpoint(), clock=t)
    assert restored.schedule == state.schedule and restored.phase is Phase.LIVE
    assert restored.board()["plan"]["segment"] == 1
    t.t = 1150.0
    restored.advance_plan()
    assert restored.phase is Phase.ENDED


def test_a_live_class_keeps_its_plan() -> None:
    t, state = _planned(start=1000.0)
    state.set_plan(check_plan(PLAN), 1000.0)  # the same again: idempotent
    with pytest.raises(PlanError, match="is live"):
        state.set_plan(check_plan(PLAN), 2000.0)


def test_target_codes_without_a_segment_or_values_are_none() -> None:
    nan = np.array([np.nan])
    one = np.array([200.0])
    codes = target_codes(None, power_w=one, cadence_rpm=one, hr_bpm=one, ftp_w=one, hr_max=one, hr_rest=one)
    assert all(target_labels(c).tolist() == [None] for c in codes.values())
    segment = check_plan({"segments": [{"kind": "interval", "duration_s": 60, "power_zone": 4}]}).segments[0]
    codes = target_codes(segment, power_w=nan, cadence_rpm=nan, hr_bpm=nan, ftp_w=one, hr_max=one, hr_rest=one)
    assert target_labels(codes["power_target"]).tolist() == [None]
    # zone 4 is 91-105 % of FTP: 180 W of 200 is zone 3 (below), 200 zone 4 (in), 220 zone 5 (above)
    power = np.array([180.0, 200.0, 220.0])
    codes = target_codes(segment, power_w=power, cadence_rpm=power, hr_bpm=power, ftp_w=np.full(3, 200.0),
                         hr_max=np.full(3, 190.0), hr_rest=np.full(3, 50.0))
    assert target_labels(codes["power_target"]).tolist() == ["below", "in", "above"]
