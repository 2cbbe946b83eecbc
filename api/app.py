"""The FastAPI edge: HTTP for sessions and participants, WebSockets for devices and boards.

``create_app(settings)`` builds the app; Ray must already be initialised in this process
and ``settings.redis_url`` resolved (``cluster.runtime`` does both). It raises
``api.auth.InsecureSettings`` (and so refuses to start) when production settings lack an
issuer or carry a shared secret.

Every route but the health probes (``/livez``, ``/readyz``, ``/healthz``: ``api.health``),
the API docs and the static board page needs a token
(``api.scopes`` says which kind may do what); refusals are 401 / 403 over HTTP and close
codes 4401 / 4403 on WebSockets.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import re
import time
import uuid
from collections.abc import Mapping
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

import redis.asyncio as aioredis
from redis.backoff import ConstantBackoff
from redis.asyncio.retry import Retry
from fastapi import Depends, FastAPI, Query, Request, WebSocket
from fastapi.responses import PlainTextResponse
from starlette.websockets import WebSocketDisconnect
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field, field_validator

from actors.session import MAX_TAGS, check_tags
from api.auth import Principal, TokenKind, build_verifier, dev_secret, mint_token
from api.errors import AuthError, BadRequest, Forbidden, Unauthorised, Unavailable, UnknownSession, install_handlers
from api.health import Readiness
from api.health import install as install_health
from api.httpguard import HttpGuard
from api.directws import channel_of
from api.ingest import DeviceConnection
from api.limits import ConnectionLimits, FrameRate, Verdict
from api.outbox import Outbox, close_reason
from api.pages import SecurityHeaders
from api.pages import install as install_pages
from api.pump import SessionPump
from api.session_stream import tick_channel
from api.scopes import (
    Caller,
    Gate,
    Operator,
    ScopeReason,
    authorise_board,
    authorise_membership,
    authorise_read,
    bearer_token,
    chosen_subprotocol,
    install_log_redaction,
    operator,
    roster_of,
)
from api.viewer import board_encoder
from cluster.directory import SessionDirectory
from cluster.session_records import SessionRecords
from cluster.settings import Settings
from devices.protocol import Auth, CloseCode, ProtocolError, decode_device_frame
from devices.text import clean_text

log = logging.getLogger(__name__)
_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


class CreateSession(BaseModel):
    id: str | None = Field(default=None, pattern=_ID.pattern)
    title: str | None = Field(default=None, max_length=200)
    board_size: int | None = Field(default=None, ge=1, le=100)

    @field_validator("title")
    @classmethod
    def _clean_title(cls, title: str | None) -> str | None:
        return None if title is None else clean_text(title, "title")  # TextError is a ValueError: 422


class JoinRequest(BaseModel):
    """``tags``: the participant's cohort values (``{"age": "30-39"}``), checked by
    ``actors.session.check_tags``; omitted keeps the tags it has, ``{}`` clears them."""

    participant: str = Field(pattern=_ID.pattern)
    tags: dict[str, str] | None = Field(default=None, max_length=MAX_TAGS)

    @field_validator("tags")
    @classmethod
    def _valid_tags(cls, tags: dict[str, str] | None) -> dict[str, str] | None:
        return None if tags is None else check_tags(tags)  # TagError is a ValueError: 422


class PhaseRequest(BaseModel):
    phase: str = Field(pattern=r"^(scheduled|lobby|live|cooldown|ended)$")


class DevTokenRequest(BaseModel):
    kind: TokenKind
    sessions: list[str] | None = Field(default=None, max_length=1024)
    participant: str | None = Field(default=None, max_length=128)
    device: str | None = Field(default=None, max_length=128)
    hub: str | None = Field(default=None, max_length=128)
    devices: list[str] | None = Field(default=None, max_length=1024)
    ttl_s: float | None = Field(default=None, gt=0, le=7 * 24 * 3600)


class Edge:
    """What the routes share: the directory, one pump per active session, the auth gate and
    the connection counters."""

    def __init__(self, settings: Settings, directory: SessionDirectory, gate: Gate) -> None:
        self.settings = settings
        self.directory = directory
        self.gate = gate
        self.connections = ConnectionLimits(settings)
        self.pumps: dict[str, SessionPump] = {}
        self.ticks = tick_channel(settings.session_transport, directory, timeout_s=settings.session_stream_timeout_s)

    def pump(self, session_id: str) -> SessionPump:
        pump = self.pumps.get(session_id)
        if pump is None:
            pump = self.pumps[session_id] = SessionPump(
                session_id,
                self.directory,
                tick_interval_s=self.settings.tick_interval_s,
                idle_poll_s=1.0 / self.settings.max_board_rate_hz,
                max_pending=self.settings.max_pending_samples_per_session,
                ack_interval_s=self.settings.ack_interval_s,
                channel=self.ticks,
            )
            pump.start()
        return pump

    async def require(self, session_id: str) -> None:
        if not _ID.match(session_id) or not await self.directory.exists(session_id):
            raise UnknownSession(f"no session {session_id!r}")

    async def call(self, session_id: str, method: str, **kwargs: Any) -> Any:
        """One session actor call, bounded by ``ray_call_timeout_s`` (a timed-out call may
        still run: every session method is idempotent); errors are mapped by ``api.errors``."""
        await self.require(session_id)
        timeout_s = self.settings.ray_call_timeout_s
        handle = await asyncio.wait_for(self.directory.handle(session_id), timeout_s)
        return await asyncio.wait_for(getattr(handle, method).remote(**kwargs), timeout_s)

    async def authorise_read(
        self, who: Principal, session_id: str, *, where: str, peer: str, board: bool = False
    ) -> dict[str, Any] | None:
        """Check ``who`` may read ``session_id`` (its board only, with ``board``: viewer
        tokens too); returns the snapshot when one was needed."""
        if who.kind is TokenKind.OPERATOR or (board and self._may_watch(who, session_id, where=where, peer=peer)):
            await self.require(session_id)
            return None
        snapshot: dict[str, Any] = await self.call(session_id, "snapshot")
        self.gate.check(who, authorise_read, session_id, roster_of(snapshot), where=where, peer=peer)
        return snapshot

    def _may_watch(self, who: Principal, session_id: str, *, where: str, peer: str) -> bool:
        try:
            return authorise_board(who, session_id)
        except Forbidden as exc:
            raise self.gate.refused(exc, where=where, who=who.describe(), peer=peer) from None

    async def close(self) -> None:
        await asyncio.gather(*(p.stop() for p in self.pumps.values()))
        await self.ticks.close()


def redis_client(settings: Settings) -> aioredis.Redis:
    """The edge's Redis client: every command bounded by ``redis_timeout_s`` (connect and
    reply), retried once after 50 ms, so a stopped or dead Redis costs a request at most
    ~2 x that before it is answered 503 (``api.errors``)."""
    return aioredis.Redis.from_url(
        settings.redis_url or "", socket_timeout=settings.redis_timeout_s,
        socket_connect_timeout=settings.redis_timeout_s, retry=Retry(ConstantBackoff(0.05), 1),
    )


def settings_extensions() -> list[Any]:
    """Routers that other capabilities add to the edge (each ``install(app)``), imported
    lazily so the core edge does not depend on them."""
    import importlib
    import importlib.util

    installers = []
    for module in ("api.leaderboards", "api.cluster_routes", "api.admin"):
        if importlib.util.find_spec(module) is not None:
            installers.append(importlib.import_module(module).install)
    return installers


def _peer(conn: Request | WebSocket) -> str:
    return conn.client.host if conn.client is not None else "?"


def _where(request: Request) -> str:
    return f"{request.method} {request.url.path}"


def create_app(settings: Settings) -> FastAPI:
    gate = Gate(build_verifier(settings))  # refuses insecure production settings right here

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = redis_client(settings)
        directory = SessionDirectory(
            client, prefix=settings.prefix, namespace=settings.namespace, actor_settings=settings.actor_settings()
        )
        app.state.edge = Edge(settings, directory, gate)
        # Everything alive now (Ray, FastAPI, imported modules: ~200k objects) lives as long
        # as the edge: keep it out of the cyclic GC, whose full passes over it took ~110 ms
        # of the event loop each in the capacity bench (docs/benchmarks.md).
        gc.collect()
        gc.freeze()
        yield
        await app.state.edge.close()
        await readiness.aclose()
        await client.aclose()
        await gate.aclose()

    app = FastAPI(title="pulseline edge", version="1", lifespan=lifespan, docs_url=None, redoc_url=None)  # /docs: api.pages (offline assets)
    app.state.gate = gate
    install_handlers(app)
    app.add_middleware(HttpGuard, max_body_bytes=settings.max_http_body_bytes, deadline_s=settings.http_deadline_s)
    readiness = Readiness(settings, started=lambda: hasattr(app.state, "edge"))
    install_health(app, readiness, sessions=lambda: len(app.state.edge.pumps))
    app.add_middleware(SecurityHeaders)
    install_log_redaction()
    install_pages(app, settings)
    for extension in settings_extensions():
        extension(app)

    def edge() -> Edge:
        return app.state.edge  # type: ignore[no-any-return]

    @app.get("/metrics", response_class=PlainTextResponse,
             dependencies=[] if settings.public_metrics else [Depends(operator)])
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(generate_latest().decode(), media_type=CONTENT_TYPE_LATEST)

    if settings.auth_mode == "development":
        _install_dev_tokens(app, settings)

    @app.post("/v1/sessions", status_code=201)
    async def create_session(body: CreateSession, who: Operator) -> dict[str, Any]:
        session_id = body.id or uuid.uuid4().hex[:12]
        created = await edge().directory.create(session_id, title=body.title, board_size=body.board_size)
        if created:
            await SessionRecords(edge().directory.redis, prefix=settings.prefix).indexed(session_id)
        if body.board_size is not None:
            log.info("session %s board_size %s", session_id, body.board_size)
        await edge().directory.handle(session_id)  # start the actor now, not on the first sample
        return {"id": session_id, "created": created}

    @app.get("/v1/sessions/{session_id}")
    async def get_session(session_id: str, who: Caller, request: Request) -> dict[str, Any]:
        snap = await edge().authorise_read(who, session_id, where=_where(request), peer=_peer(request))
        if snap is None:
            snap = await edge().call(session_id, "snapshot")
        snap["meta"] = await edge().directory.meta(session_id)
        return snap

    @app.post("/v1/sessions/{session_id}/participants", status_code=201)
    async def join(session_id: str, body: JoinRequest, who: Caller, request: Request) -> dict[str, Any]:
        edge().gate.check(who, authorise_membership, session_id, body.participant, where=_where(request), peer=_peer(request))
        extra = {} if body.tags is None else {"tags": body.tags}  # old actors take no tags
        slot = await edge().call(session_id, "join", participant=body.participant, **extra)
        return {"participant": body.participant, "slot": slot}

    @app.delete("/v1/sessions/{session_id}/participants/{participant}")
    async def leave(session_id: str, participant: str, who: Caller, request: Request) -> dict[str, Any]:
        edge().gate.check(who, authorise_membership, session_id, participant, where=_where(request), peer=_peer(request))
        left = await edge().call(session_id, "leave", participant=participant)
        return {"participant": participant, "left": left}

    @app.post("/v1/sessions/{session_id}/phase", dependencies=[Depends(operator)])
    async def set_phase(session_id: str, body: PhaseRequest) -> dict[str, Any]:
        phase = await edge().call(session_id, "set_phase", phase=body.phase)  # PhaseError: 409 (api.errors)
        await SessionRecords(edge().directory.redis, prefix=settings.prefix).record_phase(
            session_id, body.phase, retention_s=settings.ended_retention_s)  # ended: its keys start to expire
        return {"phase": phase}

    @app.post("/v1/sessions/{session_id}/flush", dependencies=[Depends(operator)])
    async def flush(session_id: str) -> dict[str, Any]:
        return {"durable": await edge().call(session_id, "flush")}

    @app.websocket("/v1/devices")
    async def devices(ws: WebSocket) -> None:
        await DeviceConnection(ws, edge()).serve()

    @app.websocket("/v1/sessions/{session_id}/board")
    async def board(
        ws: WebSocket,
        session_id: str,
        rate: float = Query(default=1.0),
        participant: str | None = Query(default=None),
        view: str = Query(default="top"),
        format: str = Query(default="msgpack"),
    ) -> None:
        await ws.accept(subprotocol=chosen_subprotocol(ws))
        peer = _peer(ws)
        if not edge().connections.by_address.acquire(peer):
            await ws.close(CloseCode.THROTTLED, "too many open connections from this address")
            return
        try:
            who = await _board_principal(ws, edge(), session_id, peer)
            if who is None:
                return
            if not 1.0 <= rate <= settings.max_board_rate_hz or view not in ("top", "all") or format not in ("msgpack", "json"):
                await ws.close(CloseCode.PROTOCOL, f"rate must be 1-{settings.max_board_rate_hz:g} Hz, view top|all, format msgpack|json")
                return
            if not edge().connections.acquire_token(who):
                await ws.close(CloseCode.THROTTLED, "too many open connections with this token")
                return
            try:
                outbox = Outbox(
                    ws,
                    max_frames=settings.send_queue_frames,
                    board_interval_s=1.0 / rate,
                    encode_board=board_encoder(participant, everyone=view == "all", as_json=format == "json"),
                    channel=channel_of(ws, settings.direct_ws),
                )
                await _serve_board(ws, edge(), session_id, outbox, who)
            finally:
                edge().connections.release_token(who)
        finally:
            edge().connections.by_address.release(peer)

    return app


async def _board_principal(ws: WebSocket, edge: Edge, session_id: str, peer: str) -> Principal | None:
    """Authenticate and authorise a board viewer, or close the socket and return None."""
    try:
        who = await edge.gate.authenticate(bearer_token(ws), where="ws board", peer=peer)
        await edge.authorise_read(who, session_id, where="ws board", peer=peer, board=True)
        return who
    except AuthError as exc:
        code = CloseCode.UNAUTHORISED if isinstance(exc, Unauthorised) else CloseCode.FORBIDDEN
        await ws.close(code, close_reason(f"{exc.reason.value}: {exc.message}"))
    except (UnknownSession, BadRequest) as exc:
        await ws.close(CloseCode.UNKNOWN_SESSION, close_reason(exc.message))
    except Unavailable as exc:
        await ws.close(CloseCode.TRY_AGAIN, close_reason(exc.message))
    return None


async def _serve_board(ws: WebSocket, edge: Edge, session_id: str, outbox: Outbox, who: Principal) -> None:
    """Push boards until the viewer leaves; the viewer may only send ``auth`` frames (renewal),
    at a bounded rate, and is closed with 4401 when its token expires unrenewed."""
    pump = edge.pump(session_id)
    pump.add_viewer(outbox)
    writer = asyncio.create_task(outbox.run())
    rate = FrameRate.from_settings(edge.settings)
    try:
        while not outbox.closed:
            expires_in = who.expires_at + edge.settings.auth_leeway_s - time.time()
            try:
                message = await asyncio.wait_for(ws.receive(), max(0.0, expires_in))
            except TimeoutError:
                outbox.close(CloseCode.UNAUTHORISED, "token expired: reconnect with a fresh token")
                break
            if message["type"] == "websocket.disconnect":
                break
            verdict = rate.admit(None, time.monotonic()).verdict
            if verdict is Verdict.DISCONNECT:
                outbox.close(CloseCode.THROTTLED, "too many frames from a viewer")
            elif verdict is Verdict.ACCEPT:
                who = await _renew_viewer(ws, edge, message, who)
    except WebSocketDisconnect:
        pass
    finally:
        pump.remove_viewer(outbox)
        if not outbox.closed:
            outbox.closed = True
            writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)


async def _renew_viewer(ws: WebSocket, edge: Edge, message: Mapping[str, Any], who: Principal) -> Principal:
    """A viewer's ``auth`` frame: a fresh token for the same subject extends the connection."""
    data = message.get("bytes") or message.get("text") or b""
    try:
        frame = decode_device_frame(data)
        if not isinstance(frame, Auth):
            return who
        fresh = await edge.gate.authenticate(frame.token, where="ws board auth", peer=_peer(ws))
    except (ProtocolError, AuthError, Unavailable):
        return who  # a viewer's bad frame changes nothing; the old token still expires
    if (fresh.kind, fresh.subject) != (who.kind, who.subject):
        edge.gate.refused(Forbidden(ScopeReason.NOT_SAME_PRINCIPAL, "a renewed token must be for the same subject"),
                          where="ws board auth", who=who.describe(), peer=_peer(ws))
        return who
    return fresh


def _install_dev_tokens(app: FastAPI, settings: Settings) -> None:
    """``POST /v1/dev/tokens``: development mode only, and only for loopback clients —
    how swarms, demos and tests obtain tokens without sharing the secret file."""

    secret = dev_secret(settings)

    @app.post("/v1/dev/tokens", include_in_schema=False)
    async def mint(body: DevTokenRequest, request: Request) -> dict[str, Any]:
        if _peer(request) not in ("127.0.0.1", "::1"):
            raise Forbidden("loopback_only", "development tokens are minted for loopback clients only")
        ttl_s = settings.dev_token_ttl_s if body.ttl_s is None else body.ttl_s
        try:
            token = mint_token(secret, audience=settings.auth_audience, ttl_s=ttl_s, **body.model_dump(exclude={"ttl_s"}))
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        return {"token": token}
