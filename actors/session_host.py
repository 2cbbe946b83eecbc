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

A class that follows a class plan must move on its own clock even when nobody calls it, so
the host keeps, in Redis, the set of its classes whose plan still runs (``{p}:host:{{name}}
:clocks``: added by ``set_plan``, removed once the class ended, and by ``set_phase``
``ended``). A restarted host (SIGKILL, node loss) reads that set in its constructor and
opens each of those classes from its checkpoint at once, so their plans go on — lobby,
live, ended on schedule — without waiting for a call (the dedicated actor does the same by
opening its one class in its constructor). A class whose checkpoint is gone (purged) is
dropped from the set instead.

A class idle for ``idle_deactivate_s`` (``SessionCell.idle_for``: no tick or call, nothing
unsaved, no plan still to follow, nothing being published) is released from memory the way
a passivation releases it (the host's idle loop, every ``min(30 s, idle/4)``): the host
stays, the class's next call or tick opens it again from its checkpoint with a new epoch
(an edge whose tick hits the released class gets ``unknown_session`` and re-resolves it).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

import ray

from storage.checkpoint import client_for, key_base
from storage.redis_url import AsyncRedis
from actors import gctune
from actors.session import Phase
from actors.session_actor import checkpoint_loop
from actors.session_cell import SessionCell
from actors.settings import ActorSettings
from actors.stream import StreamServer
from actors.telemetry import ActorTelemetry
from actors.wire import Endpoint, TickRequest, decode_message, encode_message

log = logging.getLogger(__name__)


CLOCK_SWEEP_S = 5.0  # how often the host drops ended classes from its set of running clocks


def host_name(name: str) -> str:
    return f"host:{name}"


def clocks_key(prefix: str, name: str) -> str:
    """The Redis set of a host's classes whose plan still runs (see the module docstring)."""
    return f"{key_base(prefix, 'host', name)}:clocks"


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class SessionHost:
    def __init__(self, name: str, settings: dict[str, Any]) -> None:
        logging.basicConfig(level=logging.INFO)
        self.name = name
        gctune.settle()  # (a long-lived process: actors/gctune.py)
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
        self.clocks_key = clocks_key(self.settings.prefix, name)
        self.clocked: set[str] = set()  # classes of this host in its set of running clocks
        self._clocks: asyncio.Task[None] | None = None
        self._idle: asyncio.Task[None] | None = None
        self.released_idle = 0  # classes released for idleness
        try:  # (Ray runs an async actor's __init__ on its loop: a restarted host resumes its plans at once)
            asyncio.get_running_loop()
            self._clocks = asyncio.get_running_loop().create_task(self._resume_clocks(), name="resume-clocks")
        except RuntimeError:
            pass  # no loop here (an older Ray): the classes resume on their next call
        log.info("session host %s up (pid %s)", name, os.getpid())

    # -- class plans: clocks that run with nobody calling ----------------------------------
    def _client(self) -> AsyncRedis:
        if self._redis is None:
            self._redis = client_for(self.settings.redis_url)
        return self._redis

    async def _resume_clocks(self) -> None:
        """Open every class of this host whose plan still runs (read from Redis), so the
        checkpoint loop moves it along its plan; then keep the set tidy (ended classes go)."""
        redis = self._client()
        for attempt in range(30):  # (Redis may be restarting with us: a few tries)
            try:
                raw = await redis.smembers(self.clocks_key)
                break
            except Exception as exc:
                log.warning("host %s: reading its running clocks failed (%r), retrying", self.name, exc)
                await asyncio.sleep(min(5.0, 0.2 * 2 ** attempt))
        else:
            raw = set()
        sessions = sorted(m.decode() if isinstance(m, bytes) else str(m) for m in raw)
        for session in sessions:
            try:
                if not await redis.exists(f"{key_base(self.settings.prefix, 'session', session)}:ckpt"):
                    await redis.srem(self.clocks_key, session)  # purged (or never checkpointed): nothing to resume
                    continue
                await self._cell(session)
                self.clocked.add(session)
            except Exception:
                log.exception("host %s: resuming the plan of %s failed (its next call opens it)", self.name, session)
        if sessions:
            log.info("host %s resumed the plans of %d class(es)", self.name, len(self.clocked))
        while True:
            await self._sweep_clocks()
            await asyncio.sleep(CLOCK_SWEEP_S)

    async def _sweep_clocks(self) -> None:
        done = [s for s in self.clocked if (cell := self.cells.get(s)) is not None
                and (cell.state.phase is Phase.ENDED or not cell.state.schedule.active)]
        if not done:
            return
        try:
            await self._client().srem(self.clocks_key, *done)
            self.clocked.difference_update(done)
        except Exception as exc:  # next sweep
            log.warning("host %s: dropping %d ended class(es) from its clocks failed: %r", self.name, len(done), exc)

    async def _clock_changed(self, cell: SessionCell) -> None:
        """After a plan or phase change: the class is in the set while its plan runs (a
        failed write is logged, never the call's failure: the plan itself is checkpointed)."""
        running = cell.state.schedule.active and cell.state.phase is not Phase.ENDED
        try:
            if running:
                await self._client().sadd(self.clocks_key, cell.session_id)
                self.clocked.add(cell.session_id)
            elif cell.session_id in self.clocked or cell.state.schedule.active:
                await self._client().srem(self.clocks_key, cell.session_id)
                self.clocked.discard(cell.session_id)
        except Exception as exc:
            log.warning("host %s: recording the clock of %s failed (%r): after a restart of this host it "
                        "resumes on its next call", self.name, cell.session_id, exc)
        if self._clocks is None or self._clocks.done():
            self._clocks = asyncio.get_running_loop().create_task(self._resume_clocks(), name="resume-clocks")

    async def _release_idle(self) -> None:
        """Release every class idle for ``idle_deactivate_s`` (a loop that never dies)."""
        idle_s = self.settings.idle_deactivate_s
        while True:
            await asyncio.sleep(SessionCell.idle_poll_s(idle_s))
            now = time.monotonic()
            for session, cell in list(self.cells.items()):
                if cell.idle_for(now) < idle_s:
                    continue
                try:
                    if await self.release(session=session):
                        self.released_idle += 1
                        log.info("session %s idle for %.0f s: released from host %s (the next call reopens it)",
                                 session, idle_s, self.name)
                except Exception:
                    log.exception("host %s: releasing idle class %s failed", self.name, session)

    # -- cells ----------------------------------------------------------------------------
    async def _cell(self, session: str, overrides: dict[str, Any] | None = None) -> SessionCell:
        """The class's cell, opened (new epoch, checkpoint restored) if this host lacks it."""
        if self._loop is None or self._loop.done():
            self._loop = asyncio.get_running_loop().create_task(
                checkpoint_loop(lambda: tuple(self.cells.values()), self.interval_s, self.telemetry))
        if self.settings.idle_deactivate_s > 0 and (self._idle is None or self._idle.done()):
            self._idle = asyncio.get_running_loop().create_task(self._release_idle(), name="release-idle")
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
            cell = await asyncio.to_thread(SessionCell, session, settings, on_fenced=self._fenced, redis=self._client())
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

    async def join_many(self, *, session: str, riders: list[tuple[str, dict[str, str] | None]],
                        overrides: dict[str, Any] | None = None) -> list[int]:
        return await (await self._cell(session, overrides)).join_many(riders)

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
        cell = await self._cell(session, overrides)
        answer = await cell.set_plan(plan, start_at)
        await self._clock_changed(cell)
        return answer

    async def set_phase(self, *, session: str, phase: str, overrides: dict[str, Any] | None = None) -> str:
        cell = await self._cell(session, overrides)
        answer = await cell.set_phase(phase)
        if cell.state.phase is Phase.ENDED:
            await self._clock_changed(cell)
        return answer

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
            "released_idle": self.released_idle,
        }

    async def hosted(self) -> list[str]:
        """The classes this host holds in memory now."""
        return sorted(self.cells)
