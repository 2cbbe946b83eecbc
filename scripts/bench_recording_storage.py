"""What on-demand replay's recording costs to keep: bytes per rider-hour (issue 16).

Builds a class's per-second recording (``actors.recording.Recording``) of ``--riders`` riders
over ``--seconds`` seconds of simulated riding (power, heart rate, cadence, speed, distance
every second, as a phone with a power meter sends), encodes its chunks as the class writes
them (``encode_chunk``), stores them in a real redis-server (the embedded binary) as the
class's ``rec`` hash, and prints JSON: the encoded bytes, Redis's ``MEMORY USAGE`` of the
hash, and both per rider-hour; plus the ghost matrix an on-demand class builds from it
(``actors.replay.Replay``: float64 per ghost-second) and how long building it took.

    PYTHONPATH=. .venv/bin/python scripts/bench_recording_storage.py --riders 50 --seconds 2700
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np
import redis

from actors.recording import Recording
from actors.replay import Replay
from cluster.redis_server import EmbeddedRedis


def recording(riders: int, seconds: int, seed: int = 16) -> Recording:
    rng = np.random.default_rng(seed)
    rec = Recording()
    t0 = 1_765_000_000.0
    for start in range(0, seconds, 60):  # a minute per "tick batch" (the layout is the same)
        span = min(60, seconds - start)
        slot = np.repeat(np.arange(riders), span)
        ts = t0 + np.tile(np.arange(start, start + span, dtype=float), riders) + 0.3
        values = np.empty((len(slot), 6))
        values[:, 0] = ts
        values[:, 1] = rng.normal(145, 15, len(slot)).clip(60, 200)
        values[:, 2] = rng.normal(210, 60, len(slot)).clip(0, 900)
        values[:, 3] = rng.normal(88, 8, len(slot)).clip(40, 130)
        values[:, 4] = rng.normal(9.5, 1.5, len(slot)).clip(0, 20)
        values[:, 5] = (ts - t0) * 9.5
        rec.add(slot, values)
    return rec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--riders", type=int, default=50)
    parser.add_argument("--seconds", type=int, default=2700)
    args = parser.parse_args()
    rec = recording(args.riders, args.seconds)
    chunks = {str(n): rec.encode_chunk(n) for n in sorted(rec.chunks)}
    encoded = sum(len(v) for v in chunks.values())
    rider_hours = args.riders * args.seconds / 3600.0
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedRedis(tmp).start()
        try:
            client = redis.Redis.from_url(server.url)
            client.hset("bench:rec", mapping=chunks)  # type: ignore[arg-type]
            in_redis = int(client.memory_usage("bench:rec", samples=0) or 0)
            client.close()
        finally:
            server.stop()
    began = time.perf_counter()
    replay = Replay.of_recording("bench", [f"r{i}" for i in range(args.riders)], rec, live_at=None)
    build_s = time.perf_counter() - began
    print(json.dumps({
        "riders": args.riders, "seconds": args.seconds, "chunks": len(chunks),
        "encoded_bytes": encoded, "redis_memory_bytes": in_redis,
        "encoded_bytes_per_rider_hour": round(encoded / rider_hours),
        "redis_bytes_per_rider_hour": round(in_redis / rider_hours),
        "raw_bytes_per_rider_second": 10,
        "ghost_matrix_bytes": int(replay.kj.nbytes), "ghost_build_ms": round(build_s * 1000, 1),
    }, indent=2))


if __name__ == "__main__":
    main()
