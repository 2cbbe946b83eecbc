"""A class shard's cell (real Redis, in this process): board parts and the class's results."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from actors.board_part import is_part
from actors.session_cell import SessionCell
from actors.wire import TickRequest
from tests.actors import sinks


@pytest.mark.timeout(60)
def test_a_shard_ticks_back_parts_and_publishes_its_riders_as_the_class(redis_server: Any, unique_id: str) -> None:
    class_id = f"cls-{unique_id}"

    async def scenario() -> None:
        cell = SessionCell(f"{class_id}~1", {
            "redis_url": redis_server.url, "prefix": f"t{unique_id}", "board_parts": True, "class_id": class_id,
            "leaderboards": ["weekly"], "results_sink": "tests.actors.sinks:recording"})
        rows = [[s, 1000.0 + s, 120.0, 200.0, 90.0, 8.0, 10.0 * s] for s in range(1, 6)]
        result = cell.tick(TickRequest.from_batches(cell.session_id, [("d1", "ann", rows, [])]))
        assert is_part(result.board) and result.board is not None and result.board["n"] == 1
        again = cell.tick(TickRequest.from_batches(cell.session_id, [], known_version=result.version))
        assert again.board is None  # not newer than what the edge holds
        assert await cell.set_phase("ended") == "ended"
        for _ in range(200):
            if any(s["session"] == class_id for s in sinks.RECORDED):
                break
            await asyncio.sleep(0.05)
        published = [s for s in sinks.RECORDED if s["session"] == class_id]
        assert published and [p["participant"] for p in published[-1]["participants"]] == ["ann"]
        await cell.close()

    asyncio.run(scenario())


@pytest.mark.timeout(60)
def test_a_shard_ranks_its_riders_among_the_whole_class_for_the_history(redis_server: Any, unique_id: str) -> None:
    class_id = f"hist-{unique_id}"
    common = {"redis_url": redis_server.url, "prefix": f"t{unique_id}", "board_parts": True, "class_id": class_id,
              "class_shards": 2, "history_sink": "tests.actors.sinks:recording"}

    def rows(power: float) -> list[list[float]]:
        return [[s, 1000.0 + s, 120.0, power, 90.0, 8.0, 10.0 * s] for s in range(1, 8)]

    async def scenario() -> None:
        first, second = SessionCell(f"{class_id}~0", common), SessionCell(f"{class_id}~1", common)
        first.tick(TickRequest.from_batches(first.session_id, [("d-ann", "ann", rows(200.0), []),
                                                                ("d-bob", "bob", rows(100.0), [])]))
        await first.join("idle")  # joined, never rode: not ranked
        second.tick(TickRequest.from_batches(second.session_id, [("d-cat", "cat", rows(300.0), []),
                                                                  ("d-dan", "dan", rows(150.0), [])]))
        await second.checkpoint()
        await first.set_phase("ended")
        for _ in range(200):
            done = [s for s in sinks.RECORDED if s["session"] == class_id and "class_ranks" in s]
            if done:
                break
            await asyncio.sleep(0.05)
        assert done, "the history sink was never called"
        assert done[-1]["class_ranks"] == {"ann": 2, "bob": 4} and done[-1]["class_riders"] == 4
        await first.close()
        await second.close()

    asyncio.run(scenario())


@pytest.mark.timeout(90)
def test_a_sharded_class_publishes_one_class_result_for_the_whole_class(redis_server: Any, unique_id: str) -> None:
    """Two shards with the real history sink: when both have ended, the results stream holds
    one ``class.result`` with every rider of the class in class rank order (not one per
    shard), whichever shard ends last; late data to one shard publishes one revised result,
    again of the whole class."""
    from history.results_stream import stream_key
    from storage.checkpoint import client_for

    class_id, prefix = f"res-{unique_id}", f"t{unique_id}"
    common = {"redis_url": redis_server.url, "prefix": prefix, "board_parts": True, "class_id": class_id,
              "class_shards": 2, "history_sink": "history.sink:record_rides"}

    def rows(power: float, seqs: range = range(1, 8)) -> list[list[float]]:
        return [[s, 1000.0 + s, 120.0, power, 90.0, 8.0, 10.0 * s] for s in seqs]

    async def results(client: Any, count: int) -> list[dict[str, Any]]:
        for _ in range(400):
            found = [json.loads(f[b"data"]) for _, f in await client.xrange(stream_key(prefix))
                     if f[b"type"] == b"class.result" and f[b"session"].decode() == class_id]
            if len(found) >= count:
                return found
            await asyncio.sleep(0.05)
        raise AssertionError(f"{count} class result(s) never came")

    async def scenario() -> None:
        first, second = SessionCell(f"{class_id}~0", common), SessionCell(f"{class_id}~1", common)
        client = client_for(redis_server.url)
        try:
            first.tick(TickRequest.from_batches(first.session_id, [("d-ann", "ann", rows(200.0), []),
                                                                    ("d-bob", "bob", rows(100.0), [])]))
            second.tick(TickRequest.from_batches(second.session_id, [("d-cat", "cat", rows(300.0), []),
                                                                      ("d-dan", "dan", rows(150.0), [])]))
            await second.set_phase("ended")
            await first.set_phase("ended")
            [result] = await results(client, 1)
            assert [(r["rider"], r["rank"]) for r in result["riders"]] == [("cat", 1), ("ann", 2), ("dan", 3), ("bob", 4)]
            assert result["revised"] is False and "partial" not in result
            assert result["riders"][0]["power_avg"] == 300.0 and result["riders"][0]["samples"] == 7
            await asyncio.gather(*(c._publish_task for c in (first, second) if c._publish_task))
            assert len(await results(client, 1)) == 1  # both shards done publishing: still one
            first.tick(TickRequest.from_batches(first.session_id, [("d-bob", "bob", rows(900.0, range(8, 20)), [])]))
            revised = (await results(client, 2))[-1]
            assert revised["revised"] is True
            assert [(r["rider"], r["rank"]) for r in revised["riders"]] == [("bob", 1), ("cat", 2), ("ann", 3), ("dan", 4)]
        finally:
            await first.close()
            await second.close()
            await client.aclose()

    asyncio.run(scenario())


@pytest.mark.timeout(60)
def test_a_class_keeps_its_edges_ticks_just_before_the_tick_of_its_fastest_viewers_edge(
        redis_server: Any, unique_id: str) -> None:
    """Phones on one edge, a 10 Hz screen on another: the class tells the phones' edge when
    its ticks should arrive (``BEAT_LEAD_S`` before the screen edge's next tick), never the
    screen's edge, and no edge at all while only one ticks. A screen tick that comes late
    moves the beat only an eighth of the way; one that comes early moves it at once."""
    from actors.session_cell import BEAT_LEAD_S, PERIOD_HELD_S

    async def scenario() -> None:
        cell = SessionCell(f"beat-{unique_id}", {"redis_url": redis_server.url, "prefix": f"t{unique_id}"})

        def tick(edge: str | None, period: float | None, now: float) -> tuple[float | None, float | None, int]:
            return cell._pace(TickRequest.from_batches(cell.session_id, [], period_s=period, edge=edge), now)

        assert tick("phones", None, 10.0) == (None, None, 1)  # alone, no viewer anywhere
        assert tick("phones", 1.0, 10.5) == (1.0, None, 1)  # alone: nothing to keep in step with
        assert tick("screen", 0.1, 10.62) == (0.1, None, 2)  # the reader: the edge of the fastest viewer
        period, beat, edges = tick("phones", 1.0, 10.65)
        assert (period, edges) == (0.1, 2) and beat == pytest.approx((10.62 + 0.1 - BEAT_LEAD_S) - 10.65)  # 0.05
        assert tick("phones", 1.0, 10.68)[1] == pytest.approx(0.02)  # 0.02 s before its beat
        tick("screen", 0.1, 10.745)  # 25 ms late: the beat moves 1/8 of it
        assert tick("phones", 1.0, 10.75)[1] == pytest.approx((10.72 + 0.025 / 8 - BEAT_LEAD_S - 10.75) % 0.1)
        tick("screen", 0.1, 10.81)  # early: the beat moves with it
        assert tick("phones", 1.0, 10.85)[1] == pytest.approx((10.81 - BEAT_LEAD_S - 10.85) % 0.1)
        assert tick(None, None, 10.86)[1:] == (None, 3)  # an edge that does not say which it is gets no beat
        # two readers asking the same period: one of them (the first by id) leads, the other follows
        assert tick("another-screen", 0.1, 10.87)[:2] == (0.1, None)  # "another-screen" < "screen"
        assert tick("screen", 0.1, 10.91)[1] == pytest.approx((10.87 - BEAT_LEAD_S - 10.91) % 0.1)
        # the screens go quiet: their periods and beats go with them
        assert tick("phones", None, 10.91 + PERIOD_HELD_S + 0.1) == (None, None, 1)

    asyncio.run(scenario())
