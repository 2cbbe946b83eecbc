"""The seat book (``cluster.admission.SeatBook``) against a real redis-server, without Ray:
seats given back after a grace when their rider left, kept when it came back in time."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from cluster.admission import AdmissionPolicy, SeatBook

pytestmark = pytest.mark.integration


def _book(redis_server: Any) -> tuple[Any, SeatBook, str]:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_server.url)
    book = SeatBook(client, prefix="seat-test", policy=AdmissionPolicy(rate_per_s=0.0))
    sid = f"c-{uuid.uuid4().hex[:8]}"
    return client, book, sid


def test_a_rider_who_left_gives_its_seat_back_after_the_grace(redis_server: Any) -> None:
    async def scenario() -> None:
        client, book, sid = _book(redis_server)
        await client.hset(f"seat-test:session:{{{sid}}}:meta", "capacity", 2)
        assert await book.admit(sid, ["ann", "bob", "cat"]) == [0, 0, 1]
        assert await book.leaving(sid, ["ann", "nobody"], 0.6) == 1  # (only seated riders are marked)
        assert await book.counts(sid) == {"seated": 2, "waiting": 1, "leaving": 1}
        assert await book.admit(sid, ["cat"]) == [1]  # ann's grace runs: cat waits
        await asyncio.sleep(0.8)
        assert await book.admit(sid, ["cat"]) == [0]  # ann's seat went to cat
        assert await book.counts(sid) == {"seated": 2, "waiting": 0, "leaving": 0}
        assert await book.admit(sid, ["ann"]) == [1]  # back too late: she queues
        await client.aclose()

    asyncio.run(scenario())


def test_a_rider_back_within_the_grace_keeps_its_seat(redis_server: Any) -> None:
    async def scenario() -> None:
        client, book, sid = _book(redis_server)
        await client.hset(f"seat-test:session:{{{sid}}}:meta", "capacity", 1)
        assert await book.admit(sid, ["ann", "bob"]) == [0, 1]
        await book.leaving(sid, ["ann"], 0.5)
        assert await book.admit(sid, ["ann"]) == [0]  # her phone reconnected: the mark is gone
        await asyncio.sleep(0.7)
        assert await book.admit(sid, ["bob"]) == [1]  # so bob still waits
        await book.leaving(sid, ["ann"], 30.0)
        assert await book.release(sid, "ann") is True  # an explicit leave: at once, mark and all
        assert await book.admit(sid, ["bob"]) == [0]
        assert await book.counts(sid) == {"seated": 1, "waiting": 0, "leaving": 0}
        await client.aclose()

    asyncio.run(scenario())
