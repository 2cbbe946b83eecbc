"""Leaderboards vs Redis sorted sets, same machine, same run (a benchmark, not a test).

Run: ``make bench-leaderboard`` or
``.venv/bin/python scripts/bench_leaderboard.py [--sizes 1000000,10000000] [--skip-10m]
[--shards 2] [--batch 20000] [--report bench-leaderboard.json]``

Starts its own local Ray (``resources={"session_slot": 64}``) and two embedded
redis-servers (one for the shards' logs and snapshots, one holding the sorted set, so that
memory is measured apart). For every size it loads N entries, then measures, for pulseline
through ``leaderboards.router.Leaderboards`` (Ray calls included) and for Redis through
redis-py (ZADD / ZREVRANK / ZREVRANGE, pipelined and not): batched updates/s (as
``WriteBatch`` columns and as ``Write`` rows), exact-rank queries single (exact now in two
rounds, and in one call from the peer replicas, at most ``--max-stale-ms`` old) and batched,
top-10 and around-me latency p50/p99, memory per entry. Prints one JSON document with the
ratios (pulseline / Redis; > 1 means pulseline is faster).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from leaderboards.shard import LeaderboardSpec, Write, WriteBatch  # noqa: E402
from leaderboards.router import Leaderboards  # noqa: E402
from cluster.redis_server import EmbeddedRedis  # noqa: E402

T0 = 1.7e9
ZKEY = "bench:zset"


def user(i: int) -> str:
    return f"user-{i:09d}"


def percentiles(samples_s: list[float]) -> dict[str, float]:
    ms = np.array(samples_s) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "per_s": float(len(ms) / max(ms.sum() / 1e3, 1e-9))}


async def timed_each(n: int, call: Callable[[int], Awaitable[Any]]) -> dict[str, float]:
    samples = []
    for i in range(n):
        start = time.perf_counter()
        await call(i)
        samples.append(time.perf_counter() - start)
    return percentiles(samples)


def timed_each_sync(n: int, call: Callable[[int], Any]) -> dict[str, float]:
    samples = []
    for i in range(n):
        start = time.perf_counter()
        call(i)
        samples.append(time.perf_counter() - start)
    return percentiles(samples)


# -- pulseline ---------------------------------------------------------------------------


async def bench_pulseline(lb: Leaderboards, n: int, args: argparse.Namespace, rng: np.random.Generator) -> dict[str, Any]:
    name = f"bench{n}"
    await lb.create(LeaderboardSpec(name, "score", operator="latest", shard_count=args.shards))
    scores = rng.integers(0, 1_000_000, n).astype(float)
    out: dict[str, Any] = {"shards": args.shards}

    async def load(start: int, stop: int) -> None:
        users = [user(i) for i in range(start, stop)]
        await lb.write(name, WriteBatch.columns(users, scores[start:stop], T0 + np.arange(start, stop), source="s"))

    started = time.perf_counter()
    inflight = max(2, args.shards)
    for base in range(0, n, args.batch * inflight):
        await asyncio.gather(*(
            load(b, min(n, b + args.batch)) for b in range(base, min(n, base + args.batch * inflight), args.batch)
        ))
    out["load_per_s"] = n / (time.perf_counter() - started)
    picks = rng.choice(n, args.updates, replace=False)
    new_scores = scores.copy()
    new_scores[picks] += rng.integers(1, 1000, args.updates)

    async def update(chunk: np.ndarray, rows: bool) -> None:
        at = T0 + 1e6 + chunk + (1e7 if rows else 0)
        if rows:  # one Write NamedTuple per update: the convenient shape, and slower
            await lb.write(name, [Write(user(int(i)), "s", float(new_scores[i]), float(t), None) for i, t in zip(chunk, at)])
        else:
            await lb.write(name, WriteBatch.columns([user(int(i)) for i in chunk], new_scores[chunk], at, source="s"))

    for key, rows in (("updates_batched_per_s", False), ("updates_rows_batched_per_s", True)):
        started = time.perf_counter()
        for base in range(0, args.updates, args.batch * inflight):
            stop = min(args.updates, base + args.batch * inflight)
            await asyncio.gather(*(update(picks[b : min(stop, b + args.batch)], rows) for b in range(base, stop, args.batch)))
        out[key] = args.updates / (time.perf_counter() - started)
    probe = rng.choice(n, args.queries)
    out["rank_single"] = await timed_each(args.queries, lambda i: lb.rank(name, user(int(probe[i]))))
    stale: list[float] = []

    async def fast_rank(i: int) -> None:
        got = await lb.rank(name, user(int(probe[i])), max_stale_ms=args.max_stale_ms)
        stale.append(-1.0 if got is None or got.stale_ms is None else got.stale_ms)

    await settle_replicas(lb, name)
    out["rank_single_one_call"] = await timed_each(args.queries, fast_rank)
    out["rank_single_one_call"]["max_stale_ms"] = args.max_stale_ms
    out["rank_single_one_call"]["answered_by_replicas"] = sum(s >= 0 for s in stale) / len(stale)
    out["rank_single_one_call"]["stale_ms_p50"] = float(np.percentile([s for s in stale if s >= 0] or [0], 50))
    batch_users = [user(int(i)) for i in rng.choice(n, args.rank_batch)]
    started = time.perf_counter()
    for _ in range(args.rank_batches):
        ranks = await lb.ranks(name, batch_users)
    out["rank_batched_per_s"] = args.rank_batch * args.rank_batches / (time.perf_counter() - started)
    assert all(r is not None for r in ranks)
    out["top10"] = await timed_each(args.queries // 2, lambda i: lb.top(name, 10))
    out["around5"] = await timed_each(args.queries // 2, lambda i: lb.around(name, user(int(probe[i])), 5))
    memory = await lb.memory(name)
    out["memory_per_entry_b"] = sum(m["array_bytes"] + m["python_bytes"] + m["replica_bytes"] for m in memory) / n
    out["memory_per_entry_without_replicas_b"] = sum(m["array_bytes"] + m["python_bytes"] for m in memory) / n
    out["rss_per_entry_b"] = sum(m["rss_bytes"] for m in memory) / n
    out["shard_infos"] = await lb.shard_infos(name)
    await lb.drop(name)
    return out


async def settle_replicas(lb: Leaderboards, name: str, timeout_s: float = 120.0) -> None:
    """Wait until every shard's peer replica is synced (after a load, the first snapshots)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        infos = await lb.shard_infos(name)
        if all(i["replica"] is None or i["replica"]["age_s"] is not None for i in infos):
            return
        await asyncio.sleep(0.5)


# -- Redis sorted set --------------------------------------------------------------------


def bench_redis(client: redis.Redis, n: int, args: argparse.Namespace, rng: np.random.Generator) -> dict[str, Any]:
    client.unlink(ZKEY)  # UNLINK: freeing 10M members must not block the server
    base_memory = int(client.info("memory")["used_memory"])
    scores = rng.integers(0, 1_000_000, n).astype(float)
    out: dict[str, Any] = {}
    started = time.perf_counter()
    pipe = client.pipeline(transaction=False)
    for b in range(0, n, args.batch):
        pipe.zadd(ZKEY, {user(i): float(scores[i]) for i in range(b, min(n, b + args.batch))})
        if (b // args.batch) % 4 == 3:
            pipe.execute()
    pipe.execute()
    out["load_per_s"] = n / (time.perf_counter() - started)
    out["memory_per_entry_b"] = (int(client.info("memory")["used_memory"]) - base_memory) / n
    picks = rng.choice(n, args.updates, replace=False)
    started = time.perf_counter()
    for b in range(0, args.updates, args.batch):
        pipe = client.pipeline(transaction=False)
        for i in picks[b : b + args.batch]:
            pipe.zadd(ZKEY, {user(int(i)): float(scores[i] + 1)})
        pipe.execute()
    out["updates_pipelined_per_s"] = args.updates / (time.perf_counter() - started)
    started = time.perf_counter()
    for b in range(0, args.updates, args.batch):
        client.zadd(ZKEY, {user(int(i)): float(scores[i] + 2) for i in picks[b : b + args.batch]})
    out["updates_multi_member_zadd_per_s"] = args.updates / (time.perf_counter() - started)
    single = picks[: args.queries]
    out["updates_single"] = timed_each_sync(args.queries, lambda i: client.zadd(ZKEY, {user(int(single[i])): 5.0}))
    probe = rng.choice(n, args.queries)
    out["rank_single"] = timed_each_sync(args.queries, lambda i: client.zrevrank(ZKEY, user(int(probe[i]))))
    batch_users = [user(int(i)) for i in rng.choice(n, args.rank_batch)]
    started = time.perf_counter()
    for _ in range(args.rank_batches):
        pipe = client.pipeline(transaction=False)
        for u in batch_users:
            pipe.zrevrank(ZKEY, u)
            pipe.zscore(ZKEY, u)
        pipe.execute()
    out["rank_pipelined_per_s"] = args.rank_batch * args.rank_batches / (time.perf_counter() - started)
    out["top10"] = timed_each_sync(args.queries // 2, lambda i: client.zrevrange(ZKEY, 0, 9, withscores=True))

    def around(i: int) -> Any:
        rank = client.zrevrank(ZKEY, user(int(probe[i])))
        return client.zrevrange(ZKEY, max(0, rank - 5), rank + 5, withscores=True)

    out["around5"] = timed_each_sync(args.queries // 2, around)
    client.unlink(ZKEY)
    return out


def ratios(p: dict[str, Any], r: dict[str, Any]) -> dict[str, float]:
    return {
        "updates_batched_vs_redis_pipelined": p["updates_batched_per_s"] / r["updates_pipelined_per_s"],
        "updates_batched_vs_redis_multi_member_zadd": p["updates_batched_per_s"] / r["updates_multi_member_zadd_per_s"],
        "updates_rows_batched_vs_redis_pipelined": p["updates_rows_batched_per_s"] / r["updates_pipelined_per_s"],
        "load_vs_redis": p["load_per_s"] / r["load_per_s"],
        "rank_batched_vs_redis_pipelined": p["rank_batched_per_s"] / r["rank_pipelined_per_s"],
        "rank_single_p99_redis_over_pulseline": r["rank_single"]["p99_ms"] / p["rank_single"]["p99_ms"],
        "rank_single_one_call_p99_redis_over_pulseline": r["rank_single"]["p99_ms"] / p["rank_single_one_call"]["p99_ms"],
        "top10_p99_redis_over_pulseline": r["top10"]["p99_ms"] / p["top10"]["p99_ms"],
        "around5_p99_redis_over_pulseline": r["around5"]["p99_ms"] / p["around5"]["p99_ms"],
        "memory_per_entry_pulseline_over_redis": p["memory_per_entry_b"] / r["memory_per_entry_b"],
    }


async def run(args: argparse.Namespace, sizes: list[int], lb_redis: EmbeddedRedis, zset: redis.Redis) -> list[dict[str, Any]]:
    lb = Leaderboards.connect(lb_redis.url, prefix="bench", namespace="bench")
    results = []
    try:
        for n in sizes:
            rng = np.random.default_rng(n)
            started = time.perf_counter()
            p = await bench_pulseline(lb, n, args, rng)
            print(json.dumps({"entries": n, "pulseline": p}), file=sys.stderr, flush=True)
            r = await asyncio.to_thread(bench_redis, zset, n, args, np.random.default_rng(n))
            print(json.dumps({"entries": n, "redis_zset": r}), file=sys.stderr, flush=True)
            results.append({"entries": n, "pulseline": p, "redis_zset": r, "ratios": ratios(p, r),
                            "seconds": time.perf_counter() - started})
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    finally:
        await lb.aclose()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000000,10000000")
    parser.add_argument("--skip-10m", action="store_true", help="drop sizes of 10M and more")
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--batch", type=int, default=20_000)
    parser.add_argument("--updates", type=int, default=200_000)
    parser.add_argument("--queries", type=int, default=1_000)
    parser.add_argument("--rank-batch", type=int, default=10_000)
    parser.add_argument("--rank-batches", type=int, default=5)
    parser.add_argument("--max-stale-ms", type=float, default=1000.0,
                        help="one-call ranks from the peer replicas accept answers this old")
    parser.add_argument("--report", default="bench-leaderboard.json")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    if args.skip_10m:
        sizes = [s for s in sizes if s < 10_000_000]
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    tmp = Path(tempfile.mkdtemp(prefix="bench-lb-"))
    lb_redis = EmbeddedRedis(tmp / "shards").start()
    zset_redis = EmbeddedRedis(tmp / "zset").start()
    ray.init(address="local", num_cpus=2, resources={"session_slot": 64}, namespace="bench",
             include_dashboard=False, log_to_driver=False)
    try:
        zset = redis.Redis.from_url(zset_redis.url, socket_timeout=600)
        results = asyncio.run(run(args, sizes, lb_redis, zset))
        report = {"machine": {"cpus": os.cpu_count()}, "args": vars(args), "results": results}
        Path(args.report).write_text(json.dumps(report, indent=2))
        print(json.dumps(report, indent=2))
    finally:
        ray.shutdown()
        zset_redis.stop()
        lb_redis.stop()


if __name__ == "__main__":
    main()
