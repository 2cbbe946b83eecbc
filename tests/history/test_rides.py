"""Ride records and personal records in a real redis-server: revisions, keyset paging,
records that follow revised rides, and the bests of a ride."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import numpy as np
import pytest

from actors.recording import Recording, best_mean
from history.errors import BadCursor, RideNotFound
from history.records import RecordStore, ride_bests
from history.rides import RideStore, build_ride, decode_series, encode_series

T0 = 1_795_000_000


def series(power: list[float], *, start: int = T0) -> Any:
    rec = Recording()
    n = len(power)
    rows = np.column_stack([start + np.arange(n) + 0.3, np.full(n, 120.0), power, np.full(n, 90.0),
                            np.full(n, 8.0), 8.0 * np.arange(n)])
    rec.add(np.zeros(n, np.int64), rows)
    return rec.series(0)


def summary(rider: str, energy: float) -> dict[str, Any]:
    return {"participant": rider, "energy_kj": energy, "samples": 10, "power_avg": 200.0, "metrics": {}}


def test_bests_are_rolling_means_with_missing_seconds_as_zero() -> None:
    assert best_mean(np.array([1.0, 5.0, 5.0, 1.0]), 2) == 5.0 and best_mean(np.ones(3), 5) is None
    t = np.array([0, 1, 2, 4, 5])  # second 3 recorded nothing: 0 W
    bests = ride_bests(t, np.array([100.0, 100.0, 100.0, 100.0, np.nan]), 1.5)
    assert bests["power_5s_w"] == 80.0 and bests["power_1m_w"] is None and bests["class_output_kj"] == 1.5


def test_a_series_survives_its_compact_encoding() -> None:
    s = series([100.0, np.nan, 250.4, 300.0])
    back = decode_series(encode_series(s))
    assert back.t0 == s.t0 and back.t.tolist() == s.t.tolist()
    for name, column in s.values.items():
        np.testing.assert_array_equal(back.values[name], column)


@pytest.mark.integration
def test_rides_are_revised_only_when_they_change_and_page_newest_first(redis_server: Any, unique_id: str) -> None:
    from storage.checkpoint import client_for

    async def scenario() -> None:
        client = client_for(redis_server.url)
        store = RideStore(client, prefix=f"h{unique_id}")
        try:
            rides = [build_ride(f"c{i}", summary("ann", 10.0 + i), series([200.0] * 5, start=T0 + 100 * (i % 3)),
                                rank=1, riders=1) for i in range(5)]  # start times tie in pairs
            assert [await store.put(r) for r in rides if r] == [1] * 5
            assert await store.put(rides[0]) == 0  # unchanged: not rewritten
            again = build_ride("c0", summary("ann", 11.0), rides[0].series, rank=1, riders=1)
            assert again and await store.put(again) == 2
            seen, cursor = [], None
            for _ in range(4):
                page, cursor = await store.page("ann", limit=2, before=cursor)
                seen += [(r["start_ts"], r["id"]) for r in page]
                if cursor is None:
                    break
            assert len(seen) == 5 and len(set(seen)) == 5 and seen == sorted(seen, reverse=True)
            got = await store.get("ann", "c0")
            assert got.summary["revision"] == 2 and got.summary["totals"]["energy_kj"] == 11.0
            with pytest.raises(RideNotFound):
                await store.get("ann", "nope")
            with pytest.raises(BadCursor):
                await store.page("ann", limit=2, before="garbage")
        finally:
            await client.aclose()

    asyncio.run(scenario())


@pytest.mark.integration
def test_records_follow_the_best_ride_both_ways(redis_server: Any, unique_id: str) -> None:
    from storage.checkpoint import client_for

    async def scenario() -> None:
        client = client_for(redis_server.url)
        store = RecordStore(client, prefix=f"r{unique_id}")
        try:
            first = await store.update("bob", "c1", {"power_5s_w": 300.0, "class_output_kj": 50.0})
            assert {r.metric for r in first} == {"power_5s_w", "class_output_kj"}
            assert await store.update("bob", "c2", {"power_5s_w": 250.0, "class_output_kj": 40.0}) == []
            better = await store.update("bob", "c2", {"power_5s_w": 350.0, "class_output_kj": 40.0})
            assert [(r.metric, r.value, r.previous, r.previous_ride) for r in better] == [
                ("power_5s_w", 350.0, 300.0, "c1")]
            await store.update("bob", "c2", {"power_5s_w": 200.0})  # revised down: c1 holds it again
            records = await store.records("bob")
            assert records["power_5s_w"] == {"value": 300.0, "ride": "c1"} and records["power_20m_w"] is None
        finally:
            await client.aclose()

    asyncio.run(scenario())


@pytest.mark.integration
def test_the_sink_records_rides_and_a_shard_publishes_the_class_result_only_when_handed_it(
        redis_server: Any, unique_id: str) -> None:
    """The history sink as a session calls it: every rider with seconds gets a ride, a rider
    without none; a shard of a big class ranks its riders in the whole class (the ranks it
    is handed) and publishes the class result only when handed the whole class's."""
    from history.sink import record_rides
    from history.results_stream import stream_key
    from storage.checkpoint import client_for

    prefix = f"sink{unique_id}"
    participants = [summary("ann", 20.0), summary("bob", 30.0), {"participant": "cat", "samples": 0}]
    snapshot = {"session": "big", "participants": participants,
                "series": {"ann": series([200.0] * 6), "bob": series([300.0] * 6), "cat": series([])}}

    async def scenario() -> None:
        settings = {"redis_url": redis_server.url, "prefix": prefix}
        whole = await record_rides(settings, snapshot)
        assert whole["rides"] == 2 and whole["records"] == 4  # 5 s power and class output, each rider
        client = client_for(redis_server.url)
        try:
            store = RideStore(client, prefix=prefix)
            assert (await store.summary("bob", "big"))["rank"] == 1
            with pytest.raises(RideNotFound):
                await store.summary("cat", "big")
            shard = {**snapshot, "class_ranks": {"bob": 2, "ann": 3}, "class_riders": 3, "class_result": None}
            assert (await record_rides({**settings, "prefix": f"{prefix}s"}, shard))["rides"] == 2
            ann = await RideStore(client, prefix=f"{prefix}s").summary("ann", "big")
            assert ann["rank"] == 3 and ann["riders"] == 3
            kinds = [f[b"type"] for _, f in await client.xrange(stream_key(f"{prefix}s"))]
            assert b"ride.recorded" in kinds and b"class.result" not in kinds  # another shard publishes it
            whole = [{"rider": r, "rank": k} for k, r in enumerate(("zed", "bob", "ann"), start=1)]
            done = await record_rides({**settings, "prefix": f"{prefix}w"},
                                      {**shard, "class_result": whole, "class_completed": True, "series": {}})
            assert done["rides"] == 0  # (nothing of its own changed: it completed the class)
            entries = await client.xrange(stream_key(f"{prefix}w"))
            result = json.loads(next(f for _, f in entries if f[b"type"] == b"class.result")[b"data"])
            assert result["riders"] == whole and "partial" not in result
        finally:
            await client.aclose()

    asyncio.run(scenario())
