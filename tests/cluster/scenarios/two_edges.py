"""Two edge processes (``pulseline edge``) attached to one Ray cluster and one Redis serve
one session: half the devices on each edge, a viewer on each edge.

    python -m tests.cluster.scenarios.two_edges [--devices 10] [--seconds 12]

Prints ``RESULT {json}``: the accounting (exact totals over both edges), the participants
the session holds, and the board comparison — for every board version both viewers saw,
whether the rows were identical, and each viewer's last version.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from tests.cluster.scenarios.harness import (
    BoardLog, Riders, edge_settings, emit, new_ids, operator_headers, patient_client, record_boards, scratch_dir,
    setup_process,
)


def start_edge(address: str, redis_url: str, work: Path, ns: str, prefix: str) -> tuple[subprocess.Popen[bytes], Any]:
    settings = edge_settings(redis_url, work, namespace=ns, prefix=prefix)
    env = dict(os.environ, RAY_ADDRESS=address, REDIS_URL=redis_url, PULSELINE_NAMESPACE=ns, PULSELINE_PREFIX=prefix)
    log = open(work / f"edge-{settings.port}.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "launch.cli", "edge", "--port", str(settings.port), "--data-dir", str(work)],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    return proc, SimpleNamespace(url=f"http://127.0.0.1:{settings.port}", settings=settings, proc=proc)


def wait_healthy(edge: Any, timeout_s: float = 90.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if edge.proc.poll() is not None:
            raise RuntimeError(f"edge on {edge.url} exited with {edge.proc.returncode}")
        try:
            if httpx.get(f"{edge.url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"edge on {edge.url} did not come up")


def compare(logs: list[BoardLog]) -> dict[str, Any]:
    a, b = logs
    common = sorted(set(a.boards) & set(b.boards))
    return {
        "frames": [log.frames for log in logs],
        "versions_seen": [len(log.boards) for log in logs],
        "common_versions": len(common),
        "mismatched_versions": [v for v in common if a.boards[v] != b.boards[v]],
        "last_version": [max(log.boards, default=None) for log in logs],
        "last_rows_equal": bool(a.boards) and bool(b.boards) and a.boards[max(a.boards)] == b.boards[max(b.boards)],
    }


async def scenario(edges: list[Any], args: argparse.Namespace) -> dict[str, Any]:
    from api.auth import dev_token

    sid = "two-edges"
    first, second = edges
    async with patient_client(first.url, operator_headers(first.settings)) as http:
        (await http.post("/v1/sessions", json={"id": sid})).raise_for_status()
        stop = asyncio.Event()
        logs = [BoardLog(e.url) for e in edges]
        viewers = [
            asyncio.create_task(record_boards(e.url.replace("http://", "ws://"), sid,
                                              dev_token(e.settings, kind="operator"), log, stop))
            for e, log in zip(edges, logs, strict=True)
        ]
        riders = Riders(edges, [sid], args.devices)
        await riders.connect()
        await riders.drive(args.seconds)
        drained = await riders.drain()
        await asyncio.sleep(1.5)  # the last board reaches both viewers
        stop.set()
        await asyncio.gather(*viewers)
        await riders.close()
    async with patient_client(second.url, operator_headers(second.settings)) as other:
        accounting = await riders.accounting(other, drained)  # read back through the *other* edge
        snap = (await other.get(f"/v1/sessions/{sid}")).json()
    by_edge = {e.url: sum(1 for i in range(args.devices) if edges[i % 2] is e) for e in edges}
    return {
        "devices_per_edge": by_edge,
        "participants": len(snap["participants"]),
        "samples_per_participant_exact": all(
            p["samples"] == next(s.sent for s in riders.streams if s.participant == p["participant"])
            for p in snap["participants"]
        ),
        "boards": compare(logs),
        **accounting,
    }


def main() -> None:
    setup_process()
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=12.0)
    args = parser.parse_args()

    from ray.cluster_utils import Cluster

    from api.auth import dev_secret
    from cluster.redis_server import EmbeddedRedis

    work = scratch_dir("twoedges")
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "resources": {"session_slot": 4}, "include_dashboard": False,
    })
    redis = None
    procs: list[subprocess.Popen[bytes]] = []
    try:
        redis = EmbeddedRedis(work / "redis").start()
        ns, prefix = new_ids("te")
        # both edges verify tokens with the secret in the shared data dir: create it once, first
        dev_secret(edge_settings(redis.url, work, namespace=ns, prefix=prefix))
        edges = []
        for _ in range(2):
            proc, edge = start_edge(cluster.address, redis.url, work, ns, prefix)
            procs.append(proc)
            edges.append(edge)
        for edge in edges:
            wait_healthy(edge)
        emit(asyncio.run(scenario(edges, args)))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        cluster.shutdown()
        if redis is not None:
            redis.stop()


if __name__ == "__main__":
    main()
