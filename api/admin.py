"""Operator routes over the sessions themselves: list them, purge one.

* ``GET /v1/sessions?state=ended&limit=50&after=CURSOR`` — sessions in creation order, each
  with its meta (``id``, ``created_at``, ``title``, ``board_size``, ``phase``,
  ``expires_in_s`` once its retention runs), optionally only those in one phase; ``next``
  is the cursor of the following page (null at the end). Keyset paging: a page neither
  skips nor repeats a session, however many are created meanwhile.
* ``DELETE /v1/sessions/{id}`` — purge: the actor is stopped for good, this edge's pump is
  released and every Redis key of the session is deleted. Only an ``ended`` class, unless
  ``?force=true`` (409 ``not_ended`` otherwise). Other edges forget it when their cached
  handle next fails; a device still connected to one of them should be told by ending the
  class first.

Both need an operator token. Redis records: ``cluster.session_records``.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Query, Request

from api.errors import Conflict
from api.scopes import operator
from cluster.session_records import SessionRecords

Phase = Literal["lobby", "live", "cooldown", "ended", "scheduled"]


def records_of(edge: Any) -> SessionRecords:
    return SessionRecords(edge.directory.redis, prefix=edge.directory.prefix)


def install(app: FastAPI) -> None:
    router = APIRouter(dependencies=[Depends(operator)])

    @router.get("/v1/sessions")
    async def list_sessions(
        request: Request,
        state: Phase | None = Query(default=None, description="only sessions in this phase"),
        limit: int = Query(default=50, ge=1, le=500),
        after: str | None = Query(default=None, max_length=200, pattern=r"^[0-9.]+\|[A-Za-z0-9_.:-]{1,128}$"),
    ) -> dict[str, Any]:
        page = await records_of(request.app.state.edge).page(phase=state, limit=limit, after=after)
        return {"sessions": page.sessions, "next": page.cursor}

    @router.delete("/v1/sessions/{session_id}")
    async def purge_session(session_id: str, request: Request, force: bool = Query(default=False)) -> dict[str, Any]:
        edge = request.app.state.edge
        await edge.require(session_id)
        meta = await edge.directory.meta(session_id)
        if not force and meta.get("phase", "lobby") != "ended":
            raise Conflict(f"session {session_id!r} is {meta.get('phase', 'lobby')!r}: end it first, or purge with force=true",
                           code="not_ended")
        pump = edge.pumps.pop(session_id, None)
        if pump is not None:
            await pump.stop()
        await asyncio.wait_for(asyncio.to_thread(edge.directory.kill, session_id), edge.settings.ray_call_timeout_s)
        deleted = await records_of(edge).purge(session_id)
        edge.forget_session(session_id)
        return {"id": session_id, "deleted": True, "keys": deleted}

    app.include_router(router)
