"""Joins that reach an edge together go to their class in fewer actor calls (``join_many``),
and every rider gets what one call each would have given: its own slot, on the roster once,
on its own shard for a class over class shards, in a dense class's host too."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

RIDERS = 40


async def _join_all(url: str, headers: dict[str, str], sid: str, riders: list[str]) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as http:
        async def one(rider: str) -> dict[str, Any]:
            reply = await http.post(f"/v1/sessions/{sid}/participants", json={"participant": rider, "tags": {"team": rider[-1]}})
            reply.raise_for_status()
            return reply.json()  # type: ignore[no-any-return]
        return list(await asyncio.gather(*(one(r) for r in riders)))


@pytest.mark.integration
@pytest.mark.parametrize("shape", ["dedicated", "dense", "sharded"])
def test_a_burst_of_joins_is_batched_and_every_rider_joins_once(own_edge: Any, unique_id: str, run: Any, shape: str) -> None:
    edge, tokens = own_edge(class_shard_riders=15)
    ops = tokens.headers()
    sid = f"joins-{shape}-{unique_id}"
    body: dict[str, Any] = {"id": sid}
    if shape == "dense":
        body["placement"] = "dense"
    if shape == "sharded":
        body["expected_riders"] = 45  # 3 shards of 15
    httpx.post(f"{edge.url}/v1/sessions", json=body, headers=ops).raise_for_status()
    httpx.post(f"{edge.url}/v1/sessions/{sid}/participants", json={"participant": "warm-up"}, headers=ops).raise_for_status()
    batcher = edge.config.app.state.edge.joins
    calls_before = batcher.calls

    riders = [f"rider-{k:02d}" for k in range(RIDERS)]
    answers = run(_join_all(edge.url, ops, sid, riders))
    burst_calls = batcher.calls - calls_before
    again = run(_join_all(edge.url, ops, sid, riders[:5]))  # joining again: the same slots

    assert [a["participant"] for a in answers] == riders
    assert 0 < burst_calls < RIDERS, f"{burst_calls} actor calls for {RIDERS} joins"
    snap = httpx.get(f"{edge.url}/v1/sessions/{sid}", headers=ops).json()
    on_roster = [p["participant"] for p in snap["participants"]]
    assert sorted(on_roster) == sorted(["warm-up", *riders])  # each once
    assert all(p.get("tags") == {"team": p["participant"][-1]} for p in snap["participants"] if p["participant"] != "warm-up")
    assert [a["slot"] for a in again] == [a["slot"] for a in answers[:5]]
    if shape == "sharded":
        assert len(snap["shards"]) == 3 and all(s["participants"] > 0 for s in snap["shards"])
    else:  # one roster: every slot once
        assert sorted(a["slot"] for a in answers) == list(range(1, RIDERS + 1))
