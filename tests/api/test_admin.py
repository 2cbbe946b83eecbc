"""Admin routes (list with a phase filter and keyset paging, purge), retention of ended
classes in Redis, and an edge releasing the pumps of passivated classes."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
import redis

from cluster.session_records import session_keys
from devices.client import DeviceStream, HubClient

pytestmark = pytest.mark.integration


def _all_pages(http: httpx.Client, **params: Any) -> list[dict[str, Any]]:
    sessions: list[dict[str, Any]] = []
    after = None
    for _ in range(1000):  # bounded
        reply = http.get("/v1/sessions", params={**params, **({"after": after} if after else {})})
        assert reply.status_code == 200, reply.text
        page = reply.json()
        sessions += page["sessions"]
        after = page["next"]
        if after is None:
            return sessions
    raise AssertionError("paging did not end")


@pytest.mark.timeout(120)
def test_list_pages_in_creation_order_and_filters_by_phase(edge: Any, tokens: Any, unique_id: str) -> None:
    with httpx.Client(base_url=edge.url, headers=tokens.headers(), timeout=30) as http:
        ours = [f"ls-{unique_id}-{i}" for i in range(5)]
        for sid in ours:
            assert http.post("/v1/sessions", json={"id": sid, "title": sid.upper()}).status_code == 201
        for phase in ("live", "ended"):
            assert http.post(f"/v1/sessions/{ours[3]}/phase", json={"phase": phase}).status_code == 200
        listed = _all_pages(http, limit=2)
        ids = [s["id"] for s in listed]
        assert len(ids) == len(set(ids))  # no page repeats a session
        assert [i for i in ids if i in ours] == ours  # creation order
        mine = {s["id"]: s for s in listed if s["id"] in ours}
        assert mine[ours[0]]["title"] == ours[0].upper() and mine[ours[0]]["phase"] == "lobby"
        assert mine[ours[3]]["phase"] == "ended" and mine[ours[3]]["expires_in_s"] > 0
        ended = [s["id"] for s in _all_pages(http, state="ended", limit=3)]
        assert ours[3] in ended and not set(ours) - {ours[3]} & set(ended)
        assert http.get("/v1/sessions", params={"state": "nonsense"}).status_code == 422
        assert http.get("/v1/sessions", params={"after": "not a cursor"}).status_code == 422
    assert httpx.get(f"{edge.url}/v1/sessions", timeout=30).status_code == 401  # operators only
    participant = tokens.headers("participant", participant="p")
    assert httpx.get(f"{edge.url}/v1/sessions", headers=participant, timeout=30).status_code == 403


@pytest.mark.timeout(120)
def test_purge_refuses_a_running_class_then_deletes_everything(edge: Any, tokens: Any, unique_id: str) -> None:
    sid = f"purge-{unique_id}"
    client = redis.Redis.from_url(edge.settings.redis_url)
    with httpx.Client(base_url=edge.url, headers=tokens.headers(), timeout=30) as http:
        assert http.post("/v1/sessions", json={"id": sid}).status_code == 201
        assert http.post(f"/v1/sessions/{sid}/participants", json={"participant": "ann"}).status_code == 201
        assert http.post(f"/v1/sessions/{sid}/flush").status_code == 200
        refused = http.delete(f"/v1/sessions/{sid}")
        assert refused.status_code == 409 and refused.json()["error"] == "not_ended"
        assert http.post(f"/v1/sessions/{sid}/phase", json={"phase": "ended"}).status_code == 200
        purged = http.delete(f"/v1/sessions/{sid}")
        assert purged.status_code == 200 and purged.json()["deleted"] is True and purged.json()["keys"] >= 3
        assert client.exists(*session_keys(edge.settings.prefix, sid)) == 0
        assert http.get(f"/v1/sessions/{sid}").status_code == 404
        assert sid not in [s["id"] for s in _all_pages(http, limit=500)]
        assert http.delete(f"/v1/sessions/{sid}").status_code == 404
        forced = f"{sid}-live"
        assert http.post("/v1/sessions", json={"id": forced}).status_code == 201
        assert http.delete(f"/v1/sessions/{forced}", params={"force": "true"}).status_code == 200
        assert http.get(f"/v1/sessions/{forced}").status_code == 404


@pytest.mark.timeout(120)
def test_an_ended_class_expires_after_its_retention(own_edge: Any, unique_id: str) -> None:
    server, tokens = own_edge(ended_retention_s=3)
    sid = f"ret-{unique_id}"
    client = redis.Redis.from_url(server.settings.redis_url)
    keys = session_keys(server.settings.prefix, sid)
    with httpx.Client(base_url=server.url, headers=tokens.headers(), timeout=30) as http:
        assert http.post("/v1/sessions", json={"id": sid}).status_code == 201
        assert http.post(f"/v1/sessions/{sid}/participants", json={"participant": "ann"}).status_code == 201
        assert http.post(f"/v1/sessions/{sid}/phase", json={"phase": "ended"}).status_code == 200
        assert all(0 < client.ttl(k) <= 3 for k in keys if client.exists(k)) and client.exists(keys[0])
        assert http.post(f"/v1/sessions/{sid}/participants", json={"participant": "bob"}).status_code == 201
        assert http.post(f"/v1/sessions/{sid}/flush").status_code == 200  # a checkpoint write after the end
        assert client.ttl(keys[1]) > 0  # ...keeps the TTL (KEEPTTL): late data does not extend retention
        deadline = time.monotonic() + 20
        while client.exists(*keys) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert client.exists(*keys) == 0
    # a fresh edge (no cached knowledge of it) finds the class gone
    fresh, fresh_tokens = own_edge()
    assert httpx.get(f"{fresh.url}/v1/sessions/{sid}", headers=fresh_tokens.headers(), timeout=30).status_code == 404


@pytest.mark.timeout(120)
def test_an_edge_releases_the_pump_of_a_passivated_class(own_edge: Any, unique_id: str, run: Any) -> None:
    from api.cluster_routes import ClusterPolicySettings

    server, tokens = own_edge(ClusterPolicySettings(passivate_idle_s=0.5, passivate_interval_s=0.25))
    sid = f"prune-{unique_id}"
    pumps = server.config.app.state.edge.pumps  # type: ignore[union-attr]

    stream = DeviceStream(f"{sid}-d", f"{sid}-p", sid)

    async def ride() -> None:
        token = tokens("device", device=stream.device, participant=stream.participant, sessions=[sid])
        client = HubClient(f"{server.ws_url}/v1/devices", [stream], token=token)
        client.start()
        await asyncio.wait_for(client.ready.wait(), 30)
        await client.send_rows(stream, [stream.new_sample(time.time(), 120.0, 200.0, 85.0, 8.0, 1.0)])
        for _ in range(300):
            if not stream.unacked:
                break
            await asyncio.sleep(0.05)
        await client.close()

    with httpx.Client(base_url=server.url, headers=tokens.headers(), timeout=30) as http:
        assert http.post("/v1/sessions", json={"id": sid}).status_code == 201
        run(ride())
        assert sid in pumps
        assert http.post(f"/v1/sessions/{sid}/phase", json={"phase": "ended"}).status_code == 200
        run(ride())  # the pump sees "ended" on a tick, then the class sits idle
        deadline = time.monotonic() + 30
        while sid in pumps and time.monotonic() < deadline:
            time.sleep(0.2)
        assert sid not in pumps
        assert http.get("/v1/cluster/status").json()["edge"]["pumps_released"] >= 1
        snap = http.get(f"/v1/sessions/{sid}").json()  # nothing lost: it comes back from Redis
        assert snap["participants"][0]["samples"] == 2
