"""Pre-scaling for scheduled classes, through Ray's ``request_resources``.

A class scheduled to start at ``start_at`` with ``expected_participants`` needs
``slots_for(expected, participants_per_slot)`` session slots: its session actor takes one,
and every further ``participants_per_slot`` participants reserve one more for the actors
that serve them (leaderboard shards also ask for ``session_slot``). From
``start_at - lead_time_s`` the class's slots are *requested*; from ``start_at +
release_after_s`` they no longer are (released after the start). Once the session actor
is alive, its own slot is already in use and is no longer requested on top. A class over class
shards (``cluster/class_shards.py``) needs at least one slot per shard, and each of its
shard actors that is alive already holds its slot: ``shards(session_id)`` says how many
shards a class has (0: none, it has its own actor) and ``held(session_id, shards)`` how many slots it holds now (0 or 1 for
a one-actor class, its live shards for a sharded one).

``request_resources`` is not additive and sizes the *whole* cluster ("make the total
capacity fit these bundles"), ignoring what is already in use. So the request is
``used slots now + slots of the classes in their lead window``; without the ``used`` part
a full cluster whose total capacity already matches the request would not grow. With
nothing in a lead window the request is withdrawn (``bundles=[]``), so idle nodes can go.

Redis key owned here: ``{prefix}:prescale`` — a hash, session id -> JSON
``{"start_at": unix s, "expected_participants": int, "slots": int}``. Every edge runs a
``Prescaler`` over the same hash and computes the same request, so several edges agree;
entries are deleted once released.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from storage.redis_url import AsyncRedis

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrescalePolicy:
    lead_time_s: float = 300.0  # request capacity this long before a class starts
    release_after_s: float = 60.0  # withdraw the request this long after the start
    participants_per_slot: int = 1000  # one extra slot per this many expected participants
    interval_s: float = 1.0  # how often the loop re-computes the request


@dataclass(frozen=True)
class ScheduledClass:
    session_id: str
    start_at: float
    expected_participants: int
    slots: int

    def requested_from(self, policy: PrescalePolicy) -> float:
        return self.start_at - policy.lead_time_s

    def released_at(self, policy: PrescalePolicy) -> float:
        return self.start_at + policy.release_after_s

    def in_window(self, now: float, policy: PrescalePolicy) -> bool:
        return self.requested_from(policy) <= now < self.released_at(policy)


def slots_for(expected_participants: int, participants_per_slot: int) -> int:
    """Session slots a class of this size needs (at least one: the session actor)."""
    return max(1, math.ceil(max(0, expected_participants) / max(1, participants_per_slot)))


def requested_slots(
    classes: Iterable[ScheduledClass], *, now: float, policy: PrescalePolicy, held: Callable[[str, int], int],
    shards: Mapping[str, int] | None = None,
) -> int:
    """Slots to reserve on top of what is in use: for each class in its lead window, its
    slots (at least one per shard, ``shards``: class -> its shard count) minus those its
    actors already hold (``held``: a one-actor class's 1 once its actor exists; a sharded
    class's live shards)."""
    total = 0
    for cls in classes:
        if cls.in_window(now, policy):
            count = (shards or {}).get(cls.session_id, 0)  # (0: one actor, not class shards)
            total += max(0, max(cls.slots, count) - int(held(cls.session_id, count)))
    return total


def bundles(used_slots: float, upcoming_slots: int) -> list[dict[str, float]]:
    """The ``request_resources`` bundles: empty (withdrawn) when nothing is upcoming."""
    if upcoming_slots <= 0:
        return []
    return [{"session_slot": 1.0}] * (math.ceil(used_slots) + upcoming_slots)


class PrescaleBook:
    """The scheduled classes, in Redis (see the module docstring for the key)."""

    def __init__(self, redis_client: AsyncRedis, *, prefix: str) -> None:
        self.redis = redis_client
        self.key = f"{prefix}:prescale"

    async def put(self, cls: ScheduledClass) -> None:
        value = {k: v for k, v in asdict(cls).items() if k != "session_id"}
        await self.redis.hset(self.key, cls.session_id, json.dumps(value))

    async def remove(self, session_id: str) -> None:
        await self.redis.hdel(self.key, session_id)

    async def all(self) -> list[ScheduledClass]:
        raw = await self.redis.hgetall(self.key)
        classes = []
        for sid, value in raw.items():
            try:
                classes.append(ScheduledClass(session_id=_text(sid), **json.loads(value)))
            except (TypeError, ValueError):
                log.warning("prescale: dropping a malformed entry for %r", sid)
                await self.redis.hdel(self.key, sid)
        return sorted(classes, key=lambda c: c.start_at)


def _request(bundle_list: list[dict[str, float]]) -> None:
    from ray.autoscaler.sdk import request_resources

    request_resources(bundles=bundle_list)


class Prescaler:
    """The loop: every ``interval_s`` compute the request and send it if it changed.

    ``used_slots()`` and ``held(session_id, shards)`` are blocking Ray reads (run in a thread);
    ``shards(session_id)`` (async: a Redis read) the class's shard count, asked for the
    classes in their lead window only;
    ``request`` defaults to Ray's ``request_resources``. The loop logs and goes on after
    any error; ``last`` keeps what was requested and when, for the status endpoint.
    """

    def __init__(
        self,
        book: PrescaleBook,
        policy: PrescalePolicy,
        *,
        used_slots: Callable[[], float],
        held: Callable[[str, int], int],
        shards: Callable[[str], Awaitable[int]] | None = None,
        request: Callable[[list[dict[str, float]]], None] = _request,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.book = book
        self.policy = policy
        self.used_slots = used_slots
        self.held = held
        self.shards = shards
        self.request = request
        self.clock = clock
        self.requested: int | None = None
        self.last: dict[str, Any] = {}

    async def step(self) -> int:
        """One round; returns the number of bundles now requested."""
        now = self.clock()
        classes = await self.book.all()
        for cls in classes:
            if now >= cls.released_at(self.policy):
                await self.book.remove(cls.session_id)
        shards = {}
        if self.shards is not None:
            shards = {c.session_id: await self.shards(c.session_id) for c in classes if c.in_window(now, self.policy)}
        upcoming = await asyncio.to_thread(
            requested_slots, classes, now=now, policy=self.policy, held=self.held, shards=shards
        )
        used = await asyncio.to_thread(self.used_slots) if upcoming else 0.0
        wanted = bundles(used, upcoming)
        if len(wanted) != self.requested:
            await asyncio.to_thread(self.request, wanted)
            log.info("prescale: requesting %d session slots (%d upcoming, %g in use)", len(wanted), upcoming, used)
            self.requested = len(wanted)
            self.last = {"at": now, "bundles": len(wanted), "upcoming_slots": upcoming, "used_slots": used}
        return len(wanted)

    async def run(self) -> None:
        while True:
            try:
                await self.step()
            except asyncio.CancelledError:
                raise
            except Exception:  # a control loop never dies
                log.exception("prescale round failed")
            await asyncio.sleep(self.policy.interval_s)

    def describe(self, classes: list[ScheduledClass]) -> dict[str, Any]:
        now = self.clock()
        return {
            "policy": asdict(self.policy),
            "requested_bundles": self.requested,
            "last_change": self.last,
            "classes": [
                {
                    **asdict(c),
                    "requested_from": c.requested_from(self.policy),
                    "released_at": c.released_at(self.policy),
                    "in_window": c.in_window(now, self.policy),
                }
                for c in classes
            ],
        }


def _text(raw: bytes | str) -> str:
    """A reply field as text: redis-py types replies ``bytes | str`` (bytes for these clients)."""
    return raw if isinstance(raw, str) else raw.decode()
