"""Seats and admission against the real edge, Redis and Ray: a class's capacity, riders
over it queued in order with a position and Retry-After (HTTP 429) or ``queue`` frames on
their socket, admitted in order as seats free or the admission rate allows, nothing lost."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from devices.client import DeviceStream, HubClient

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def test_http_joins_over_capacity_queue_in_order_with_retry_after(edge: Any, tokens: Any, unique_id: str) -> None:
    sid = f"seats-{unique_id}"
    with httpx.Client(base_url=edge.url, headers=tokens.headers(), timeout=60) as http:
        assert http.post("/v1/sessions", json={"id": sid, "capacity": 3}).status_code == 201
        for rider in ("r1", "r2", "r3"):
            assert http.post(f"/v1/sessions/{sid}/participants", json={"participant": rider}).status_code == 201
        r4 = http.post(f"/v1/sessions/{sid}/participants", json={"participant": "r4"})
        r5 = http.post(f"/v1/sessions/{sid}/participants", json={"participant": "r5"})
        assert r4.status_code == 429 and int(r4.headers["Retry-After"]) >= 1, r4.text
        assert (r4.json()["error"], r4.json()["position"], r5.json()["position"]) == ("queued", 1, 2)
        assert "number 1 in the queue" in r4.json()["message"]
        again = http.post(f"/v1/sessions/{sid}/participants", json={"participant": "r5"})
        assert again.json()["position"] == 2  # asking again keeps the place, never a new ticket
        assert http.post(f"/v1/sessions/{sid}/participants", json={"participant": "r1"}).status_code == 201  # seated
        assert http.delete(f"/v1/sessions/{sid}/participants/r2").status_code == 200  # a seat frees
        assert http.post(f"/v1/sessions/{sid}/participants", json={"participant": "r5"}).json()["position"] == 2
        assert http.post(f"/v1/sessions/{sid}/participants", json={"participant": "r4"}).status_code == 201
        assert http.post(f"/v1/sessions/{sid}/participants", json={"participant": "r5"}).json()["position"] == 1
        grown = http.put(f"/v1/sessions/{sid}/capacity", json={"capacity": 10})
        assert grown.status_code == 200 and grown.json()["seated"] == 3 and grown.json()["waiting"] == 1
        assert http.post(f"/v1/sessions/{sid}/participants", json={"participant": "r5"}).status_code == 201
        assert http.post("/v1/sessions", json={"id": f"{sid}-x", "capacity": 0}).status_code == 422
        assert http.put(f"/v1/sessions/{sid}/capacity", json={"capacity": -1}).status_code == 422


def test_a_join_storm_is_admitted_in_order_at_the_admission_rate_nothing_lost(
        own_edge: Any, unique_id: str, run: Any) -> None:
    server, tokens = own_edge(admit_rate_per_s=10.0, admit_burst=5)
    sid = f"storm-{unique_id}"
    n = 40
    httpx.post(f"{server.url}/v1/sessions", json={"id": sid, "capacity": n}, headers=tokens.headers(),
               timeout=60).raise_for_status()
    httpx.post(f"{server.url}/v1/sessions/{sid}/phase", json={"phase": "live"}, headers=tokens.headers(),
               timeout=60).raise_for_status()

    async def storm() -> list[tuple[int, HubClient, DeviceStream]]:
        riders = []
        for i in range(n + 5):  # 5 more than the seats: they stay queued
            stream = DeviceStream(f"bike-{i}", f"r{i:02d}", sid)
            token = tokens("device", device=stream.device, participant=stream.participant, sessions=[sid])
            client = HubClient(f"{server.ws_url}/v1/devices", [stream], token=token)
            riders.append((i, client, stream))
        for _, client, _ in riders:  # in this order: their tickets
            client.start()
            await asyncio.sleep(0.01)
        for _, client, stream in riders:
            for k in range(3):  # kept until welcomed, then sent
                await client.send_rows(stream, [stream.new_sample(time.time() + k * 0.1, 120.0, 150.0)])
        await asyncio.wait_for(asyncio.gather(*(c.ready.wait() for _, c, _ in riders[:n])), 120)
        await asyncio.sleep(3.0)  # a few admission rounds: the 5 beyond the seats stay queued
        deadline = time.monotonic() + 60
        while any(s.unacked for _, c, s in riders[:n]) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        for _, client, _ in riders:
            await client.close()
        return riders

    riders = run(storm(), timeout=200)
    seated, extra = riders[:n], riders[n:]
    assert all(not s.unacked for _, _, s in seated)  # every sample of an admitted rider acknowledged
    queued = [(i, c) for i, c, _ in seated if c.queue_first is not None]
    assert len(queued) >= n - 10, len(queued)  # the burst went straight in, the rest waited their turn
    assert [c.queue_first for _, c in queued] == sorted(c.queue_first for _, c in queued)  # by arrival
    admitted = sorted(seated, key=lambda r: r[1].welcomed_at or 0)
    order = [i for i, _, _ in admitted]
    inversions = sum(1 for a, b in zip(order, order[1:]) if a > b)
    assert inversions <= 2, order  # in order (a round's batch may land in one tick: welcomes tie)
    assert all(c.welcomed_at is None and c.queue_position is not None for _, c, _ in extra)
    assert [c.queue_position for _, c, _ in extra] == [1, 2, 3, 4, 5]
    state = httpx.get(f"{server.url}/v1/sessions/{sid}", headers=tokens.headers(), timeout=60).json()
    assert len(state["participants"]) == n and state["totals"]["applied"] == 3 * n


def test_a_rider_gone_for_the_grace_period_frees_the_seat(own_edge: Any, unique_id: str, run: Any) -> None:
    server, tokens = own_edge(presence_grace_s=3.0)
    sid = f"grace-seat-{unique_id}"
    with httpx.Client(base_url=server.url, headers=tokens.headers(), timeout=60) as http:
        assert http.post("/v1/sessions", json={"id": sid, "capacity": 1}).status_code == 201
        http.post(f"/v1/sessions/{sid}/phase", json={"phase": "live"}).raise_for_status()

        async def ride_briefly() -> None:
            stream = DeviceStream("ann-bike", "ann", sid)
            token = tokens("device", device=stream.device, participant="ann", sessions=[sid])
            client = HubClient(f"{server.ws_url}/v1/devices", [stream], token=token)
            client.start()
            await asyncio.wait_for(client.ready.wait(), 60)
            await client.send_rows(stream, [stream.new_sample(time.time(), 120.0, 150.0)])
            while stream.unacked:
                await asyncio.sleep(0.1)
            await client.close()

        run(ride_briefly())
        assert http.post(f"/v1/sessions/{sid}/participants", json={"participant": "bob"}).status_code == 429
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # ann goes reconnecting, then left after 3 s: her seat frees
            state = http.get(f"/v1/sessions/{sid}").json()  # (a snapshot ages presence)
            if state["presence"].get("left") == 1:
                break
            time.sleep(0.5)
        assert state["presence"]["left"] == 1, state["presence"]
        joined = None
        for _ in range(20):  # (the seat is given back in the background: a moment)
            joined = http.post(f"/v1/sessions/{sid}/participants", json={"participant": "bob"})
            if joined.status_code == 201:
                break
            time.sleep(0.25)
        assert joined is not None and joined.status_code == 201, joined.text


def test_a_rider_who_leaves_gives_the_seat_to_the_next_one_a_brief_drop_keeps_it(
        own_edge: Any, unique_id: str, run: Any) -> None:
    """Capacity 1, in the lobby (where the presence grace never runs): ann's phone drops and
    reconnects at once and keeps her seat past the drop grace; her ``bye`` gives it to bob
    after the bye grace; bob's socket then closes for good (no bye) and carol gets it after
    the drop grace — all through the real edge, the queued riders welcomed on their sockets."""
    server, tokens = own_edge(seat_bye_grace_s=1.0, seat_drop_grace_s=3.0)
    sid = f"leave-seat-{unique_id}"
    with httpx.Client(base_url=server.url, headers=tokens.headers(), timeout=60) as http:
        assert http.post("/v1/sessions", json={"id": sid, "capacity": 1}).status_code == 201
        assert http.get(f"/v1/sessions/{sid}").json()["phase"] == "lobby"

    def rider(name: str) -> HubClient:
        stream = DeviceStream(f"{name}-bike", name, sid)
        token = tokens("device", device=stream.device, participant=name, sessions=[sid])
        return HubClient(f"{server.ws_url}/v1/devices", [stream], token=token)

    async def until(what: Any, timeout_s: float = 60.0) -> float:
        began = time.monotonic()
        while not what():
            assert time.monotonic() - began < timeout_s, "timed out"
            await asyncio.sleep(0.05)
        return time.monotonic() - began

    async def scenario() -> dict[str, float]:
        ann, bob, carol = rider("ann"), rider("bob"), rider("carol")
        ann.start()
        await asyncio.wait_for(ann.ready.wait(), 60)
        bob.start()
        await until(lambda: bob.queue_position == 1)
        assert ann.ws is not None
        await ann.ws.close()  # a brief drop: the client reconnects by itself
        await until(lambda: ann.connects == 2 and ann.ready.is_set())
        await asyncio.sleep(5.0)  # past the drop grace: ann came back in time, she keeps the seat
        assert bob.welcomed_at is None and bob.queue_position == 1
        await ann.close(bye=True)
        bye_wait = await until(lambda: bob.welcomed_at is not None)
        carol.start()
        await until(lambda: carol.queue_position == 1)
        await bob.close()  # gone for good, no bye
        drop_wait = await until(lambda: carol.welcomed_at is not None)
        await carol.close(bye=True)
        return {"bye": bye_wait, "drop": drop_wait}

    waits = run(scenario(), timeout=200)
    assert 0.8 <= waits["bye"] < 30, waits  # the bye grace (1 s), then the next admission round
    assert 2.8 <= waits["drop"] < 40, waits  # the drop grace (3 s): a drop is not a leave


def test_a_class_without_a_capacity_costs_its_hellos_no_seat_book_call_until_it_gets_one(
        own_edge: Any, unique_id: str, run: Any, edge_settings: Any) -> None:
    """No capacity: riders bind without asking the seat book (no script call, no seat keys
    in Redis). A ``PUT .../capacity`` seats the riders the class has and is known by this
    edge at once: the next rider over it queues; lifting it lets that rider in."""
    import redis

    from storage.checkpoint import key_base

    server, tokens = own_edge()
    admission = server.config.app.state.edge.admission
    sid = f"no-cap-{unique_id}"
    http = httpx.Client(base_url=server.url, headers=tokens.headers(), timeout=60)
    assert http.post("/v1/sessions", json={"id": sid}).status_code == 201

    def rider(name: str) -> tuple[HubClient, DeviceStream]:
        stream = DeviceStream(f"{name}-bike", name, sid)
        token = tokens("device", device=stream.device, participant=name, sessions=[sid])
        return HubClient(f"{server.ws_url}/v1/devices", [stream], token=token), stream

    async def scenario() -> tuple[int, HubClient]:
        calls = admission.book_calls
        riders = [rider(name) for name in ("ann", "bob", "cat")]
        for client, _ in riders:
            client.start()
        await asyncio.wait_for(asyncio.gather(*(c.ready.wait() for c, _ in riders)), 60)
        for client, stream in riders:
            await client.send_rows(stream, [stream.new_sample(time.time(), 120.0, 150.0)])
        while any(s.unacked for _, s in riders):
            await asyncio.sleep(0.1)
        no_calls = admission.book_calls - calls
        base = key_base(edge_settings.prefix, "session", sid)
        client = redis.Redis.from_url(edge_settings.redis_url)
        try:
            assert not client.exists(f"{base}:seats", f"{base}:ticket")  # the seat book was never asked
        finally:
            client.close()
        grown = await asyncio.to_thread(http.put, f"/v1/sessions/{sid}/capacity", json={"capacity": 3})
        assert grown.status_code == 200 and grown.json()["seated"] == 3, grown.text  # the riders it had
        dan, _ = rider("dan")
        dan.start()
        while dan.queue_position != 1:
            await asyncio.sleep(0.05)
        lifted = await asyncio.to_thread(http.put, f"/v1/sessions/{sid}/capacity", json={"capacity": None})
        assert lifted.status_code == 200
        await asyncio.wait_for(dan.ready.wait(), 60)
        for client, _ in [*riders, (dan, None)]:
            await client.close()
        return no_calls, dan

    no_calls, dan = run(scenario(), timeout=200)
    http.close()
    assert no_calls == 0
    assert dan.welcomed_at is not None and dan.queue_first == 1
