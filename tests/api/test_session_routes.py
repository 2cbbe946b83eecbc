"""Session routes: what a create request asks for reaches the class (issue 16's bug list:
``board_size`` was accepted and ignored)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("board_size", [3, None])
def test_board_size_sets_the_length_of_the_top(edge: Any, tokens: Any, unique_id: str, run: Any, board_size: int | None) -> None:
    sid = f"size-{board_size}-{unique_id}"
    body: dict[str, Any] = {"id": sid} if board_size is None else {"id": sid, "board_size": board_size}
    httpx.post(f"{edge.url}/v1/sessions", json=body, headers=tokens.headers()).raise_for_status()
    for i in range(12):
        httpx.post(f"{edge.url}/v1/sessions/{sid}/participants", json={"participant": f"r{i}"},
                   headers=tokens.headers()).raise_for_status()

    async def full_board() -> dict[str, Any]:
        async with connect(f"{edge.ws_url}/v1/sessions/{sid}/board?format=json",
                           additional_headers=tokens.headers()) as ws:
            while True:  # (a board from before the last join may come first)
                board: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 30))
                if board["n"] == 12:
                    return board

    board = run(full_board())
    assert board["n"] == 12 and len(board["top"]) == (10 if board_size is None else board_size)


def test_a_phase_change_reaches_an_idle_pumps_board(edge: Any, tokens: Any, unique_id: str, run: Any) -> None:
    """Nobody connected, the class ends: the edge's view of it says ended (what passivation reads)."""
    sid = f"idle-end-{unique_id}"
    httpx.post(f"{edge.url}/v1/sessions", json={"id": sid}, headers=tokens.headers()).raise_for_status()

    async def watch_once() -> None:
        async with connect(f"{edge.ws_url}/v1/sessions/{sid}/board?format=json", additional_headers=tokens.headers()) as ws:
            assert json.loads(await asyncio.wait_for(ws.recv(), 20))["phase"] == "lobby"

    run(watch_once())  # the edge now has a pump for it, with a board; then nobody is attached
    pump = edge.server.config.app.state.edge.pumps[sid]
    for phase in ("live", "cooldown", "ended"):
        httpx.post(f"{edge.url}/v1/sessions/{sid}/phase", json={"phase": phase}, headers=tokens.headers()).raise_for_status()
    assert pump.board["phase"] == "ended"


def test_a_participant_sees_the_others_output_not_their_heart_rate_or_tags(edge: Any, tokens: Any, unique_id: str) -> None:
    sid = f"privacy-{unique_id}"
    httpx.post(f"{edge.url}/v1/sessions", json={"id": sid}, headers=tokens.headers()).raise_for_status()
    for who in ("ann", "bob"):
        httpx.post(f"{edge.url}/v1/sessions/{sid}/participants", json={"participant": who, "tags": {"age": "30-39"}},
                   headers=tokens.headers()).raise_for_status()
    ann = httpx.get(f"{edge.url}/v1/sessions/{sid}", headers=tokens.headers("participant", participant="ann", sessions=[sid])).json()
    rows = {r["participant"]: r for r in ann["participants"]}
    assert rows["ann"]["tags"] == {"age": "30-39"} and "hr_avg" in rows["ann"]  # its own entry is whole
    assert set(rows["bob"]) == {"participant", "energy_kj", "distance_m", "power_avg", "cadence_avg", "speed_max", "samples"}
    assert "devices" not in ann
    operator = httpx.get(f"{edge.url}/v1/sessions/{sid}", headers=tokens.headers()).json()
    assert {r["participant"]: r for r in operator["participants"]}["bob"]["tags"] == {"age": "30-39"} and "devices" in operator
