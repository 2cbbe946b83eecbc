"""Clients that fail over: a swarm given two edges keeps its class exact when one edge
goes away mid-class, and a swarm whose only edge never comes back still ends with its
accounting (it used to crash in ``_set_phase`` with ``httpx.ConnectError`` / ``ReadError``).

Both edges are real uvicorn servers on the test session's Ray and Redis (the second is
this test's own and is stopped by it).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sims.swarm import Swarm, SwarmConfig
from tests.conftest import EdgeServer

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def second_edge(edge_settings: Any) -> Iterator[Callable[[], EdgeServer]]:
    started: list[EdgeServer] = []

    def make() -> EdgeServer:
        server = EdgeServer(edge_settings.model_copy(update={"port": _free_port()})).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


async def _stop_after(server: EdgeServer, seconds: float) -> None:
    await asyncio.sleep(seconds)
    await asyncio.to_thread(server.stop)


async def _stop_once_riding(server: EdgeServer, connections: int, then_s: float, limit_s: float = 60.0) -> None:
    """Stop ``server`` mid-class: once it holds ``connections`` open connections (the riders'
    sockets), ``then_s`` later. A fixed delay raced the swarm's start on a loaded CI box
    (the edge went away before any rider had connected to it, so nothing failed over)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while len(server.server.server_state.connections) < connections and loop.time() < deadline:
        await asyncio.sleep(0.05)
    await asyncio.sleep(then_s)
    await asyncio.to_thread(server.stop)


@pytest.mark.timeout(180)
def test_a_swarm_fails_over_to_the_other_edge_and_stays_exact(edge: Any, second_edge: Any, run: Any,
                                                             unique_id: str) -> None:
    doomed = second_edge()
    config = SwarmConfig(base_url=f"{doomed.url},{edge.url}", sessions=2, devices=8, seconds=10, rate_hz=2.0,
                         session_prefix=f"fo-{unique_id}", drain_timeout_s=45)

    async def scenario() -> dict[str, Any]:
        # mid-class (its riders connected and sending), well before the cooldown call
        stopper = asyncio.create_task(_stop_once_riding(doomed, connections=8, then_s=1.5))
        result = await Swarm(config).run()
        await stopper
        return result

    result = run(scenario(), timeout=170)
    assert result["drained"] and result["lost"] == 0 and result["duplicated"] == 0, result
    assert result["applied"] == result["sent"] and result["verified"] is True
    assert result["failovers"] > 0 and result["reconnects"] > 0  # the doomed edge's riders moved
    assert result["phase_failures"] == 0  # cooldown / ended went to the surviving edge
    # the class viewers (on the doomed edge first) moved too: boards seen after it went
    assert any(w["t_s"] >= 5 and w["n"] > 0 for w in result["latency_over_time"]), result["latency_over_time"]


@pytest.mark.timeout(180)
def test_a_swarm_whose_edge_never_comes_back_still_reports(second_edge: Any, run: Any, unique_id: str) -> None:
    lonely = second_edge()
    config = SwarmConfig(base_url=lonely.url, sessions=1, devices=4, seconds=6, rate_hz=2.0,
                         session_prefix=f"gone-{unique_id}", drain_timeout_s=3, http_attempts=2)

    async def scenario() -> dict[str, Any]:
        stopper = asyncio.create_task(_stop_after(lonely, 2.5))
        result = await Swarm(config).run()  # raised httpx.ConnectError in _set_phase before
        await stopper
        return result

    result = run(scenario(), timeout=170)
    assert result["phase_failures"] >= 1 and result["http_failures"]
    unverified = result["unverified"]
    assert unverified["sessions"] == [f"gone-{unique_id}-0"] and unverified["sent"] > 0
    assert unverified["not_acknowledged"] > 0  # said, not hidden: what the server never confirmed
    assert result["verified"] is False and result["sent"] == 0  # the server-checked numbers cover no session


@pytest.mark.timeout(60)
def test_the_token_provider_and_the_bridge_take_several_edges(edge: Any, run: Any) -> None:
    from devices.bridge import BridgeConfig
    from devices.client import DevTokens

    dead = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    tokens = DevTokens([dead, edge.url], timeout_s=5)
    assert run(tokens(kind="operator")).count(".") == 2  # a JWT, from the second edge
    assert tokens.base_url == edge.url  # and it stays there

    config = BridgeConfig(url=f"{dead}, {edge.url}/", session="s", assignments=(), spool_path=Path("unused"))
    assert config.ws_urls == [f"{dead.replace('http', 'ws')}/v1/devices", f"{edge.ws_url}/v1/devices"]
    assert config.ws_url == config.ws_urls[0]
