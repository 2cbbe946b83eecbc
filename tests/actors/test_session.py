"""SessionState, synchronously: idempotence, order independence, energy, ranks, checkpoints."""

from __future__ import annotations

import random

import pytest

from actors.errors import CheckpointError, PhaseError
from actors.session import DeviceBatch, Phase, SessionState


def rows(start: int, n: int, *, power: float = 200.0, t0: float = 1000.0, hr: float = 120.0) -> list[list[float]]:
    return [[s, t0 + (s - 1), hr, power, 90.0, 8.0, 10.0 * s] for s in range(start, start + n)]


def apply(state: SessionState, device: str, participant: str, sample_rows, rejected=()) -> object:
    return state.apply([DeviceBatch(device, participant, sample_rows, list(rejected))])


def test_energy_integrates_power_over_device_time() -> None:
    state = SessionState("s")
    apply(state, "d1", "p1", rows(1, 11, power=250.0))
    summary = state.summary("p1")
    assert summary is not None
    # 10 intervals of 1 s at 250 W = 2.5 kJ; the first sample only sets the baseline
    assert summary["energy_kj"] == pytest.approx(2.5)
    assert summary["samples"] == 11
    assert summary["power_avg"] == pytest.approx(250.0)
    assert summary["distance_m"] == pytest.approx(110.0)


def test_gaps_longer_than_max_gap_are_capped() -> None:
    state = SessionState("s", max_gap_s=5.0)
    apply(state, "d1", "p1", [[1, 0.0, None, 100.0], [2, 60.0, None, 100.0]])
    assert state.summary("p1")["energy_kj"] == pytest.approx(0.5)  # type: ignore[index]


def test_resent_and_duplicated_samples_count_once() -> None:
    state = SessionState("s")
    first = apply(state, "d1", "p1", rows(1, 5))
    again = apply(state, "d1", "p1", rows(1, 5) + rows(4, 4))
    assert first.applied == 5 and first.duplicates == 0  # type: ignore[attr-defined]
    assert again.applied == 2 and again.duplicates == 7  # type: ignore[attr-defined]
    summary = state.summary("p1")
    assert summary["samples"] == 7  # type: ignore[index]
    assert summary["energy_kj"] == pytest.approx(200.0 * 6 / 1000)  # type: ignore[index]
    assert state.applied_seqs() == {"d1": 7}


def test_out_of_order_arrival_gives_the_same_result_as_in_order() -> None:
    ordered = SessionState("a")
    shuffled = SessionState("b")
    data = [[s, 1000.0 + s * 0.9, 100 + s, 150.0 + 7 * (s % 5), 80.0, 7.0, float(s)] for s in range(1, 60)]
    apply(ordered, "d", "p", data)
    mixed = data[:]
    random.Random(4).shuffle(mixed)
    for i in range(0, len(mixed), 7):
        apply(shuffled, "d", "p", mixed[i : i + 7])
    a, b = ordered.summary("p"), shuffled.summary("p")
    assert a is not None and b is not None
    for key in ("energy_kj", "samples", "hr_avg", "power_avg", "power_max", "distance_m", "last_ts"):
        assert b[key] == pytest.approx(a[key]), key
    assert a["latest"] == b["latest"]
    assert shuffled.applied_seqs() == {"d": 59}


def test_late_sample_fills_a_gap_and_is_credited() -> None:
    state = SessionState("s")
    apply(state, "d", "p", [[1, 0.0, None, 100.0], [3, 2.0, None, 300.0]])
    assert state.summary("p")["energy_kj"] == 0.0  # type: ignore[index]
    assert state.applied_seqs() == {"d": 1}
    apply(state, "d", "p", [[2, 1.0, None, 200.0]])
    assert state.summary("p")["energy_kj"] == pytest.approx(0.5)  # type: ignore[index]
    assert state.applied_seqs() == {"d": 3}


def test_rejected_seqs_are_consumed_without_moving_the_baseline() -> None:
    state = SessionState("s")
    apply(state, "d", "p", [[1, 0.0, None, 100.0], [3, 2.0, None, 100.0]], rejected=[2])
    summary = state.summary("p")
    assert summary["samples"] == 2 and summary["rejected"] == 1  # type: ignore[index]
    assert summary["energy_kj"] == pytest.approx(0.2)  # type: ignore[index]
    assert state.applied_seqs() == {"d": 3}


def test_latest_values_follow_the_newest_timestamp_not_arrival() -> None:
    state = SessionState("s")
    apply(state, "d", "p", [[2, 10.0, 150.0, 300.0]])
    apply(state, "d", "p", [[1, 9.0, 100.0, 100.0]])
    summary = state.summary("p")
    assert summary["latest"]["hr_bpm"] == 150.0  # type: ignore[index]
    assert summary["hr_max"] == 150.0 and summary["hr_avg"] == pytest.approx(125.0)  # type: ignore[index]


def test_board_ranks_by_energy_with_join_order_breaking_ties() -> None:
    state = SessionState("s", board_size=2)
    for name, power in (("a", 100.0), ("b", 300.0), ("c", 200.0), ("d", 200.0)):
        apply(state, f"dev-{name}", name, rows(1, 3, power=power))
    board = state.board()
    ranking = [(row[0], row[1]) for row in board["rows"]]
    assert ranking == [("b", 1), ("c", 2), ("d", 3), ("a", 4)]
    assert [row[0] for row in board["top"]] == ["b", "c"]
    assert board["n"] == 4
    state.leave("b")
    assert [row[0] for row in state.board()["rows"]] == ["c", "d", "a"]


def test_board_is_cached_per_version() -> None:
    state = SessionState("s")
    apply(state, "d", "p", rows(1, 2))
    first = state.board()
    assert state.board() is first
    apply(state, "d", "p", rows(3, 1))
    assert state.board() is not first


def test_phases_only_move_forward() -> None:
    state = SessionState("s")
    state.set_phase(Phase.LIVE)
    state.set_phase(Phase.ENDED)
    with pytest.raises(PhaseError):
        state.set_phase(Phase.LOBBY)


def test_checkpoint_round_trip_keeps_everything() -> None:
    state = SessionState("s", board_size=3)
    for i in range(40):  # past the initial capacity, so arrays grew
        apply(state, f"d{i}", f"p{i}", rows(1, 4, power=100.0 + i))
    apply(state, "d0", "p0", [[7, 1010.0, None, 50.0]])  # pending above a gap
    state.leave("p3")
    state.set_phase(Phase.LIVE)
    restored = SessionState.from_checkpoint(state.to_checkpoint())
    assert restored.board() == state.board()
    assert restored.snapshot() == state.snapshot()
    assert restored.devices["d0"].pending == state.devices["d0"].pending
    apply(restored, "d0", "p0", rows(5, 2))
    apply(state, "d0", "p0", rows(5, 2))
    assert restored.summary("p0") == state.summary("p0")


def test_corrupt_checkpoint_raises_checkpoint_error() -> None:
    with pytest.raises(CheckpointError):
        SessionState.from_checkpoint(b"\x93garbage")
