"""A class spanning several class-shard actors, against real Ray, Redis and uvicorn.

* a swarm of 300 riders in one class created with ``expected_riders`` 300 on an edge
  sharding above 100 riders: three shard actors, each with its own epoch; one shard
  SIGKILLed mid-class comes back from its checkpoint: lost 0, duplicated 0;
* afterwards every rider's rank on the class board (``view=all``, paged) and on its own
  board (``you``) is exact: 1 + the riders of the whole class with more output, against the
  class's merged snapshot, and within float noise of the swarm's own energy sums (what was
  sent);
* control calls are one action: a phase change reaches every shard; joins go to the
  rider's shard; passivating the class ends every shard's actor and the next call brings
  them back from their checkpoints; bad paging is refused with a close code and a reason;
* each rider of an ended sharded class gets its end-of-class summary with the class's rank.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import msgpack
import pytest
import ray
import redis
import redis.asyncio as aioredis
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from actors.session_actor import actor_name
from cluster.class_shards import placement_keys
from cluster.directory import SessionDirectory
from cluster.placement import held_slots
from cluster.prescale import PrescaleBook, PrescalePolicy, Prescaler, ScheduledClass
from cluster.class_shards import shard_id, shard_of
from sims.swarm import Swarm, SwarmConfig
from storage.checkpoint import key_base
from tests.cluster.helpers import actor_alive as _alive
from tests.edge_server import EdgeServer
from tests.conftest import create_retrying

RIDERS = 300
SHARDS = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def sharding_edge(edge_settings: Any) -> Iterator[EdgeServer]:
    """An edge of its own whose classes of more than 100 expected riders are sharded, and
    whose ``view=all`` pages have at most 100 rows (so the swarm's probe watches 3 pages)."""
    server = EdgeServer(edge_settings.model_copy(update={"port": _free_port(), "class_shard_riders": 100,
                                                         "class_shard_growth": "off",  # (riders hashed)
                                                         "board_page_rows": 100})).start()
    yield server
    server.stop()


def _ranks(rows: list[dict[str, Any]], energy: str = "energy_kj", slack: float = 0.0) -> dict[str, tuple[int, int]]:
    """Per active rider: the lowest and highest rank its output allows (equal without slack)."""
    active = [r for r in rows if r.get("active", True)]
    return {r["participant"]: (1 + sum(o[energy] > r[energy] + slack for o in active),
                               1 + sum(o[energy] > r[energy] - slack for o in active)) for r in active}


async def _board(url: str, token: str, *, page: int = 0, page_size: int = 100, participant: str | None = None,
                 want: Any = None) -> dict[str, Any]:
    """The first board frame from ``url`` that ``want(frame)`` accepts."""
    query = f"?view=all&rate=10&page={page}&page_size={page_size}" + (f"&participant={participant}" if participant else "")
    async with connect(url + query, additional_headers={"Authorization": f"Bearer {token}"}, max_size=2**24) as ws:
        while True:
            frame = msgpack.unpackb(await ws.recv(), raw=False)
            if frame.get("t") == "board" and (want is None or want(frame)):
                return frame  # type: ignore[no-any-return]


async def _kill_a_shard(sid: str, namespace: str, seen: dict[str, Any], index: int = 1) -> None:
    name = actor_name(shard_id(sid, index))
    while True:
        try:
            handle = ray.get_actor(name, namespace=namespace)
            before = await handle.info.remote()
            if before["stream_ticks"] > 10:
                break
        except ValueError:
            pass
        await asyncio.sleep(0.2)
    await asyncio.sleep(2.0)
    os.kill(before["pid"], signal.SIGKILL)
    seen["before"] = before
    while True:  # the restarted shard serves the edge again
        after = await handle.info.remote()
        if after["stream_ticks"] > 5:
            seen["after"] = after
            return
        await asyncio.sleep(0.2)


@pytest.mark.timeout(300)
def test_a_sharded_class_keeps_exact_ranks_and_loses_nothing_when_a_shard_dies(
        sharding_edge: EdgeServer, tokens: Any, run: Any, unique_id: str) -> None:
    edge = sharding_edge
    config = SwarmConfig(base_url=edge.url, sessions=1, devices=RIDERS, seconds=14, rate_hz=2.0, board_hz=4.0,
                         hub_size=30, session_prefix=f"big-{unique_id}", drain_timeout_s=90, dup_rate=0.05)
    swarm = Swarm(config)
    sid = swarm.sessions[0]
    seen: dict[str, Any] = {}

    async def scenario() -> dict[str, Any]:
        result, _ = await asyncio.gather(swarm.run(), asyncio.wait_for(_kill_a_shard(sid, edge.settings.namespace, seen), 90))
        return result  # type: ignore[no-any-return]

    result = run(scenario(), timeout=240)
    assert result["drained"] and result["lost"] == 0 and result["duplicated"] == 0, result
    assert result["acknowledged"] == result["applied"] == result["sent"] - result["rejected"] > 0, result
    assert result["participants_mismatched"] == 0 and result["latency_unseen"] == 0, result
    assert swarm.viewers[sid].watched == 3  # the probe followed the board's pages: it saw every rider
    assert seen["after"]["pid"] != seen["before"]["pid"] and seen["after"]["epoch"] > seen["before"]["epoch"]

    with httpx.Client(base_url=edge.url, headers=tokens.headers("operator"), timeout=60) as http:
        reply = http.get(f"/v1/sessions/{sid}")
        assert reply.status_code == 200, reply.text
        snap = reply.json()
    assert snap["meta"]["shards"] == str(SHARDS) and len(snap["shards"]) == SHARDS
    assert snap["phase"] == "ended" and all(s["phase"] == "ended" for s in snap["shards"])  # one action, every shard
    assert sorted(p["participant"] for p in snap["participants"]) == sorted(t.participant for t in swarm.truths())
    for shard, info in enumerate(snap["shards"]):  # each rider lives in the shard its id hashes to
        assert info["participants"] == sum(shard_of(t.participant, SHARDS) == shard for t in swarm.truths())

    exact = _ranks(snap["participants"])
    sent = _ranks([{"participant": t.participant, "energy_kj": t.energy_kj} for t in swarm.truths()], slack=1e-6)
    ws_url = edge.url.replace("http", "ws") + f"/v1/sessions/{sid}/board"
    operator = tokens("operator")
    pages = [run(_board(ws_url, operator, page=k, want=lambda f: f["n"] == RIDERS and f["phase"] == "ended"),
                 timeout=60) for k in range(3)]
    assert [(p["page"], p["pages"], len(p["rows"])) for p in pages] == [(0, 3, 100), (1, 3, 100), (2, 3, 100)]
    rows = [row for p in pages for row in p["rows"]]
    assert sorted(r[0] for r in rows) == sorted(exact)  # every rider on exactly one page
    for row in rows:
        who, rank = row[0], row[1]
        assert exact[who][0] == rank, who  # exact: 1 + the riders of the class with more output
        assert sent[who][0] <= rank <= sent[who][1], who  # and what the swarm sent says the same
    frame = pages[0]
    cols = frame["cols"]
    assert [r[0] for r in frame["top"]] == [r[0] for r in frame["rows"][: len(frame["top"])]]
    rider = rows[-1][0]
    mine = run(_board(ws_url, operator, participant=rider), timeout=60)
    assert mine["you"][0] == rider and mine["you"][1] == exact[rider][0]
    assert mine["you"][cols.index("samples")] == next(p["samples"] for p in snap["participants"]
                                                     if p["participant"] == rider)


@pytest.mark.timeout(120)
def test_control_calls_reach_every_shard_and_bad_paging_is_refused(sharding_edge: EdgeServer, tokens: Any,
                                                                   run: Any, unique_id: str) -> None:
    sid = f"ctl-{unique_id}"
    ns = sharding_edge.settings.namespace

    async def prescaled(class_id: str) -> int:
        """The slots a prescaler asks for on top of what is used, the class starting now."""
        client = aioredis.Redis.from_url(sharding_edge.settings.redis_url)
        directory = SessionDirectory(client, prefix=sharding_edge.settings.prefix, namespace=ns, actor_settings={})
        book = PrescaleBook(client, prefix=f"ps-{unique_id}")
        await book.put(ScheduledClass(class_id, time.time(), 250, 1))  # (booked for 1 slot: it has 3 shards)
        sent: list[int] = []
        prescaler = Prescaler(book, PrescalePolicy(), used_slots=lambda: 0.0, request=lambda b: sent.append(len(b)),
                              held=lambda c, shards: held_slots(c, shards, ns), shards=directory.shards_of)
        wanted = await prescaler.step()
        await client.aclose()
        return wanted
    with httpx.Client(base_url=sharding_edge.url, headers=tokens.headers("operator"), timeout=60) as http:
        created = create_retrying(http, {"id": sid, "expected_riders": 250, "board_size": 5})
        assert created.status_code == 201, created.text
        riders = [f"rider-{k}" for k in range(12)]
        for rider in riders:
            assert http.post(f"/v1/sessions/{sid}/participants", json={"participant": rider}).status_code == 201
        # pre-scaling sees the class's shards: each live shard holds its slot (cluster.prescale)
        assert held_slots(sid, SHARDS, ns) == SHARDS and run(prescaled(sid)) == 0
        assert http.post(f"/v1/sessions/{sid}/phase", json={"phase": "live"}).json() == {"phase": "live"}
        assert http.post(f"/v1/sessions/{sid}/phase", json={"phase": "lobby"}).status_code == 409  # phases move on
        snap = http.get(f"/v1/sessions/{sid}").json()
        assert http.post(f"/v1/sessions/{sid}/flush").status_code == 200
        # passivated: every shard checkpoints and its actor ends; the next call brings them all back
        assert http.post(f"/v1/sessions/{sid}/passivate").json() == {"session": sid, "passivated": True}
        assert not any(_alive(shard_id(sid, i), sharding_edge.settings.namespace) for i in range(SHARDS))
        assert held_slots(sid, SHARDS, ns) == 0 and run(prescaled(sid)) == SHARDS
        back = http.get(f"/v1/sessions/{sid}").json()
        assert all(_alive(shard_id(sid, i), sharding_edge.settings.namespace) for i in range(SHARDS))
        assert sorted(p["participant"] for p in back["participants"]) == sorted(riders) and back["phase"] == "live"
        assert all(b["epoch"] > a["epoch"] for a, b in zip(snap["shards"], back["shards"]))  # new instances
    assert [s["phase"] for s in snap["shards"]] == ["live"] * SHARDS and snap["phase"] == "live"
    assert [s["participants"] for s in snap["shards"]] == [sum(shard_of(r, SHARDS) == i for r in riders)
                                                           for i in range(SHARDS)]
    assert sorted(p["participant"] for p in snap["participants"]) == sorted(riders)

    async def refused_with(url: str, token: str) -> tuple[int, str]:
        async with connect(url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
            try:
                await ws.recv()
            except ConnectionClosed as closed:
                assert closed.rcvd is not None
                return closed.rcvd.code, closed.rcvd.reason
        raise AssertionError("not closed")

    for query in ("page=-1", "page_size=0", f"page_size={sharding_edge.settings.board_page_rows + 1}"):
        url = sharding_edge.url.replace("http", "ws") + f"/v1/sessions/{sid}/board?view=all&{query}"
        code, reason = run(refused_with(url, tokens("operator")), timeout=30)
        assert code == 4400 and "page" in reason, (query, code, reason)
    frame = run(_board(sharding_edge.url.replace("http", "ws") + f"/v1/sessions/{sid}/board", tokens("operator"),
                       page_size=5), timeout=30)
    assert frame["n"] == 12 and len(frame["top"]) == 5 and frame["pages"] == 3 and len(frame["rows"]) == 5

    # a participant's board socket is authorised by the rider's shard alone (member), not a class snapshot
    board_url = sharding_edge.url.replace("http", "ws") + f"/v1/sessions/{sid}/board"
    for rider in (riders[0], riders[-1]):
        mine = run(_board(board_url, tokens("participant", participant=rider, sessions=[sid]), participant=rider),
                   timeout=30)
        assert mine["you"][0] == rider and mine["n"] == 12
    stranger = tokens("participant", participant="not-joined", sessions=[sid])
    assert run(refused_with(board_url + "?participant=not-joined", stranger), timeout=30)[0] == 4403
    with httpx.Client(base_url=sharding_edge.url, timeout=60) as http:
        assert http.get(f"/v1/sessions/{sid}", headers={"Authorization": f"Bearer {stranger}"}).status_code == 403
        own = http.get(f"/v1/sessions/{sid}", headers=tokens.headers("participant", participant=riders[1],
                                                                     sessions=[sid]))
        assert own.status_code == 200 and len(own.json()["participants"]) == 12, own.text


GROWN = 50  # riders of the growing class: 20 per shard, so it grows from 1 shard to 3


@pytest.mark.timeout(300)
def test_a_class_grows_its_shards_while_it_runs_and_keeps_every_sample_and_exact_ranks(
        own_edge: Any, run: Any, unique_id: str) -> None:
    """Created for 20 riders (one shard), joined by 50 over 6 s of its ride: it grows to 3
    shards (20, 20, 10: least loaded first), riders stay where they were placed, the new
    shard 2 is SIGKILLed once it serves and comes back from its checkpoint."""
    edge, tokens = own_edge(class_shard_riders=20, class_shard_growth="all")
    config = SwarmConfig(base_url=edge.url, sessions=1, devices=GROWN, seconds=14, rate_hz=2.0, board_hz=4.0,
                         hub_size=5, session_prefix=f"grow-{unique_id}", drain_timeout_s=90, dup_rate=0.05,
                         join_window_s=6.0)
    swarm = Swarm(config)
    sid = swarm.sessions[0]
    ops = httpx.Client(base_url=edge.url, headers=tokens.headers("operator"), timeout=60)
    assert ops.post("/v1/sessions", json={"id": sid, "expected_riders": 20}).status_code == 201
    assert ops.get(f"/v1/sessions/{sid}").json()["meta"]["shards"] == "1"  # (the swarm's create finds it made)
    seen: dict[str, Any] = {}
    shard_of_key, loads_key = placement_keys(edge.settings.prefix, sid)

    async def kill_after_growth() -> None:
        client = aioredis.Redis.from_url(edge.settings.redis_url)
        try:
            while int(await client.hget(f"{key_base(edge.settings.prefix, 'session', sid)}:meta", "shards") or 0) < 3:
                await asyncio.sleep(0.2)
        finally:
            await client.aclose()
        await _kill_a_shard(sid, edge.settings.namespace, seen, index=2)

    async def scenario() -> dict[str, Any]:
        result, _ = await asyncio.gather(swarm.run(), asyncio.wait_for(kill_after_growth(), 120))
        return result  # type: ignore[no-any-return]

    result = run(scenario(), timeout=240)
    assert result["drained"] and result["lost"] == 0 and result["duplicated"] == 0, result
    assert result["acknowledged"] == result["applied"] == result["sent"] - result["rejected"] > 0, result
    assert result["participants_mismatched"] == 0, result
    assert seen["after"]["pid"] != seen["before"]["pid"] and seen["after"]["epoch"] > seen["before"]["epoch"]

    snap = ops.get(f"/v1/sessions/{sid}").json()
    ops.close()
    assert snap["meta"]["shards"] == "3" and [s["participants"] for s in snap["shards"]] == [20, 20, 10]
    assert snap["phase"] == "ended" and all(s["phase"] == "ended" for s in snap["shards"])
    truths = {t.participant: t for t in swarm.truths()}
    assert sorted(p["participant"] for p in snap["participants"]) == sorted(truths)
    # every rider is in the shard its placement recorded, and only there
    client = redis.Redis.from_url(edge.settings.redis_url)
    placed = {k.decode(): int(v) for k, v in client.hgetall(shard_of_key).items()}
    loads = {int(k): int(v) for k, v in client.hgetall(loads_key).items()}
    client.close()
    assert sorted(placed) == sorted(truths) and loads == {0: 20, 1: 20, 2: 10}
    for index in range(3):
        shard = ray.get_actor(actor_name(shard_id(sid, index)), namespace=edge.settings.namespace)
        riders = ray.get(shard.snapshot.remote(), timeout=60)["participants"]
        assert sorted(p["participant"] for p in riders) == sorted(p for p, s in placed.items() if s == index)
        for row in riders:  # every sample of a rider's devices was applied once, on its own shard
            assert row["samples"] == truths[row["participant"]].valid, row

    exact = _ranks(snap["participants"])
    sent = _ranks([{"participant": t.participant, "energy_kj": t.energy_kj} for t in truths.values()], slack=1e-6)
    board = run(_board(edge.url.replace("http", "ws") + f"/v1/sessions/{sid}/board", tokens("operator"),
                       want=lambda f: f["n"] == GROWN and f["phase"] == "ended"), timeout=60)
    assert sorted(r[0] for r in board["rows"]) == sorted(truths)
    for who, rank, *_ in board["rows"]:
        assert exact[who][0] == rank and sent[who][0] <= rank <= sent[who][1], who


def _two_per_shard(unique_id: str, shards: int) -> list[str]:
    riders: list[str] = []
    for k in itertools.count():
        name = f"r{k}-{unique_id}"
        if sum(shard_of(r, shards) == shard_of(name, shards) for r in riders) < 2:
            riders.append(name)
        if len(riders) == 2 * shards:
            return riders
    raise AssertionError("unreachable")


@pytest.mark.timeout(240)
def test_each_rider_of_a_sharded_class_gets_its_end_of_class_summary(sharding_edge: EdgeServer, tokens: Any,
                                                                     run: Any, unique_id: str) -> None:
    """Riders of two shards ride a class (v1.1 device connections); once it ends each gets
    its own end-of-class summary on its board frames, exactly as a one-actor class gives it:
    rank and rider count of the whole class (merged across shards, the same rank as the
    ride in the history), its totals, and the personal records its ride set."""
    sid = f"sum-{unique_id}"
    riders = _two_per_shard(unique_id, 2)
    power = {rider: 150.0 + 40.0 * k for k, rider in enumerate(riders)}  # distinct outputs: ranks by power
    rank = {rider: 1 + sum(p > power[rider] for p in power.values()) for rider in riders}
    ops = tokens.headers("operator")
    with httpx.Client(base_url=sharding_edge.url, headers=ops, timeout=60) as http:
        assert http.post("/v1/sessions", json={"id": sid, "expected_riders": 150}).status_code == 201
        for rider in riders:
            assert http.post(f"/v1/sessions/{sid}/participants", json={"participant": rider}).status_code == 201
        assert http.post(f"/v1/sessions/{sid}/phase", json={"phase": "live"}).status_code == 200
    start = float(int(time.time()) - 100)
    ws_url = sharding_edge.url.replace("http", "ws")

    async def ride() -> dict[str, dict[str, Any]]:
        sockets = {}
        for rider in riders:
            token = tokens("device", device=f"{rider}-bike", participant=rider, sessions=[sid])
            ws = sockets[rider] = await connect(f"{ws_url}/v1/devices", additional_headers={"Authorization": f"Bearer {token}"})
            await ws.send(msgpack.packb({"t": "hello", "v": 1.1, "board": {"rate": 2}, "devices": [
                {"device": f"{rider}-bike", "participant": rider, "session": sid}]}))
            await ws.send(msgpack.packb({"t": "samples", "device": f"{rider}-bike", "samples": [
                [seq, start + seq, 140.0, power[rider], 90.0, 8.0, 8.0 * seq] for seq in range(1, 11)]}))
        try:
            for rider, ws in sockets.items():
                while (msgpack.unpackb(await ws.recv()).get("acks") or {}).get(f"{rider}-bike") != 10:
                    pass
            async with httpx.AsyncClient(base_url=sharding_edge.url, headers=ops, timeout=60) as http:
                (await http.post(f"/v1/sessions/{sid}/phase", json={"phase": "ended"})).raise_for_status()
            summaries = {}
            for rider, ws in sockets.items():
                while True:
                    frame = msgpack.unpackb(await ws.recv())
                    if frame.get("t") == "board" and (frame.get("summary") or {}).get("records") is not None:
                        assert frame["phase"] == "ended" and "summaries" not in frame
                        summaries[rider] = frame["summary"]
                        break
            return summaries
        finally:
            for ws in sockets.values():
                await ws.close()

    summaries = run(ride(), timeout=180)
    with httpx.Client(base_url=sharding_edge.url, headers=ops, timeout=60) as http:
        rides = {rider: http.get(f"/v1/riders/{rider}/rides/{sid}").json() for rider in riders}
    for rider, summary in summaries.items():
        assert summary["rank"] == rank[rider] == rides[rider]["rank"], (rider, summary, rides[rider])
        assert summary["riders"] == len(riders) == rides[rider]["riders"]
        assert summary["power_avg"] == power[rider] and summary["duration_s"] == 10
        assert summary["bests"]["power_5s_w"] == power[rider] and sum(summary["power_zone_s"]) > 0
        assert sorted(summary["records"]) == ["class_output_kj", "power_5s_w"]  # a first ride sets them
        assert not any(other in json.dumps(summary) for other in riders if other != rider)
