"""A big class spread over nodes loses one: a head (no session slots) + 3 worker nodes, one
class of 30 riders created on an edge that shards above 10 riders (3 class shards, spread by
Ray over the workers); the worker holding a shard is killed mid-class; its shard comes
back on another node from its own checkpoint, the class keeps serving, and the accounting
ends exact.

    python -m tests.cluster.scenarios.shard_node_loss [--riders 30] [--seconds 20]

Prints ``RESULT {json}``: the shards per node before/after, the victim and its shards, the
time from the kill until the class answers with the restarted shard, the accounting.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from tests.cluster.scenarios.harness import (
    EdgeThread, Riders, edge_settings, emit, new_ids, operator_headers, patient_client, scratch_dir, setup_process,
)
from tests.cluster.scenarios.node_loss import SYSTEM_CONFIG, _wait_serving

CLASS = "big"


async def scenario(cluster: Any, workers: list[Any], edge: EdgeThread, args: argparse.Namespace) -> dict[str, Any]:
    from cluster.placement import read_placement

    ns = edge.settings.namespace
    async with patient_client(edge.url, operator_headers(edge.settings)) as http:
        (await http.post("/v1/sessions", json={"id": CLASS, "expected_riders": args.riders})).raise_for_status()
        epoch = (await http.get(f"/v1/sessions/{CLASS}")).json()["epoch"]  # (the sum of the shards')
        before = await asyncio.to_thread(read_placement, ns)
        riders = Riders([edge], [CLASS], args.riders)
        await riders.connect()
        by_node = before.session_nodes()  # shard id -> node
        workers_by_id = {w.node_id: w for w in workers}
        victim_id = next(n for n in by_node.values() if n in workers_by_id)
        affected = sorted(s for s, n in by_node.items() if n == victim_id)
        recovery: dict[str, float] = {}

        async def kill_later() -> None:
            await asyncio.sleep(args.kill_at)
            began = time.monotonic()
            await asyncio.to_thread(cluster.remove_node, workers_by_id[victim_id], False)  # a crash
            recovery["class"] = await _wait_serving(http, CLASS, epoch, began)

        await asyncio.gather(riders.drive(args.seconds), kill_later())
        drained = await riders.drain()
        accounting = await riders.accounting(http, drained)
        snap = (await http.get(f"/v1/sessions/{CLASS}")).json()
        after = await asyncio.to_thread(read_placement, ns)
        await riders.close()
    return {
        "shards_before": by_node,
        "shards_after": after.session_nodes(),
        "victim": victim_id,
        "affected": affected,
        "recovery_s": recovery,
        "shard_epochs": [s["epoch"] for s in snap["shards"]],
        "participants": len(snap["participants"]),
        **accounting,
    }


def main() -> None:
    setup_process()
    parser = argparse.ArgumentParser()
    parser.add_argument("--riders", type=int, default=30)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--kill-at", type=float, default=7.0)
    args = parser.parse_args()

    import ray
    from ray.cluster_utils import Cluster

    from cluster.redis_server import EmbeddedRedis

    work = scratch_dir("shardloss")
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "resources": {"session_slot": 0}, "include_dashboard": False, "_system_config": SYSTEM_CONFIG,
    })
    redis = edge = None
    try:
        workers = [cluster.add_node(num_cpus=1, resources={"session_slot": 4}) for _ in range(3)]
        cluster.wait_for_nodes()
        ns, prefix = new_ids("sl")
        ray.init(address=cluster.address, namespace=ns, log_to_driver=False)
        redis = EmbeddedRedis(work / "redis").start()
        settings = edge_settings(redis.url, work, namespace=ns, prefix=prefix).model_copy(
            update={"class_shard_riders": max(1, args.riders // 3)})
        edge = EdgeThread(settings).start()
        emit(asyncio.run(scenario(cluster, workers, edge, args)))
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
