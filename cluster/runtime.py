"""Bring a pulseline stack up: Ray (local or attached), Redis (embedded or attached), edge.

``Stack`` starts only what it was not told to attach to, and stops exactly what it
started, in reverse order, on ``stop()`` (the CLI calls it on Ctrl-C / SIGTERM).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

import ray

from cluster.redis_server import EmbeddedRedis
from cluster.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Stack:
    settings: Settings
    redis: EmbeddedRedis | None = None
    started_ray: bool = False
    notes: list[str] = field(default_factory=list)

    def start(self) -> Stack:
        s = self.settings
        if not s.redis_url:
            self.redis = EmbeddedRedis(s.data_dir / "redis").start()
            s.redis_url = self.redis.url
            self.notes.append(f"embedded redis-server pid {self.redis.pid} at {s.redis_url} (AOF in {self.redis.data_dir})")
        else:
            self.notes.append(f"attached to Redis at {s.redis_url}")
        if not ray.is_initialized():
            init_ray(s)
            self.started_ray = not s.ray_address
        self.notes.append(f"Ray: {'attached to ' + s.ray_address if s.ray_address else 'local instance'}")
        return self

    def stop(self) -> None:
        if self.started_ray and ray.is_initialized():
            ray.shutdown()
        if self.redis is not None:
            self.redis.stop()
            self.redis = None


def init_ray(settings: Settings) -> None:
    # Ray must not pick up the coding client's or a parent's Redis/GCS address by accident.
    kwargs: dict[str, Any] = {"namespace": settings.namespace, "log_to_driver": False}
    if settings.ray_address:
        ray.init(address=settings.ray_address, **kwargs)
    else:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(
            address="local",  # always a fresh instance; never join a Ray someone else started
            num_cpus=max(2, os.cpu_count() or 2),
            resources={"session_slot": settings.local_session_slots},
            include_dashboard=False,
            **kwargs,
        )


@dataclass
class EdgeProcesses:
    """Extra ``pulseline edge`` processes next to this one (``pulseline up --edges N``).

    Each attaches to this process's Ray (its GCS address) and Redis, serves on the next
    port (``port + 1``, ``port + 2``, ...) and shares the data dir, so development tokens
    minted by any edge are accepted by all. ``stop()`` terminates them by pid.
    """

    settings: Settings
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, count: int) -> EdgeProcesses:
        s = self.settings
        if s.auth_mode == "development":
            from api.auth import dev_secret

            dev_secret(s)  # create the shared secret once, before several edges race to
        env = dict(os.environ, RAY_ADDRESS=ray.get_runtime_context().gcs_address, REDIS_URL=s.redis_url or "",
                   PULSELINE_NAMESPACE=s.namespace, PULSELINE_PREFIX=s.prefix)
        for i in range(1, count):
            cmd = [sys.executable, "-m", "cluster.cli", "edge", "--host", s.host, "--port", str(s.port + i),
                   "--data-dir", str(s.data_dir)]
            self.procs.append(subprocess.Popen(cmd, env=env))
        return self

    @property
    def urls(self) -> list[str]:
        return [f"http://{self.settings.host}:{self.settings.port + i}" for i in range(1, len(self.procs) + 1)]

    def stop(self, timeout_s: float = 20.0) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.procs.clear()
