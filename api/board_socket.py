"""The board WebSocket, ``/v1/sessions/{id}/board``: latest-wins boards for a viewer.

``install(app, settings)`` adds the route. A viewer authenticates (header, ``bearer.``
subprotocol or ``?token=``), must be allowed to watch the session (``api.scopes``), picks a
rate, a view (``top`` or ``all``, with ``page``/``page_size`` to page ``all`` by rank: a
sharded class always pages), a format (msgpack or JSON) and optionally its own
participant row; it may only send ``auth`` frames (renewal) and is closed with 4401 when its
token expires unrenewed. Privacy: a participant's token may name only its own row, and its
boards (``top`` and ``view=all`` alike) carry no other rider's heart rate
(``api.viewer.public_board``); operators and the screens they issue viewer tokens for see
everything. (Protocol v1.1 devices get their board on their own connection:
``api.ingest``.)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Query, WebSocket
from starlette.websockets import WebSocketDisconnect

from api.auth import Principal, TokenKind
from api.directws import channel_of
from api.edge import Edge, edge_of
from api.errors import AuthError, BadRequest, Forbidden, Unauthorised, Unavailable, UnknownSession, classify
from api.limits import FrameRate, Verdict
from api.metrics import VIEWER_CONNECTIONS
from api.outbox import Outbox, close_socket
from api.scopes import ScopeReason, bearer_token, chosen_subprotocol, peer_of
from api.viewer import Paging, board_encoder
from cluster.settings import Settings
from devices.protocol import Auth, CloseCode, ProtocolError, decode_device_frame

log = logging.getLogger(__name__)


def install(app: FastAPI, settings: Settings) -> None:
    @app.websocket("/v1/sessions/{session_id}/board")
    async def board(
        ws: WebSocket,
        session_id: str,
        # numbers are taken as text and checked here: a typed parameter that does not parse
        # refuses the handshake (HTTP 403, no reason) before the socket can say why
        rate_text: str = Query(default="1", alias="rate"),
        participant: str | None = Query(default=None),
        view: str = Query(default="top"),
        format: str = Query(default="msgpack"),
        page_text: str | None = Query(default=None, alias="page"),
        page_size_text: str | None = Query(default=None, alias="page_size"),
    ) -> None:
        await ws.accept(subprotocol=chosen_subprotocol(ws))
        peer = peer_of(ws)
        if not edge_of(ws).connections.by_address.acquire(peer):
            await close_socket(ws, CloseCode.THROTTLED, "too many open connections from this address")
            return
        try:
            who = await _board_principal(ws, edge_of(ws), session_id, peer)
            if who is None:
                return
            private = who.kind is TokenKind.PARTICIPANT
            if private and participant is not None and participant != who.participant:
                await close_socket(ws, CloseCode.FORBIDDEN,
                                   f"{ScopeReason.WRONG_PARTICIPANT.value}: a participant's token shows only its own row")
                return
            try:
                rate = float(rate_text)
                page = None if page_text is None else int(page_text)
                page_size = None if page_size_text is None else int(page_size_text)
            except ValueError:
                await close_socket(ws, CloseCode.PROTOCOL, "rate, page and page_size must be numbers")
                return
            if not 1.0 <= rate <= settings.max_board_rate_hz or view not in ("top", "all") or format not in ("msgpack", "json"):
                await close_socket(ws, CloseCode.PROTOCOL, f"rate must be 1-{settings.max_board_rate_hz:g} Hz, view top|all, format msgpack|json")
                return
            paging = _paging(page, page_size, settings.board_page_rows)
            if paging is None:
                await ws.close(CloseCode.PROTOCOL, f"page must be 0 or more, page_size 1-{settings.board_page_rows}")
                return
            if not edge_of(ws).connections.acquire_token(who):
                await close_socket(ws, CloseCode.THROTTLED, "too many open connections with this token")
                return
            try:
                outbox = Outbox(
                    ws,
                    max_frames=settings.send_queue_frames,
                    board_interval_s=1.0 / rate,
                    encode_board=board_encoder(participant, everyone=view == "all", as_json=format == "json",
                                               private=private, paging=paging),
                    channel=channel_of(ws, settings.direct_ws),
                )
                await _serve_board(ws, edge_of(ws), session_id, outbox, who)
            finally:
                edge_of(ws).connections.release_token(who)
        finally:
            edge_of(ws).connections.by_address.release(peer)


def _paging(page: int | None, page_size: int | None, max_rows: int) -> Paging | None:
    """The rows a ``view=all`` viewer asked for (None: a bad request)."""
    size = max_rows if page_size is None else page_size
    if (page is not None and not 0 <= page <= 1_000_000) or not 1 <= size <= max_rows:
        return None
    return Paging(page, size)


async def _board_principal(ws: WebSocket, edge: Edge, session_id: str, peer: str) -> Principal | None:
    """Authenticate and authorise a board viewer, or close the socket and return None."""
    try:
        who = await edge.gate.authenticate(bearer_token(ws), where="ws board", peer=peer)
        await edge.authorise_read(who, session_id, where="ws board", peer=peer, board=True)
        return who
    except AuthError as exc:
        code = CloseCode.UNAUTHORISED if isinstance(exc, Unauthorised) else CloseCode.FORBIDDEN
        await close_socket(ws, code, f"{exc.reason.value}: {exc.message}")
    except (UnknownSession, BadRequest) as exc:
        await close_socket(ws, CloseCode.UNKNOWN_SESSION, exc.message)
    except Exception as exc:  # Redis or Ray down or slow (the lookups raise their own errors): 1013, never internals
        error = classify(exc)
        if isinstance(error, Unavailable):
            log.warning("closing a board socket from %s: %s (%s)", peer, error.message, type(exc).__name__)
            await close_socket(ws, CloseCode.TRY_AGAIN, error.message)
        else:
            log.error("a board socket from %s failed: %r", peer, exc)
            await close_socket(ws, CloseCode.INTERNAL, error.message)
    return None


async def _serve_board(ws: WebSocket, edge: Edge, session_id: str, outbox: Outbox, who: Principal) -> None:
    """Push boards until the viewer leaves; the viewer may only send ``auth`` frames (renewal),
    at a bounded rate, and is closed with 4401 when its token expires unrenewed."""
    pump = edge.pump(session_id)
    pump.add_viewer(outbox)
    writer = asyncio.create_task(outbox.run())
    rate = FrameRate.from_settings(edge.settings)
    VIEWER_CONNECTIONS.inc()
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
        VIEWER_CONNECTIONS.dec()
        pump.remove_viewer(outbox)
        if not outbox.closed:
            outbox.abandon()
            writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)


async def _renew_viewer(ws: WebSocket, edge: Edge, message: Mapping[str, Any], who: Principal) -> Principal:
    """A viewer's ``auth`` frame: a fresh token for the same subject extends the connection."""
    data = message.get("bytes") or message.get("text") or b""
    try:
        frame = decode_device_frame(data)
        if not isinstance(frame, Auth):
            return who
        fresh = await edge.gate.authenticate(frame.token, where="ws board auth", peer=peer_of(ws))
    except (ProtocolError, AuthError, Unavailable):
        return who  # a viewer's bad frame changes nothing; the old token still expires
    if (fresh.kind, fresh.subject) != (who.kind, who.subject):
        edge.gate.refused(Forbidden(ScopeReason.NOT_SAME_PRINCIPAL, "a renewed token must be for the same subject"),
                          where="ws board auth", who=who.describe(), peer=peer_of(ws))
        return who
    return fresh


