"""On-demand replay through the real edge, Ray and Redis: a class is ridden and ends; its
on-demand class ranks new riders against the recorded riders at their own offset and
against each other; a bad request is refused clearly; a killed on-demand actor comes
back with its ghosts (issue 16)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from typing import Any

import httpx
import msgpack
import pytest
from websockets.asyncio.client import connect

from actors.session import BOARD_COLUMNS

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


async def _ride(ws_url: str, token: str, sid: str, riders: dict[str, float], seconds: int) -> None:
    """A hub riding ``riders`` (name -> watts) in ``sid`` at 1 Hz for ``seconds``."""
    devices = {name: f"{name}-bike" for name in riders}
    async with connect(f"{ws_url}/v1/devices", additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        await ws.send(msgpack.packb({"t": "hello", "v": 1, "hub": "studio", "devices": [
            {"device": d, "participant": n, "session": sid} for n, d in devices.items()]}))
        for seq in range(1, seconds + 1):
            now = time.time()
            for name, watts in riders.items():
                await ws.send(msgpack.packb({"t": "samples", "device": devices[name],
                                             "samples": [[seq, now, None, watts, 85.0]]}))
            await asyncio.sleep(1.0)


def _hub(tokens: Any, sid: str, names: list[str]) -> str:
    return tokens("hub", hub="studio", devices=[f"{n}-bike" for n in names], sessions=[sid])  # type: ignore[no-any-return]


def test_riding_a_class_on_demand_against_its_recorded_riders(edge: Any, edge_settings: Any, tokens: Any,
                                                              unique_id: str, run: Any, ray_instance: Any) -> None:
    sid = f"aired-{unique_id}"
    with httpx.Client(base_url=edge.url, headers=tokens.headers(), timeout=60) as http:
        assert http.post("/v1/sessions", json={"id": sid, "title": "Tuesday Climb"}).status_code == 201
        assert http.post(f"/v1/sessions/{sid}/on-demand").json()["error"] == "not_ended"  # 409: not aired yet
        http.post(f"/v1/sessions/{sid}/phase", json={"phase": "live"}).raise_for_status()
        run(_ride(edge.ws_url, _hub(tokens, sid, ["ann", "bob"]), sid, {"ann": 100.0, "bob": 400.0}, 12))
        http.post(f"/v1/sessions/{sid}/flush").raise_for_status()
        http.post(f"/v1/sessions/{sid}/phase", json={"phase": "ended"}).raise_for_status()

        made = http.post(f"/v1/sessions/{sid}/on-demand")
        assert made.status_code == 201, made.text
        od = made.json()["id"]
        assert od == f"{sid}:od" and made.json()["replay"]["recorded"] == 2
        assert made.json()["replay"]["class_s"] >= 11
        assert http.post(f"/v1/sessions/{sid}/on-demand").json()["created"] is False  # one per class
        assert http.post(f"/v1/sessions/{od}/on-demand").status_code == 409  # not of an on-demand class
        assert http.post(f"/v1/sessions/nope-{unique_id}/on-demand").status_code == 404

    async def ride_and_watch() -> dict[str, Any]:
        rider = asyncio.create_task(_ride(edge.ws_url, _hub(tokens, od, ["zed"]), od, {"zed": 300.0}, 8))
        try:
            async with connect(f"{edge.ws_url}/v1/sessions/{od}/board?format=json&view=all&rate=2",
                               additional_headers=tokens.headers()) as ws:
                while True:
                    board: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 30))
                    rows = {r[0]: dict(zip(board["cols"], r, strict=True)) for r in board.get("rows", [])}
                    if (rows.get("zed") or {}).get("offset_s") and rows["zed"]["offset_s"] >= 5:
                        return board
        finally:
            await rider

    board = run(ride_and_watch())
    assert board["cols"] == list(BOARD_COLUMNS) and board["phase"] == "live"
    zed = {r[0]: dict(zip(board["cols"], r, strict=True)) for r in board["rows"]}["zed"]
    # zed rides 300 W: ahead of ann's 100 W at the same offset, behind bob's 400 W
    assert zed["replay_rank"] == 2, board
    replay = board["replay"]
    assert (replay["of"], replay["recorded"], replay["here_now"]) == (sid, 2, 1)
    assert [g[0] for g in replay["ghosts"]] == ["bob", "ann"]

    # the on-demand actor is killed (Ray restarts it): it comes back with its ghosts
    actor = ray_instance.get_actor(f"session:{od}", namespace=edge_settings.namespace)
    os.kill(ray_instance.get(actor.info.remote(), timeout=60)["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 60
    state: dict[str, Any] = {}
    while time.monotonic() < deadline:
        reply = httpx.get(f"{edge.url}/v1/sessions/{od}", headers=tokens.headers(), timeout=60)
        if reply.status_code == 200:
            state = reply.json()
            break
        time.sleep(0.5)
    assert state.get("replay", {}).get("recorded") == 2, state
