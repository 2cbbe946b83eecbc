"""Metrics scraped from a running stack under a swarm (real uvicorn, Ray, Redis): every family
the edge and the session actors export moves, the connections gauge sees devices, hubs and
viewers, and scrape access works both ways (operator token on ``/metrics``, or the separate
listener without auth)."""

from __future__ import annotations

import asyncio
import re
import socket
import time
from typing import Any

import httpx
import msgpack
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

from sims.swarm import Swarm, SwarmConfig
from tests.edge_server import EdgeServer

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def samples_of(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, labels): value} of a Prometheus text page (Ray's labels dropped)."""
    ray_labels = {"Component", "NodeAddress", "SessionName", "Version", "WorkerId", "process",
                  "otel_scope_name", "otel_scope_schema_url", "otel_scope_version"}
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = (s.name, tuple(sorted((k, v) for k, v in s.labels.items() if k not in ray_labels)))
            out[key] = out.get(key, 0.0) + s.value
    return out


def value(page: dict[Any, float], name: str, **labels: str) -> float:
    return page.get((name, tuple(sorted(labels.items()))), 0.0)


EDGE_MOVING = [  # (sample, labels) that must grow during the swarm
    ("pulseline_samples_received_total", {}),
    ("pulseline_samples_acked_total", {}),
    ("pulseline_samples_rejected_total", {"reason": "out_of_range"}),
    ("pulseline_frames_received_total", {"type": "samples"}),
    ("pulseline_boards_sent_total", {}),
    ("pulseline_sample_to_board_seconds_count", {}),
    ("pulseline_ack_latency_seconds_count", {}),
    ("pulseline_tick_duration_seconds_count", {}),
    ("pulseline_tick_lag_seconds_count", {}),
    ("pulseline_closes_total", {"code": "4429"}),  # the flood, kept sending while throttled
    ("pulseline_closes_total", {"code": "4404"}),
    ("pulseline_throttles_total", {"reason": "frame_rate"}),
    ("pulseline_redis_roundtrip_seconds_count", {}),
    ("pulseline_event_loop_lag_seconds_count", {}),
]
ACTOR_MOVING = [  # exported by session actors through Ray's metrics agent
    "ray_pulseline_actor_ticks_total",
    "ray_pulseline_actor_samples_applied_total",
    "ray_pulseline_checkpoint_duration_seconds_count",
    "ray_pulseline_checkpoint_lag_seconds_count",
]


@pytest.fixture
def metrics_edge(edge_settings: Any) -> Any:
    settings = edge_settings.model_copy(update={"port": _free_port(), "metrics_port": _free_port()})
    server = EdgeServer(settings).start()
    yield server
    server.stop()


async def _flood(ws_url: str, sid: str, token: str) -> None:
    """A device that sends far over its frame rate (throttled), then one naming an unknown
    session (closed with 4404)."""
    async with connect(f"{ws_url}/v1/devices") as ws:
        await ws.send(msgpack.packb({"t": "hello", "v": 1, "token": token,
                                     "devices": [{"device": "flood", "participant": "flood", "session": sid}]}))
        await ws.recv()
        for seq in range(1, 121):
            await ws.send(msgpack.packb({"t": "samples", "device": "flood",
                                         "samples": [[seq, time.time(), 120.0, 150.0, 80.0, 8.0, seq]]}))
        await ws.send(msgpack.packb({"t": "bye"}))


async def _unknown_session(ws_url: str, token: str) -> None:
    async with connect(f"{ws_url}/v1/devices") as ws:
        await ws.send(msgpack.packb({"t": "hello", "v": 1, "token": token,
                                     "devices": [{"device": "d", "participant": "p", "session": "no-such-class"}]}))
        with pytest.raises(Exception):
            while True:
                await asyncio.wait_for(ws.recv(), 10)


def test_every_family_moves_under_a_swarm(metrics_edge: Any, tokens: Any, run: Any, unique_id: str) -> None:
    import ray

    scrape_url = f"http://127.0.0.1:{metrics_edge.settings.metrics_port}/metrics"
    ray_url = f"http://127.0.0.1:{ray._private.worker._global_node.metrics_export_port}/metrics"
    ops = tokens.headers()
    before = samples_of(httpx.get(scrape_url, timeout=30).text)
    phones = SwarmConfig(base_url=metrics_edge.url, sessions=1, devices=4, seconds=10, board_hz=10,
                         session_prefix=f"mp-{unique_id}", bad_rate=0.05, seed=3)
    hubs = SwarmConfig(base_url=metrics_edge.url, sessions=1, devices=6, seconds=10, board_hz=2, hub_size=3,
                       session_prefix=f"mh-{unique_id}", seed=4)
    flood_sid = f"mf-{unique_id}"
    httpx.post(f"{metrics_edge.url}/v1/sessions", json={"id": flood_sid}, headers=ops, timeout=60).raise_for_status()
    seen_kinds: dict[str, float] = {}
    seen_live = 0.0

    async def scenario() -> list[dict[str, Any]]:
        nonlocal seen_live
        swarms = asyncio.gather(Swarm(phones).run(), Swarm(hubs).run())
        async with httpx.AsyncClient(timeout=30) as client:
            while not swarms.done():
                page = samples_of((await client.get(scrape_url)).text)
                for kind in ("device", "hub", "viewer"):
                    seen_kinds[kind] = max(seen_kinds.get(kind, 0.0), value(page, "pulseline_connections", kind=kind))
                seen_live = max(seen_live, value(page, "pulseline_sessions", phase="live"))
                await asyncio.wait([swarms], timeout=1.0)
        flood_token = tokens("device", device="flood", participant="flood", sessions=[flood_sid])
        await _flood(metrics_edge.ws_url, flood_sid, flood_token)
        await _unknown_session(metrics_edge.ws_url, tokens("device", device="d", participant="p", sessions=["no-such-class"]))
        return await swarms

    results = run(scenario(), timeout=240)
    assert all(r["lost"] == 0 and r["duplicated"] == 0 for r in results), results
    assert seen_kinds["device"] >= 1 and seen_kinds["hub"] >= 1 and seen_kinds["viewer"] >= 1, seen_kinds
    assert seen_live >= 1

    after = samples_of(httpx.get(scrape_url, timeout=30).text)
    still = [(n, l) for n, l in EDGE_MOVING if value(after, n, **l) <= value(before, n, **l)]
    assert not still, still
    assert value(after, "pulseline_ack_latency_seconds_sum") > 0
    assert any(name == "pulseline_session_tick_duration_seconds" and dict(l).get("session", "").startswith("mp-")
               for name, l in after), "no per-class tick time"
    assert ("pulseline_pending_samples", ()) in after

    # the session actors' families, through Ray's metrics export port (pushed every few seconds)
    deadline = time.monotonic() + 90
    missing = ["not scraped yet"]
    while missing and time.monotonic() < deadline:
        time.sleep(2)
        ray_page = samples_of(httpx.get(ray_url, timeout=30).text)
        missing = [n for n in ACTOR_MOVING if value(ray_page, n) <= 0]
        if not any(n == "ray_pulseline_riders" and dict(l).get("presence") == "active" and v > 0
                   for (n, l), v in ray_page.items()):
            missing.append("riders by presence")
        if not any(n == "ray_pulseline_actor_sessions" and dict(l).get("phase") == "ended" and v > 0
                   for (n, l), v in ray_page.items()):
            missing.append("ended classes")
    assert not missing, missing

def test_scrape_access(metrics_edge: Any, tokens: Any) -> None:
    """The separate listener serves without auth; ``/metrics`` on the API port still wants an
    operator token (401 without, 403 for a device token)."""
    listener = httpx.get(f"http://127.0.0.1:{metrics_edge.settings.metrics_port}/metrics", timeout=30)
    assert listener.status_code == 200 and "pulseline_connections" in listener.text
    assert httpx.get(f"{metrics_edge.url}/metrics", timeout=30).status_code == 401
    device = tokens.headers("device", device="d", participant="p", sessions=["s"])
    assert httpx.get(f"{metrics_edge.url}/metrics", headers=device, timeout=30).status_code == 403
    page = httpx.get(f"{metrics_edge.url}/metrics", headers=tokens.headers(), timeout=30).text
    assert re.search(r"^pulseline_tick_duration_seconds_bucket\{le=\"0.005\"\}", page, re.M)


def test_riders_waiting_for_a_seat_are_counted(metrics_edge: Any, tokens: Any, run: Any, unique_id: str) -> None:
    """A class of one seat: the second rider's hello waits (a ``queue`` frame), and the
    admission queue gauge counts it until it hangs up."""
    sid = f"mq-{unique_id}"
    httpx.post(f"{metrics_edge.url}/v1/sessions", json={"id": sid, "capacity": 1}, headers=tokens.headers(),
               timeout=60).raise_for_status()
    scrape_url = f"http://127.0.0.1:{metrics_edge.settings.metrics_port}/metrics"

    def hello(rider: str) -> bytes:
        token = tokens("device", device=f"d-{rider}", participant=rider, sessions=[sid])
        return msgpack.packb({"t": "hello", "v": 1, "token": token,
                              "devices": [{"device": f"d-{rider}", "participant": rider, "session": sid}]})

    async def scenario() -> tuple[float, float]:
        async with connect(f"{metrics_edge.ws_url}/v1/devices") as first:
            await first.send(hello("r1"))
            assert msgpack.unpackb(await asyncio.wait_for(first.recv(), 30))["t"] == "welcome"
            async with connect(f"{metrics_edge.ws_url}/v1/devices") as second:
                await second.send(hello("r2"))
                assert msgpack.unpackb(await asyncio.wait_for(second.recv(), 30))["t"] == "queue"
                async with httpx.AsyncClient(timeout=30) as client:
                    waiting = value(samples_of((await client.get(scrape_url)).text), "pulseline_admission_queue_riders")
        await asyncio.sleep(1.5)  # (the admission round notices the hang-up)
        async with httpx.AsyncClient(timeout=30) as client:
            gone = value(samples_of((await client.get(scrape_url)).text), "pulseline_admission_queue_riders")
        return waiting, gone

    waiting, gone = run(scenario())
    assert waiting == 1 and gone == 0


def test_redis_errors_are_counted_when_redis_goes_away(edge_settings: Any, tmp_path: Any) -> None:
    """An edge on a Redis of its own that then stops counts its failed probes, and still
    serves its metrics."""
    from cluster.redis_server import EmbeddedRedis

    redis = EmbeddedRedis(tmp_path / "redis").start()
    settings = edge_settings.model_copy(update={
        "port": _free_port(), "metrics_port": _free_port(), "redis_url": redis.url, "redis_timeout_s": 0.5})
    server = EdgeServer(settings).start()
    try:
        scrape_url = f"http://127.0.0.1:{settings.metrics_port}/metrics"
        page = samples_of(httpx.get(scrape_url, timeout=30).text)
        before = value(page, "pulseline_redis_errors_total")
        redis.stop()
        deadline = time.monotonic() + 30
        after = before
        while after <= before and time.monotonic() < deadline:
            time.sleep(0.5)
            after = value(samples_of(httpx.get(scrape_url, timeout=30).text), "pulseline_redis_errors_total")
        assert after > before
    finally:
        server.stop()
        redis.stop()


def test_checkpoint_failures_are_exported_when_redis_goes_away(edge_settings: Any, tokens: Any,
                                                               tmp_path: Any, unique_id: str) -> None:
    """A class whose Redis goes away counts its failed checkpoint writes, and the count
    reaches Prometheus through Ray's metrics export (the actor side of issue 19's families)."""
    import ray

    from actors.session_actor import actor_name
    from cluster.redis_server import EmbeddedRedis

    redis = EmbeddedRedis(tmp_path / "redis").start()
    settings = edge_settings.model_copy(update={"port": _free_port(), "redis_url": redis.url, "redis_timeout_s": 0.5})
    server = EdgeServer(settings).start()
    ray_url = f"http://127.0.0.1:{ray._private.worker._global_node.metrics_export_port}/metrics"
    sid = f"ckf-{unique_id}"
    actor = None
    try:
        ops = tokens.headers()
        httpx.post(f"{server.url}/v1/sessions", json={"id": sid}, headers=ops, timeout=60).raise_for_status()
        httpx.post(f"{server.url}/v1/sessions/{sid}/participants", json={"participant": "ann"}, headers=ops,
                   timeout=60).raise_for_status()
        actor = ray.get_actor(actor_name(sid), namespace=settings.namespace)
        before = value(samples_of(httpx.get(ray_url, timeout=30).text), "ray_pulseline_checkpoint_failures_total")
        redis.stop()
        failed = 0
        for k in range(3):  # each join checkpoints before it answers: with Redis gone, the write fails
            try:
                ray.get(actor.join.remote(participant=f"late-{k}"), timeout=60)
            except Exception:  # noqa: BLE001 - the failure is what this test wants
                failed += 1
        assert failed == 3
        deadline = time.monotonic() + 90
        after = before
        while after <= before and time.monotonic() < deadline:
            time.sleep(2)
            after = value(samples_of(httpx.get(ray_url, timeout=30).text), "ray_pulseline_checkpoint_failures_total")
        assert after >= before + 3, (before, after)
    finally:
        if actor is not None:  # (its state can never be saved now: it would never go idle)
            ray.kill(actor, no_restart=True)
        server.stop()
        redis.stop()
