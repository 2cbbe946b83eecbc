"""The embedded redis-server: relative data dirs, AOF persistence across stop and SIGKILL."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from cluster.redis_server import EmbeddedRedis


def test_relative_data_dir_works_and_persists_across_restart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with EmbeddedRedis("rel/redis") as server:
        redis.Redis.from_url(server.url).set("k", b"v1")
    assert (tmp_path / "rel" / "redis" / "redis.log").exists()
    with EmbeddedRedis("rel/redis") as again:
        assert redis.Redis.from_url(again.url).get("k") == b"v1"


def test_acknowledged_writes_survive_a_sigkill(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "r").start()
    client = redis.Redis.from_url(server.url)
    for i in range(200):
        client.set(f"k{i}", i)
    server.kill()  # no SIGTERM, no fsync on exit: the AOF write() happened before each reply
    with EmbeddedRedis(tmp_path / "r") as restarted:
        values = redis.Redis.from_url(restarted.url).mget([f"k{i}" for i in range(200)])
    assert values == [str(i).encode() for i in range(200)]


@pytest.mark.parametrize("policy", ["always", "everysec"])
def test_appendfsync_is_the_chosen_policy_and_survives_a_restart_on_the_same_port(tmp_path: Path, policy: str) -> None:
    server = EmbeddedRedis(tmp_path / "r", appendfsync=policy).start()
    port = server.port
    try:
        client = redis.Redis.from_url(server.url)
        assert client.config_get("appendfsync") == {"appendfsync": policy}
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        client.set("acked", b"1")
        server.kill()
        assert server.exit_code() is not None
        server.start()  # what the supervisor does: same port, same data dir, same policy
        assert server.port == port and server.exit_code() is None
        again = redis.Redis.from_url(server.url)
        assert again.get("acked") == b"1" and again.config_get("appendfsync") == {"appendfsync": policy}
    finally:
        server.stop()


def test_an_unknown_appendfsync_policy_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="appendfsync"):
        EmbeddedRedis(tmp_path / "r", appendfsync="no")
