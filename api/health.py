"""Health the way orchestrators read it: ``/livez``, ``/readyz`` and ``/healthz``.

* ``GET /livez`` — the process answers (its event loop runs). Nothing else is checked:
  a liveness probe that failed while Redis is down would restart every edge for nothing.
* ``GET /readyz`` — this edge can serve a class now: Redis answers a ``PING`` within
  ``readiness_timeout_s``, Ray's GCS answers within the same time, and the edge has
  finished starting (its directory of sessions exists). 200 ``{"ok": true, ...}`` or 503
  ``{"ok": false, ...}`` with ``Retry-After``; the body says which check failed.
  ``session_slots`` (total and free, from the GCS) is reported, not required: a cluster
  that scales from zero workers places its first session through the autoscaler.
* ``GET /healthz`` — an alias of ``/readyz`` (so a load balancer that only knows one URL
  stops sending to an edge that cannot serve); use ``/livez`` for liveness probes.

All three are public and cheap: Redis through a client of its own with no retries, the
GCS in a worker thread, at most one check of each in flight, results reused for
``CACHE_S``. A dependency that refuses or errors is not ready at once; one that is only
slow (a check timing out) stays ready while it answered within the last ``GRACE_S``, so a
busy machine does not flap its readiness (a stopped Redis is not-ready after ``GRACE_S``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis.exceptions as redis_errors
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from redis.backoff import NoBackoff
from redis.asyncio.retry import Retry

from storage.redis_url import AsyncRedis, connect
from api.errors import RETRY_AFTER_S
from cluster.settings import Settings

CACHE_S = 0.5
GRACE_S = 5.0


@dataclass
class Check:
    ok: bool
    detail: str
    extra: dict[str, Any] = field(default_factory=dict)


class Readiness:
    """The dependency checks behind ``/readyz``; ``aclose()`` at shutdown."""

    def __init__(self, settings: Settings, started: Callable[[], bool]) -> None:
        self.settings = settings
        self.started = started
        self.timeout_s = settings.readiness_timeout_s
        self._redis: AsyncRedis | None = None
        self._ray_probe: asyncio.Task[dict[str, float]] | None = None
        self._cached: tuple[float, dict[str, Check]] | None = None
        self._answered_at: dict[str, float] = {}

    def _answered(self, name: str, extra: dict[str, Any] | None = None) -> Check:
        self._answered_at[name] = time.monotonic()
        return Check(True, "ok", extra or {})

    def _slow(self, name: str, detail: str) -> Check:
        """A time-out: still ready if it answered within ``GRACE_S`` (a busy, not a dead, dependency)."""
        ago = time.monotonic() - self._answered_at.get(name, float("-inf"))
        if ago <= GRACE_S:
            return Check(True, f"slow: {detail}; answered {ago:.1f} s ago")
        return Check(False, detail)

    def _client(self) -> AsyncRedis:
        if self._redis is None:
            self._redis = connect(
                self.settings.redis_url or "", socket_timeout=self.timeout_s,
                socket_connect_timeout=self.timeout_s, retry=Retry(NoBackoff(), 0),
            )
        return self._redis

    async def check_redis(self) -> Check:
        try:
            await asyncio.wait_for(self._client().ping(), self.timeout_s)
        except (TimeoutError, redis_errors.TimeoutError):
            return self._slow("redis", "no answer in time")
        except Exception as exc:  # refused, reset, an error reply: not ready; the type says enough
            return Check(False, f"unreachable ({type(exc).__name__})")
        return self._answered("redis")

    async def check_ray(self) -> Check:
        import ray

        if not ray.is_initialized():
            return Check(False, "not connected")
        if self._ray_probe is None or self._ray_probe.done():
            self._ray_probe = asyncio.create_task(asyncio.to_thread(_gcs_resources))
        try:  # shield: a slow GCS leaves one probe running, not one per request
            resources = await asyncio.wait_for(asyncio.shield(self._ray_probe), self.timeout_s)
        except TimeoutError:
            return self._slow("ray", "GCS did not answer in time")
        except Exception as exc:
            return Check(False, f"unreachable ({type(exc).__name__})")
        return self._answered("ray", {"session_slots": resources})

    async def checks(self) -> dict[str, Check]:
        now = time.monotonic()
        if self._cached is not None and now - self._cached[0] < CACHE_S:
            return self._cached[1]
        redis_check, ray_check = await asyncio.gather(self.check_redis(), self.check_ray())
        edge = Check(True, "ok") if self.started() else Check(False, "starting")
        result = {"redis": redis_check, "ray": ray_check, "edge": edge}
        self._cached = (time.monotonic(), result)
        return result

    async def aclose(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
        if self._ray_probe is not None and not self._ray_probe.done():
            self._ray_probe.cancel()


def _gcs_resources() -> dict[str, float]:
    import ray

    total = ray.cluster_resources().get("session_slot", 0.0)
    free = ray.available_resources().get("session_slot", 0.0)
    return {"total": float(total), "free": float(free)}


def install(app: FastAPI, readiness: Readiness, sessions: Callable[[], int]) -> None:
    @app.get("/livez")
    async def livez() -> dict[str, Any]:
        return {"ok": True}

    async def ready() -> JSONResponse:
        checks = await readiness.checks()
        ok = all(c.ok for c in checks.values())
        body: dict[str, Any] = {
            "ok": ok,
            "checks": {name: {"ok": c.ok, "detail": c.detail, **c.extra} for name, c in checks.items()},
            "sessions": sessions() if checks["edge"].ok else 0,
        }
        headers = None if ok else {"Retry-After": str(RETRY_AFTER_S)}
        return JSONResponse(body, status_code=200 if ok else 503, headers=headers)

    app.add_api_route("/readyz", ready, methods=["GET"])
    app.add_api_route("/healthz", ready, methods=["GET"], summary="Alias of /readyz")
