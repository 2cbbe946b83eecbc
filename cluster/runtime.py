"""Ray bootstrap: ``init_ray(settings)`` attaches to ``settings.ray_address`` or starts a
fresh local instance tuned for pulseline (no prestarted idle workers). Called by the stack
(``launch/stack.py``) and by anything else that needs Ray in this process."""

from __future__ import annotations

import os
from typing import Any

import ray

from cluster.settings import Settings


def init_ray(settings: Settings) -> None:
    # Ray must not pick up the coding client's or a parent's Redis/GCS address by accident.
    kwargs: dict[str, Any] = {"namespace": settings.namespace, "log_to_driver": False}
    if settings.ray_address:
        ray.init(address=settings.ray_address, **kwargs)
    else:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        # No idle workers kept waiting for tasks that rarely come (one per CPU by default,
        # ~80 MB RSS and ~0.005 cores each while idle); session actors start their own
        # worker processes anyway (scripts/bench_idle.py, docs/benchmarks.md "Idle costs").
        os.environ.setdefault("RAY_enable_worker_prestart", "0")
        os.environ.setdefault("RAY_prestart_worker_first_driver", "0")
        # Ray's log monitor globs the session's log directory every 0.1 s while it holds
        # fewer than this many files (0.0056 -> 0.0020 idle cores with these two: nobody
        # here reads worker logs through the driver, log_to_driver is off); new log files
        # are then found within 5 s.
        os.environ.setdefault("RAY_LOG_MONITOR_MANY_FILES_THRESHOLD", "0")
        os.environ.setdefault("LOG_NAME_UPDATE_INTERVAL_S", "5")
        # The GCS keeps the record of every dead actor (100,000 by default): with a process
        # per class, one per class ever served. Keep the newest 1,000 (the state API's view
        # of dead actors is all that reads them; docs/benchmarks.md "Memory over 200 classes").
        os.environ.setdefault("RAY_maximum_gcs_destroyed_actor_cached_count", "1000")
        # The dashboard agent's reporter reads every worker process's CPU and memory (psutil)
        # every 5 s for Ray's dashboard and node metrics, which pulseline does not use (its
        # own /metrics has what it needs): with a process per class its cost grows with the
        # classes (0.01 cores at 10 classes, 0.02 at 30). Every 30 s instead; Ray's node
        # metrics (``ray_metrics_export_port``) then move in 30 s steps.
        os.environ.setdefault("REPORTER_UPDATE_INTERVAL_MS", "30000")
        ray.init(
            address="local",  # always a fresh instance; never join a Ray someone else started
            num_cpus=max(2, os.cpu_count() or 2),
            resources={"session_slot": settings.local_session_slots},
            include_dashboard=False,
            _metrics_export_port=settings.ray_metrics_export_port or None,
            **kwargs,
        )
