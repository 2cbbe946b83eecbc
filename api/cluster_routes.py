"""Cluster routes of the edge: the operator view, pre-scaling and passivation.

``install(app)`` (called by ``api.app.create_app``) adds

* ``GET /v1/cluster/status`` — ``cluster.status.cluster_status`` plus this edge's
  scheduled classes and pre-scale request;
* ``POST /v1/sessions/{id}/schedule`` ``{start_at, expected_participants}`` — book a class
  for pre-scaling (``cluster.prescale``). Records the session if it does not exist yet but
  does *not* start its actor: that happens at the start (``POST /v1/sessions`` or the first
  device), on capacity the pre-scale brought up. 202 with the slots and request times.
* ``POST /v1/sessions/{id}/passivate`` — checkpoint and end the session's actor
  (``cluster.placement.passivate``); the next call recreates it from Redis.

All three need an operator token. And, for the app's lifetime, two loops: the ``Prescaler`` and the ``Passivator`` (ended
sessions idle on this edge). Their knobs are ``ClusterPolicySettings`` (``PULSELINE_*``
environment variables, read when the app starts, or ``app.state.cluster_settings``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from api.edge import SESSION_ID
from api.errors import BadRequest
from api.scopes import operator
from cluster.placement import Passivator, held_slots, passivate
from cluster.prescale import PrescaleBook, PrescalePolicy, Prescaler, ScheduledClass, slots_for
from cluster.status import cluster_status

log = logging.getLogger(__name__)


class ClusterPolicySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PULSELINE_", extra="ignore")

    prescale_lead_time_s: float = 300.0
    prescale_release_after_s: float = 60.0
    participants_per_slot: int = 1000
    prescale_interval_s: float = 1.0
    passivate_idle_s: float = 60.0
    passivate_interval_s: float = 5.0

    def policy(self) -> PrescalePolicy:
        return PrescalePolicy(
            lead_time_s=self.prescale_lead_time_s,
            release_after_s=self.prescale_release_after_s,
            participants_per_slot=self.participants_per_slot,
            interval_s=self.prescale_interval_s,
        )


class ScheduleRequest(BaseModel):
    start_at: float = Field(description="unix time (s) the class starts")
    expected_participants: int = Field(ge=0, le=1_000_000)


class ClusterLoops:
    """The edge's cluster loops and their state (``app.state.cluster``)."""

    def __init__(self, edge: Any, settings: ClusterPolicySettings) -> None:
        self.edge = edge
        self.settings = settings
        namespace = edge.directory.namespace
        self.book = PrescaleBook(edge.directory.redis, prefix=edge.directory.prefix)
        self.prescaler = Prescaler(
            self.book,
            settings.policy(),
            used_slots=_used_slots,
            held=lambda sid, shards: held_slots(sid, shards, namespace),
            shards=edge.directory.shards_of,
        )
        self.passivator = Passivator(
            edge.directory, self._candidates, idle_s=settings.passivate_idle_s, interval_s=settings.passivate_interval_s,
            on_passivated=self._release,
        )
        self.released = 0  # pumps of passivated sessions released by this edge
        self.tasks: list[asyncio.Task[None]] = []

    def _candidates(self) -> Iterator[tuple[str, str | None, bool]]:
        now = time.time()
        for sid, pump in list(self.edge.pumps.items()):
            board = pump.board or {}
            yield sid, _phase_by(board, now), pump.idle

    async def book_class(self, session_id: str, start_at: float, expected_participants: int) -> dict[str, Any]:
        """Book a scheduled class for pre-scaling; what was booked and when it is requested."""
        policy = self.prescaler.policy
        slots = max(slots_for(expected_participants, policy.participants_per_slot),
                    await self.edge.directory.shards_of(session_id))  # (a slot per class shard)
        cls = ScheduledClass(session_id, start_at, expected_participants, slots)
        await self.book.put(cls)
        return {"session": session_id, "start_at": cls.start_at, "slots": cls.slots,
                "requested_from": cls.requested_from(policy), "released_at": cls.released_at(policy)}

    async def _release(self, session_id: str) -> None:
        """A passivated session's pump goes, so an edge's memory does not grow with every class
        it ever served; a device or viewer that comes back later gets a fresh pump."""
        pump = self.edge.pumps.get(session_id)
        if pump is None or not pump.idle:
            return  # someone came back while it was being passivated: keep serving
        del self.edge.pumps[session_id]
        if (pump.board or {}).get("phase") != "ended":  # ended by its plan with nobody attached
            await self.edge.record_phase(session_id, "ended")
        self.edge.forget_session(session_id)  # its handle, that it exists, its roster: re-read on demand
        self.passivator.passivated.discard(session_id)
        self.released += 1
        await pump.stop()

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.tasks = [
            loop.create_task(self.prescaler.run(), name="prescaler"),
            loop.create_task(self.passivator.run(), name="passivator"),
        ]

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


def _phase_by(board: dict[str, Any], now: float) -> str | None:
    """The class's phase as its last board says, or ``ended`` once the board's class plan
    is over: the class ends itself then, and a pump nobody is attached to does not tick, so
    its board would say ``live`` for ever (and the class never be passivated)."""
    ends_at = (board.get("plan") or {}).get("ends_at")
    if ends_at is not None and now >= ends_at and board.get("phase") in ("lobby", "live", "cooldown"):
        return "ended"
    return board.get("phase")


def _used_slots() -> float:
    """Session slots in use over the whole cluster (cheap: two GCS resource reads)."""
    import ray

    total = ray.cluster_resources().get("session_slot", 0.0)
    return float(total - ray.available_resources().get("session_slot", 0.0))


def _loops(request: Request) -> ClusterLoops:
    return request.app.state.cluster  # type: ignore[no-any-return]


def _wrap_lifespan(app: FastAPI) -> None:
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app_: FastAPI) -> AsyncIterator[Any]:
        async with inner(app_) as state:
            settings = getattr(app_.state, "cluster_settings", None) or ClusterPolicySettings()
            loops = app_.state.cluster = ClusterLoops(app_.state.edge, settings)
            loops.start()
            try:
                yield state
            finally:
                await loops.stop()

    app.router.lifespan_context = lifespan


def install(app: FastAPI) -> None:
    router = APIRouter(dependencies=[Depends(operator)])  # every route here is an operator's

    @router.get("/v1/cluster/status")
    async def status(request: Request) -> dict[str, Any]:
        loops = _loops(request)
        result = await asyncio.to_thread(cluster_status, loops.edge.directory.namespace)
        result["prescale"] = loops.prescaler.describe(await loops.book.all())
        result["edge"] = {"pumps": len(loops.edge.pumps), "passivated_here": sorted(loops.passivator.passivated),
                          "pumps_released": loops.released}
        return result

    @router.post("/v1/sessions/{session_id}/schedule", status_code=202)
    async def schedule(session_id: str, body: ScheduleRequest, request: Request) -> dict[str, Any]:
        loops = _loops(request)
        if body.start_at < time.time() - loops.settings.prescale_release_after_s:
            raise BadRequest("start_at is in the past")
        if not SESSION_ID.match(session_id):
            raise BadRequest(f"bad session id {session_id!r}")
        # the booked size places the class (over class shards when it is that big) unless it
        # already exists (creation keeps an existing class's placement)
        await loops.edge.directory.create(session_id, expected_riders=body.expected_participants)
        return await loops.book_class(session_id, body.start_at, body.expected_participants)

    @router.post("/v1/sessions/{session_id}/passivate")
    async def passivate_route(session_id: str, request: Request) -> dict[str, Any]:
        loops = _loops(request)
        await loops.edge.require(session_id)
        done = await passivate(loops.edge.directory, session_id)
        return {"session": session_id, "passivated": done}

    app.include_router(router)
    _wrap_lifespan(app)
