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

    async def first_board() -> dict[str, Any]:
        async with connect(f"{edge.ws_url}/v1/sessions/{sid}/board?format=json",
                           additional_headers=tokens.headers()) as ws:
            return json.loads(await asyncio.wait_for(ws.recv(), 20))  # type: ignore[no-any-return]

    board = run(first_board())
    assert board["n"] == 12 and len(board["top"]) == (10 if board_size is None else board_size)
