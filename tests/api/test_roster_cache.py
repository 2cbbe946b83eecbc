"""An edge remembers the riders it knows to be on a class's roster (it joined them, or the
class said so), so a rider's board socket after its join costs no actor call; a rider the
edge does not know is still asked about, one who never joined is still refused, and a
purged class takes what the edge knew of it along."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from tests.api.test_bad_input import expect_close, recv


def _roster(edge: Any, sid: str) -> set[str]:
    return set(edge.config.app.state.edge._rosters.get(sid, ()))


@pytest.mark.integration
def test_board_sockets_of_known_unknown_and_purged_riders(own_edge: Any, unique_id: str, run: Any) -> None:
    edge, tokens = own_edge()
    other, _ = own_edge()
    sid = f"roster-{unique_id}"
    ops = tokens.headers()
    httpx.post(f"{edge.url}/v1/sessions", json={"id": sid}, headers=ops).raise_for_status()
    httpx.post(f"{edge.url}/v1/sessions/{sid}/participants", json={"participant": "ann"}, headers=ops).raise_for_status()
    httpx.post(f"{other.url}/v1/sessions/{sid}/participants", json={"participant": "bob"}, headers=ops).raise_for_status()
    assert _roster(edge, sid) == {"ann"} and _roster(other, sid) == {"bob"}

    def board_url(rider: str) -> str:
        return f"{edge.ws_url}/v1/sessions/{sid}/board?rate=1&participant={rider}&token={tokens('participant', participant=rider)}"

    async def open_boards() -> None:
        for rider in ("ann", "bob"):  # ann: joined here; bob: joined on the other edge, asked
            async with connect(board_url(rider)) as ws:
                board = await recv(ws, timeout=10)
                assert board["t"] == "board" and board["session"] == sid and board["you"][0] == rider
        async with connect(board_url("cleo")) as ws:  # never joined
            await expect_close(ws, 4403)

    run(open_boards())
    assert _roster(edge, sid) == {"ann", "bob"}  # bob learnt from the class; cleo not

    httpx.post(f"{edge.url}/v1/sessions/{sid}/phase", json={"phase": "ended"}, headers=ops).raise_for_status()
    httpx.delete(f"{edge.url}/v1/sessions/{sid}", headers=ops).raise_for_status()
    assert _roster(edge, sid) == set()

    async def after_purge() -> None:
        async with connect(board_url("ann")) as ws:
            await expect_close(ws, 4404)

    run(after_purge())
