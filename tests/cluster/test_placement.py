"""Placement, passivation, the status endpoint and pre-scaling on the shared one-node stack."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import redis
import pytest
import ray
import redis.asyncio as aioredis

from actors.session_actor import actor_name
from cluster.placement import Passivator, is_active, read_placement
from cluster.prescale import (
    PrescaleBook,
    PrescalePolicy,
    Prescaler,
    ScheduledClass,
    bundles,
    requested_slots,
    slots_for,
)

from tests.cluster.helpers import operator_headers

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ops(edge: Any) -> Iterator[httpx.Client]:
    """An HTTP client to the shared edge with an operator token."""
    with httpx.Client(base_url=edge.url, headers=operator_headers(edge.url), timeout=60) as client:
        yield client


def _create(ops: httpx.Client, sid: str) -> None:
    """Create the session and wait until its actor serves (creation is asynchronous)."""
    ops.post("/v1/sessions", json={"id": sid}).raise_for_status()
    ops.get(f"/v1/sessions/{sid}").raise_for_status()


def test_status_lists_the_node_its_slots_and_sessions(ops: httpx.Client, edge: Any, unique_id: str) -> None:
    sid = f"st-{unique_id}"
    _create(ops, sid)
    status = ops.get("/v1/cluster/status").json()
    [node] = status["nodes"]
    assert sid in node["sessions"]
    assert node["slots_total"] == 1000
    assert node["slots_used"] >= 1 and node["slots_used"] + node["slots_free"] == 1000
    assert status["totals"]["sessions"] == len(node["sessions"])
    auto = status["autoscaler"]  # a local Ray runs a read-only monitor: it reports, never launches
    assert auto is None or (auto["pending_launches"] == {} and isinstance(auto["resource_demand"], list))
    assert status["prescale"]["policy"]["lead_time_s"] > 0
    assert read_placement(edge.settings.namespace).node_of(sid) == node["node_id"]


def test_passivate_keeps_state_and_the_next_call_recreates(ops: httpx.Client, edge: Any, unique_id: str) -> None:
    sid = f"pv-{unique_id}"
    _create(ops, sid)
    ops.post(f"/v1/sessions/{sid}/participants", json={"participant": "ann"}).raise_for_status()
    before = ray.get(ray.get_actor(actor_name(sid), namespace=edge.settings.namespace).info.remote())

    reply = ops.post(f"/v1/sessions/{sid}/passivate").json()
    assert reply == {"session": sid, "passivated": True}
    assert not is_active(sid, edge.settings.namespace)
    assert sid not in read_placement(edge.settings.namespace).session_nodes()
    again = ops.post(f"/v1/sessions/{sid}/passivate").json()
    assert again["passivated"] is False

    snap = ops.get(f"/v1/sessions/{sid}").json()  # the edge's cached handle is dead
    assert [p["participant"] for p in snap["participants"]] == ["ann"]
    assert snap["epoch"] > before["epoch"]
    assert is_active(sid, edge.settings.namespace)


def test_passivate_unknown_session_is_404(ops: httpx.Client, edge: Any, unique_id: str) -> None:
    assert ops.post(f"/v1/sessions/nope-{unique_id}/passivate").status_code == 404


def test_schedule_records_the_class_without_starting_it(ops: httpx.Client, edge: Any, unique_id: str) -> None:
    sid = f"sch-{unique_id}"
    start_at = time.time() + 3600
    reply = ops.post(
        f"/v1/sessions/{sid}/schedule", json={"start_at": start_at, "expected_participants": 2500}
    )
    assert reply.status_code == 202, reply.text
    body = reply.json()
    assert body["slots"] == 3 and body["start_at"] == start_at
    assert body["requested_from"] < start_at < body["released_at"]
    assert not is_active(sid, edge.settings.namespace)
    classes = ops.get("/v1/cluster/status").json()["prescale"]["classes"]
    mine = [c for c in classes if c["session_id"] == sid]
    assert mine and mine[0]["in_window"] is False
    assert ops.get(f"/v1/sessions/{sid}").status_code == 200  # the session exists
    # booked for 2,500, it is placed for 2,500: over three class shards of 1,000
    meta = redis.Redis.from_url(edge.settings.redis_url).hgetall(edge.config.app.state.edge.directory.meta_key(sid))
    assert meta[b"expected_riders"] == b"2500" and meta[b"shards"] == b"3", meta


@pytest.mark.parametrize(
    "body",
    [{"start_at": 1.0, "expected_participants": 5}, {"start_at": "soon", "expected_participants": 5},
     {"start_at": 2e9, "expected_participants": -1}],
)
def test_schedule_refuses_bad_requests(ops: httpx.Client, edge: Any, unique_id: str, body: dict[str, Any]) -> None:
    reply = ops.post(f"/v1/sessions/bad-{unique_id}/schedule", json=body)
    assert reply.status_code in (400, 422), reply.text


def test_slots_and_bundles() -> None:
    assert slots_for(0, 1000) == 1 and slots_for(1000, 1000) == 1 and slots_for(1001, 1000) == 2
    assert bundles(3, 0) == []
    assert bundles(2.5, 2) == [{"session_slot": 1.0}] * 5
    policy = PrescalePolicy(lead_time_s=60, release_after_s=30)
    classes = [ScheduledClass("a", 1000.0, 10, 1), ScheduledClass("b", 1080.0, 3000, 3)]
    inactive = lambda _sid, _shards: 0  # noqa: E731
    assert requested_slots(classes, now=900.0, policy=policy, held=inactive) == 0
    assert requested_slots(classes, now=950.0, policy=policy, held=inactive) == 1
    assert requested_slots(classes, now=1025.0, policy=policy, held=inactive) == 4
    assert requested_slots(classes, now=1025.0, policy=policy, held=lambda sid, _n: int(sid == "a")) == 3
    assert requested_slots(classes, now=1031.0, policy=policy, held=inactive) == 3  # "a" released
    # a class over class shards: a slot per shard at least, and each live shard holds its own
    held = {"a": 0, "b": 2}
    assert requested_slots(classes, now=1025.0, policy=policy, held=lambda sid, _n: held[sid],
                           shards={"a": 0, "b": 3}) == 1 + 1
    assert requested_slots(classes, now=1025.0, policy=policy, held=lambda sid, _n: held[sid],
                           shards={"a": 0, "b": 5}) == 1 + 3  # (5 shards, 3 slots booked: 5 wanted)
    held["b"] = 5
    assert requested_slots(classes, now=1025.0, policy=policy, held=lambda sid, _n: held[sid],
                           shards={"a": 0, "b": 5}) == 1


def test_prescaler_requests_ahead_and_releases_after_start(redis_server: Any, run: Any, unique_id: str) -> None:
    now = [1000.0]
    sent: list[int] = []

    async def scenario() -> list[int]:
        client = aioredis.Redis.from_url(redis_server.url)
        book = PrescaleBook(client, prefix=f"ps-{unique_id}")
        prescaler = Prescaler(
            book, PrescalePolicy(lead_time_s=60, release_after_s=10),
            used_slots=lambda: 2.0, held=lambda _sid, _shards: 0,
            request=lambda b: sent.append(len(b)), clock=lambda: now[0],
        )
        await book.put(ScheduledClass("c1", 1100.0, 1500, 2))
        steps = []
        for t in (1000.0, 1040.0, 1041.0, 1105.0, 1110.0):
            now[0] = t
            steps.append(await prescaler.step())
        remaining = await book.all()
        await client.aclose()
        assert remaining == []  # released entries are deleted
        return steps

    assert run(scenario()) == [0, 4, 4, 4, 0]
    assert sent == [0, 4, 0]  # only changes are sent


def test_passivator_waits_for_ended_and_idle() -> None:
    state = {"s1": ("ended", True), "s2": ("live", True), "s3": ("ended", False)}
    passivator = Passivator(None, lambda: ((k, p, i) for k, (p, i) in state.items()), idle_s=10)  # type: ignore[arg-type]
    assert passivator.due(0.0) == []
    assert passivator.due(10.0) == ["s1"]
    passivator.passivated.add("s1")
    assert passivator.due(20.0) == []  # not again until it was active in between
    state["s1"] = ("ended", False)
    assert passivator.due(21.0) == []
    state["s1"] = ("ended", True)
    assert passivator.due(25.0) == [] and passivator.due(35.0) == ["s1"]


def test_handle_refreshes_after_the_actor_died_for_good(ops: httpx.Client, edge: Any, run: Any, unique_id: str) -> None:
    from cluster.directory import SessionDirectory

    sid = f"rf-{unique_id}"
    _create(ops, sid)

    async def scenario() -> tuple[int, int]:
        client = aioredis.Redis.from_url(edge.settings.redis_url)
        directory = SessionDirectory(
            client, prefix=edge.settings.prefix, namespace=edge.settings.namespace,
            actor_settings=edge.settings.actor_settings(),
        )
        handle = await directory.handle(sid)
        first = await handle.info.remote()
        dead = handle.actor
        await asyncio.to_thread(ray.kill, dead, no_restart=True)
        # ray.kill only asks the GCS to kill: a call sent at once can still reach the old
        # instance (CI saw epoch 1 twice). Wait until the old handle itself reports the death.
        for _ in range(300):
            try:
                await dead.info.remote()
            except ray.exceptions.ActorDiedError:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the killed actor still answers after 30 s")
        second = await handle.info.remote()
        assert handle.actor is not dead  # the handle re-resolved to a new instance
        await client.aclose()
        return first["epoch"], second["epoch"]

    first, second = run(scenario())
    assert second > first


def test_cluster_routes_need_an_operator(edge: Any) -> None:
    headers = operator_headers(edge.url)
    if not headers:
        pytest.skip("this edge runs without authentication")
    assert httpx.get(f"{edge.url}/v1/cluster/status").status_code == 401


def test_edge_passivates_an_ended_idle_session_and_late_data_recreates_it(
    edge_settings: Any, run: Any, unique_id: str
) -> None:
    from api.cluster_routes import ClusterPolicySettings
    from devices.client import DeviceStream
    from tests.conftest import EdgeServer, _free_port

    settings = edge_settings.model_copy(update={"port": _free_port()})
    server = EdgeServer(settings)
    server.config.app.state.cluster_settings = ClusterPolicySettings(passivate_idle_s=0.5, passivate_interval_s=0.25)
    server.start()
    sid = f"auto-{unique_id}"
    ns = settings.namespace

    async def wait_passive() -> bool:
        for _ in range(200):  # bounded: 20 s
            if not await asyncio.to_thread(is_active, sid, ns):
                return True
            await asyncio.sleep(0.1)
        return False

    async def scenario() -> tuple[bool, bool, int]:
        headers = operator_headers(server.url)
        async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=60) as http:
            (await http.post("/v1/sessions", json={"id": sid})).raise_for_status()
            stream = DeviceStream(f"{sid}-d", f"{sid}-p", sid)
            await _ride(server, stream, range(1, 4))
            (await http.post(f"/v1/sessions/{sid}/phase", json={"phase": "ended"})).raise_for_status()
            stream_late = DeviceStream(f"{sid}-d", f"{sid}-p", sid)
            stream_late.next_seq = 4
            await _ride(server, stream_late, range(0, 0))  # reconnect once so the pump sees "ended", then idle
            passive = await wait_passive()
            await _ride(server, stream_late, range(4, 6))  # late data: the actor comes back from Redis
            snap = (await http.get(f"/v1/sessions/{sid}")).json()
        return passive, await asyncio.to_thread(is_active, sid, ns), snap["participants"][0]["samples"]

    try:
        passive, active_again, samples = run(scenario())
    finally:
        server.stop()
    assert passive and active_again
    assert samples == 5


async def _ride(server: Any, stream: Any, seqs: range) -> None:
    """One device through a ``HubClient``: welcomed, sends ``seqs``, waits for every ack."""
    from devices.client import HubClient

    client = HubClient(f"{server.ws_url}/v1/devices", [stream], token_provider=_token(server.settings, stream))
    client.start()
    await asyncio.wait_for(client.ready.wait(), 30)
    for k in seqs:
        await client.send_rows(stream, [stream.new_sample(time.time(), 120.0, 200.0, 85.0, 8.0, 10.0 * k)])
    while stream.unacked:
        await asyncio.sleep(0.05)
    await client.close()


def _token(settings: Any, stream: Any) -> Any:
    from tests.cluster.scenarios.harness import device_token

    async def provide() -> str:
        return device_token(settings, stream)

    return provide


def test_an_idle_class_actor_deactivates_and_the_next_rider_brings_it_back(
    own_edge: Any, run: Any, unique_id: str
) -> None:
    """``idle_deactivate_s``: a live class nobody ticks or calls exits for good (Ray does not
    restart it); the next rider's samples recreate it from its checkpoint, exact. A class
    whose plan still runs stays up however idle (its own clock moves it)."""
    from devices.client import DeviceStream

    server, _ = own_edge(idle_deactivate_s=2.0)
    settings = server.settings
    sid, planned = f"idle-{unique_id}", f"idleplan-{unique_id}"
    ns = settings.namespace

    async def wait_passive(session: str, limit_s: float) -> bool:
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            if not await asyncio.to_thread(is_active, session, ns):
                return True
            await asyncio.sleep(0.2)
        return False

    async def scenario() -> dict[str, Any]:
        async with httpx.AsyncClient(base_url=server.url, headers=operator_headers(server.url), timeout=60) as http:
            (await http.post("/v1/sessions", json={"id": sid})).raise_for_status()
            plan = {"segments": [{"kind": "interval", "duration_s": 3600}]}
            (await http.post("/v1/sessions", json={"id": planned, "start_at": time.time(), "plan": plan})).raise_for_status()
            await http.get(f"/v1/sessions/{planned}")  # (its actor is up)
            (await http.post(f"/v1/sessions/{sid}/phase", json={"phase": "live"})).raise_for_status()
            epoch = (await http.get(f"/v1/sessions/{sid}")).json()["epoch"]
            stream = DeviceStream(f"{sid}-d", f"{sid}-p", sid)
            await _ride(server, stream, range(1, 4))
            passive = await wait_passive(sid, 60)
            planned_up = await asyncio.to_thread(is_active, planned, ns)
            again = DeviceStream(f"{sid}-d", f"{sid}-p", sid)
            again.next_seq = 4
            await _ride(server, again, range(4, 6))  # the actor comes back from Redis; nothing is lost or doubled
            snap = (await http.get(f"/v1/sessions/{sid}")).json()
            (await http.post(f"/v1/sessions/{planned}/phase", json={"phase": "ended"})).raise_for_status()
        return {"passive": passive, "planned_up": planned_up, "snap": snap, "epoch": epoch,
                "active": await asyncio.to_thread(is_active, sid, ns)}

    out = run(scenario(), timeout=180)
    assert out["passive"], "the idle class's actor did not deactivate"
    assert out["planned_up"], "a class whose plan still runs was deactivated"
    assert out["active"] and out["snap"]["phase"] == "live" and out["snap"]["epoch"] > out["epoch"]
    [rider] = out["snap"]["participants"]
    assert rider["samples"] == 5


def test_an_idle_dense_class_is_released_by_its_host_and_comes_back(own_edge: Any, run: Any, unique_id: str) -> None:
    """Dense mode: a class idle for ``idle_deactivate_s`` leaves its host's memory (the host
    process stays, serving its other classes); its next rider reopens it from its checkpoint
    on the same host, exact."""
    from devices.client import DeviceStream

    server, _ = own_edge(idle_deactivate_s=2.0)
    directory = server.config.app.state.edge.directory
    sid = f"idense-{unique_id}"

    async def hosted() -> list[str]:
        handle = await directory.handle(sid)
        return list(await handle.actor.hosted.remote())

    async def scenario() -> dict[str, Any]:
        async with httpx.AsyncClient(base_url=server.url, headers=operator_headers(server.url), timeout=60) as http:
            (await http.post("/v1/sessions", json={"id": sid, "placement": "dense"})).raise_for_status()
            (await http.post(f"/v1/sessions/{sid}/phase", json={"phase": "live"})).raise_for_status()
            before = (await http.get(f"/v1/sessions/{sid}")).json()
            pid = (await (await directory.handle(sid)).info.remote())["pid"]
            status = (await http.get("/v1/cluster/status")).json()  # the class is listed, on its host
            stream = DeviceStream(f"{sid}-d", f"{sid}-p", sid)
            await _ride(server, stream, range(1, 4))
            deadline = time.monotonic() + 60
            while sid in await hosted() and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            released = sid not in await hosted()
            again = DeviceStream(f"{sid}-d", f"{sid}-p", sid)
            again.next_seq = 4
            await _ride(server, again, range(4, 6))
            info = await (await directory.handle(sid)).info.remote()
            snap = (await http.get(f"/v1/sessions/{sid}")).json()
        return {"released": released, "before": before, "snap": snap, "pid": pid, "info": info, "status": status}

    out = run(scenario(), timeout=180)
    [node] = [n for n in out["status"]["nodes"] if sid in n["sessions"]]
    assert [h for h, classes in node["dense_hosts"].items() if sid in classes] == [out["before"]["meta"]["host"]]
    assert out["released"], "the idle dense class stayed in its host's memory"
    assert out["info"]["pid"] == out["pid"] and out["info"]["released_idle"] >= 1  # the host lived on
    assert out["snap"]["phase"] == "live" and out["snap"]["epoch"] > out["before"]["epoch"]
    [rider] = out["snap"]["participants"]
    assert rider["samples"] == 5


def test_idle_class_shards_deactivate_and_the_class_comes_back_exact(own_edge: Any, run: Any, unique_id: str) -> None:
    """A class over class shards: its shards are session actors and go idle together; the
    next rider's samples bring every shard back from its checkpoint, exact."""
    from cluster.class_shards import shard_id
    from devices.client import DeviceStream

    server, _ = own_edge(idle_deactivate_s=2.0, class_shard_riders=2)
    ns = server.settings.namespace
    sid = f"ishard-{unique_id}"
    shards = [shard_id(sid, i) for i in range(3)]

    async def up() -> list[bool]:
        return [await asyncio.to_thread(is_active, s, ns) for s in shards]

    async def scenario() -> dict[str, Any]:
        async with httpx.AsyncClient(base_url=server.url, headers=operator_headers(server.url), timeout=60) as http:
            (await http.post("/v1/sessions", json={"id": sid, "expected_riders": 6})).raise_for_status()
            (await http.post(f"/v1/sessions/{sid}/phase", json={"phase": "live"})).raise_for_status()
            riders = [DeviceStream(f"{sid}-d{i}", f"{sid}-p{i}", sid) for i in range(4)]
            for stream in riders:
                await _ride(server, stream, range(1, 3))
            started = await up()
            deadline = time.monotonic() + 60
            while any(await up()) and time.monotonic() < deadline:
                await asyncio.sleep(0.3)
            gone = not any(await up())
            for i, old in enumerate(riders):
                again = DeviceStream(old.device, old.participant, sid)
                again.next_seq = 3
                await _ride(server, again, range(3, 5))
            snap = (await http.get(f"/v1/sessions/{sid}")).json()
        return {"started": started, "gone": gone, "snap": snap}

    out = run(scenario(), timeout=240)
    assert all(out["started"]), out["started"]
    assert out["gone"], "the idle class's shards did not deactivate"
    samples = sorted(p["samples"] for p in out["snap"]["participants"])
    assert samples == [4, 4, 4, 4], out["snap"]["participants"]
