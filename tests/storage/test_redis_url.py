"""The Redis URL decides the topology (one server, a cluster, a Sentinel master), and every key
of one session or one leaderboard shard carries the same cluster hash tag."""

from __future__ import annotations

import binascii
import re

import pytest
import redis
import redis.asyncio as aioredis

from storage.checkpoint import CheckpointStore, key_base
from leaderboards.shard_actor import shard_keys
from storage.redis_url import RedisUrlError, Topology, connect, connect_sync, parse, redact
from cluster.session_records import session_keys
from cluster.settings import Settings


def _slot(key: str) -> int:
    """Redis Cluster's key slot (CRC16/XMODEM of the hash tag, mod 16384)."""
    start = key.find("{")
    if start >= 0:
        end = key.find("}", start + 1)
        if end > start + 1:
            key = key[start + 1:end]
    return binascii.crc_hqx(key.encode(), 0) % 16384


def test_a_plain_url_stays_a_plain_url_without_our_options() -> None:
    target = parse("redis://:pw@10.0.0.5:6380/2?wait_replicas=1&wait_timeout_ms=250&socket_timeout=3")
    assert target.topology is Topology.SINGLE
    assert target.wait_replicas == 1 and target.wait_timeout_ms == 250
    assert target.url == "redis://:pw@10.0.0.5:6380/2?socket_timeout=3"
    assert target.addresses == [("10.0.0.5", 6380)]
    assert parse("unix:///tmp/redis.sock").addresses == []
    client = connect_sync(target)
    assert isinstance(client, redis.Redis)
    client.close()


def test_a_cluster_url_names_its_seed_nodes() -> None:
    target = parse("redis+cluster://user:s%40cret@10.0.0.1:7000,10.0.0.2:7001,10.0.0.3?wait_replicas=1")
    assert target.topology is Topology.CLUSTER
    assert target.nodes == (("10.0.0.1", 7000), ("10.0.0.2", 7001), ("10.0.0.3", 6379))
    assert (target.username, target.password, target.tls, target.wait_replicas) == ("user", "s@cret", False, 1)
    assert parse("rediss+cluster://h:1/").tls is True
    assert isinstance(connect(target), aioredis.RedisCluster)  # lazy: connects on the first command


def test_a_sentinel_url_names_its_sentinels_and_service() -> None:
    target = parse("redis+sentinel://:masterpw@s1:26379,s2:26380/pulseline/3?sentinel_password=spw")
    assert target.topology is Topology.SENTINEL
    assert target.nodes == (("s1", 26379), ("s2", 26380))
    assert (target.service, target.db, target.password, target.sentinel_password) == ("pulseline", 3, "masterpw", "spw")
    assert isinstance(connect(target), aioredis.Redis)  # a Sentinel-managed master


@pytest.mark.parametrize(("url", "says"), [
    ("", "no Redis URL"),
    ("http://h:1", "unsupported Redis URL scheme 'http'"),
    ("redis+shard://h:1", "unsupported"),
    ("redis+cluster://h:1/3", "only database 0"),
    ("redis+cluster://", "no host:port"),
    ("redis+cluster://h:port", "port of 'h:port' in a Redis URL must be a number"),
    ("redis+sentinel://s1:26379", "names its service"),
    ("redis+sentinel://s1:26379/svc/x", "database in a Redis URL must be a number"),
    ("redis://h:1?wait_replicas=-1", "wait_replicas in a Redis URL must not be negative"),
    ("redis://h:1?sentinel_password=x", "only applies to redis+sentinel"),
    ("redis+cluster://h:1?socket_timeout=3", "unknown option(s) socket_timeout in a cluster URL"),
])
def test_a_bad_url_gets_a_clear_error(url: str, says: str) -> None:
    with pytest.raises(RedisUrlError, match=re.escape(says)):
        parse(url)


def test_settings_refuse_a_bad_redis_url_and_errors_never_show_the_password() -> None:
    with pytest.raises(ValueError, match="names its service"):
        Settings(redis_url="redis+sentinel://:hunter2@s1:26379")
    assert redact("redis+cluster://u:hunter2@h:1,h:2") == "redis+cluster://u:***@h:1,h:2"
    with pytest.raises(RedisUrlError) as bad:
        parse("redis+cluster://u:hunter2@")
    assert "hunter2" not in str(bad.value)


def test_every_key_of_a_session_or_a_shard_lives_on_one_slot() -> None:
    for sid in ("class-1", "a:b.c-d_e", "x" * 128):
        keys = session_keys("pl", sid)
        store = CheckpointStore("redis://127.0.0.1:1/0", prefix="pl", kind="session", ident=sid)
        keys += [store.epoch_key, store.ckpt_key, store.ckpt_epoch_key]
        assert len({_slot(k) for k in keys}) == 1, keys
        assert all(k.startswith(f"pl:session:{{{sid}}}:") for k in keys)
    for shard in range(4):
        keys = shard_keys("pl", "ftp-weekly", shard, generation=2)
        assert len({_slot(k) for k in keys}) == 1 and len(keys) == 4, keys
    slots = {_slot(session_keys("pl", f"class-{i}")[0]) for i in range(50)}
    assert len(slots) > 40  # different sessions spread over the slots (and so over primaries)
    with pytest.raises(ValueError, match="braces"):
        key_base("pl", "session", "a}b")


async def test_a_burst_of_more_commands_than_connections_waits_instead_of_failing(redis_server: object) -> None:
    """300 commands at once, each holding its connection ~0.2 s (redis-py's own pool raises
    ``MaxConnectionsError`` past 100): with a pool of 64 every one completes, the extra ones
    after waiting for a free connection, and the client never opens more than 64."""
    import asyncio

    client = connect(redis_server.url, pool_size=64, client_name="burst")  # type: ignore[attr-defined]
    try:
        results = await asyncio.gather(*(client.blpop([f"burst:{k}"], timeout=0.2) for k in range(300)))
        assert results == [None] * 300
        opened = [c for c in await client.client_list() if c.get("name") == "burst"]
        assert 1 <= len(opened) <= 64
        assert await client.ping()
    finally:
        await client.aclose()
