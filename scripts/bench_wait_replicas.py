"""What ``wait_replicas`` costs a checkpoint: fenced writes against a real Redis Cluster.

    .venv/bin/python scripts/bench_wait_replicas.py --writes 2000 --kib 8 --report wait.json

Starts a 3-primary/3-replica cluster from the embedded redis-server
(``cluster.redis_cluster``; AOF ``--appendfsync``, default everysec) and times
``CheckpointStore.write`` (the session actor's fenced checkpoint: one ``EVAL``) of a
``--kib`` payload, one after the other, for ``wait_replicas`` 0 and 1 (``EVAL`` + ``WAIT 1``
on the same connection). A session checkpoints at most every 0.25 s, so the figure to read
is the latency per write, not a throughput. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from storage.checkpoint import CheckpointStore  # noqa: E402
from cluster.redis_cluster import EmbeddedRedisCluster  # noqa: E402


async def _timed(url: str, writes: int, payload: bytes, ident: str) -> dict[str, Any]:
    store = CheckpointStore(url, prefix="bench", kind="session", ident=ident)
    await asyncio.to_thread(store.acquire)
    took: list[float] = []
    try:
        for _ in range(writes):
            began = time.perf_counter()
            await store.write(payload)
            took.append((time.perf_counter() - began) * 1e3)
    finally:
        await store.close()
    took.sort()
    return {
        "writes": writes, "mean_ms": round(statistics.fmean(took), 3), "p50_ms": round(took[len(took) // 2], 3),
        "p99_ms": round(took[int(len(took) * 0.99) - 1], 3), "max_ms": round(took[-1], 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writes", type=int, default=2000)
    parser.add_argument("--kib", type=float, default=8.0, help="checkpoint size")
    parser.add_argument("--appendfsync", choices=("everysec", "always"), default="everysec")
    parser.add_argument("--report", default=None)
    args = parser.parse_args()
    if args.writes < 10 or args.kib <= 0:
        parser.error("--writes must be at least 10 and --kib positive")
    payload = os.urandom(int(args.kib * 1024))
    with tempfile.TemporaryDirectory(prefix="pl-wait-") as tmp, \
            EmbeddedRedisCluster(tmp, appendfsync=args.appendfsync) as cluster:
        result: dict[str, Any] = {"appendfsync": args.appendfsync, "kib": args.kib, "load_avg": os.getloadavg()[0]}
        for wanted in (0, 1, 0, 1):  # twice each, interleaved: a busy moment hits both
            url = f"{cluster.url}?wait_replicas={wanted}"
            run = asyncio.run(_timed(url, args.writes, payload, f"w{wanted}-{time.monotonic_ns()}"))
            result.setdefault(f"wait_replicas_{wanted}", []).append(run)
    text = json.dumps(result, indent=2)
    print(text)
    if args.report:
        Path(args.report).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
