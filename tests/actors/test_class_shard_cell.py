"""A class shard's cell (real Redis, in this process): board parts and the class's results."""

from __future__ import annotations

import asyncio
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
