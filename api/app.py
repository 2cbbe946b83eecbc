"""The FastAPI edge: HTTP for sessions and participants, WebSockets for devices and boards.

``create_app(settings)`` builds the app; Ray must already be initialised in this process
and ``settings.redis_url`` resolved (``launch.stack`` does both). It raises
``api.auth.InsecureSettings`` (and so refuses to start) when production settings lack an
issuer or carry a shared secret.

Every route but the health probes (``/livez``, ``/readyz``, ``/healthz``: ``api.health``),
the API docs and the static board page needs a token
(``api.scopes`` says which kind may do what); refusals are 401 / 403 over HTTP and close
codes 4401 / 4403 on WebSockets.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

from fastapi import Depends, FastAPI, WebSocket
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest, start_http_server

from actors import gctune
from api import board_socket, dev_tokens, history_routes, rider_routes, session_routes, webhook_routes
from api.webhook_routes import webhook_dispatcher
from api.auth import build_verifier
from api.edge import Edge, edge_of, redis_client
from api.errors import install_handlers
from api.health import Readiness
from api.health import install as install_health
from api.httpguard import HttpGuard
from api.ingest import DeviceConnection
from api.log_context import RequestIds
from api.metrics import EDGES
from api.monitor import EdgeMonitor
from api.openapi import document
from api.pages import SecurityHeaders
from api.pages import install as install_pages
from api.scopes import Gate, install_log_redaction, operator
from cluster.directory import SessionDirectory
from cluster.settings import Settings

log = logging.getLogger(__name__)

__all__ = ["Edge", "create_app"]


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


def metrics_listener(settings: Settings) -> Any:
    """Prometheus' own listener on ``metrics_host:metrics_port`` (no auth: bind it to a
    private address), or None when ``metrics_port`` is 0; a thread of prometheus-client's,
    serving the same registry as ``/metrics``. A port that is taken refuses the start."""
    if not settings.metrics_port:
        return None
    server, _thread = start_http_server(settings.metrics_port, addr=settings.metrics_host)
    log.info("metrics on http://%s:%s/metrics (no auth)", settings.metrics_host, settings.metrics_port)
    return server


def create_app(settings: Settings) -> FastAPI:
    """The edge: lifespan (Redis client, directory, ``Edge``), middleware, and the routes of
    ``api.pages``, ``api.health``, ``api.session_routes``, ``api.rider_routes``, ``api.history_routes``, ``api.webhook_routes`` (and the webhook dispatcher), ``api.board_socket``, the device
    socket (``api.ingest``), ``/metrics`` and, in development, ``api.dev_tokens``."""
    gate = Gate(build_verifier(settings))  # refuses insecure production settings right here

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = redis_client(settings)
        directory = SessionDirectory(
            client, prefix=settings.prefix, namespace=settings.namespace, actor_settings=settings.actor_settings(),
            dense_hosts=settings.dense_hosts, dense_max_riders=settings.dense_max_riders,
            default_placement=settings.default_placement,
            class_shard_riders=settings.class_shard_riders, max_class_shards=settings.max_class_shards,
            creation_timeout_s=settings.actor_start_timeout_s,
            class_shard_growth=settings.class_shard_growth,
        )
        app.state.edge = edge = Edge(settings, directory, gate)
        EDGES.edges.add(edge)
        monitor = EdgeMonitor(client, redis_timeout_s=settings.redis_timeout_s)
        monitor.start()

        hooks = webhook_dispatcher(client, settings)
        if hooks is not None:
            await hooks.start()
        scrape = metrics_listener(settings)
        # Everything alive now (Ray, FastAPI, imported modules: ~200k objects) lives as long
        # as the edge: out of the cyclic GC, whose full passes over it took ~110 ms of the
        # event loop each in the capacity bench; and young collections every 10,000 new
        # objects, not 700, so a second-long board no longer reaches the old generation
        # (actors/gctune.py, docs/benchmarks.md).
        gctune.settle()
        yield
        if scrape is not None:
            scrape.shutdown()
            scrape.server_close()
        await monitor.aclose()
        if hooks is not None:
            await hooks.stop()
        EDGES.edges.discard(edge)
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
    app.add_middleware(RequestIds)  # outermost: every line of a request, even a refused one, has its id
    install_log_redaction()
    install_pages(app, settings)
    for extension in settings_extensions():
        extension(app)

    @app.get("/metrics", response_class=PlainTextResponse,
             dependencies=[] if settings.public_metrics else [Depends(operator)])
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(generate_latest().decode(), media_type=CONTENT_TYPE_LATEST)

    if settings.auth_mode == "development":
        dev_tokens.install(app, settings)
    session_routes.install(app, settings)
    rider_routes.install(app, settings)
    history_routes.install(app, settings)
    webhook_routes.install(app, settings)
    board_socket.install(app, settings)

    @app.websocket("/v1/devices")
    async def devices(ws: WebSocket) -> None:
        await DeviceConnection(ws, edge_of(ws)).serve()

    undocumented = document(app)  # response models, descriptions, errors (api.openapi)
    if undocumented:
        log.warning("routes without an entry in api.openapi.ROUTES: %s", ", ".join(undocumented))
    return app
