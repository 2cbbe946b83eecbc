"""``JoinBatcher``: the joins of one class that reach an edge together go to the class in one
actor call.

A join is one actor call (``join``: the rider on the roster, its profile read, a
checkpoint) — ~1 ms of the edge's CPU and ~1.5 ms of the actor's, most of it Ray's. When
thousands of riders join a class in its last minute, that is the edge's largest cost per
rider. So the first join of a class goes at once, and the joins that come while it is in
flight wait for it and then go together in one ``join_many`` call (one call, one profile
read, one checkpoint for the lot; a class over class shards sends each shard its riders).
A lone join is not delayed; a surge is batched by the time a call takes. An actor started
by an older version, without ``join_many``, gets its joins one by one.

Every rider of a batch gets its own slot, or the batch's error (the class ended, the actor
is gone, a time-out): the same answers as one call each. Tags were checked by the route.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)

MAX_BATCH = 500  # riders per call (a bigger backlog goes in several)

Call = Callable[..., Awaitable[Any]]  # ``Edge.call(session_id, method, **kwargs)``


class JoinBatcher:
    def __init__(self, call: Call) -> None:
        self._call = call
        self._waiting: dict[str, list[tuple[str, dict[str, str] | None, asyncio.Future[int]]]] = {}
        self._busy: set[str] = set()  # classes with a call in flight
        self._tasks: set[asyncio.Task[None]] = set()
        self.calls = 0  # actor calls made (tests and metrics)

    async def join(self, session_id: str, participant: str, tags: dict[str, str] | None) -> int:
        """Join ``participant`` (with ``tags``, None: keep its tags); its slot."""
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[int] = loop.create_future()
        self._waiting.setdefault(session_id, []).append((participant, tags, answer))
        if session_id not in self._busy:
            self._busy.add(session_id)
            task = loop.create_task(self._drain(session_id), name=f"joins:{session_id}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await answer

    async def _drain(self, session_id: str) -> None:
        live: list[tuple[str, dict[str, str] | None, asyncio.Future[int]]] = []
        try:
            while True:
                waiting = self._waiting.get(session_id)
                if not waiting:
                    break
                batch, rest = waiting[:MAX_BATCH], waiting[MAX_BATCH:]
                if rest:
                    self._waiting[session_id] = rest
                else:
                    del self._waiting[session_id]
                live = [entry for entry in batch if not entry[2].done()]  # (a caller that gave up)
                if not live:
                    continue
                try:
                    slots = await self._send(session_id, [(p, t) for p, t, _ in live])
                except Exception as exc:
                    for _, _, answer in live:
                        if not answer.done():
                            answer.set_exception(exc)
                    continue
                for (_, _, answer), slot in zip(live, slots, strict=True):
                    if not answer.done():
                        answer.set_result(slot)
        finally:
            self._busy.discard(session_id)
            for _, _, answer in [*live, *self._waiting.pop(session_id, [])]:  # (only if this task was cancelled)
                if not answer.done():
                    answer.cancel()

    async def _send(self, session_id: str, riders: list[tuple[str, dict[str, str] | None]]) -> list[int]:
        if len(riders) == 1:
            return [await self._one(session_id, *riders[0])]
        self.calls += 1
        try:
            return list(await self._call(session_id, "join_many", riders=[[p, t] for p, t in riders]))
        except AttributeError:  # an actor started by an older version: one by one
            return [await self._one(session_id, p, t) for p, t in riders]

    async def _one(self, session_id: str, participant: str, tags: dict[str, str] | None) -> int:
        self.calls += 1
        extra = {} if tags is None else {"tags": tags}  # (old actors take no tags)
        return int(await self._call(session_id, "join", participant=participant, **extra))

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
