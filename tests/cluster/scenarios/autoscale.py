"""Autoscaling with Ray's own (v1) autoscaler and fake multi-node provider.

A head with no session slots, worker nodes of 2 slots each added and removed by Ray's
autoscaler (``cluster/configs/fake-multinode.yaml``), one edge attached to it:

1. **scale up** — 5 sessions on an empty cluster: the pending session actors are resource
   demand, the autoscaler adds 3 nodes; time from each ``POST /v1/sessions`` to that
   session serving;
2. **scale down** — the sessions end and are passivated: the idle nodes go away;
3. **pre-scale** — a class is scheduled ``lead`` seconds ahead; the edge's prescaler
   requests its slots; a node comes up before the start, and at the start the session
   lands on it at once; the request is withdrawn after the start.

    python -m tests.cluster.scenarios.autoscale [--lead 15]

Prints ``RESULT {json}`` with the timings, node counts and the ``pulseline status`` output.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from typing import Any

from tests.cluster.scenarios.harness import (
    EdgeThread, edge_settings, emit, new_ids, operator_headers, patient_client, scratch_dir, setup_process,
)


def worker_nodes() -> list[str]:
    import ray

    return [n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("session_slot", 0) > 0]


async def wait_nodes(predicate: Any, timeout_s: float) -> tuple[float, list[str]]:
    began = time.monotonic()
    while True:
        nodes = await asyncio.to_thread(worker_nodes)
        if predicate(len(nodes)) or time.monotonic() - began > timeout_s:
            return round(time.monotonic() - began, 2), nodes
        await asyncio.sleep(0.25)


async def serving_after(http: Any, sid: str, began: float, timeout_s: float = 180.0) -> float:
    """Seconds until the session answers; while its actor waits for a node the edge answers
    503 with Retry-After (its actor calls are bounded), and a client retries as told."""
    while True:
        response = await http.get(f"/v1/sessions/{sid}", timeout=timeout_s)
        if response.status_code != 503 or time.monotonic() - began > timeout_s:
            response.raise_for_status()
            return round(time.monotonic() - began, 2)
        await asyncio.sleep(min(2.0, float(response.headers.get("retry-after", "1"))))


def status_cli(address: str, namespace: str) -> str:
    env = dict(os.environ, RAY_ADDRESS=address, PULSELINE_NAMESPACE=namespace)
    done = subprocess.run([sys.executable, "-m", "launch.cli", "status"], env=env, capture_output=True,
                          text=True, timeout=120)
    return done.stdout


async def scale_up(http: Any, sessions: list[str]) -> dict[str, Any]:
    began = time.monotonic()
    for sid in sessions:
        (await http.post("/v1/sessions", json={"id": sid})).raise_for_status()
    times = await asyncio.gather(*(serving_after(http, sid, began) for sid in sessions))
    status = (await http.get("/v1/cluster/status")).json()
    return {
        "serving_s": dict(zip(sessions, times, strict=True)),
        "serving_max_s": max(times),
        "nodes": len(await asyncio.to_thread(worker_nodes)),
        "sessions_per_node": {n["node_id"][-8:]: n["sessions"] for n in status["nodes"] if n["slots_total"]},
        "status_autoscaler": status["autoscaler"],
    }


async def scale_down(http: Any, sessions: list[str]) -> dict[str, Any]:
    for sid in sessions:
        (await http.post(f"/v1/sessions/{sid}/phase", json={"phase": "ended"})).raise_for_status()
    passivated = [(await http.post(f"/v1/sessions/{sid}/passivate")).json()["passivated"] for sid in sessions]
    elapsed, nodes = await wait_nodes(lambda n: n == 0, 120)
    return {"passivated": passivated, "nodes_gone_s": elapsed, "nodes_left": len(nodes)}


async def prescale(http: Any, lead_s: float, release_s: float) -> dict[str, Any]:
    sid = "class-at-start"
    start_at = time.time() + lead_s + 3
    reply = (await http.post(f"/v1/sessions/{sid}/schedule",
                             json={"start_at": start_at, "expected_participants": 1500})).json()
    await asyncio.sleep(max(0.0, reply["requested_from"] - time.time()))
    requested_at = time.time()
    up_s, nodes_up = await wait_nodes(lambda n: n >= 1, lead_s + 60)
    nodes_at_start = await asyncio.to_thread(worker_nodes)
    await asyncio.sleep(max(0.0, start_at - time.time()))
    began = time.monotonic()
    started_before_start = time.time() <= start_at + 0.5 and bool(nodes_at_start)
    (await http.post("/v1/sessions", json={"id": sid})).raise_for_status()
    serving_s = await serving_after(http, sid, began)
    status = (await http.get("/v1/cluster/status")).json()
    host = next((n["node_id"] for n in status["nodes"] if sid in n["sessions"]), None)
    await asyncio.sleep(max(0.0, start_at + release_s + 2 - time.time()))
    after_release = (await http.get("/v1/cluster/status")).json()["prescale"]
    return {
        "slots": reply["slots"],
        "lead_s": lead_s,
        "node_up_after_request_s": up_s,
        "node_up_before_start_s": round(start_at - (requested_at + up_s), 2),
        "nodes_at_start": len(nodes_at_start),
        "capacity_ready_at_start": started_before_start,
        "session_serving_after_start_s": serving_s,
        "session_on_prescaled_node": host in nodes_at_start,
        "requested_bundles_after_release": after_release["requested_bundles"],
        "classes_after_release": len(after_release["classes"]),
    }


async def scenario(edge: EdgeThread, address: str, args: argparse.Namespace) -> dict[str, Any]:
    sessions = [f"as-{i}" for i in range(5)]
    async with patient_client(edge.url, operator_headers(edge.settings)) as http:
        _, initial = await wait_nodes(lambda n: True, 0)
        up = await scale_up(http, sessions)
        cli = await asyncio.to_thread(status_cli, address, edge.settings.namespace)
        down = await scale_down(http, sessions)
        pre = await prescale(http, args.lead, args.release)
    return {"initial_nodes": len(initial), "scale_up": up, "status_cli": cli, "scale_down": down, "prescale": pre}


def main() -> None:
    setup_process()
    parser = argparse.ArgumentParser()
    parser.add_argument("--lead", type=float, default=15.0)
    parser.add_argument("--release", type=float, default=3.0)
    args = parser.parse_args()

    import ray

    from api.cluster_routes import ClusterPolicySettings
    from cluster.redis_server import EmbeddedRedis
    from tests.cluster.scenarios.fakecluster import FakeCluster

    work = scratch_dir("autoscale")
    started = time.monotonic()
    fake = FakeCluster(idle_timeout_minutes=0.1, max_workers=4, slots_per_node=2)
    redis = edge = None
    try:
        fake.start()
        ns, prefix = new_ids("as")
        ray.init(address=fake.address, namespace=ns, log_to_driver=False)
        redis = EmbeddedRedis(work / "redis").start()
        policy = ClusterPolicySettings(
            prescale_lead_time_s=args.lead, prescale_release_after_s=args.release, participants_per_slot=1000,
            prescale_interval_s=0.5, passivate_idle_s=3600,
        )
        # class_shard_riders=0: the class booked for 1,500 stays one actor (what this scenario
        # prescales; a sharded class's prescaling is tests/cluster/test_placement.py's)
        settings = edge_settings(redis.url, work, namespace=ns, prefix=prefix).model_copy(update={"class_shard_riders": 0})
        edge = EdgeThread(settings, policy).start()
        setup_s = round(time.monotonic() - started, 1)
        result = asyncio.run(scenario(edge, fake.address, args))
        result["setup_s"] = setup_s
        emit(result)
    finally:
        if edge is not None:
            edge.stop()
        if ray.is_initialized():
            ray.shutdown()
        fake.stop()
        if redis is not None:
            redis.stop()


if __name__ == "__main__":
    main()
