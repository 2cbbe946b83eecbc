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
