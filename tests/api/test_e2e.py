"""A swarm against the real edge (uvicorn) + real Ray + real Redis; and an actor crash mid-swarm."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import httpx
import pytest
import ray

from actors.session_actor import actor_name
from sims.swarm import Swarm, SwarmConfig


def _assert_exact(result: dict[str, Any]) -> None:
    assert result["drained"], result
    assert result["lost"] == 0, result
    assert result["duplicated"] == 0, result
    assert result["applied"] == result["sent"] - result["rejected"], result
    assert result["acknowledged"] == result["applied"], result
    assert result["energy_max_abs_error_kj"] < 1e-6, result


def test_swarm_end_to_end_is_exact(edge: Any, run: Any, unique_id: str, tokens: Any) -> None:
    config = SwarmConfig(
        base_url=edge.url, sessions=3, devices=15, seconds=6, board_hz=10,
        session_prefix=f"e2e-{unique_id}", dup_rate=0.2, bad_rate=0.05,
    )
    swarm = Swarm(config)
    result = run(swarm.run())
    _assert_exact(result)
    assert result["sent"] == 15 * 6
    assert result["rejected"] == sum(len(r.stream.rejected_seqs) for r in swarm.riders)
    assert set(result["rejected_by_reason"]) <= {"out_of_range"}
    assert result["latency_ms"]["samples"] > 0 and result["boards_received"] > 0
    # the server's per-participant totals equal what each simulated rider sent
    for sid in swarm.sessions:
        snap = httpx.get(f"{edge.url}/v1/sessions/{sid}", headers=tokens.headers()).json()
        by_participant = {p["participant"]: p for p in snap["participants"]}
        for rider in (r for r in swarm.riders if r.stream.session == sid):
            server = by_participant[rider.stream.participant]
            assert server["samples"] == rider.stream.sent - len(rider.stream.rejected_seqs)
            assert server["rejected"] == len(rider.stream.rejected_seqs)
            assert server["energy_kj"] == pytest.approx(rider.truth_energy_kj, abs=1e-6)


def test_hub_connections_carry_many_devices(edge: Any, run: Any, unique_id: str) -> None:
    config = SwarmConfig(
        base_url=edge.url, sessions=2, devices=20, seconds=4, hub_size=10, session_prefix=f"hub-{unique_id}",
    )
    swarm = Swarm(config)
    result = run(swarm.run())
    _assert_exact(result)
    assert len(swarm.clients) == 2


def test_actor_killed_mid_swarm_loses_nothing(edge: Any, run: Any, unique_id: str) -> None:
    config = SwarmConfig(
        base_url=edge.url, sessions=1, devices=10, seconds=10, board_hz=10, session_prefix=f"crash-{unique_id}",
    )
    swarm = Swarm(config)
    sid = swarm.sessions[0]
    killed: dict[str, Any] = {}

    async def killer() -> None:
        await asyncio.sleep(4.0)
        handle = ray.get_actor(actor_name(sid), namespace=edge.settings.namespace)
        before = await handle.info.remote()
        os.kill(before["pid"], signal.SIGKILL)
        killed["before"] = before
        await asyncio.sleep(3.0)
        killed["after"] = await handle.info.remote()

    async def scenario() -> dict[str, Any]:
        result, _ = await asyncio.gather(swarm.run(), killer())
        return result

    result = run(scenario())
    _assert_exact(result)
    assert killed["after"]["pid"] != killed["before"]["pid"]
    assert killed["after"]["epoch"] > killed["before"]["epoch"]
    assert result["server_frames"]["welcome"] > config.devices  # devices were asked to resume
