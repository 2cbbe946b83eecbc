"""The FastAPI edge: HTTP for sessions and participants, WebSockets for devices and boards.

``create_app(settings)`` builds the app; Ray must already be initialised in this process
and ``settings.redis_url`` resolved (``cluster.runtime`` does both).
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

import redis.asyncio as aioredis
from fastapi import FastAPI, Query, WebSocket
from fastapi.responses import HTMLResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field

from actors.errors import PhaseError
from api.errors import BadRequest, UnknownSession, install_handlers
from api.ingest import DeviceConnection
from api.outbox import Outbox
from api.pump import SessionPump
from api.viewer import VIEW_PAGE, board_encoder
from cluster.directory import SessionDirectory
from cluster.settings import Settings
from devices.protocol import CloseCode

log = logging.getLogger(__name__)
_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


class CreateSession(BaseModel):
    id: str | None = Field(default=None, pattern=_ID.pattern)
    title: str | None = Field(default=None, max_length=200)
    board_size: int | None = Field(default=None, ge=1, le=100)


class JoinRequest(BaseModel):
    participant: str = Field(pattern=_ID.pattern)


class PhaseRequest(BaseModel):
    phase: str = Field(pattern=r"^(scheduled|lobby|live|cooldown|ended)$")


class Edge:
    """What the routes share: the directory and one pump per active session."""

    def __init__(self, settings: Settings, directory: SessionDirectory) -> None:
        self.settings = settings
        self.directory = directory
        self.pumps: dict[str, SessionPump] = {}

    def pump(self, session_id: str) -> SessionPump:
        pump = self.pumps.get(session_id)
        if pump is None:
            pump = self.pumps[session_id] = SessionPump(
                session_id,
                self.directory,
                tick_interval_s=self.settings.tick_interval_s,
                idle_poll_s=1.0 / self.settings.max_board_rate_hz,
                max_pending=self.settings.max_pending_samples_per_session,
            )
            pump.start()
        return pump

    async def require(self, session_id: str) -> None:
        if not _ID.match(session_id) or not await self.directory.exists(session_id):
            raise UnknownSession(f"no session {session_id!r}")

    async def call(self, session_id: str, method: str, **kwargs: Any) -> Any:
        await self.require(session_id)
        handle = await self.directory.handle(session_id)
        return await getattr(handle, method).remote(**kwargs)

    async def close(self) -> None:
        await asyncio.gather(*(p.stop() for p in self.pumps.values()))


def settings_extensions() -> list[Any]:
    """Routers that other capabilities add to the edge (each ``install(app)``), imported
    lazily so the core edge does not depend on them."""
    import importlib
    import importlib.util

    installers = []
    for module in ("api.leaderboards", "api.cluster_routes"):
        if importlib.util.find_spec(module) is not None:
            installers.append(importlib.import_module(module).install)
    return installers


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = aioredis.Redis.from_url(settings.redis_url or "")
        directory = SessionDirectory(
            client, prefix=settings.prefix, namespace=settings.namespace, actor_settings=settings.actor_settings()
        )
        app.state.edge = Edge(settings, directory)
        yield
        await app.state.edge.close()
        await client.aclose()

    app = FastAPI(title="pulseline edge", version="1", lifespan=lifespan)
    install_handlers(app)
    for extension in settings_extensions():
        extension(app)

    def edge() -> Edge:
        return app.state.edge  # type: ignore[no-any-return]

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"ok": True, "sessions": len(edge().pumps)}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(generate_latest().decode(), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/sessions", status_code=201)
    async def create_session(body: CreateSession) -> dict[str, Any]:
        session_id = body.id or uuid.uuid4().hex[:12]
        created = await edge().directory.create(session_id, title=body.title, board_size=body.board_size)
        if body.board_size is not None:
            log.info("session %s board_size %s", session_id, body.board_size)
        await edge().directory.handle(session_id)  # start the actor now, not on the first sample
        return {"id": session_id, "created": created}

    @app.get("/v1/sessions/{session_id}")
    async def get_session(session_id: str) -> dict[str, Any]:
        snap: dict[str, Any] = await edge().call(session_id, "snapshot")
        snap["meta"] = await edge().directory.meta(session_id)
        return snap

    @app.post("/v1/sessions/{session_id}/participants", status_code=201)
    async def join(session_id: str, body: JoinRequest) -> dict[str, Any]:
        slot = await edge().call(session_id, "join", participant=body.participant)
        return {"participant": body.participant, "slot": slot}

    @app.delete("/v1/sessions/{session_id}/participants/{participant}")
    async def leave(session_id: str, participant: str) -> dict[str, Any]:
        left = await edge().call(session_id, "leave", participant=participant)
        return {"participant": participant, "left": left}

    @app.post("/v1/sessions/{session_id}/phase")
    async def set_phase(session_id: str, body: PhaseRequest) -> dict[str, Any]:
        try:
            phase = await edge().call(session_id, "set_phase", phase=body.phase)
        except PhaseError:
            raise
        except Exception as exc:  # Ray wraps the actor's PhaseError
            cause = getattr(exc, "cause", None)
            if isinstance(cause, PhaseError):
                raise cause from None
            raise
        return {"phase": phase}

    @app.post("/v1/sessions/{session_id}/flush")
    async def flush(session_id: str) -> dict[str, Any]:
        return {"durable": await edge().call(session_id, "flush")}

    @app.get("/v1/sessions/{session_id}/view", response_class=HTMLResponse)
    async def view_page(session_id: str) -> HTMLResponse:
        await edge().require(session_id)
        return HTMLResponse(VIEW_PAGE)

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
        await ws.accept()
        if not 1.0 <= rate <= settings.max_board_rate_hz or view not in ("top", "all") or format not in ("msgpack", "json"):
            await ws.close(CloseCode.PROTOCOL, f"rate must be 1-{settings.max_board_rate_hz:g} Hz, view top|all, format msgpack|json")
            return
        try:
            await edge().require(session_id)
        except (UnknownSession, BadRequest) as exc:
            await ws.close(CloseCode.UNKNOWN_SESSION, exc.message)
            return
        outbox = Outbox(
            ws,
            max_frames=settings.send_queue_frames,
            board_interval_s=1.0 / rate,
            encode_board=board_encoder(participant, everyone=view == "all", as_json=format == "json"),
        )
        pump = edge().pump(session_id)
        pump.add_viewer(outbox)
        writer = asyncio.create_task(outbox.run())
        try:
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
        finally:
            pump.remove_viewer(outbox)
            outbox.closed = True
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)

    return app
