"""``SessionHost``: the dense mode — many small classes in one actor process.

A session actor is a whole Ray worker process (~100 MB RSS, ~65 MB USS, and a steady trickle
of CPU for Ray's own threads), which is right for a class that may grow large and wrong for
a studio chain's thousands of 20-rider classes. A ``SessionHost`` is one detached,
restartable actor (named ``host:{name}``) that hosts many classes, each one a
``SessionCell`` (``actors/session_cell.py``) with its own name, state, checkpoint keys,
fencing epoch and restart; they share the process, one checkpoint loop and one stream
server (edges keep one connection to it for all its classes), and one Redis client.

Which classes go here is chosen per class when it is created (``cluster/directory.py``:
by expected size), and recorded in the session's meta, so every edge finds the same host.

Every method names its class (``session=``) and may carry ``overrides`` (settings for a
class this host opens for the first time, e.g. its ``board_size``). A call for a class the
host does not hold opens it: a new epoch, the last checkpoint restored. That is how a class
comes back after the host restarted (Ray restarts it, ``max_restarts=-1``, and retries the
call, ``max_task_retries=-1``), after it was passivated (``release``) or after it was fenced
off — one class at a time, without touching the others.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

import ray

from storage.checkpoint import client_for
from storage.redis_url import AsyncRedis
from actors.session_actor import checkpoint_loop
from actors.session_cell import SessionCell
from actors.settings import ActorSettings
from actors.stream import StreamServer
from actors.telemetry import ActorTelemetry
from actors.wire import Endpoint, TickRequest, decode_message, encode_message

log = logging.getLogger(__name__)


def host_name(name: str) -> str:
    return f"host:{name}"


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class SessionHost:
    def __init__(self, name: str, settings: dict[str, Any]) -> None:
        logging.basicConfig(level=logging.INFO)
        self.name = name
        self.settings = ActorSettings.of(settings)  # read once, here
        self.interval_s = self.settings.checkpoint_interval_s
        self.cells: dict[str, SessionCell] = {}
        self.opened = 0
        self.host = ray.util.get_node_ip_address()
        self.stream: StreamServer | None = None
        self._opening: dict[str, asyncio.Future[SessionCell]] = {}
        self._redis: AsyncRedis | None = None  # one client (connection pool) for every class here
        self._loop: asyncio.Task[None] | None = None
        self.telemetry = ActorTelemetry(host_name(name))
        log.info("session host %s up (pid %s)", name, os.getpid())

    # -- cells ----------------------------------------------------------------------------
    async def _cell(self, session: str, overrides: dict[str, Any] | None = None) -> SessionCell:
        """The class's cell, opened (new epoch, checkpoint restored) if this host lacks it."""
        if self._loop is None or self._loop.done():
            self._loop = asyncio.get_running_loop().create_task(
                checkpoint_loop(lambda: tuple(self.cells.values()), self.interval_s, self.telemetry))
        cell = self.cells.get(session)
        if cell is not None:
            return cell
        opening = self._opening.get(session)
        if opening is not None:  # another call is opening it right now: one epoch, not two
            return await asyncio.shield(opening)
        future: asyncio.Future[SessionCell] = asyncio.get_running_loop().create_future()
        self._opening[session] = future
        try:
            settings = ActorSettings.of(self.settings, **(overrides or {}))
            if self._redis is None:
                self._redis = client_for(self.settings.redis_url)
            cell = await asyncio.to_thread(SessionCell, session, settings, on_fenced=self._fenced, redis=self._redis)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters get it through shield
            raise
        finally:
            self._opening.pop(session, None)
        self.cells[session] = cell
        self.opened += 1
        if self.stream is not None:
            self.stream.register(session, cell.tick)
        future.set_result(cell)
        log.info("session %s opened on host %s: epoch %s, restored=%s", session, self.name, cell.epoch, cell.restored)
        return cell

    def _fenced(self, cell: SessionCell) -> None:
        """A newer instance of one class exists: stop serving that class only; the next call
        for it opens it afresh."""
        if self.cells.get(cell.session_id) is cell:
            del self.cells[cell.session_id]
            if self.stream is not None:
                self.stream.unregister(cell.session_id)
            asyncio.get_running_loop().create_task(cell.close())

    async def release(self, *, session: str, overrides: dict[str, Any] | None = None) -> bool:
        """Passivate one class: checkpoint it and drop it from memory (its state stays in
        Redis; the next call opens it again with a new epoch). False if it was not here."""
        cell = self.cells.get(session)
        if cell is None:
            return False
        try:
            if not cell.fenced:
                await cell.checkpoint()
        finally:
            if self.cells.get(session) is cell:
                del self.cells[session]
                if self.stream is not None:
                    self.stream.unregister(session)
            await cell.close()
        return True

    # -- the hot path -------------------------------------------------------------------
    async def endpoint(self, *, session: str, overrides: dict[str, Any] | None = None) -> Endpoint:
        """Where this host serves its stream (one server for all its classes), with the
        epoch of ``session``'s cell."""
        cell = await self._cell(session, overrides)
        if self.stream is None:
            stream = StreamServer(host=self.host, max_connections=1024)
            await stream.start()
            if self.stream is None:  # (another call may have started one meanwhile)
                for sid, known in self.cells.items():  # every cell, also those opened during start()
                    stream.register(sid, known.tick)
                self.stream = stream
            else:
                stream.close()
        return Endpoint(self.host, self.stream.port, self.stream.token, cell.epoch, os.getpid())

    async def tick_wire(self, *, session: str, data: bytes, overrides: dict[str, Any] | None = None) -> bytes:
        request = decode_message(data)
        if not isinstance(request, TickRequest) or request.session != session:
            raise TypeError("tick_wire takes a tick of the named session")
        return encode_message((await self._cell(session, overrides)).tick(request))

    async def tick(self, *, session: str, batches: list[tuple[str, str, list[list[Any]], list[int]]],
                   want_durable: list[str], known_version: int, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        return (await self._cell(session, overrides)).tick_batches(batches, want_durable, known_version)

    # -- control --------------------------------------------------------------------------
    async def flush(self, *, session: str, overrides: dict[str, Any] | None = None) -> dict[str, int]:
        return await (await self._cell(session, overrides)).flush()

    async def join(self, *, session: str, participant: str, tags: dict[str, str] | None = None,
                   overrides: dict[str, Any] | None = None) -> int:
        return await (await self._cell(session, overrides)).join(participant, tags)

    async def class_clock(self, *, session: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        return (await self._cell(session, overrides)).class_clock()

    async def follow(self, *, session: str, phase: str, clock: dict[str, Any],
                     overrides: dict[str, Any] | None = None) -> str:
        return await (await self._cell(session, overrides)).follow(phase, clock)

    async def member(self, *, session: str, participant: str, overrides: dict[str, Any] | None = None) -> bool:
        return (await self._cell(session, overrides)).member(participant)

    async def leave(self, *, session: str, participant: str, overrides: dict[str, Any] | None = None) -> bool:
        return await (await self._cell(session, overrides)).leave(participant)

    async def set_replay(self, *, session: str, source: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        return await (await self._cell(session, overrides)).set_replay(source)

    async def set_plan(self, *, session: str, plan: dict[str, Any] | None, start_at: float | None,
                       overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        return await (await self._cell(session, overrides)).set_plan(plan, start_at)

    async def set_phase(self, *, session: str, phase: str, overrides: dict[str, Any] | None = None) -> str:
        return await (await self._cell(session, overrides)).set_phase(phase)

    async def snapshot(self, *, session: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        return (await self._cell(session, overrides)).snapshot()

    async def info(self, *, session: str | None = None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        cell = await self._cell(session, overrides) if session is not None else None
        return {
            "pid": os.getpid(),
            "epoch": cell.epoch if cell is not None else None,
            "node_id": ray.get_runtime_context().get_node_id(),
            "fenced": cell.fenced if cell is not None else False,
            "stream_port": self.stream.port if self.stream is not None else None,
            "stream_ticks": self.stream.ticks if self.stream is not None else 0,
            "host": self.name,
            "sessions": len(self.cells),
            "opened": self.opened,
        }

    async def hosted(self) -> list[str]:
        """The classes this host holds in memory now."""
        return sorted(self.cells)
