"""What creating class actors costs the process that asks for them (a benchmark, not a test).

    .venv/bin/python scripts/bench_creation_memory.py new 110
    .venv/bin/python scripts/bench_creation_memory.py old 110

Starts a local Ray and an embedded redis-server, then ``N`` times: gets a class actor, calls
it once, kills it — ``new`` through ``SessionDirectory._get_or_create`` (the actor is created
by a ``max_calls`` task, the edge only looks it up by name), ``old`` by creating it from this
process as the edge did before. Prints one JSON object: this process's RSS after 10 and after
``N`` actors, and the growth per actor in between (docs/benchmarks.md, "Memory over 200
classes"). RSS is noisy: compare runs of the same ``N``.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import psutil
import ray

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from actors.session_actor import SessionActor, actor_name  # noqa: E402
from cluster.directory import SessionDirectory  # noqa: E402
from cluster.redis_server import EmbeddedRedis  # noqa: E402
from cluster.settings import Settings  # noqa: E402


def main() -> None:
    mode, n = sys.argv[1], int(sys.argv[2])
    if mode not in ("new", "old") or n <= 10:
        sys.exit("usage: bench_creation_memory.py new|old N (N > 10)")
    redis = EmbeddedRedis(Path(tempfile.mkdtemp()) / "redis").start()
    ray.init(address="local", include_dashboard=False, namespace="creation-memory", log_to_driver=False)
    try:
        settings = Settings(redis_url=redis.url)
        directory = SessionDirectory(None, prefix="cm", namespace="creation-memory",  # type: ignore[arg-type]
                                     actor_settings=settings.actor_settings(), resources={})
        rss: list[float] = []
        for i in range(n):
            sid = f"cm{i}"
            if mode == "old":
                actor = directory._named(SessionActor, actor_name(sid), sid, dict(directory.actor_settings))
            else:
                actor = directory._get_or_create(sid)
            ray.get(actor.info.remote())
            ray.kill(actor, no_restart=True)
            del actor
            if i in (9, n - 1):
                time.sleep(2)
                rss.append(psutil.Process().memory_info().rss / 1024)
        print(json.dumps({"mode": mode, "actors": n, "rss_kib_after_10": rss[0], "rss_kib_after_n": rss[1],
                          "kib_per_actor": round((rss[1] - rss[0]) / (n - 10), 1), "loadavg": os.getloadavg()[0]}))
    finally:
        ray.shutdown()
        redis.stop()


if __name__ == "__main__":
    main()
