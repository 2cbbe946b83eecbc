"""Platform events through the real edge (Ray, Redis, uvicorn): ``rider.joined`` comes once
per rider, whichever way the rider joined — the join route (called twice), its device's
first samples alone (no HTTP join), both — and again only after the rider left."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import httpx
import msgpack
import pytest
import redis
from websockets.asyncio.client import connect

from history.events import events_key

pytestmark = pytest.mark.integration
HTTP = httpx.Client(timeout=60)


def _events(edge: Any, sid: str) -> list[tuple[str, str]]:
    client = redis.Redis.from_url(edge.settings.redis_url)
    try:
        return [(f[b"type"].decode(), f[b"rider"].decode()) for _, f in client.xrange(events_key(edge.settings.prefix))
                if f[b"session"].decode() == sid]
    finally:
        client.close()


@pytest.mark.timeout(180)
def test_each_rider_is_announced_once_however_it_joined(edge: Any, tokens: Any, unique_id: str, run: Any) -> None:
    sid = f"joins-{unique_id}"
    http_only, device_only, both, back = (f"{who}-{unique_id}" for who in ("ann", "bob", "cat", "dan"))
    ops = tokens.headers()
    HTTP.post(f"{edge.url}/v1/sessions", json={"id": sid}, headers=ops).raise_for_status()
    for rider in (http_only, http_only, both, back):  # (a join is idempotent: twice is one rider)
        HTTP.post(f"{edge.url}/v1/sessions/{sid}/participants", json={"participant": rider}, headers=ops).raise_for_status()
    HTTP.post(f"{edge.url}/v1/sessions/{sid}/phase", json={"phase": "live"}, headers=ops).raise_for_status()
    HTTP.delete(f"{edge.url}/v1/sessions/{sid}/participants/{back}", headers=ops).raise_for_status()
    start = float(int(time.time()) - 60)

    async def ride(riders: list[str], seqs: range) -> None:
        """Each rider's device sends samples ``seqs`` and waits for them to be acknowledged."""
        for rider in riders:
            token = tokens("device", device=f"{rider}-bike", participant=rider, sessions=[sid])
            async with connect(f"{edge.ws_url}/v1/devices", additional_headers={"Authorization": f"Bearer {token}"}) as ws:
                await ws.send(msgpack.packb({"t": "hello", "v": 1, "devices": [
                    {"device": f"{rider}-bike", "participant": rider, "session": sid}]}))
                await ws.send(msgpack.packb({"t": "samples", "device": f"{rider}-bike", "samples": [
                    [seq, start + seq, 120.0, 200.0, 90.0, 8.0, 8.0 * seq] for seq in seqs]}))
                while True:
                    frame = msgpack.unpackb(await asyncio.wait_for(ws.recv(), 30))
                    durable = frame.get("acks") or frame.get("devices") or {}  # (an ack, or a welcome)
                    if durable.get(f"{rider}-bike", 0) >= seqs[-1]:
                        break

    async def announced(rider: str) -> None:
        while ("rider.joined", rider) not in _events(edge, sid):
            await asyncio.sleep(0.2)

    run(ride([device_only, both], range(1, 6)), timeout=90)
    run(announced(device_only), timeout=60)  # (the pump reports a device's first samples in the background)
    HTTP.post(f"{edge.url}/v1/sessions/{sid}/participants", json={"participant": back}, headers=ops).raise_for_status()
    run(ride([device_only, both], range(6, 11)), timeout=90)  # more ticks of the same riders: no new event
    HTTP.post(f"{edge.url}/v1/sessions/{sid}/participants", json={"participant": device_only},
              headers=ops).raise_for_status()  # an HTTP join after its device joined it: no new event either
    HTTP.post(f"{edge.url}/v1/sessions/{sid}/phase", json={"phase": "ended"}, headers=ops).raise_for_status()
    run(ride([both], range(11, 13)), timeout=90)  # late data: still the same rider
    events = _events(edge, sid)
    joined = Counter(rider for kind, rider in events if kind == "rider.joined")
    assert joined == {http_only: 1, device_only: 1, both: 1, back: 2}, events
    assert [rider for kind, rider in events if kind == "rider.left"] == [back]
    back_events = [kind for kind, rider in events if rider == back]
    assert back_events == ["rider.joined", "rider.left", "rider.joined"]
