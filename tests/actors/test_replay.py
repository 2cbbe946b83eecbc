"""On-demand replay as plain logic: ghosts from a recording, ranks at each rider's own
offset against the ghosts and the riders here now, and a checkpoint round trip."""

from __future__ import annotations

import numpy as np

from actors.recording import Recording
from actors.replay import Replay
from actors.session import BOARD_COLUMNS, DeviceBatch, Phase, SessionState


def _recorded(powers: list[float], seconds: int, start: float = 1000.0) -> Recording:
    rec = Recording()
    slot = np.repeat(np.arange(len(powers)), seconds)
    ts = np.tile(start + np.arange(seconds, dtype=float), len(powers))
    values = np.full((len(slot), 6), np.nan)
    values[:, 0] = ts
    values[:, 2] = np.repeat(powers, seconds)
    rec.add(slot, values)
    return rec


def test_ghosts_are_cumulative_output_per_second_from_the_start() -> None:
    replay = Replay.of_recording("c", ["a", "b", "quiet"], _recorded([100.0, 400.0, 0.0], 10), live_at=1000.0)
    assert replay.names == ["a", "b"]  # a rider with no power is no ghost
    assert replay.class_s == 10
    assert np.allclose(replay.kj[0, :3], [0.1, 0.2, 0.3]) and np.isclose(replay.kj[1, 9], 4.0)
    late = Replay.of_recording("c", ["a", "b", "q"], _recorded([100.0, 400.0, 0.0], 10), live_at=1004.0)
    assert late.class_s == 6 and np.isclose(late.kj[0, 0], 0.1)  # seconds before the start are the lobby's
    assert replay.ghosts_at(2, 5) == [["b", 1.2], ["a", 0.3]]


def test_riders_rank_against_ghosts_at_their_own_offset_and_each_other() -> None:
    t = [2000.0]
    state = SessionState("c:od", clock=lambda: t[0])
    state.set_phase(Phase.LIVE)
    state.set_replay(Replay.of_recording("c", ["a", "b"], _recorded([100.0, 400.0], 60), live_at=1000.0))
    # zed starts at 2000 and rides 300 W; yan starts 10 s later at 50 W
    for k in range(21):
        t[0] = 2000.0 + k
        batches = [DeviceBatch("zed-bike", "zed", [[k + 1, t[0], None, 300.0]])]
        if k >= 10:
            batches.append(DeviceBatch("yan-bike", "yan", [[k - 9, t[0], None, 50.0]]))
        state.apply(batches)
    state.advance_plan()
    board = state.board()
    rows = {r[0]: dict(zip(BOARD_COLUMNS, r, strict=True)) for r in board["rows"]}
    # zed at offset 20: 6.0 kJ (20 s x 300 W) against a at 2.1 and b at 8.4: 2nd of 4
    assert (rows["zed"]["offset_s"], rows["zed"]["replay_rank"]) == (20, 2)
    # yan at offset 10: 0.5 kJ, behind both ghosts at 10 (1.1, 4.4) and zed: 4th
    assert (rows["yan"]["offset_s"], rows["yan"]["replay_rank"]) == (10, 4)
    block = board["replay"]
    assert (block["of"], block["recorded"], block["here_now"], block["offset_s"]) == ("c", 2, 2, 20)
    assert block["ghosts"][0][0] == "b"
    restored = SessionState.from_checkpoint(state.to_checkpoint(), clock=lambda: t[0])
    assert restored.replay is None and restored.replay_of == "c"  # the cell rebuilds the ghosts
    restored.set_replay(Replay.of_recording("c", ["a", "b"], _recorded([100.0, 400.0], 60), live_at=1000.0))
    again = {r[0]: dict(zip(BOARD_COLUMNS, r, strict=True)) for r in restored.board()["rows"]}
    assert again["zed"]["offset_s"] == 20 and again["yan"]["replay_rank"] == 4  # starts kept


def test_a_class_without_replay_has_empty_replay_columns() -> None:
    state = SessionState("s")
    state.apply([DeviceBatch("d", "p", [[1, 1000.0, None, 200.0]])])
    row = dict(zip(BOARD_COLUMNS, state.board()["rows"][0], strict=True))
    assert row["replay_rank"] is None and row["offset_s"] is None and "replay" not in state.board()
