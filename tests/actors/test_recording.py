"""The per-second recording (actors/recording.py): what a second holds, late data, bounds,
and that a killed class keeps every acknowledged second (a real redis-server, real cells)."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from actors.recording import FIELD_NAMES, Recording
from actors.session import DeviceBatch, SessionState

T0 = 1_795_000_000.0


def values(rows: list[list[float]]) -> np.ndarray:
    return np.array(rows, dtype=float)


def test_each_second_holds_its_samples_at_export_resolution() -> None:
    rec = Recording()
    rec.add(np.array([0, 1, 0]), values([
        [T0 + 0.2, 120, 200.4, 90, 8.1234, 10.0],
        [T0 + 0.5, 130, 300.0, 80, 7.0, 5.0],
        [T0 + 1.1, 121, np.nan, 91, 8.2, 18.126],
    ]))
    a, b = rec.series(0), rec.series(1)
    assert a.t0 == int(T0) and a.t.tolist() == [0, 1]
    assert a.values["power_w"].tolist()[0] == 200.0 and np.isnan(a.values["power_w"][1])
    assert a.values["hr_bpm"].tolist() == [120, 121]
    assert a.values["speed_mps"].tolist() == [8.123, 8.2]
    assert a.values["distance_m"].tolist() == [10.0, 18.13]
    assert b.t.tolist() == [0] and b.values["power_w"].tolist() == [300.0]


def test_the_newest_sample_of_a_second_wins_field_by_field() -> None:
    rec = Recording()
    rec.add(np.array([0, 0, 0]), values([
        [T0 + 0.9, 150, 250, np.nan, np.nan, np.nan],
        [T0 + 0.1, 140, 100, 70, np.nan, np.nan],  # older: loses power and hr, gives cadence
        [T0 + 0.5, np.nan, np.nan, np.nan, 6.0, np.nan],  # another device of the rider
    ]))
    s = rec.series(0)
    assert [s.values[n][0] for n in ("power_w", "hr_bpm", "cadence_rpm", "speed_mps")] == [250, 150, 70, 6.0]


def test_late_data_fills_its_seconds_and_marks_the_rider_changed() -> None:
    rec = Recording()
    rec.add(np.array([0]), values([[T0 + 100, 120, 200, 90, 8, 800]]))
    assert rec.take_changed().tolist() == [0] and rec.take_changed().tolist() == []
    rec.add(np.array([2, 2]), values([[T0 + 50, 110, 150, 85, 7, 400], [T0 - 20, 100, 90, 80, 6, 1]]))
    assert rec.take_changed().tolist() == [2]
    s = rec.series(2)
    assert s.t.tolist() == [-120, -50] and s.values["power_w"].tolist() == [90, 150]
    assert len(rec.series(1)) == 0 and rec.series(0).t.tolist() == [0]


def test_samples_beyond_the_span_are_dropped_and_counted() -> None:
    rec = Recording(max_span_s=60)
    rec.add(np.array([0, 0, 0]), values([[T0, 1, 1, 1, 1, 1], [T0 + 61, 1, 1, 1, 1, 1], [T0 - 61, 1, 1, 1, 1, 1]]))
    assert rec.dropped == 2 and rec.series(0).t.tolist() == [0]
    assert len(rec.chunks) <= 2 * 60 // rec.chunk_s + 1


def test_chunks_round_trip_and_only_changed_chunks_are_taken() -> None:
    rec = Recording(chunk_s=10)
    rec.add(np.array([0, 1]), values([[T0, 120, 200, 90, 8, 10], [T0 + 25, 130, 210, 91, 9, 20]]))
    first = rec.take_dirty()
    assert sorted(first) == ["0", "2"] and rec.take_dirty() == {}
    rec.add(np.array([5]), values([[T0 + 3, 99, 99, 99, 9.9, 99]]))  # a new rider: chunk 0 again
    second = rec.take_dirty()
    assert list(second) == ["0"]
    back = Recording.restore(rec.meta(), {**first, **second})
    for slot in (0, 1, 5):
        mine, theirs = rec.series(slot), back.series(slot)
        assert mine.t.tolist() == theirs.t.tolist()
        for name in FIELD_NAMES:
            np.testing.assert_array_equal(mine.values[name], theirs.values[name])
    with pytest.raises(ValueError, match="missing"):
        Recording.restore(rec.meta(), {"0": second["0"]})  # chunk 2 lost


def test_the_class_state_records_only_applied_samples() -> None:
    state = SessionState("s", clock=lambda: T0)
    rows = [[s, T0 + s - 1, 120.0, 100.0 + s, 90.0, 8.0, 10.0 * s] for s in range(1, 6)]
    state.apply([DeviceBatch("d1", "ann", rows)])
    state.apply([DeviceBatch("d1", "ann", rows[:2] + [[6, T0 + 5, 121.0, 999.0, 91.0, 8.0, 60.0]], rejected=[7])])
    s = state.recording.series(state.slots["ann"])
    assert s.t.tolist() == [0, 1, 2, 3, 4, 5]
    assert s.values["power_w"].tolist() == [101, 102, 103, 104, 105, 999]
    back = SessionState.from_checkpoint(state.to_checkpoint(), recording=state.recording.take_dirty())
    assert back.recording.series(0).values["power_w"].tolist() == s.values["power_w"].tolist()


@pytest.mark.integration
def test_a_restarted_cell_keeps_every_acknowledged_second(redis_server: Any, unique_id: str) -> None:
    """Two cells of one class in turn (the second fences the first off, as a restarted actor
    does): every second checkpointed by the first is in the second, chunk for chunk."""
    from actors.session_cell import SessionCell
    from actors.wire import TickRequest

    settings = {"redis_url": redis_server.url, "prefix": f"rec{unique_id}"}

    async def scenario() -> None:
        first = SessionCell(unique_id, settings)
        sent = []
        for second in range(45):
            row = [second + 1, T0 + second, 100 + second % 50, 150 + second, 80, 7.5, 7.5 * second]
            sent.append(row)
            first.tick(TickRequest.from_batches(unique_id, [("dev", "ann", [row], [])]))
            if second % 7 == 0:
                await first.checkpoint()
        await first.checkpoint()
        durable = first.durable["dev"]
        second_cell = SessionCell(unique_id, settings)  # a new epoch, restored from Redis
        try:
            assert second_cell.restored and second_cell.durable["dev"] == durable == 45
            got = second_cell.state.recording.series(0)
            assert got.t.tolist() == list(range(45))
            assert got.values["power_w"].tolist() == [r[3] for r in sent]
            assert got.values["hr_bpm"].tolist() == [r[2] for r in sent]
            assert got.values["distance_m"].tolist() == [r[6] for r in sent]
            with pytest.raises(Exception):  # the old instance is fenced off
                first.tick(TickRequest.from_batches(unique_id, [("dev", "ann", [[46, T0 + 45, 1, 1, 1, 1, 1]], [])]))
                await first.checkpoint()
        finally:
            await first.close()
            await second_cell.close()

    asyncio.run(scenario())
