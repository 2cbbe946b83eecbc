"""What creating class actors costs the process that asks for them (a benchmark, not a test).

    .venv/bin/python scripts/bench_creation_memory.py edge 110
    .venv/bin/python scripts/bench_creation_memory.py direct 110
    .venv/bin/python scripts/bench_creation_memory.py task 110

Starts a local Ray and an embedded redis-server, then ``N`` times: gets a class actor, calls
it once, kills it — ``edge`` as the edge does (``SessionDirectory._get_or_create``: created
by its creator actor, ``cluster.creator``; this process only looks it up by name),
``direct`` created from this process (what the edge did before 7 Dec 2026), ``task`` created
by a ``max_calls=25`` task defined here (tried and not adopted, see the docs). Prints one
JSON object: this process's RSS after 10 and after
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
from typing import Any

import psutil
import ray

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from actors.session_actor import SessionActor, actor_name  # noqa: E402
from cluster.directory import SessionDirectory  # noqa: E402
from cluster.redis_server import EmbeddedRedis  # noqa: E402
from cluster.settings import Settings  # noqa: E402


@ray.remote(num_cpus=0, max_calls=25)
def _create_detached(options: dict[str, Any], args: tuple[Any, ...]) -> None:
    SessionActor.options(**options).remote(*args)  # type: ignore[attr-defined]


def main() -> None:
    mode, n = sys.argv[1], int(sys.argv[2])
    if mode not in ("edge", "direct", "task") or n <= 10:
        sys.exit("usage: bench_creation_memory.py edge|direct|task N (N > 10)")
    redis = EmbeddedRedis(Path(tempfile.mkdtemp()) / "redis").start()
    ray.init(address="local", include_dashboard=False, namespace="creation-memory", log_to_driver=False)
    settings = Settings(redis_url=redis.url)
    directory = SessionDirectory(None, prefix="cm", namespace="creation-memory",  # type: ignore[arg-type]
                                 actor_settings=settings.actor_settings(), resources={})
    try:
        rss: list[float] = []
        for i in range(n):
            sid = f"cm{i}"
            if mode == "edge":
                actor = directory._get_or_create(sid)
            elif mode == "direct":
                actor = SessionActor.options(**directory._options(actor_name(sid))).remote(  # type: ignore[attr-defined]
                    sid, dict(directory.actor_settings))
            else:
                options = {"name": actor_name(sid), "namespace": "creation-memory", "lifetime": "detached",
                           "get_if_exists": True}
                ray.get(_create_detached.remote(options, (sid, dict(directory.actor_settings))))
                actor = ray.get_actor(actor_name(sid), namespace="creation-memory")
            ray.get(actor.info.remote())
            ray.kill(actor, no_restart=True)
            del actor
            if i in (9, n - 1):
                time.sleep(2)
                rss.append(psutil.Process().memory_info().rss / 1024)
        print(json.dumps({"mode": mode, "actors": n, "rss_kib_after_10": rss[0], "rss_kib_after_n": rss[1],
                          "kib_per_actor": round((rss[1] - rss[0]) / (n - 10), 1), "loadavg": os.getloadavg()[0]}))
    finally:
        directory.close()
        ray.shutdown()
        redis.stop()


if __name__ == "__main__":
    main()
