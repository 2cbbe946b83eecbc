"""Shared real infrastructure: one redis-server, one local Ray and one uvicorn edge per test session.

Nothing here is mocked. Fixtures are factories that clean up after themselves; every
session id used by a test is unique, so tests share the stack without seeing each other.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.edge_server import EdgeServer

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from cluster.redis_server import EmbeddedRedis

    server = EmbeddedRedis(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def ray_instance() -> Iterator[Any]:
    import ray

    ray.init(
        address="local",  # always a private instance, never one a neighbour started
        num_cpus=2,
        resources={"session_slot": 1000},
        namespace="pulseline-test",
        include_dashboard=False,
        log_to_driver=False,
    )
    yield ray
    ray.shutdown()


@pytest.fixture
def unique_id() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture(scope="session")
def edge_settings(redis_server: Any, ray_instance: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from cluster.settings import Settings

    return Settings(
        redis_url=redis_server.url,
        port=_free_port(),
        prefix=f"t{uuid.uuid4().hex[:6]}",
        namespace="pulseline-test",
        data_dir=Path(tmp_path_factory.mktemp("data")),
        handshake_timeout_s=5.0,  # short for the handshake test, not so short that a busy CI box trips it
        ray_call_timeout_s=30.0,  # (default 10 s) the shared test Ray runs hundreds of actors; tests of the bound set their own
        # (default 15 min) a class a test left behind gives its process back soon: the suite
        # leaves hundreds, and ~150 idle actor processes cost this 2-core box over a core
        idle_deactivate_s=45.0,
    )


@pytest.fixture(scope="session")
def edge(edge_settings: Any) -> Iterator[EdgeServer]:
    server = EdgeServer(edge_settings).start()
    yield server
    server.stop()


@pytest.fixture
def run() -> Any:
    """Run a coroutine to completion on a fresh loop (tests stay plain functions)."""

    def runner(coro: Any, timeout: float = 120.0) -> Any:
        return asyncio.run(asyncio.wait_for(coro, timeout))

    return runner


class DevTokenFactory:
    """Development tokens the test edge accepts: ``tokens("device", device=..., participant=...,
    sessions=[...])``, ``tokens.headers("operator")`` for httpx (see docs/security.md)."""

    def __init__(self, settings: Any) -> None:
        self.settings = settings

    def __call__(self, kind: str, **claims: Any) -> str:
        from api.auth import dev_token

        return dev_token(self.settings, kind=kind, **claims)

    def headers(self, kind: str = "operator", **claims: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {self(kind, **claims)}"}


@pytest.fixture
def tokens(edge_settings: Any) -> DevTokenFactory:
    return DevTokenFactory(edge_settings)


@pytest.fixture
def own_edge(edge_settings: Any) -> Iterator[Callable[..., tuple[EdgeServer, DevTokenFactory]]]:
    """``make(cluster_settings=None, **overrides)``: an edge of the test's own (its settings
    the session's with ``overrides``), stopped after the test."""
    started: list[EdgeServer] = []

    def make(cluster_settings: Any = None, **overrides: Any) -> tuple[EdgeServer, DevTokenFactory]:
        settings = edge_settings.model_copy(update={"port": _free_port(), **overrides})
        server = EdgeServer(settings, cluster_settings=cluster_settings).start()
        started.append(server)
        return server, DevTokenFactory(settings)

    yield make
    for server in started:
        server.stop()


# Tests that start Ray clusters or whole stacks of their own run first, while the box is
# quiet: later, the shared test Ray holds every class earlier tests left running (an idle
# actor process each, ~0.01 cores), and a Ray node's start is limited to 30 s (hard-coded).
RUN_FIRST = ("tests/cluster/test_multinode.py", "tests/cluster/test_class_shards_multinode.py",
             "tests/cluster/test_chaos.py", "tests/cluster/test_up_command.py", "tests/cluster/test_up_edges.py",
             "tests/cluster/test_supervisor.py", "tests/launch/test_demo.py")


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: 0 if item.nodeid.split("::")[0] in RUN_FIRST else 1)  # (stable: order kept within)


def create_retrying(http: httpx.Client, body: dict[str, Any], attempts: int = 3) -> httpx.Response:
    """POST /v1/sessions as a client should: a 503 (the class's actors not started within the
    edge's bound, ``actor_start_timeout_s``, on a loaded box) is retried after its
    Retry-After; creation is idempotent."""
    for _ in range(attempts - 1):
        reply = http.post("/v1/sessions", json=body)
        if reply.status_code != 503:
            return reply
        time.sleep(float(reply.headers.get("retry-after", "1")))
    return http.post("/v1/sessions", json=body)
