"""A class's joined set in batches (real Redis): a class's start notes thousands of first
joins in one round trip, each rider once, with the class's retention."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from cluster.session_records import SessionRecords
from history.events import events_key, publish_rider_events


async def test_first_joins_names_each_new_rider_once_and_takes_the_class_retention(
        redis_server: Any, unique_id: str) -> None:
    client = aioredis.Redis.from_url(redis_server.url)
    records = SessionRecords(client, prefix=f"jr-{unique_id}")
    sid = "c1"
    try:
        await client.hset(records.meta_key(sid), "created_at", 1)
        await client.pexpire(records.meta_key(sid), 60_000)
        riders = [f"r{k}" for k in range(2000)]
        assert await records.first_joins(sid, riders[:1500]) == riders[:1500]
        assert await records.first_joins(sid, riders) == riders[1500:]  # only the new ones
        assert await records.first_joins(sid, riders) == []
        assert await records.first_joins(sid, []) == []
        assert 0 < await client.pttl(records.joined_key(sid)) <= 60_000
        await records.forget_joins(sid, riders[:10])
        assert await records.first_join(sid, "r3") and not await records.first_join(sid, "r3")
    finally:
        await client.aclose()


async def test_rider_events_go_in_one_pipeline_in_order(redis_server: Any, unique_id: str) -> None:
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    prefix = f"ev-{unique_id}"
    try:
        await publish_rider_events(client, prefix, "rider.joined", "c1", ["a", "b", "c"])
        entries = await client.xrange(events_key(prefix))
        assert [(e["type"], e["session"], e["rider"]) for _, e in entries] == [
            ("rider.joined", "c1", "a"), ("rider.joined", "c1", "b"), ("rider.joined", "c1", "c")]
        assert entries[0][1]["data"] == '{"rider":"a","session":"c1"}'
    finally:
        await client.aclose()
