"""Node loss mid-class: a head (no session slots) + 3 worker nodes (4 slots each), one edge,
riders in every session; one worker node is killed in the middle; its sessions come back
on the other nodes from their Redis checkpoints and the accounting ends exact.

    python -m tests.cluster.scenarios.node_loss [--sessions 6] [--devices 4] [--seconds 24]

Prints ``RESULT {json}``: placement before/after, the victim and its sessions, the time
from the kill to each affected session serving again (``recovery_s``), the accounting.
The GCS notices a dead raylet through its health checks; they are set here to every
0.5 s with 3 misses; ``--default-health-checks`` keeps Ray's (3 s, 5 misses).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from tests.cluster.scenarios.harness import (
    EdgeThread, Riders, edge_settings, emit, new_ids, operator_headers, patient_client, scratch_dir, setup_process,
)

SYSTEM_CONFIG = {"health_check_period_ms": 500, "health_check_timeout_ms": 1000, "health_check_failure_threshold": 3}


async def _wait_serving(http: Any, sid: str, old_epoch: int, began: float) -> float:
    """Seconds from ``began`` until ``sid`` answers through the edge with a newer epoch."""
    while True:
        try:
            reply = await http.get(f"/v1/sessions/{sid}", timeout=60)
            if reply.status_code == 200 and reply.json().get("epoch", -1) > old_epoch:
                return round(time.monotonic() - began, 2)
        except Exception:  # noqa: BLE001 - still recovering
            pass
        await asyncio.sleep(0.1)


async def _probe(http: Any, sessions: list[str], seconds: float) -> float:
    """The slowest answer of the other sessions while the affected ones recover."""
    slowest = 0.0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for sid in sessions:
            began = time.monotonic()
            (await http.get(f"/v1/sessions/{sid}")).raise_for_status()
            slowest = max(slowest, time.monotonic() - began)
        await asyncio.sleep(0.2)
    return round(slowest, 3)


async def scenario(cluster: Any, workers: list[Any], edge: EdgeThread, args: argparse.Namespace) -> dict[str, Any]:
    from cluster.placement import read_placement

    ns = edge.settings.namespace
    sessions = [f"nl-{i}" for i in range(args.sessions)]
    async with patient_client(edge.url, operator_headers(edge.settings)) as http:
        for sid in sessions:
            (await http.post("/v1/sessions", json={"id": sid})).raise_for_status()
        epochs = {sid: (await http.get(f"/v1/sessions/{sid}")).json()["epoch"] for sid in sessions}
        before = await asyncio.to_thread(read_placement, ns)
        riders = Riders([edge], sessions, args.devices)
        await riders.connect()
        worker_ids = {w.node_id for w in workers}
        by_node = before.session_nodes()
        victim_id = max(worker_ids, key=lambda n: sum(1 for v in by_node.values() if v == n))
        victim = next(w for w in workers if w.node_id == victim_id)
        affected = sorted(s for s, n in by_node.items() if n == victim_id)
        recovery: dict[str, float] = {}
        others: dict[str, float] = {}

        async def kill_later() -> None:
            await asyncio.sleep(args.kill_at)
            began = time.monotonic()
            await asyncio.to_thread(cluster.remove_node, victim, False)  # not graceful: a crash
            unaffected = [s for s in sessions if s not in affected]
            *times, slowest = await asyncio.gather(
                *(_wait_serving(http, s, epochs[s], began) for s in affected), _probe(http, unaffected, 6.0)
            )
            recovery.update(zip(affected, times, strict=True))
            others["slowest_call_s"] = slowest

        await asyncio.gather(riders.drive(args.seconds), kill_later())
        drained = await riders.drain()
        accounting = await riders.accounting(http, drained)
        after = await asyncio.to_thread(read_placement, ns)
        await riders.close()
    return {
        "nodes_before": {n.node_id: list(n.sessions) for n in before.nodes if n.slots_total},
        "nodes_after": {n.node_id: list(n.sessions) for n in after.nodes if n.slots_total},
        "victim": victim_id,
        "affected": affected,
        "recovery_s": recovery,
        "recovery_max_s": max(recovery.values(), default=None),
        "unaffected_slowest_call_s": others.get("slowest_call_s"),
        "unaffected_still_on_their_nodes": all(
            after.node_of(s) == by_node.get(s) for s in sessions if s not in affected
        ),
        **accounting,
    }


def main() -> None:
    setup_process()
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, default=6)
    parser.add_argument("--devices", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--kill-at", type=float, default=7.0)
    parser.add_argument("--default-health-checks", action="store_true", help="keep Ray's 3 s x 5 health checks")
    args = parser.parse_args()

    import ray
    from ray.cluster_utils import Cluster

    from cluster.redis_server import EmbeddedRedis

    work = scratch_dir("nodeloss")
    started = time.monotonic()
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "resources": {"session_slot": 0}, "include_dashboard": False,
        "_system_config": {} if args.default_health_checks else SYSTEM_CONFIG,
    })
    redis = edge = None
    try:
        workers = [cluster.add_node(num_cpus=1, resources={"session_slot": 4}) for _ in range(3)]
        cluster.wait_for_nodes()
        ns, prefix = new_ids("nl")
        ray.init(address=cluster.address, namespace=ns, log_to_driver=False)
        redis = EmbeddedRedis(work / "redis").start()
        edge = EdgeThread(edge_settings(redis.url, work, namespace=ns, prefix=prefix)).start()
        setup_s = round(time.monotonic() - started, 1)
        result = asyncio.run(scenario(cluster, workers, edge, args))
        result["setup_s"] = setup_s
        emit(result)
    finally:
        if edge is not None:
            edge.stop()
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()
        if redis is not None:
            redis.stop()


if __name__ == "__main__":
    main()
