"""Twenty classes come and go through one edge (the in-suite version of
``scripts/soak_classes.py``, which runs 200): every class ends exact, and once ended and idle
the edge lets go of all of it — no pump, no viewer, no cached handle or endpoint, no session
actor — so an edge's memory does not grow with the classes it served.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from api.cluster_routes import ClusterPolicySettings
from sims.swarm import Swarm, SwarmConfig
from tests.cluster.helpers import actor_alive as _alive
from tests.edge_server import EdgeServer

pytestmark = pytest.mark.integration

WAVES, PER_WAVE = 2, 10  # (scripts/soak_classes.py runs 200)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def quick_edge(edge_settings: Any) -> Iterator[EdgeServer]:
    """An edge of its own that passivates an ended class after 1 s idle (default 60 s)."""
    server = EdgeServer(edge_settings.model_copy(update={"port": _free_port()}),
                        cluster_settings=ClusterPolicySettings(passivate_idle_s=1.0, passivate_interval_s=0.5)).start()
    yield server
    server.stop()


def _released(edge: Any, sessions: list[str], namespace: str) -> bool:
    endpoints = getattr(edge.ticks, "endpoints", {})  # the direct-stream channel's cache
    held = set(edge.pumps) | set(edge.directory._handles) | set(edge.directory._known) | set(endpoints)
    return not held.intersection(sessions) and not any(_alive(sid, namespace) for sid in sessions)


@pytest.mark.timeout(300)
def test_twenty_classes_come_and_go_and_the_edge_keeps_nothing_of_them(quick_edge: EdgeServer, run: Any,
                                                                      unique_id: str) -> None:
    edge = quick_edge.config.app.state.edge  # type: ignore[union-attr]
    namespace = quick_edge.settings.namespace
    served: list[str] = []
    for wave in range(WAVES):
        config = SwarmConfig(base_url=quick_edge.url, sessions=PER_WAVE, devices=PER_WAVE, seconds=3, rate_hz=2.0,
                             board_hz=2.0, session_prefix=f"ret-{unique_id}-{wave}", drain_timeout_s=60)
        swarm = Swarm(config)
        result = run(swarm.run(), timeout=200)
        assert result["drained"] and result["lost"] == 0 and result["duplicated"] == 0, result
        assert result["verified"] is True and result["applied"] == result["sent"] > 0, result
        served += swarm.sessions
        deadline = time.monotonic() + 90  # passivation runs every 0.5 s after 1 s idle
        while not _released(edge, served, namespace) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _released(edge, served, namespace), {
            "pumps": sorted(set(edge.pumps) & set(served)), "handles": sorted(set(edge.directory._handles) & set(served)),
            "known": sorted(set(edge.directory._known) & set(served)), "alive": [s for s in served if _alive(s, namespace)],
        }
    assert len(served) == WAVES * PER_WAVE
    assert edge.connections.by_address.open == {} and edge.connections.by_token.open == {}  # every socket let go
