"""The edge's side of seats and admission (``cluster.admission`` keeps them in Redis).

A device's ``hello`` (and an HTTP join) asks ``Admission.admit``. A class without a
capacity admits everyone at once and costs no Redis call: the edge reads the class's
``capacity`` (its meta) once and keeps it (``capacity_ttl_s``, 5 s: what another edge's
``PUT .../capacity`` takes to reach this one; the edge that takes the ``PUT`` knows at
once). A class with one costs one Redis round trip per batch of hellos (below). Admitted,
the device is bound as before. Otherwise it **waits on its connection**: the
edge sends a ``queue`` frame (``position``, ``retry_after_ms``: docs/protocol.md) and
keeps asking for it, with every other rider waiting on this edge for that class, in one
batched script call per class every ``interval_s`` (0.5 s); each answer sends a fresh
``queue`` frame when the position moved (at most every 2 s per rider; every move in the last
ten places), and the admission binds the device, whose
``welcome`` follows on the class's next tick. The client does nothing but wait (and keep
its samples: it sends none before its ``welcome``). A client that would rather hang up
and come back keeps its place for ``stale_s`` (15 s) by saying ``hello`` again.

An HTTP join over the window is a 429 with ``Retry-After`` and the position.

**Leaving.** The edge counts the devices it has bound per rider and class (``hold`` /
``unhold``). When a rider's last device here goes, its seat is marked to free after a
grace (``SeatBook.leaving``): ``bye_grace_s`` (10 s) after a ``bye``, ``drop_grace_s`` (60
s, like the presence grace) after a socket that closed without one, so a phone that drops
and reconnects — to this edge or any other — keeps its seat: its ``hello`` asks again, and
that clears the mark. Marks go to Redis in the same per-class batches as the asks, before
them (a rider that left and came back in one batch keeps its seat), and a mark not yet sent
is dropped when a device of the rider binds again here. A rider whose devices sit on two
edges is counted per edge: the one it leaves marks the seat although the other still
carries a device (that rider is admitted again on its next ``hello``; its samples go on).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from cluster.admission import AdmissionPolicy, SeatBook
from storage.checkpoint import key_base
from storage.redis_url import AsyncRedis

log = logging.getLogger(__name__)

__all__ = ["Admission", "Waiter"]

# A waiting rider is told its new place at most every QUEUE_FRAME_EVERY_S, and at once in the
# last QUEUE_FRAME_ALWAYS places: every round moves every place, and a frame for each of
# thousands of waiters twice a second was most of what a join storm cost the edge.
QUEUE_FRAME_EVERY_S = 2.0
QUEUE_FRAME_ALWAYS = 10
MAX_CACHED_CLASSES = 10_000  # capacities kept per edge (the oldest go first beyond four times this)


@dataclass(eq=False)
class Waiter:
    """One device waiting for a seat: told its place, called back when admitted."""

    session: str
    participant: str
    on_position: Callable[[int, float], None]  # (position, retry_after_s)
    on_admitted: Callable[[], None]
    position: int = 0
    told_at: float = 0.0  # monotonic time of its last queue frame
    order: int = field(default=0)  # arrival on this edge: earlier first in each batch
    done: bool = False


class Admission:
    def __init__(self, redis: AsyncRedis, *, prefix: str, policy: AdmissionPolicy, interval_s: float = 0.5,
                 bye_grace_s: float = 10.0, drop_grace_s: float = 60.0, capacity_ttl_s: float = 5.0) -> None:
        self.book = SeatBook(redis, prefix=prefix, policy=policy)
        self.redis = redis
        self.prefix = prefix
        self.capacity_ttl_s = capacity_ttl_s
        self._capacity: dict[str, tuple[int, float]] = {}  # class -> (its capacity, 0: none; when read)
        self._capacity_reads: dict[str, asyncio.Future[int]] = {}
        self.book_calls = 0  # seat book round trips for asks (a class without a capacity makes none)
        self.policy = policy
        self.interval_s = interval_s
        self.bye_grace_s = bye_grace_s
        self.drop_grace_s = drop_grace_s
        self.held: Counter[tuple[str, str]] = Counter()  # (class, rider) -> its devices bound on this edge
        self._leaves: dict[str, dict[str, float]] = {}  # per class: rider -> grace, waiting to go
        self.waiting: dict[str, list[Waiter]] = {}
        self.admitted_after_wait = 0
        self._arrivals = 0
        self._task: asyncio.Task[None] | None = None
        self._asks: dict[str, list[tuple[str, asyncio.Future[int]]]] = {}  # per class, waiting to go
        self._flushing: dict[str, asyncio.Task[None]] = {}

    # -- the class's capacity, cached -------------------------------------------------------
    def known_capacity(self, session: str) -> int | None:
        """The cached capacity (0: none), or None when not known or too old."""
        cached = self._capacity.get(session)
        if cached is None or time.monotonic() - cached[1] >= self.capacity_ttl_s:
            return None
        return cached[0]

    def note_capacity(self, session: str, capacity: int | None) -> None:
        """This edge changed (or created) the class's capacity: known at once."""
        self._capacity[session] = (capacity or 0, time.monotonic())

    async def capacity(self, session: str) -> int:
        """The class's capacity (0: none): one ``HGET`` per class per ``capacity_ttl_s``,
        shared by every hello that asks meanwhile."""
        known = self.known_capacity(session)
        if known is not None:
            return known
        reading = self._capacity_reads.get(session)
        if reading is None:
            reading = self._capacity_reads[session] = asyncio.ensure_future(self._read_capacity(session))
            reading.add_done_callback(lambda _: self._capacity_reads.pop(session, None))
        return await asyncio.shield(reading)

    async def _read_capacity(self, session: str) -> int:
        raw = await self.redis.hget(f"{key_base(self.prefix, 'session', session)}:meta", "capacity")
        capacity = int(raw) if raw else 0
        self._capacity[session] = (capacity, time.monotonic())
        if len(self._capacity) > 4 * MAX_CACHED_CLASSES:  # (an edge serves a bounded set of classes at once)
            for stale in sorted(self._capacity, key=lambda s: self._capacity[s][1])[:len(self._capacity) - MAX_CACHED_CLASSES]:
                del self._capacity[stale]
        return capacity

    def retry_after_s(self, position: int) -> float:
        """The wait a rider at ``position`` can expect, at the class's admission rate (at
        least one round); a full class has no better estimate than that."""
        rate = self.policy.rate_per_s
        return max(self.interval_s, position / rate) if rate > 0 else max(1.0, self.interval_s)

    async def admit(self, session: str, participant: str) -> int:
        """0: in (a seat is held); else the rider's place in the queue (1 = next).

        Batched: the asks that arrive while a class's previous call is in flight go to
        Redis together, in arrival order, in the next one — a storm of thousands of hellos
        costs a class one script call at a time, never a connection per hello (a pool of
        them ran dry in a 300-rider storm before this)."""
        if not await self.capacity(session):
            return 0  # no seats to count: no Redis call
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._asks.setdefault(session, []).append((participant, future))
        self._kick(session)
        return await future

    def hold(self, session: str, participant: str) -> None:
        """A device of ``participant`` was bound here (a mark not sent yet is dropped: it is back)."""
        key = (session, participant)
        self.held[key] += 1
        leaves = self._leaves.get(session)
        if self.held[key] == 1 and leaves:
            leaves.pop(participant, None)
            if not leaves:
                del self._leaves[session]

    def unhold(self, session: str, participant: str, *, bye: bool) -> None:
        """A device of ``participant`` went (``bye``: said goodbye; else its socket closed):
        the rider's last one here marks its seat to free after the grace."""
        key = (session, participant)
        if self.held[key] > 1:
            self.held[key] -= 1
            return
        self.held.pop(key, None)
        if self.known_capacity(session) == 0:
            return  # no seats: nothing to give back
        self._leaves.setdefault(session, {})[participant] = self.bye_grace_s if bye else self.drop_grace_s
        self._kick(session)

    def _kick(self, session: str) -> None:
        if session not in self._flushing:
            self._flushing[session] = asyncio.get_running_loop().create_task(self._flush(session))

    async def _send_leaves(self, session: str) -> None:
        leaves = self._leaves.pop(session, None) or {}
        by_grace: dict[float, list[str]] = {}
        for rider, grace in leaves.items():
            by_grace.setdefault(grace, []).append(rider)
        for grace, riders in by_grace.items():
            try:
                await self.book.leaving(session, riders, grace)
            except Exception as exc:  # the seats stay held (the presence grace frees them in a live class)
                log.warning("marking %d seat(s) of %s to free failed: %r", len(riders), session, exc)

    async def _flush(self, session: str) -> None:
        try:
            while self._asks.get(session) or self._leaves.get(session):
                if self._leaves.get(session):  # (first: a rider that left, then came back, keeps its seat)
                    await self._send_leaves(session)
                batch = self._asks.pop(session, None)
                if not batch:
                    continue
                riders = list(dict.fromkeys(p for p, _ in batch))
                self.book_calls += 1
                try:
                    places = dict(zip(riders, await self.book.admit(session, riders), strict=True))
                except Exception as exc:  # every ask of the batch fails alike (the edge maps it)
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for rider, future in batch:
                    if not future.done():
                        future.set_result(places[rider])
        finally:
            self._flushing.pop(session, None)

    def wait(self, waiter: Waiter, position: int) -> None:
        """Keep asking for ``waiter`` (told ``position`` now) until admitted or cancelled."""
        self._arrivals += 1
        waiter.order = self._arrivals
        waiter.position = position
        waiter.told_at = time.monotonic()
        waiter.on_position(position, self.retry_after_s(position))
        self.waiting.setdefault(waiter.session, []).append(waiter)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="admission")

    def cancel(self, waiter: Waiter) -> None:
        waiter.done = True

    async def release(self, session: str, participant: str) -> bool:
        return await self.book.release(session, participant)

    async def close(self) -> None:
        tasks = [t for t in (self._task, *self._flushing.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self) -> None:
        while self.waiting:
            await asyncio.sleep(self.interval_s)
            for session in list(self.waiting):
                try:
                    await self._round(session)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # Redis slow or down: the riders wait a round longer
                    log.warning("admission round for %s failed: %r", session, exc)

    async def _round(self, session: str) -> None:
        waiters = sorted((w for w in self.waiting.get(session, ()) if not w.done), key=lambda w: (w.position, w.order))
        if not waiters:
            self.waiting.pop(session, None)
            return
        riders = list(dict.fromkeys(w.participant for w in waiters))  # (a rider's devices share its seat)
        places = dict(zip(riders, await self.book.admit(session, riders), strict=True))
        asked = set(waiters)
        now = time.monotonic()
        still = [w for w in self.waiting.get(session, ()) if w not in asked and not w.done]  # (came meanwhile)
        for waiter in waiters:
            if waiter.done:
                continue
            place = places[waiter.participant]
            if place == 0:
                waiter.done = True
                self.admitted_after_wait += 1
                waiter.on_admitted()
                continue
            if place != waiter.position:
                waiter.position = place
                if place <= QUEUE_FRAME_ALWAYS or now - waiter.told_at >= QUEUE_FRAME_EVERY_S:
                    waiter.told_at = now
                    waiter.on_position(place, self.retry_after_s(place))
            still.append(waiter)
        if still:
            self.waiting[session] = still
        else:
            self.waiting.pop(session, None)


def retry_after_header(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))
