"""CPU per tick of the session data path, Ray call vs direct stream (a benchmark, not a test).

Run: ``.venv/bin/python scripts/bench_tick_path.py [--ticks 3000] [--riders 100] [--per-tick 10]``

Starts a local Ray and an embedded redis-server, creates one session actor with ``--riders``
participants, then sends ``--ticks`` ticks of ``--per-tick`` samples each (a 100-rider class
at 1 Hz sends 10 samples per 10 Hz tick), every tick asking for the board and the durable
seqs of its devices, exactly as the edge's pump does — once through ``RayTicks`` (one Ray
call per tick, ``PULSELINE_SESSION_TRANSPORT=ray``) and once through ``StreamTicks`` (the
default), alternated ``--rounds`` times. For each it reports the CPU time per tick of this
process (the edge side: building the request, the transport, decoding the result,
including Ray's driver threads) and of the actor's process (psutil), and the wall time per
tick. CPU time is far less sensitive to a busy machine than latency, but not immune: note
the load average printed with each run.

``--legacy`` instead calls ``SessionActor.tick(batches=...)`` with plain rows, the Ray call
every tick made before the stream (and before columns): copied into a checkout of an older
commit (``scripts/``), it measures that commit's path the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cluster.directory import SessionDirectory  # noqa: E402
from cluster.redis_server import EmbeddedRedis  # noqa: E402


class LegacyTicks:
    """``SessionActor.tick(batches=..., want_durable=..., known_version=...)`` with rows."""

    def __init__(self, directory: SessionDirectory) -> None:
        self.directory = directory

    async def tick(self, request: Any) -> Any:
        handle = await self.directory.handle(request["session"])
        result = await handle.tick.remote(batches=request["batches"], want_durable=request["want"],
                                          known_version=request["known"])
        return type("Result", (), {"version": result["version"]})


def _batches(ticks: int, riders: int, per_tick: int, first_seq: dict[int, int]) -> list[list[Any]]:
    out = []
    k = 0
    for _ in range(ticks):
        batch: list[Any] = []
        for _ in range(per_tick):
            i = k % riders
            k += 1
            seq = first_seq.get(i, 0) + 1
            first_seq[i] = seq
            batch.append((f"d{i}", f"p{i}", [[seq, 1.7e9 + seq, 120, 150.0 + i, 90, 8.0, 5.0 * seq]], []))
        out.append(batch)
    return out


def _request(session: str, batch: list[Any], known: int, legacy: bool) -> Any:
    want = [b[0] for b in batch]
    if legacy:
        return {"session": session, "batches": batch, "want": want, "known": known}
    from actors.wire import TickRequest

    return TickRequest.from_batches(session, batch, want_durable=want, known_version=known)


async def _drive(channel: Any, session: str, batches: list[list[Any]], actor: psutil.Process,
                 legacy: bool) -> dict[str, float]:
    """Time the ticks as the pump makes them: the request is built per tick (edge CPU)."""
    known = -1
    await channel.tick(_request(session, batches[0], known, legacy))  # connect / warm up
    me = psutil.Process()
    edge0, actor0, wall0 = me.cpu_times(), actor.cpu_times(), time.perf_counter()
    for batch in batches[1:]:
        result = await channel.tick(_request(session, batch, known, legacy))
        known = result.version
    wall = time.perf_counter() - wall0
    edge1, actor1 = me.cpu_times(), actor.cpu_times()
    n = len(batches) - 1
    return {
        "edge_cpu_us_per_tick": round(((edge1.user + edge1.system) - (edge0.user + edge0.system)) / n * 1e6, 1),
        "actor_cpu_us_per_tick": round(((actor1.user + actor1.system) - (actor0.user + actor0.system)) / n * 1e6, 1),
        "wall_us_per_tick": round(wall / n * 1e6, 1),
        "loadavg_1m": os.getloadavg()[0],
    }


async def _bench(args: argparse.Namespace, redis_url: str) -> dict[str, Any]:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_url)
    directory = SessionDirectory(client, prefix="bt", namespace="bench-tick",
                                 actor_settings={"redis_url": redis_url, "prefix": "bt"})
    session = f"tick-{os.getpid()}"
    await directory.create(session)
    handle = await directory.handle(session)
    info = await handle.info.remote()
    actor = psutil.Process(info["pid"])
    seqs: dict[int, int] = {}
    channels: dict[str, Any]
    if args.legacy:
        channels = {"legacy": LegacyTicks(directory)}
    else:
        from api.session_stream import RayTicks, StreamTicks

        channels = {"ray": RayTicks(directory), "stream": StreamTicks(directory)}
    first = next(iter(channels.values()))
    await first.tick(_request(session, _batches(1, args.riders, args.riders, seqs)[0], -1, args.legacy))  # all join
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in channels}
    for _ in range(args.rounds):
        for name, channel in channels.items():
            batches = _batches(args.ticks, args.riders, args.per_tick, seqs)
            runs[name].append(await _drive(channel, session, batches, actor, args.legacy))
    for channel in channels.values():
        if hasattr(channel, "close"):
            await channel.close()
    directory.kill(session)
    await client.aclose()
    return {
        "config": {"ticks": args.ticks, "riders": args.riders, "per_tick": args.per_tick, "rounds": args.rounds,
                   "legacy": args.legacy},
        "runs": runs,
        "median": {name: {key: sorted(r[key] for r in rs)[len(rs) // 2] for key in rs[0]} for name, rs in runs.items()},
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ticks", type=int, default=3000)
    p.add_argument("--riders", type=int, default=100)
    p.add_argument("--per-tick", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--legacy", action="store_true", help="the pre-stream Ray call with rows (older commits)")
    args = p.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    with tempfile.TemporaryDirectory(prefix="bench-tick-") as tmp:
        redis_server = EmbeddedRedis(Path(tmp) / "redis").start()
        ray.init(address="local", num_cpus=2, resources={"session_slot": 8}, include_dashboard=False,
                 log_to_driver=False, namespace="bench-tick")
        try:
            result = asyncio.run(_bench(args, redis_server.url))
        finally:
            ray.shutdown()
            redis_server.stop()
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
