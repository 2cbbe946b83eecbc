"""The session index (real Redis): newest first for the live list, and meta fields typed as
the API's schema says."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from cluster.session_records import SessionRecords


async def test_newest_lists_the_latest_classes_first_with_typed_fields(redis_server: Any, unique_id: str) -> None:
    client = aioredis.Redis.from_url(redis_server.url)
    records = SessionRecords(client, prefix=f"sr-{unique_id}")
    try:
        for k in range(12):  # created a second apart, indexed out of order
            sid = f"c{k:02d}"
            await client.hset(records.meta_key(sid), mapping={"created_at": 1_700_000_000.25 + k, "expected_riders": 10 + k})
        for k in (5, 11, 0, 7, 3, 9, 1, 10, 2, 8, 4, 6):
            await records.indexed(f"c{k:02d}")
        await client.delete(records.meta_key("c10"))  # expired meanwhile: left out

        newest = await records.newest(limit=4)
        assert [m["id"] for m in newest] == ["c11", "c09", "c08"]
        assert await client.zcard(records.index_key) == 11  # and dropped from the index
        assert [m["id"] for m in await records.newest(limit=4)] == ["c11", "c09", "c08", "c07"]
        assert newest[0]["created_at"] == 1_700_000_011.25 and newest[0]["expected_riders"] == 21
        page = await records.page(phase=None, limit=3, after=None)  # the admin list: oldest first, same types
        assert [m["id"] for m in page.sessions] == ["c00", "c01", "c02"]
        assert all(isinstance(m["created_at"], float) and isinstance(m["expected_riders"], int) for m in page.sessions)
    finally:
        await client.aclose()
