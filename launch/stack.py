"""Bring a pulseline stack up: Ray (local or attached), Redis (embedded or attached), edge.

``Stack`` starts only what it was not told to attach to, and stops exactly what it
started, in reverse order, on ``stop()`` (the CLI calls it on Ctrl-C / SIGTERM).
Ray and Redis themselves are bootstrapped by ``cluster`` (``cluster.runtime.init_ray``,
``cluster.redis_server``); this module is where processes start (``launch``, the top of the
layout: it may import the edge). ``supervise(stack, edges)`` watches what was started (the embedded redis-server, the extra
edge processes) and restarts it when it dies (``cluster.supervisor``); an external Redis
is only watched.
"""

from __future__ import annotations

import http.client
import logging
import os
import subprocess
import sys
from dataclasses import dataclass, field

import ray

from cluster.redis_server import EmbeddedRedis
from cluster.runtime import init_ray
from cluster.settings import Settings
from cluster.supervisor import ExternalRedis, Liveness, Supervisor

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
            self.redis = EmbeddedRedis(s.data_dir / "redis", appendfsync=s.redis_appendfsync).start()
            s.redis_url = self.redis.url
            self.notes.append(f"embedded redis-server pid {self.redis.pid} at {s.redis_url} "
                              f"(AOF in {self.redis.data_dir}, appendfsync {s.redis_appendfsync})")
        else:
            self.notes.append(f"attached to Redis at {s.redis_url}")
        if not ray.is_initialized():
            try:
                init_ray(s)
            except BaseException:  # Ray refused (or SIGTERM came): our redis-server must not outlive us
                self.stop()
                raise
            self.started_ray = not s.ray_address
        self.notes.append(f"Ray: {'attached to ' + s.ray_address if s.ray_address else 'local instance'}")
        return self

    def stop(self) -> None:
        if self.started_ray and ray.is_initialized():
            ray.shutdown()
        if self.redis is not None:
            self.redis.stop()
            self.redis = None


@dataclass
class EdgeProcess:
    """One ``pulseline edge`` child process; ``start()`` again after it died (``Supervised``)."""

    cmd: list[str]
    env: dict[str, str]
    # where it answers ``GET /livez`` (host, port), for the supervisor's liveness probe
    livez: tuple[str, int] | None = None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self) -> EdgeProcess:
        self.proc = subprocess.Popen(self.cmd, env=self.env)
        return self

    def exit_code(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def answers(self, timeout_s: float) -> bool | None:
        """Any HTTP answer to ``GET /livez`` within ``timeout_s`` (None: no address to probe)."""
        if self.livez is None:
            return None
        conn = http.client.HTTPConnection(*self.livez, timeout=timeout_s)
        try:
            conn.request("GET", "/livez")
            conn.getresponse().read()
        except (OSError, http.client.HTTPException):
            return False
        finally:
            conn.close()
        return True

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()

    def stop(self, timeout_s: float = 20.0) -> None:
        proc = self.proc
        if proc is None:
            return
        self.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@dataclass
class EdgeProcesses:
    """Extra ``pulseline edge`` processes next to this one (``pulseline up --edges N``).

    Each attaches to this process's Ray (its GCS address) and Redis, serves on the next
    port (``port + 1``, ``port + 2``, ...) and shares the data dir, so development tokens
    minted by any edge are accepted by all. ``stop()`` terminates them by pid.
    """

    settings: Settings
    procs: list[EdgeProcess] = field(default_factory=list)

    def start(self, count: int) -> EdgeProcesses:
        s = self.settings
        if s.auth_mode == "development":
            from api.auth import dev_secret

            dev_secret(s)  # create the shared secret once, before several edges race to
        env = dict(os.environ, RAY_ADDRESS=ray.get_runtime_context().gcs_address, REDIS_URL=s.redis_url or "",
                   PULSELINE_NAMESPACE=s.namespace, PULSELINE_PREFIX=s.prefix)
        for i in range(1, count):
            env["PULSELINE_METRICS_PORT"] = str(s.metrics_port + i if s.metrics_port else 0)
            cmd = [sys.executable, "-m", "launch.cli", "edge", "--host", s.host, "--port", str(s.port + i),
                   "--data-dir", str(s.data_dir)]
            self.procs.append(EdgeProcess(cmd, dict(env), livez=(_loopback(s.host), s.port + i)).start())
        return self

    @property
    def urls(self) -> list[str]:
        return [f"http://{self.settings.host}:{self.settings.port + i}" for i in range(1, len(self.procs) + 1)]

    def stop(self, timeout_s: float = 20.0) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            proc.stop(timeout_s)
        self.procs.clear()


def _loopback(host: str) -> str:
    """Where to reach a server bound to ``host`` from this machine."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


def supervise(stack: Stack, edges: EdgeProcesses) -> Supervisor:
    """A running ``Supervisor`` over what ``stack`` and ``edges`` started (state file in the
    data dir); stop it before stopping them."""
    s = stack.settings
    s.data_dir.mkdir(parents=True, exist_ok=True)
    external = ExternalRedis(s.redis_url) if stack.redis is None and s.redis_url else None
    info = {"ray_address": ray.get_runtime_context().gcs_address, "edges": [f"http://{s.host}:{s.port}", *edges.urls]}
    if stack.redis is not None:  # (for local tools: `pulseline results export` finds it here; loopback, no password)
        info["redis_url"] = stack.redis.url
    liveness = Liveness(period_s=s.liveness_period_s, timeout_s=s.liveness_timeout_s, failures=s.liveness_failures)
    supervisor = Supervisor(backoff_min_s=s.restart_backoff_min_s, backoff_max_s=s.restart_backoff_max_s,
                            state_file=s.data_dir / "supervisor.json", external=external, liveness=liveness, info=info)
    if stack.redis is not None:
        supervisor.watch("redis-server", stack.redis)
    for i, proc in enumerate(edges.procs, start=1):
        supervisor.watch(f"edge-{s.port + i}", proc)
    return supervisor.start()
