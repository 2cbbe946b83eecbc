"""The edge's HTTP routes for sessions: create, read, join and leave, phase, flush.

``install(app, settings)`` adds them. Who may call which is ``api.scopes``' business;
errors (unknown session 404, bad phase 409, a dependency down 503) map in ``api.errors``.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from typing import Any

from fastapi import Depends, FastAPI, Request
from pydantic import BaseModel, Field, field_validator

from actors.plan import check_plan
from actors.session import MAX_TAGS, check_tags
from api.edge import SESSION_ID
from api.edge import edge_of, where_of
from api.errors import BadRequest, Conflict, Queued
from api.auth import TokenKind
from api.scopes import Caller, Operator, authorise_membership, operator, peer_of
from cluster.directory import Placement
from cluster.session_records import SessionRecords
from cluster.settings import Settings
from devices.text import clean_text

log = logging.getLogger(__name__)


class CreateSession(BaseModel):
    id: str | None = Field(default=None, pattern=SESSION_ID.pattern)
    title: str | None = Field(default=None, max_length=200)
    board_size: int | None = Field(default=None, ge=1, le=100)
    # How many riders the class expects: small classes may share a process (dense mode,
    # PULSELINE_DENSE_MAX_RIDERS); ``placement`` forces one or the other.
    expected_riders: int | None = Field(default=None, ge=1, le=1_000_000)
    placement: Placement | None = None
    # The class plan (docs/protocol.md#the-class-plan): when it starts (Unix s) and its
    # segments; the class then moves scheduled -> lobby -> live -> ended by itself.
    start_at: float | None = None
    plan: dict[str, Any] | None = None
    # Seats: riders beyond it queue for one (docs/protocol.md#seats-and-admission); none: no limit.
    capacity: int | None = Field(default=None, ge=1, le=1_000_000)

    @field_validator("title")
    @classmethod
    def _clean_title(cls, title: str | None) -> str | None:
        return None if title is None else clean_text(title, "title")  # TextError is a ValueError: 422

    @field_validator("start_at")
    @classmethod
    def _sane_start(cls, start_at: float | None) -> float | None:
        if start_at is None:
            return None
        now = time.time()
        if not math.isfinite(start_at) or start_at < now - MAX_START_PAST_S or start_at > now + MAX_START_AHEAD_S:
            raise ValueError(f"start_at must be a Unix time from {MAX_START_PAST_S:g} s ago to "
                             f"{MAX_START_AHEAD_S // 86400:g} days ahead")
        return start_at

    @field_validator("plan")
    @classmethod
    def _valid_plan(cls, plan: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if plan is None else check_plan(plan).as_dict()  # PlanError is a ValueError: 422


MAX_START_PAST_S = 60.0  # a start this close behind is "now" (clocks differ); further back is a mistake
MAX_START_AHEAD_S = 90 * 86400.0


class JoinRequest(BaseModel):
    """``tags``: the participant's cohort values (``{"age": "30-39"}``), checked by
    ``actors.session.check_tags``; omitted keeps the tags it has, ``{}`` clears them."""

    participant: str = Field(pattern=SESSION_ID.pattern)
    tags: dict[str, str] | None = Field(default=None, max_length=MAX_TAGS)

    @field_validator("tags")
    @classmethod
    def _valid_tags(cls, tags: dict[str, str] | None) -> dict[str, str] | None:
        return None if tags is None else check_tags(tags)  # TagError is a ValueError: 422


class CapacityRequest(BaseModel):
    capacity: int | None = Field(ge=1, le=1_000_000)  # null: no limit


class PhaseRequest(BaseModel):
    phase: str = Field(pattern=r"^(scheduled|lobby|live|cooldown|ended)$")


# What a participant sees of the other riders of its class (its own entry is whole): their
# output, not their heart rate, tags, latest values or devices (operators see everything).
PUBLIC_FIELDS = ("participant", "energy_kj", "distance_m", "power_avg", "cadence_avg", "speed_max", "samples")


def _as_seen_by(snapshot: dict[str, Any], participant: str | None) -> dict[str, Any]:
    rows = [row if row.get("participant") == participant else {k: row.get(k) for k in PUBLIC_FIELDS}
            for row in snapshot.get("participants", [])]
    return {**{k: v for k, v in snapshot.items() if k != "devices"}, "participants": rows}


def install(app: FastAPI, settings: Settings) -> None:
    @app.post("/v1/sessions", status_code=201)
    async def create_session(body: CreateSession, who: Operator, request: Request) -> dict[str, Any]:
        edge = edge_of(request)
        session_id = body.id or uuid.uuid4().hex[:12]
        created = await edge.directory.create(session_id, title=body.title, board_size=body.board_size,
                                              expected_riders=body.expected_riders, placement=body.placement,
                                              capacity=body.capacity)
        if created:
            edge.admission.note_capacity(session_id, body.capacity)
        if created:
            await SessionRecords(edge.directory.redis, prefix=settings.prefix).indexed(session_id)
        overrides = {} if body.board_size is None else {"board_size": body.board_size}
        await edge.directory.handle(session_id, overrides=overrides)  # the actor starts now, not on the first sample
        answer: dict[str, Any] = {"id": session_id, "created": created}
        if body.plan is not None or body.start_at is not None:
            answer["schedule"] = await edge.call(session_id, "set_plan", plan=body.plan, start_at=body.start_at)
            await edge.record_phase(session_id, answer["schedule"]["phase"])
        elif created:
            await edge.record_phase(session_id, "lobby")  # (a class without a schedule opens at once)
        if body.start_at is not None and hasattr(request.app.state, "cluster"):  # pre-scale (cluster.prescale)
            answer["prescale"] = await request.app.state.cluster.book_class(
                session_id, body.start_at, body.expected_riders or 0)
        return answer

    @app.get("/v1/sessions/{session_id}")
    async def get_session(session_id: str, who: Caller, request: Request) -> dict[str, Any]:
        edge = edge_of(request)
        await edge.authorise_read(who, session_id, where=where_of(request), peer=peer_of(request))
        snap = await edge.call(session_id, "snapshot")
        snap["meta"] = await edge.directory.meta(session_id)
        if who.kind is TokenKind.PARTICIPANT:
            snap = _as_seen_by(snap, who.participant)
        return snap

    @app.post("/v1/sessions/{session_id}/participants", status_code=201)
    async def join(session_id: str, body: JoinRequest, who: Caller, request: Request) -> dict[str, Any]:
        edge = edge_of(request)
        edge.gate.check(who, authorise_membership, session_id, body.participant, where=where_of(request), peer=peer_of(request))
        await edge.require(session_id)
        position = await edge.admission.admit(session_id, body.participant)
        if position:
            raise Queued(position, edge.admission.retry_after_s(position))
        slot = await edge.joins.join(session_id, body.participant, body.tags)  # (batched with others: api/joins.py)
        edge.note_member(session_id, body.participant)
        try:
            await edge.riders_joined(session_id, [body.participant])
        except Exception as exc:  # (bookkeeping: the rider has joined; its device's samples retry)
            log.warning("session %s: rider.joined of %s not published: %r", session_id, body.participant, exc)
        return {"participant": body.participant, "slot": slot}

    @app.delete("/v1/sessions/{session_id}/participants/{participant}")
    async def leave(session_id: str, participant: str, who: Caller, request: Request) -> dict[str, Any]:
        edge = edge_of(request)
        edge.gate.check(who, authorise_membership, session_id, participant, where=where_of(request), peer=peer_of(request))
        left = await edge.call(session_id, "leave", participant=participant)
        await edge.admission.release(session_id, participant)  # its seat goes to the next in the queue
        if left:
            await edge.rider_left(session_id, participant)
        return {"participant": participant, "left": left}

    @app.post("/v1/sessions/{session_id}/on-demand", status_code=201, dependencies=[Depends(operator)])
    async def on_demand(session_id: str, request: Request) -> dict[str, Any]:
        """The on-demand class of an ended class (``{id}:od``, made once; docs/protocol.md):
        riders who join it race the recorded riders at their own offset into the class."""
        edge = edge_of(request)
        await edge.require(session_id)
        meta = await edge.directory.meta(session_id)
        if meta.get("replay_of"):
            raise Conflict(f"{session_id!r} is an on-demand class itself", code="not_recorded")
        if meta.get("phase") != "ended" and (await edge.call(session_id, "snapshot"))["phase"] != "ended":
            raise Conflict(f"class {session_id!r} has not ended: it can be ridden on demand after it aired",
                           code="not_ended")
        replay_id = f"{session_id}:od"
        if not SESSION_ID.match(replay_id):
            raise BadRequest(f"class id {session_id!r} is too long for an on-demand class id", status=422)
        created = await edge.directory.create(replay_id, title=meta.get("title"), replay_of=session_id)
        if created:
            await SessionRecords(edge.directory.redis, prefix=settings.prefix).indexed(replay_id)
        replay = await edge.call(replay_id, "set_replay", source=session_id)
        if created:
            await edge.record_phase(replay_id, "live")
        return {"id": replay_id, "of": session_id, "created": created, "replay": replay}

    @app.put("/v1/sessions/{session_id}/capacity", dependencies=[Depends(operator)])
    async def set_capacity(session_id: str, body: CapacityRequest, request: Request) -> dict[str, Any]:
        """Change the class's seats (null: no limit); riders queued beyond the old one go in
        as seats free, in order. A class that had no capacity seats the riders it has now
        (its joins never asked the seat book) before the limit applies."""
        edge = edge_of(request)
        await edge.require(session_id)
        key = edge.directory.meta_key(session_id)
        if body.capacity is None:
            await edge.directory.redis.hdel(key, "capacity")
        else:
            if not await edge.directory.redis.hget(key, "capacity"):
                snapshot = await edge.call(session_id, "snapshot")
                riders = [p["participant"] for p in snapshot.get("participants", []) if p.get("presence") != "left"]
                await edge.admission.book.seat(session_id, riders)
            await edge.directory.redis.hset(key, "capacity", body.capacity)
        edge.admission.note_capacity(session_id, body.capacity)
        return {"session": session_id, "capacity": body.capacity, **await edge.admission.book.counts(session_id)}

    @app.post("/v1/sessions/{session_id}/phase", dependencies=[Depends(operator)])
    async def set_phase(session_id: str, body: PhaseRequest, request: Request) -> dict[str, Any]:
        edge = edge_of(request)
        phase = await edge.call(session_id, "set_phase", phase=body.phase)  # PhaseError: 409 (api.errors)
        pump = edge.pumps.get(session_id)
        if pump is not None:
            pump.note_phase(phase)
        await edge.record_phase(session_id, body.phase)  # ended: its keys start to expire; webhooks
        return {"phase": phase}

    @app.post("/v1/sessions/{session_id}/flush", dependencies=[Depends(operator)])
    async def flush(session_id: str, request: Request) -> dict[str, Any]:
        return {"durable": await edge_of(request).call(session_id, "flush")}
