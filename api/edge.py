"""``Edge``: what the edge's routes and sockets share — the session directory, one pump per
active session, the tick channel to the session actors, the auth gate and the connection
counters — and the Redis client it is built on (``api.app`` creates one per process)."""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
from typing import Any

from fastapi import Request
from redis.asyncio.retry import Retry
from redis.backoff import ConstantBackoff

from storage.redis_url import AsyncRedis, connect
from api.admission import Admission
from api.auth import Principal, TokenKind
from api.errors import Forbidden, UnknownSession
from api.joins import JoinBatcher
from api.limits import ConnectionLimits
from api.pump import SessionPump
from api.scopes import Gate, authorise_board, authorise_read, reader_of, roster_of
from api.class_ticks import ClassShardTicks
from api.session_stream import tick_channel
from cluster.admission import AdmissionPolicy
from cluster.directory import SessionDirectory
from cluster.session_records import SessionRecords
from cluster.settings import Settings
from history.events import PHASE_EVENTS, publish_event, publish_rider_events

log = logging.getLogger(__name__)

SESSION_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")  # the edge's session (and HTTP participant) id rule
ROSTER_CLASSES = 10_000  # classes whose known riders an edge remembers (the oldest is forgotten first)


class Edge:
    """What the routes and sockets share (see the module docstring); one per edge process."""

    def __init__(self, settings: Settings, directory: SessionDirectory, gate: Gate) -> None:
        self.settings = settings
        self.directory = directory
        self.gate = gate
        self.connections = ConnectionLimits(settings)
        self.pumps: dict[str, SessionPump] = {}
        self.edge_id = secrets.token_hex(6)  # how this edge's ticks name it (a class keeps its edges in step)
        self.ticks = tick_channel(settings.session_transport, directory, timeout_s=settings.session_stream_timeout_s)
        # what pumps tick through: a sharded class's ticks go to its shards (api/class_ticks.py)
        self.channel = ClassShardTicks(self.ticks, directory, board_size=settings.board_size)
        self.admission = Admission(directory.redis, prefix=settings.prefix, policy=AdmissionPolicy(
            rate_per_s=settings.admit_rate_per_s, burst=settings.admit_burst, stale_s=settings.admit_stale_s),
            bye_grace_s=settings.seat_bye_grace_s, drop_grace_s=settings.seat_drop_grace_s,
            capacity_ttl_s=settings.admit_capacity_cache_s)
        # Riders this edge knows to be on a class's roster: it joined them, or the class said
        # so. A roster only grows (a rider who left stays on it, ``SessionCell.member``), so
        # a rider's board socket after its join through this edge costs no actor call.
        self._rosters: dict[str, set[str]] = {}
        self.joins = JoinBatcher(self.call)  # a class's joins that come together: one actor call

    def note_member(self, session_id: str, rider: str) -> None:
        roster = self._rosters.pop(session_id, None)  # (re-inserted: the most recently used last)
        if roster is None:
            roster = set()
            if len(self._rosters) >= ROSTER_CLASSES:
                del self._rosters[next(iter(self._rosters))]
        roster.add(rider)
        self._rosters[session_id] = roster

    def forget_session(self, session_id: str) -> None:
        """The class was purged: what this edge knew of its roster goes with it."""
        self._rosters.pop(session_id, None)
        self.directory.forget_session(session_id)

    def pump(self, session_id: str) -> SessionPump:
        pump = self.pumps.get(session_id)
        if pump is None:
            pump = self.pumps[session_id] = SessionPump(
                session_id,
                self.directory,
                tick_interval_s=self.settings.tick_interval_s,
                max_tick_interval_s=self.settings.max_tick_interval_s,
                max_pending=self.settings.max_pending_samples_per_session,
                ack_interval_s=self.settings.ack_interval_s,
                channel=self.channel,
                on_phase=self.record_phase,
                on_join=self.riders_joined,
                edge_id=self.edge_id,
            )
            pump.start()
        return pump

    async def record_phase(self, session_id: str, phase: str) -> None:
        """Note a phase the class moved to (by a call or by its plan) in its records and, the
        first time any edge notes it, as a platform event (``history.events``: webhooks)."""
        changed = await SessionRecords(self.directory.redis, prefix=self.settings.prefix).record_phase(
            session_id, phase, retention_s=self.settings.ended_retention_s)
        kind = PHASE_EVENTS.get(phase)
        if changed and kind is not None:
            await self.event(kind, session_id, {"session": session_id, "phase": phase})

    async def event(self, kind: str, session_id: str, data: dict[str, Any], *, rider: str = "") -> bool:
        """Publish a platform event (one XADD); a failure is logged, never fails the caller:
        the class goes on whatever happens to its webhooks. False: not published."""
        try:
            await publish_event(self.directory.redis, self.settings.prefix, kind, session_id, data, rider=rider)
            return True
        except Exception as exc:
            log.warning("event %s of %s not published: %r", kind, session_id, exc)
            return False

    async def riders_joined(self, session_id: str, riders: list[str]) -> None:
        """``rider.joined`` once per rider per class, whichever way it joined (the join route,
        or its device's first samples: the pump reports those) and whichever edge saw it:
        the class's joined set (``SessionRecords.first_joins``) lets one call through. Two
        round trips for any number of riders (a class's start reports thousands at once):
        the joined set, then the events pipelined. Riders whose events could not be
        published are taken out again, so the next report of them retries; raises when that
        cannot be done either (the pump reports them again)."""
        records = SessionRecords(self.directory.redis, prefix=self.settings.prefix)
        first = await records.first_joins(session_id, riders)  # one round trip for the lot
        if not first:
            return
        try:
            await publish_rider_events(self.directory.redis, self.settings.prefix, "rider.joined", session_id, first)
        except Exception as exc:
            log.warning("session %s: rider.joined of %d rider(s) not published: %r", session_id, len(first), exc)
            await records.forget_joins(session_id, first)

    async def rider_left(self, session_id: str, rider: str) -> None:
        """``rider.left``; the rider's next join is announced again (on this edge's pump too)."""
        try:
            await SessionRecords(self.directory.redis, prefix=self.settings.prefix).forget_join(session_id, rider)
        except Exception as exc:
            log.warning("session %s: rider %s left, not taken out of the joined set: %r", session_id, rider, exc)
        pump = self.pumps.get(session_id)
        if pump is not None:
            pump.joined.discard(rider)
        await self.event("rider.left", session_id, {"session": session_id, "rider": rider}, rider=rider)

    async def require(self, session_id: str) -> None:
        if not SESSION_ID.match(session_id) or not await self.directory.exists(session_id):
            raise UnknownSession(f"no session {session_id!r}")

    async def call(self, session_id: str, method: str, **kwargs: Any) -> Any:
        """One session actor call, bounded by ``ray_call_timeout_s`` — or, until the actor has
        answered once, by ``actor_start_timeout_s``: a class's first joins wait for its new
        process instead of failing while a burst of classes starts (a timed-out call may
        still run: every session method is idempotent); errors are mapped by ``api.errors``."""
        await self.require(session_id)
        handle = self.directory.cached(session_id)
        timeout_s = self.settings.ray_call_timeout_s
        if handle is None or not handle.answered:
            timeout_s = max(timeout_s, self.settings.actor_start_timeout_s)
            handle = await asyncio.wait_for(self.directory.handle(session_id), timeout_s)
        return await asyncio.wait_for(getattr(handle, method).remote(**kwargs), timeout_s)

    async def authorise_read(
        self, who: Principal, session_id: str, *, where: str, peer: str, board: bool = False
    ) -> None:
        """Check ``who`` may read ``session_id`` (its board only, with ``board``: viewer
        tokens too). A participant is looked up on the roster with one ``member`` call, which
        a class over class shards sends to the rider's shard only: O(1) per socket or request,
        whatever the size of the class; none for a rider this edge already knows is on it."""
        if who.kind is TokenKind.OPERATOR or (board and self._may_watch(who, session_id, where=where, peer=peer)):
            await self.require(session_id)
            return
        try:
            rider = reader_of(who, session_id)
        except Forbidden as exc:
            raise self.gate.refused(exc, where=where, who=who.describe(), peer=peer) from None
        roster = {rider} if await self._member(session_id, rider) else set()
        self.gate.check(who, authorise_read, session_id, roster, where=where, peer=peer)

    async def _member(self, session_id: str, rider: str) -> bool:
        if rider in self._rosters.get(session_id, ()):
            await self.require(session_id)  # (the class still exists: no actor call)
            return True
        try:
            member = bool(await self.call(session_id, "member", participant=rider))
        except AttributeError:  # an actor started by an older version has no member(): its roster
            member = rider in roster_of(await self.call(session_id, "snapshot"))
        if member:
            self.note_member(session_id, rider)
        return member

    def _may_watch(self, who: Principal, session_id: str, *, where: str, peer: str) -> bool:
        try:
            return authorise_board(who, session_id)
        except Forbidden as exc:
            raise self.gate.refused(exc, where=where, who=who.describe(), peer=peer) from None

    async def close(self) -> None:
        await asyncio.gather(*(p.stop() for p in self.pumps.values()))
        await self.joins.close()
        await self.admission.close()
        await self.channel.close()
        await asyncio.to_thread(self.directory.close)


def redis_client(settings: Settings) -> AsyncRedis:
    """The edge's Redis client (one server, a cluster or a Sentinel master, as the URL says:
    ``storage.redis_url``): every command bounded by ``redis_timeout_s`` (connect and
    reply), retried once after 50 ms, so a stopped or dead Redis costs a request at most
    ~2 x that before it is answered 503 (``api.errors``)."""
    return connect(
        settings.redis_url or "", socket_timeout=settings.redis_timeout_s,
        socket_connect_timeout=settings.redis_timeout_s, retry=Retry(ConstantBackoff(0.05), 1),
    )


def edge_of(conn: Any) -> Edge:
    """The edge of the app serving ``conn`` (an HTTP request or a WebSocket)."""
    return conn.app.state.edge  # type: ignore[no-any-return]


def where_of(request: Request) -> str:
    return f"{request.method} {request.url.path}"
