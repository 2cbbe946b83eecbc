"""Bring a pulseline stack up: Ray (local or attached), Redis (embedded or attached), edge.

``Stack`` starts only what it was not told to attach to, and stops exactly what it
started, in reverse order, on ``stop()`` (the CLI calls it on Ctrl-C / SIGTERM).
"""

from __future__ import annotations

import logging
import os
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
