"""``EdgeMonitor``: the edge's own health as metrics — event-loop lag and Redis round trips.

Two small loops per edge process, off every data path: one sleeps ``LOOP_PROBE_S`` and
records how late it woke (a loop blocked by a slow callback shows here first), one sends
Redis a ``PING`` every ``REDIS_PROBE_S`` through the edge's own client and records the
round trip, or an error (refused, timed out). Both log and carry on; ``aclose()`` stops them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from api.metrics import LOOP_LAG_SECONDS, REDIS_ERRORS, REDIS_SECONDS
from storage.redis_url import AsyncRedis

log = logging.getLogger(__name__)

LOOP_PROBE_S = 0.25
REDIS_PROBE_S = 1.0


class EdgeMonitor:
    def __init__(self, redis: AsyncRedis, *, redis_timeout_s: float) -> None:
        self.redis = redis
        self.redis_timeout_s = redis_timeout_s
        self.redis_failures = 0
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._loop_lag(), name="monitor:loop"),
                       loop.create_task(self._redis_probe(), name="monitor:redis")]

    async def _loop_lag(self) -> None:
        while True:
            began = time.monotonic()
            await asyncio.sleep(LOOP_PROBE_S)
            LOOP_LAG_SECONDS.observe(max(0.0, time.monotonic() - began - LOOP_PROBE_S))

    async def _redis_probe(self) -> None:
        while True:
            began = time.perf_counter()
            try:
                await asyncio.wait_for(self.redis.ping(), self.redis_timeout_s)
            except Exception as exc:  # refused, reset, timed out: counted, logged once per outage
                REDIS_ERRORS.inc()
                self.redis_failures += 1
                if self.redis_failures == 1:
                    log.warning("redis probe failed: %s", type(exc).__name__)
            else:
                REDIS_SECONDS.observe(time.perf_counter() - began)
                if self.redis_failures:
                    log.info("redis answers again after %d failed probe(s)", self.redis_failures)
                self.redis_failures = 0
            await asyncio.sleep(REDIS_PROBE_S)

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
