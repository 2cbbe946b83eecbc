"""A device that says hello is welcomed on a tick brought forward, not at its class's next
board period: a rider joining a class whose boards go out every few seconds is not kept
waiting for them (a join surge at a class's start is paced by ``tick_interval_s``)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import msgpack
import pytest
from websockets.asyncio.client import connect

PERIOD_S = 5.0  # a class with devices and no viewer ticks every max_tick_interval_s (for its acks)


@pytest.mark.integration
def test_a_hello_is_welcomed_before_the_next_board_period(own_edge: Any, unique_id: str, run: Any) -> None:
    edge, tokens = own_edge(max_tick_interval_s=PERIOD_S)
    sid = f"pace-{unique_id}"
    httpx.post(f"{edge.url}/v1/sessions", json={"id": sid}, headers=tokens.headers()).raise_for_status()

    async def hello(ws: Any, rider: str) -> float:
        began = time.monotonic()
        await ws.send(msgpack.packb({"t": "hello", "devices": [{"device": f"{rider}-strap", "participant": rider, "session": sid}]}))
        reply = msgpack.unpackb(await asyncio.wait_for(ws.recv(), 3 * PERIOD_S))
        assert reply["t"] == "welcome", reply
        return time.monotonic() - began

    def url_and_headers(rider: str) -> dict[str, Any]:
        token = tokens("device", device=f"{rider}-strap", participant=rider, sessions=[sid])
        return {"uri": f"{edge.ws_url}/v1/devices", "additional_headers": {"Authorization": f"Bearer {token}"}}

    async def scenario() -> list[float]:
        async with connect(**url_and_headers("ann")) as ann:
            await hello(ann, "ann")
            waits = []
            for seq, rider in enumerate(("bob", "cleo", "dev"), start=1):
                # ann's sample makes a tick with news: the pump then waits a whole PERIOD_S
                await ann.send(msgpack.packb({"t": "samples", "device": "ann-strap",
                                              "samples": [[seq, time.time(), 140.0, 200.0, 88.0]]}))
                await asyncio.sleep(0.4)  # ... and the hello comes in that wait
                async with connect(**url_and_headers(rider)) as ws:
                    waits.append(await hello(ws, rider))
            return waits

    waits = run(scenario())
    # each hello came in the middle of a PERIOD_S wait: welcomed on a tick brought forward
    # (~tick_interval_s), not at the end of the wait (seconds)
    assert all(w < PERIOD_S / 2 for w in waits), waits
