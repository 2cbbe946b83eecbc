"""What ``appendfsync always`` costs against ``everysec``, on pulseline's own write path.

    .venv/bin/python scripts/bench_appendfsync.py --dir .pulseline/bench-fsync --seconds 10

For each policy it starts an embedded redis-server (``cluster.redis_server.EmbeddedRedis``)
with its AOF in ``--dir`` (put it on the disk the data dir will use: the cost is the
disk's fsync) and measures the session checkpoint write (``storage.checkpoint.
CheckpointStore.write``: the epoch-fenced Lua compare-and-set, which is what every ack
waits for):

* ``paced``: ``--sessions`` sessions each writing a ``--bytes`` checkpoint every 0.25 s
  (the default ``checkpoint_interval_s``) — the latency each write adds before an ack;
* ``closed``: ``--writers`` writers back to back — the most checkpoints per second.

Prints one JSON object: per policy and mode, writes, writes/s, MB/s and latency
p50/p90/p99/max in ms; ``disk_fsync_ms``: what one 8 KiB append + ``fsync`` costs in
``--dir`` (the floor under ``always``); ``load_avg`` before and after (the machine may be
shared). A benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from storage.checkpoint import CheckpointStore
from cluster.redis_server import EmbeddedRedis


def _summary(latencies_s: list[float], seconds: float, size: int) -> dict[str, Any]:
    ms = np.asarray(latencies_s) * 1000.0
    count = len(latencies_s)
    return {
        "writes": count,
        "writes_per_s": round(count / seconds, 1),
        "mb_per_s": round(count * size / seconds / 1e6, 2),
        **{f"p{q}_ms": round(float(np.percentile(ms, q)), 2) for q in (50, 90, 99)},
        "max_ms": round(float(ms.max()), 2),
    }


async def _stores(url: str, count: int) -> list[CheckpointStore]:
    stores = [CheckpointStore(url, prefix="bench", kind="session", ident=f"s{i}") for i in range(count)]
    for store in stores:
        await asyncio.to_thread(store.acquire)
    return stores


async def _paced(url: str, sessions: int, size: int, seconds: float) -> dict[str, Any]:
    stores = await _stores(url, sessions)
    payload = os.urandom(size)
    latencies: list[float] = []
    end = time.monotonic() + seconds

    async def session(store: CheckpointStore, offset: float) -> None:
        await asyncio.sleep(offset)
        next_at = time.monotonic()
        while next_at < end:
            started = time.perf_counter()
            await store.write(payload)
            latencies.append(time.perf_counter() - started)
            next_at += 0.25
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    await asyncio.gather(*(session(s, 0.25 * i / sessions) for i, s in enumerate(stores)))
    await asyncio.gather(*(s.close() for s in stores))
    return _summary(latencies, seconds, size)


async def _closed(url: str, writers: int, size: int, seconds: float) -> dict[str, Any]:
    stores = await _stores(url, writers)
    payload = os.urandom(size)
    latencies: list[float] = []
    end = time.monotonic() + seconds

    async def writer(store: CheckpointStore) -> None:
        while time.monotonic() < end:
            started = time.perf_counter()
            await store.write(payload)
            latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(writer(s) for s in stores))
    await asyncio.gather(*(s.close() for s in stores))
    return _summary(latencies, seconds, size)


def _fsync_probe(directory: Path, count: int = 300) -> dict[str, float]:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    payload = os.urandom(8192)
    latencies = []
    try:
        for _ in range(count):
            started = time.perf_counter()
            os.write(fd, payload)
            os.fsync(fd)
            latencies.append(time.perf_counter() - started)
    finally:
        os.close(fd)
        path.unlink()
    ms = np.asarray(latencies) * 1000.0
    return {f"p{q}": round(float(np.percentile(ms, q)), 3) for q in (50, 99)}


def run_policy(policy: str, args: argparse.Namespace) -> dict[str, Any]:
    data_dir = Path(args.dir) / policy
    shutil.rmtree(data_dir, ignore_errors=True)
    with EmbeddedRedis(data_dir, appendfsync=policy) as redis:
        paced = asyncio.run(_paced(redis.url, args.sessions, args.bytes, args.seconds))
        closed = asyncio.run(_closed(redis.url, args.writers, args.bytes, args.seconds))
    shutil.rmtree(data_dir, ignore_errors=True)
    return {"paced": paced, "closed": closed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=".pulseline/bench-fsync", help="where the AOFs go (the data dir's disk)")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--sessions", type=int, default=100, help="paced: sessions checkpointing at 4 Hz")
    parser.add_argument("--writers", type=int, default=16, help="closed: concurrent back-to-back writers")
    parser.add_argument("--bytes", type=int, default=8192, help="checkpoint size")
    parser.add_argument("--policies", default="everysec,always")
    parser.add_argument("--report", default=None, help="also write the JSON here")
    args = parser.parse_args()
    result: dict[str, Any] = {
        "config": {k: getattr(args, k) for k in ("seconds", "sessions", "writers", "bytes")},
        "dir": str(Path(args.dir).resolve()),
        "load_avg_before": [round(x, 1) for x in os.getloadavg()],
        "disk_fsync_ms": _fsync_probe(Path(args.dir)),
    }
    for policy in args.policies.split(","):
        result[policy] = run_policy(policy, args)
    result["load_avg_after"] = [round(x, 1) for x in os.getloadavg()]
    text = json.dumps(result, indent=2)
    print(text, flush=True)
    if args.report:
        Path(args.report).write_text(text + "\n")


if __name__ == "__main__":
    main()
