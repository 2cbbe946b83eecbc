"""The results stream on a real redis-server: a consumer group loses nothing across a Redis
restart (SIGKILL, AOF with fsync always), retention trims by age and length, and
``pulseline results export`` writes NDJSON and Parquet."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from history import results_stream
from launch.cli import main as cli_main

pytestmark = pytest.mark.integration


def entries(n: int, start: int = 0) -> list[dict[str, str]]:
    return [results_stream.entry("ride.recorded", f"c{i}", {"n": i}, rider=f"r{i % 3}") for i in range(start, start + n)]


def test_a_consumer_group_loses_nothing_across_a_redis_restart(tmp_path: Path) -> None:
    from cluster.redis_server import EmbeddedRedis
    from storage.checkpoint import client_for

    server = EmbeddedRedis(tmp_path / "redis", appendfsync="always").start()
    port, prefix = server.port, "rs"
    key = results_stream.stream_key(prefix)
    stored: list[int] = []  # what the consumer processed and acknowledged

    async def consume(client: Any, start: str, count: int) -> list[Any]:
        got = await client.xreadgroup("warehouse", "loader-1", {key: start}, count=count)
        return got[0][1] if got else []

    async def before() -> None:
        client = client_for(server.url)
        try:
            await results_stream.publish(client, prefix, entries(50))
            await client.xgroup_create(key, "warehouse", id="0")
            batch = await consume(client, ">", 20)
            assert len(batch) == 20
            for stream_id, fields in batch[:10]:  # the loader stored 10 and died before the rest
                stored.append(json.loads(fields[b"data"])["n"])
                await client.xack(key, "warehouse", stream_id)
        finally:
            await client.aclose()

    async def after() -> None:
        client = client_for(server.url)
        try:
            await results_stream.publish(client, prefix, entries(30, start=50))
            for start in ("0", ">"):  # its own pending entries first, then new ones
                while batch := await consume(client, start, 7):
                    for stream_id, fields in batch:
                        stored.append(json.loads(fields[b"data"])["n"])
                        await client.xack(key, "warehouse", stream_id)
            pending = await client.xpending(key, "warehouse")
            assert pending["pending"] == 0
        finally:
            await client.aclose()

    try:
        asyncio.run(before())
        server.kill()
        server = EmbeddedRedis(tmp_path / "redis", port=port, appendfsync="always").start()
        asyncio.run(after())
    finally:
        server.stop()
    assert sorted(stored) == list(range(80))  # every entry once, none lost


def test_retention_trims_by_age_and_by_length(redis_server: Any, unique_id: str) -> None:
    from storage.checkpoint import client_for

    async def scenario() -> None:
        client = client_for(redis_server.url)
        prefix = f"ret{unique_id}"
        key = results_stream.stream_key(prefix)
        try:
            await results_stream.publish(client, prefix, entries(10), approximate=False)
            await asyncio.sleep(0.3)
            await results_stream.publish(client, prefix, entries(2), retention_s=0.2, approximate=False)
            assert await client.xlen(key) == 2  # the 10 older ones aged out
            await results_stream.publish(client, prefix, entries(6), maxlen=3, approximate=False)
            assert await client.xlen(key) == 3
        finally:
            await client.aclose()

    asyncio.run(scenario())


def test_export_writes_a_time_range_as_ndjson_and_parquet(redis_server: Any, unique_id: str, tmp_path: Path,
                                                          capsys: Any) -> None:
    from storage.checkpoint import client_for

    prefix = f"exp{unique_id}"

    async def fill() -> tuple[float, float]:
        client = client_for(redis_server.url)
        try:
            await results_stream.publish(client, prefix, entries(3))
            await asyncio.sleep(0.05)
            since = time.time()
            await results_stream.publish(client, prefix, [results_stream.entry("record.set", "c9", {"value": 412.5},
                                                                                rider="ann")] + entries(4, start=10))
            until = time.time()
            await asyncio.sleep(0.05)
            await results_stream.publish(client, prefix, entries(2, start=20))
            return since, until
        finally:
            await client.aclose()

    since, until = asyncio.run(fill())
    common = ["results", "export", "--since", f"{since:.3f}", "--until", f"{until:.3f}", "--redis-url",
              redis_server.url, "--prefix", prefix]
    out = tmp_path / "r.ndjson"
    assert cli_main([*common, "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["type"] for r in rows] == ["record.set"] + ["ride.recorded"] * 4
    assert rows[0]["data"] == {"value": 412.5} and rows[0]["rider"] == "ann" and rows[0]["v"] == "1"
    assert [r["data"]["n"] for r in rows[1:]] == [10, 11, 12, 13]
    parquet = tmp_path / "r.parquet"
    assert cli_main([*common, "--format", "parquet", "--out", str(parquet)]) == 0
    table = pq.read_table(parquet).to_pylist()
    assert [r["stream_id"] for r in table] == [r["stream_id"] for r in rows]
    assert json.loads(table[0]["data"]) == {"value": 412.5} and table[0]["at"].year >= 2026
    capsys.readouterr()
    assert cli_main(["results", "export", "--since", "yesterday", "--redis-url", redis_server.url]) == 2
    assert "neither an ISO 8601 time" in capsys.readouterr().err
    assert cli_main([*common, "--format", "parquet"]) == 2
    assert cli_main(["results", "export", "--since", "100", "--until", "50", "--redis-url", redis_server.url]) == 2


def test_export_finds_the_embedded_redis_of_the_stack_on_its_data_dir(redis_server: Any, unique_id: str, tmp_path: Path,
                                                                      monkeypatch: Any, capsys: Any) -> None:
    """Without --redis-url, `results export` reads the Redis of the `pulseline up` running on
    --data-dir (its supervisor's state file), and says what to do when none runs."""
    from storage.checkpoint import client_for

    for name in ("REDIS_URL", "PULSELINE_REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    prefix = f"dd{unique_id}"

    async def fill() -> None:
        client = client_for(redis_server.url)
        try:
            await results_stream.publish(client, prefix, entries(3))
        finally:
            await client.aclose()

    asyncio.run(fill())
    state = tmp_path / "supervisor.json"
    state.write_text(json.dumps({"pid": os.getpid(), "redis_url": redis_server.url, "processes": {}}))  # a live stack
    out = tmp_path / "r.ndjson"
    args = ["results", "export", "--since", "0", "--data-dir", str(tmp_path), "--prefix", prefix, "--out", str(out)]
    assert cli_main(args) == 0
    assert len(out.read_text().splitlines()) == 3
    state.write_text(json.dumps({"pid": 2**22 + 1, "redis_url": redis_server.url, "processes": {}}))  # stopped
    capsys.readouterr()
    assert cli_main(args) == 2 and "start the stack" in capsys.readouterr().err
