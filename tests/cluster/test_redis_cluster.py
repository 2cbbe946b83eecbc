"""Redis beyond one instance, selected by the URL: a real 3-primary/3-replica Redis Cluster and
a real Sentinel group, both started here from the embedded redis-server binary, under an edge
of their own (the test session's Ray). A class runs exact on each; a primary SIGKILLed
mid-class is replaced by its replica and no acknowledged sample is lost (the URL asks for
``wait_replicas=1``: an ack needs the checkpoint on the primary and on a replica).
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from storage.checkpoint import CheckpointStore, key_base
from actors.errors import NotReplicated
from storage.redis_url import connect_sync
from cluster.redis_cluster import EmbeddedRedisCluster, EmbeddedSentinels
from cluster.session_records import session_keys
from sims.swarm import Swarm, SwarmConfig
from tests.edge_server import EdgeServer

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedisCluster]:
    cluster = EmbeddedRedisCluster(tmp_path_factory.mktemp("rcluster"), primaries=3, replicas=1,
                                   appendfsync="always").start()
    yield cluster
    cluster.stop()


@pytest.fixture
def edge_on(edge_settings: Any) -> Iterator[Callable[[str], EdgeServer]]:
    """An edge of this test's own on the given Redis URL; its session actors die with it."""
    started: list[EdgeServer] = []

    def make(url: str, **overrides: Any) -> EdgeServer:
        settings = edge_settings.model_copy(update={
            "port": _free_port(), "redis_url": url, "prefix": f"rc{uuid.uuid4().hex[:6]}", **overrides,
        })
        server = EdgeServer(settings).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()
        _kill_sessions(server)


def _kill_sessions(server: EdgeServer) -> None:
    import ray

    from actors.session_actor import actor_name
    from actors.session_host import host_name

    edge = server.config.app.state.edge  # type: ignore[union-attr]
    names = [actor_name(sid) for sid in list(edge.pumps) + list(edge.directory._known)]
    if server.settings.default_placement == "dense":
        names += [host_name(f"{server.settings.prefix}.{i}") for i in range(server.settings.dense_hosts)]
    for name in names:
        try:
            ray.kill(ray.get_actor(name, namespace=server.settings.namespace), no_restart=True)
        except ValueError:
            pass


def _class(edge: EdgeServer, prefix: str, *, seconds: float = 10) -> SwarmConfig:
    return SwarmConfig(base_url=edge.url, sessions=3, devices=9, seconds=seconds, rate_hz=4.0,
                       session_prefix=prefix, drain_timeout_s=60)


def _exact(result: dict[str, Any]) -> None:
    assert result["drained"] and result["lost"] == 0 and result["duplicated"] == 0, result
    assert result["verified"] is True and result["acknowledged"] == result["applied"] == result["sent"] > 0, result


@pytest.mark.timeout(240)
@pytest.mark.parametrize("placement", ["dedicated", "dense"])
def test_a_class_runs_exact_on_a_redis_cluster(redis_cluster: EmbeddedRedisCluster, edge_on: Any, run: Any,
                                               tokens: Any, unique_id: str, placement: str) -> None:
    """Each class in its own actor, or (dense) several classes in one host actor sharing one
    cluster client."""
    edge = edge_on(redis_cluster.url, default_placement=placement, namespace=f"rc-{unique_id}")
    result = run(Swarm(_class(edge, f"rc-{unique_id}")).run(), timeout=200)
    _exact(result)
    client = connect_sync(redis_cluster.url)
    assert isinstance(client, redis.RedisCluster)
    homes = set()
    for i in range(3):
        keys = session_keys(edge.settings.prefix, f"rc-{unique_id}-{i}")
        assert client.exists(*keys[:5]) == 5  # meta, checkpoint, its epoch, the instance epoch, the recording
        assert len({client.keyslot(k) for k in keys}) == 1  # with the seat book's keys: all on one slot
        homes.add(client.get_node_from_key(keys[0]).port)
    assert homes <= {n.port for n in redis_cluster.nodes[:3]}

    ops = tokens.headers()  # listing reads metas on several slots; purging deletes one slot's keys
    listed = httpx.get(f"{edge.url}/v1/sessions?state=ended&limit=2", headers=ops, timeout=30).json()
    following = httpx.get(f"{edge.url}/v1/sessions?state=ended&limit=2&after={listed['next']}", headers=ops,
                          timeout=30).json()
    assert sorted(m["id"] for m in listed["sessions"] + following["sessions"]) == [f"rc-{unique_id}-{i}" for i in range(3)]
    assert httpx.delete(f"{edge.url}/v1/sessions/rc-{unique_id}-0", headers=ops, timeout=30).status_code == 200
    assert client.exists(*session_keys(edge.settings.prefix, f"rc-{unique_id}-0")) == 0
    client.close()


@pytest.mark.timeout(180)
def test_a_sharded_leaderboard_lives_on_the_cluster_and_reshards(redis_cluster: EmbeddedRedisCluster, edge_on: Any,
                                                                 tokens: Any, run: Any, unique_id: str) -> None:
    from leaderboards import Leaderboards

    edge = edge_on(redis_cluster.url)
    name = f"rclb-{unique_id}"
    with httpx.Client(base_url=edge.url, timeout=60, headers=tokens.headers()) as http:
        assert http.post("/v1/leaderboards", json={"name": name, "metric": "kj", "operator": "sum",
                                                   "shard_count": 2}).status_code == 201
        scores = [{"user": f"u{i}", "source": "c1", "score": float(i), "achieved_at": 1.8e9} for i in range(40)]
        assert http.post(f"/v1/leaderboards/{name}/scores", json={"scores": scores}).status_code == 200
        assert http.post(f"/v1/leaderboards/{name}/reshard", json={"shard_count": 3}).json()["moved"] == 40
        assert http.get(f"/v1/leaderboards/{name}/users/u39/rank").json()["rank"] == 1
        assert [e["user"] for e in http.get(f"/v1/leaderboards/{name}/top?n=3").json()["entries"]] == ["u39", "u38", "u37"]
    client = connect_sync(redis_cluster.url)
    prefix = edge.settings.prefix
    assert client.exists(*(f"{prefix}:lbshard:{{{name}:0:{s}}}:epoch" for s in range(2))) == 0  # the old shards: gone
    assert client.exists(*(f"{prefix}:lbshard:{{{name}:1:{s}}}:epoch" for s in range(3))) == 3
    client.close()

    async def drop() -> None:
        lb = Leaderboards.connect(redis_cluster.url, prefix=prefix, namespace=edge.settings.namespace)
        try:
            await lb.drop(name)
        finally:
            await lb.aclose()

    run(drop())


@pytest.mark.timeout(60)
def test_a_write_counts_only_once_the_primarys_own_replicas_have_it(redis_cluster: EmbeddedRedisCluster, run: Any,
                                                                   unique_id: str) -> None:
    """One replica per primary: ``wait_replicas=1`` is met and ``2`` is not — the WAIT goes to
    the primary that took the write, not to every primary (three replicas in all)."""

    def store(wanted: int) -> CheckpointStore:
        return CheckpointStore(f"{redis_cluster.url}?wait_replicas={wanted}&wait_timeout_ms=200", prefix="w",
                               kind="session", ident=f"wait-{unique_id}")

    async def write(wanted: int, epoch: int) -> None:
        writer = store(wanted)
        writer.epoch = epoch
        try:
            await writer.write(b"state")
        finally:
            await writer.close()

    owner = store(1)
    assert owner.acquire() is None  # the epoch's INCR reached a replica too
    run(write(1, owner.epoch))
    with pytest.raises(NotReplicated) as short:
        run(write(2, owner.epoch))
    assert (short.value.wanted, short.value.acked) == (2, 1)
    with pytest.raises(NotReplicated):
        store(2).acquire()


@pytest.mark.timeout(300)
def test_a_primary_killed_mid_class_loses_no_acknowledged_sample(redis_cluster: EmbeddedRedisCluster, edge_on: Any,
                                                                 run: Any, unique_id: str) -> None:
    edge = edge_on(f"{redis_cluster.url}?wait_replicas=1&wait_timeout_ms=500")
    prefix = f"rcf-{unique_id}"
    victim_key = f"{key_base(edge.settings.prefix, 'session', f'{prefix}-0')}:ckpt"
    victim = redis_cluster.primary_of(victim_key)

    async def scenario() -> dict[str, Any]:
        async def kill_later() -> None:
            await asyncio.sleep(5.0)  # mid-class: samples acked and more in flight
            await asyncio.to_thread(redis_cluster.fail_over, victim)

        killer = asyncio.create_task(kill_later())
        result = await Swarm(_class(edge, prefix, seconds=14)).run()
        await killer
        return result

    result = run(scenario(), timeout=280)
    _exact(result)
    assert redis_cluster.primary_of(victim_key) is not victim  # a replica took the slots over
    assert victim.pid is not None and redis_cluster.healthy()  # and the old primary follows it now


@pytest.mark.timeout(300)
def test_a_sentinel_master_killed_mid_class_loses_no_acknowledged_sample(tmp_path: Path, edge_on: Any, run: Any,
                                                                       unique_id: str) -> None:
    with EmbeddedSentinels(tmp_path / "sentinels", sentinels=3, appendfsync="always") as group:
        first_master = group.master_port()
        edge = edge_on(f"{group.url}?wait_replicas=1&wait_timeout_ms=500")

        async def scenario() -> dict[str, Any]:
            async def kill_later() -> None:
                await asyncio.sleep(5.0)
                await asyncio.to_thread(group.fail_over)

            killer = asyncio.create_task(kill_later())
            result = await Swarm(_class(edge, f"rs-{unique_id}", seconds=14)).run()
            await killer
            return result

        result = run(scenario(), timeout=280)
        _exact(result)
        assert group.master_port() != first_master  # the sentinels promoted the replica
