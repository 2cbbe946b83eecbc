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


class _Class:
    """What the batcher calls (``Edge.call``'s signature), answering like a class would: a
    slot per rider, or an error for the whole call; ``join_many`` only if ``batches``."""

    def __init__(self, *, batches: bool = True, fail: Exception | None = None) -> None:
        self.batches, self.fail = batches, fail
        self.slots: dict[str, int] = {}
        self.calls: list[tuple[str, int]] = []

    async def __call__(self, session_id: str, method: str, **kwargs: Any) -> Any:
        await asyncio.sleep(0.01)  # a call takes a while: joins pile up behind it
        riders = [p for p, _ in kwargs["riders"]] if method == "join_many" else [kwargs["participant"]]
        self.calls.append((method, len(riders)))
        if method == "join_many" and not self.batches:
            raise AttributeError("join_many")  # an actor started by an older version
        if self.fail is not None:
            raise self.fail
        out = [self.slots.setdefault(p, len(self.slots)) for p in riders]
        return out if method == "join_many" else out[0]


@pytest.mark.parametrize("batches", [True, False])
def test_the_batcher_answers_every_rider_as_one_call_each_would(batches: bool) -> None:
    from api.joins import JoinBatcher

    klass = _Class(batches=batches)
    batcher = JoinBatcher(klass)

    async def scenario() -> list[int]:
        return list(await asyncio.gather(*(batcher.join("c", f"r{k}", None) for k in range(30)), batcher.join("c", "r3", None)))

    slots = asyncio.run(scenario())
    assert slots[:30] == list(range(30)) and slots[30] == 3
    if batches:
        assert sum(n for _, n in klass.calls) == 31 and len(klass.calls) < 31
    else:  # every rider still joined, one by one after the refused batch
        assert sum(n for m, n in klass.calls if m == "join") == 31


def test_a_failed_call_fails_every_rider_of_its_batch_and_the_next_batch_goes_on() -> None:
    from api.joins import JoinBatcher

    klass = _Class(fail=TimeoutError("the class did not answer"))
    batcher = JoinBatcher(klass)

    async def scenario() -> tuple[list[Any], int]:
        failed = await asyncio.gather(*(batcher.join("c", f"r{k}", None) for k in range(5)), return_exceptions=True)
        klass.fail = None
        return list(failed), await batcher.join("c", "late", None)

    failed, slot = asyncio.run(scenario())
    assert all(isinstance(f, TimeoutError) for f in failed) and slot == 0
