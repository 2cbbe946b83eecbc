"""Dense mode: many small classes in one actor process (real Ray, Redis, uvicorn).

* classes created dense share their host's process, each with its own epoch and
  checkpoints, and a swarm over them loses nothing;
* the host process SIGKILLed while the edge streams to it: Ray restarts it, every class
  comes back from its own checkpoint with a new epoch, lost 0, duplicated 0;
* one class passivated or fenced off on a host comes back alone: the others keep their epoch.
"""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import httpx
import pytest
import ray

from actors.session_cell import SessionCell
from actors.session_host import host_name
from sims.swarm import Swarm, SwarmConfig


def _exact(result: dict[str, Any]) -> None:
    assert result["drained"], result
    assert result["lost"] == 0 and result["duplicated"] == 0, result
    assert result["acknowledged"] == result["applied"] == result["sent"] - result["rejected"], result


def _same_host_ids(edge: Any, prefix: str, n: int) -> list[str]:
    """``n`` class ids that hash to the same dense host of ``edge``."""
    directory = edge.config.app.state.edge.directory
    ids: list[str] = []
    k = 0
    while len(ids) < n:
        sid = f"{prefix}-{k}"
        if directory.host_for(sid) == directory.host_for(f"{prefix}-0"):
            ids.append(sid)
        k += 1
    return ids


def _directory(edge: Any) -> Any:
    """A directory of the edge's stack on the caller's event loop (the edge's own lives on its loop)."""
    import redis.asyncio as aioredis

    from cluster.directory import SessionDirectory

    mine = edge.config.app.state.edge.directory
    return SessionDirectory(aioredis.Redis.from_url(edge.settings.redis_url), prefix=mine.prefix,
                            namespace=mine.namespace, actor_settings=mine.actor_settings,
                            dense_hosts=mine.dense_hosts)


async def _info(directory: Any, sid: str) -> dict[str, Any]:
    return dict(await (await directory.handle(sid)).info.remote())


def test_placement_is_chosen_by_expected_size(edge: Any, tokens: Any, unique_id: str) -> None:
    directory = edge.config.app.state.edge.directory
    assert directory.placement_for(None).value == "dedicated"  # the default: a process per class
    assert directory.placement_for(20, "dense").value == "dense"
    small = type(directory)(directory.redis, prefix="x", namespace="n", actor_settings={}, dense_max_riders=50)
    assert small.placement_for(50).value == "dense" and small.placement_for(51).value == "dedicated"
    assert small.placement_for(None).value == "dedicated"
    with httpx.Client(base_url=edge.url, headers=tokens.headers("operator"), timeout=60) as http:
        bad = http.post("/v1/sessions", json={"id": f"dp-{unique_id}", "placement": "sideways"})
        assert bad.status_code == 422
        bad = http.post("/v1/sessions", json={"id": f"dp-{unique_id}", "expected_riders": 0})
        assert bad.status_code == 422
        dense = http.post("/v1/sessions", json={"id": f"dd-{unique_id}", "placement": "dense", "board_size": 3})
        plain = http.post("/v1/sessions", json={"id": f"dn-{unique_id}", "expected_riders": 20})
        assert dense.status_code == plain.status_code == 201
        meta = http.get(f"/v1/sessions/dd-{unique_id}").json()["meta"]
        assert meta["host"] == directory.host_for(f"dd-{unique_id}")
        assert "host" not in http.get(f"/v1/sessions/dn-{unique_id}").json()["meta"]  # threshold 0: dedicated

    async def infos() -> tuple[dict[str, Any], dict[str, Any]]:
        mine = _directory(edge)
        return await _info(mine, f"dd-{unique_id}"), await _info(mine, f"dn-{unique_id}")

    dense_info, plain_info = asyncio.run(infos())
    assert dense_info["host"] == directory.host_for(f"dd-{unique_id}") and plain_info["host"] is None
    assert dense_info["pid"] != plain_info["pid"]


@pytest.mark.timeout(180)
def test_dense_classes_share_a_process_and_survive_its_death(edge: Any, run: Any, unique_id: str) -> None:
    sessions = _same_host_ids(edge, f"dense-{unique_id}", 3)
    config = SwarmConfig(base_url=edge.url, sessions=3, devices=15, seconds=10, board_hz=10,
                         session_prefix=f"dense-{unique_id}", dup_rate=0.1, placement="dense")
    swarm = Swarm(config)
    swarm.sessions = sessions
    seen: dict[str, Any] = {}

    async def killer() -> None:
        directory = _directory(edge)
        while not all([await directory.exists(sid) for sid in sessions]):  # the swarm creates them
            await asyncio.sleep(0.1)
        while True:  # wait until ticks flow over the stream
            try:
                infos = [await _info(directory, sid) for sid in sessions]
            except Exception:  # noqa: BLE001 - not created yet
                await asyncio.sleep(0.2)
                continue
            if infos[0]["stream_ticks"] > 20:
                break
            await asyncio.sleep(0.2)
        assert len({i["pid"] for i in infos}) == 1  # one process for the three classes
        assert len({i["epoch"] for i in infos}) >= 1
        await asyncio.sleep(2.0)
        os.kill(infos[0]["pid"], signal.SIGKILL)
        seen["before"] = infos
        while True:
            try:
                after = [await _info(directory, sid) for sid in sessions]
            except Exception:  # noqa: BLE001 - restarting
                await asyncio.sleep(0.2)
                continue
            if after[0]["stream_ticks"] > 20:
                break
            await asyncio.sleep(0.2)
        seen["after"] = after

    async def scenario() -> dict[str, Any]:
        result, _ = await asyncio.gather(swarm.run(), asyncio.wait_for(killer(), 90))
        return result

    result = run(scenario(), timeout=170)
    _exact(result)
    for before, after in zip(seen["before"], seen["after"], strict=True):
        assert after["pid"] != before["pid"] and after["epoch"] > before["epoch"]
    assert len({i["pid"] for i in seen["after"]}) == 1
    assert result["server_frames"]["welcome"] > config.devices  # devices were asked to resume


@pytest.mark.timeout(120)
def test_one_class_on_a_host_comes_back_alone(edge: Any, tokens: Any, unique_id: str) -> None:
    a, b = _same_host_ids(edge, f"alone-{unique_id}", 2)
    http = httpx.AsyncClient(base_url=edge.url, headers=tokens.headers("operator"), timeout=60)

    async def scenario() -> None:
        for sid in (a, b):
            assert (await http.post("/v1/sessions", json={"id": sid, "placement": "dense"})).status_code == 201
            joined = await http.post(f"/v1/sessions/{sid}/participants", json={"participant": "ann"})
            assert joined.status_code == 201
        directory = _directory(edge)
        first = {sid: await _info(directory, sid) for sid in (a, b)}
        host = ray.get_actor(host_name(directory.host_for(a)), namespace=directory.namespace)
        # passivated: the host drops a only; the next call opens it again with a new epoch
        assert (await http.post(f"/v1/sessions/{a}/passivate")).json()["passivated"] is True
        assert a not in await host.hosted.remote() and b in await host.hosted.remote()
        assert (await http.post(f"/v1/sessions/{a}/passivate")).json()["passivated"] is False  # nothing to do
        directory.forget(a)
        back = {sid: await _info(directory, sid) for sid in (a, b)}
        assert back[a]["epoch"] == first[a]["epoch"] + 1 and back[b]["epoch"] == first[b]["epoch"]
        assert back[a]["pid"] == back[b]["pid"] == first[a]["pid"]
        # another instance of b elsewhere takes a newer epoch: the host's b is fenced off at
        # its next checkpoint (this join's), refuses the call, and only b is opened again
        rival = await asyncio.to_thread(SessionCell, b, dict(directory.actor_settings))
        handle_b = await directory.handle(b)
        with pytest.raises(Exception) as refused:
            await handle_b.join.remote(participant="bob")
        assert "StaleInstance" in repr(refused.value) or "stale" in str(refused.value).lower()
        await rival.close()
        again = {sid: await _info(directory, sid) for sid in (a, b)}
        assert again[b]["epoch"] == rival.epoch + 1 and again[a]["epoch"] == back[a]["epoch"]
        assert again[a]["pid"] == again[b]["pid"] == first[a]["pid"]  # the process never restarted
        snap_b = await handle_b.snapshot.remote()
        assert [p["participant"] for p in snap_b["participants"]] == ["ann"]  # from b's own checkpoint
        await http.aclose()

    asyncio.run(asyncio.wait_for(scenario(), 100))
