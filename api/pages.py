"""The edge's browser pages and the security headers on everything it serves.

* ``GET /v1/sessions/{id}/view``: the live class board (``static/view.html`` + ``view.js``
  + ``view.css``). The page is the same static file for every id, known or not, so it
  tells nobody which sessions exist; the board's WebSocket decides access.
* ``GET /``: a landing page (what is here; in development, the classes running now with
  a view link each, from ``GET /v1/dev/live``, loopback only).
* ``GET /static/{name}``: the pages' scripts and style sheets (a closed set of files), and
  ``/static/swagger/*``: Swagger UI and ReDoc from the ``fastapi-offline`` package, so
  ``/docs`` and ``/redoc`` work offline (no CDN).
* ``GET /v1/sessions/{id}/card``: the class's title, phase and creation time, for anyone
  who may watch its board (the page's header).
* ``POST /v1/sessions/{id}/view-links``: a short-lived, view-only token for one session and
  the link that carries it in the URL fragment (never sent to a server, so never in access
  logs or ``Referer``). Operators and participants of the session may ask for one.

``SecurityHeaders`` (pure ASGI, HTTP only) adds ``X-Content-Type-Options: nosniff`` and
``Referrer-Policy: no-referrer`` to every response, a strict ``Content-Security-Policy``
(no inline script, nothing from other origins, no framing) to the pages, and
``default-src 'none'`` to the API's JSON. The interactive API docs (``/docs``,
``/redoc``) are left without a CSP: they load their assets from a CDN.
"""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import quote
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from actors.profile import ProfileStore
from api.auth import TokenKind, dev_token
from api.errors import Forbidden
from api.scopes import Caller, Member, peer_of
from api.viewer import own_row
from cluster.session_records import SessionRecords

STATIC_DIR = Path(__file__).parent / "static"
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
API_CSP = "default-src 'none'; frame-ancestors 'none'"
_STATIC_TYPES = {
    "view.js": "text/javascript; charset=utf-8", "view.css": "text/css; charset=utf-8",
    "index.js": "text/javascript; charset=utf-8",
    # the JS client (clients/js, linked here): the class page's board connection
    "pulseline.js": "text/javascript; charset=utf-8", "msgpack.js": "text/javascript; charset=utf-8",
}
_SWAGGER_TYPES = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8", "swagger-ui.css": "text/css; charset=utf-8",
    "redoc.standalone.js": "text/javascript; charset=utf-8", "favicon.png": "image/png",
}
_NO_CSP_PATHS = ("/docs", "/redoc")  # their pages start them with inline scripts
LIVE_PHASES = ("scheduled", "lobby", "live", "cooldown")
MAX_LIVE_LISTED = 20
_ALWAYS = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer")]


class SecurityHeaders:
    """Adds the headers above to every HTTP response the wrapped app sends."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                extra = [pair for pair in _ALWAYS if pair[0] not in present]
                if b"content-security-policy" not in present and not path.startswith(_NO_CSP_PATHS):
                    extra.append((b"content-security-policy", API_CSP.encode()))
                message = {**message, "headers": headers + extra}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _page_headers() -> dict[str, str]:
    return {"Content-Security-Policy": PAGE_CSP, "X-Frame-Options": "DENY", "Cache-Control": "no-cache"}


class ViewLinkRequest(BaseModel):
    ttl_s: float | None = Field(default=None, gt=0, description="lifetime; at most the edge's view_token_max_ttl_s")


def _swagger_assets() -> dict[str, bytes]:
    """Swagger UI 5 and ReDoc as shipped in the ``fastapi-offline`` wheel (its files only)."""
    try:
        from importlib.resources import files

        static = files("fastapi_offline") / "static"
        return {name: (static / name).read_bytes() for name in _SWAGGER_TYPES}
    except (ImportError, OSError):  # pragma: no cover - a dependency; /docs then shows no UI
        return {}


def install(app: FastAPI, settings: Any) -> None:
    """The pages, their assets, ``/docs`` (create the app with ``docs_url=None``) and the card."""
    page = (STATIC_DIR / "view.html").read_text(encoding="utf-8")
    index = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    assets = {name: (STATIC_DIR / name).read_bytes() for name in _STATIC_TYPES}
    swagger = _swagger_assets()

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def landing() -> HTMLResponse:
        return HTMLResponse(index, headers=_page_headers())

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> Response:  # browsers ask every page for one: no 404 in their consoles
        return _asset(swagger, _SWAGGER_TYPES, "favicon.png", cache="public, max-age=86400")

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json", title="pulseline edge: API",
            swagger_js_url="/static/swagger/swagger-ui-bundle.js", swagger_css_url="/static/swagger/swagger-ui.css",
            swagger_favicon_url="/static/swagger/favicon.png",
        )

    @app.get("/redoc", response_class=HTMLResponse, include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url="/openapi.json", title="pulseline edge: API",
                              redoc_js_url="/static/swagger/redoc.standalone.js",
                              redoc_favicon_url="/static/swagger/favicon.png", with_google_fonts=False)

    @app.get("/static/swagger/{name}", include_in_schema=False)
    async def swagger_asset(name: str) -> Response:
        return _asset(swagger, _SWAGGER_TYPES, name, cache="max-age=86400")  # versioned with the wheel

    @app.get("/v1/sessions/{session_id}/card")
    async def card(session_id: str, who: Caller, request: Request) -> dict[str, Any]:
        """Title, phase and creation time of a class: for whoever may watch its board."""
        edge = request.app.state.edge
        await edge.authorise_read(who, session_id, where=f"GET {request.url.path}", peer=peer_of(request), board=True)
        return _card(session_id, await edge.directory.meta(session_id))

    @app.get("/v1/sessions/{session_id}/names")
    async def names(session_id: str, who: Caller, request: Request,
                    riders: str = Query("", max_length=MAX_NAMES * 100)) -> dict[str, Any]:
        """Display names (``display_name`` of their profiles) of ``riders`` on the class's live
        board: the page asks for the ids it shows and does not know yet."""
        edge = request.app.state.edge
        await edge.authorise_read(who, session_id, where=f"GET {request.url.path}", peer=peer_of(request), board=True)
        wanted = [r for r in dict.fromkeys(riders.split(",")) if r]
        if len(wanted) > MAX_NAMES:
            raise RequestValidationError([{"type": "too_long", "loc": ("query", "riders"),
                                           "msg": f"at most {MAX_NAMES} riders per request", "input": None}])
        pump = edge.pumps.get(session_id)
        board = pump.board if pump is not None else None
        on_board = [r for r in wanted if board is not None and own_row(board, r) is not None]
        found = await ProfileStore(edge.directory.redis, prefix=settings.prefix).get_many(on_board)
        return {"names": {r: p.display_name for r, p in found.items() if p.display_name}}

    @app.get("/v1/sessions/{session_id}/view", response_class=HTMLResponse, include_in_schema=False)
    async def view_page(session_id: str) -> HTMLResponse:
        return HTMLResponse(page, headers=_page_headers())

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        return _asset(assets, _STATIC_TYPES, name, cache="no-cache")  # changes with the edge

    if settings.auth_mode == "development":
        _install_view_links(app)
        _install_live_list(app)


MAX_NAMES = 200  # riders per GET .../names


def _asset(files: dict[str, bytes], types: dict[str, str], name: str, *, cache: str) -> Response:
    """One file of a closed set (no paths: an unknown name is a 404)."""
    body = files.get(name)
    if body is None:
        return Response("not found", status_code=404, media_type="text/plain")
    return Response(body, media_type=types[name], headers={"Cache-Control": cache})


def _card(session_id: str, meta: dict[str, str]) -> dict[str, Any]:
    created = meta.get("created_at")
    return {"id": session_id, "title": meta.get("title") or None, "phase": meta.get("phase", "lobby"),
            "created_at": float(created) if created else None}


def _install_live_list(app: FastAPI) -> None:
    @app.get("/v1/dev/live", include_in_schema=False)
    async def live(request: Request) -> dict[str, Any]:
        """Development, loopback only (like ``/v1/dev/tokens``, which can mint the same
        links): the classes not ended yet, newest first, each with a view link."""
        if peer_of(request) not in ("127.0.0.1", "::1"):
            raise Forbidden("loopback_only", "the live list is for loopback clients only")
        edge = request.app.state.edge
        newest = await SessionRecords(edge.directory.redis, prefix=edge.directory.prefix).newest(limit=500)
        running = [m for m in newest if m.get("phase", "lobby") in LIVE_PHASES][:MAX_LIVE_LISTED]
        classes = []
        for meta in running:
            sid = meta.get("id") or ""
            if sid:
                link = view_path(sid, view_token(edge.settings, sid, ttl_s=edge.settings.view_token_ttl_s))
                classes.append({**_card(sid, meta), "view": link})
        return {"classes": classes}


def _install_view_links(app: FastAPI) -> None:
    @app.post("/v1/sessions/{session_id}/view-links", status_code=201)
    async def view_link(session_id: str, who: Member, request: Request, body: ViewLinkRequest | None = None) -> dict[str, Any]:
        """A view-only token for this session's board, and the page link that carries it
        (operators, and participants of the session; development mode signs it)."""
        edge = request.app.state.edge
        await edge.authorise_read(who, session_id, where=f"{request.method} {request.url.path}", peer=peer_of(request))
        wanted = edge.settings.view_token_ttl_s if body is None or body.ttl_s is None else body.ttl_s
        ttl_s = min(edge.settings.view_token_max_ttl_s, wanted)
        if who.kind is not TokenKind.OPERATOR:  # a participant never extends its own access
            ttl_s = max(1.0, min(ttl_s, who.expires_at - time.time()))
        token = view_token(edge.settings, session_id, ttl_s=ttl_s)
        return {"token": token, "expires_at": int(time.time() + ttl_s), "url": view_path(session_id, token)}


def view_path(session_id: str, token: str, *, participant: str | None = None) -> str:
    """The page's path with ``token`` in the fragment (kept out of requests and logs), and
    ``participant``'s row highlighted if given."""
    mine = "" if participant is None else f"?participant={quote(participant, safe='')}"
    return f"/v1/sessions/{quote(session_id, safe='')}/view{mine}#token={token}"


def view_token(settings: Any, session_id: str, *, ttl_s: float) -> str:
    """A viewer token for ``session_id`` signed with the development secret. In production
    the identity provider issues viewer tokens (``kind: viewer``, exactly one session) and
    the edge offers no view-links route (it holds no signing key)."""
    return dev_token(settings, kind=TokenKind.VIEWER, ttl_s=ttl_s, sessions=[session_id])
