"""The Ray shell around one ``SessionCell``: one detached, restartable actor per session.

The default way a class runs (``actors/session_host.py`` is the dense alternative). The
state, checkpoints, fencing and results are the cell's (``actors/session_cell.py``); this
shell gives it a process, a checkpoint loop and a stream server. On (re)start ``__init__``
opens the cell, which takes a new epoch and restores the last checkpoint, so every restart
fences off older instances. The loop writes a checkpoint whenever the state changed, at
most every ``checkpoint_interval_s`` (default 0.25 s, i.e. well over once a second while
samples arrive), and every phase change is checkpointed before the call returns.

Idle deactivation (``idle_deactivate_s``, default 15 min, like an Orleans grain's collection
age): an instance that nobody ticked or called for that long, with nothing unsaved, no plan
still to follow and nothing being published (``SessionCell.idle_for``), closes its stream and
exits for good (``exit_actor``: Ray does not restart it). Edges see the stream close and forget
the endpoint; the next sample, connection or call re-resolves the name, which recreates the
actor from its checkpoint (``cluster.directory``), exactly as after a passivation.

Survives a restart: everything that was checkpointed. Samples applied after the last
checkpoint are lost from memory, but they were never acknowledged, so devices resend
them; ``tick`` reports the epoch, so edges notice a restart and ask devices to resume.
Every method is idempotent and safe to retry (``max_task_retries=-1``).

The data path: ``endpoint()`` starts (once per instance) a ``StreamServer`` on this node's
address and returns where it listens (``actors.wire.Endpoint``: host, port, token, epoch);
edges send their ticks there (``actors/stream.py``) instead of calling ``tick`` through
Ray. ``tick_wire`` takes the same bytes through Ray (``PULSELINE_SESSION_TRANSPORT=ray``).
An instance fenced off by a newer epoch closes its stream and refuses every tick, on either
path; a restarted instance has a new port and token, so edges re-resolve it through Ray.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

import ray

from actors import gctune
from actors.errors import StaleInstance
from actors.session_cell import SessionCell, resolve_sink
from actors.settings import ActorSettings
from actors.stream import StreamServer
from actors.telemetry import ActorTelemetry
from actors.wire import Endpoint, TickRequest, decode_message, encode_message

log = logging.getLogger(__name__)

NAMESPACE = "pulseline"

__all__ = ["NAMESPACE", "SessionActor", "actor_name", "checkpoint_loop", "resolve_sink"]


def actor_name(session_id: str) -> str:
    return f"session:{session_id}"


async def checkpoint_loop(cells: Any, interval_s: float, telemetry: ActorTelemetry | None = None) -> None:
    """Every ``interval_s``: move each cell of ``cells()`` along its class plan (its own
    clock: no call from outside), then checkpoint every changed one; a loop that never dies
    (a cell fenced off is dropped by its ``on_fenced``). It also hands the cells' counters
    to ``telemetry`` (Ray metrics, ``actors.telemetry``) every few seconds."""
    while True:
        await asyncio.sleep(interval_s)
        for cell in cells():
            try:
                cell.advance()
            except Exception:
                log.exception("session %s: following the class plan failed", cell.session_id)
        if telemetry is not None and telemetry.due():
            try:
                telemetry.report(cells())
            except Exception:  # metrics never stop checkpoints
                log.exception("reporting metrics failed")
        dirty = [cell for cell in cells() if cell.dirty]
        if not dirty:
            continue
        results = await asyncio.gather(*(cell.checkpoint() for cell in dirty), return_exceptions=True)
        for cell, result in zip(dirty, results):
            if isinstance(result, Exception) and not isinstance(result, StaleInstance):
                log.error("session %s checkpoint failed: %r", cell.session_id, result)


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class SessionActor:
    def __init__(self, session_id: str, settings: dict[str, Any]) -> None:
        logging.basicConfig(level=logging.INFO)
        self.session_id = session_id
        gctune.settle()  # (a long-lived process: actors/gctune.py)
        typed = ActorSettings.of(settings)  # (read once, here: the cell gets the typed form)
        self.interval_s = typed.checkpoint_interval_s
        self.idle_deactivate_s = typed.idle_deactivate_s
        self._idle_watch: asyncio.Task[None] | None = None
        self.cell = SessionCell(session_id, typed, on_fenced=self._fenced)
        # ``process="session"``, not the class's name: a label value per class ever served would
        # leave series behind for good (Ray's WorkerId label tells live processes apart)
        self.telemetry = ActorTelemetry("session")
        self._loop: asyncio.Task[None] | None = None
        self.host = ray.util.get_node_ip_address()
        self.stream: StreamServer | None = None
        try:  # (Ray runs an async actor's __init__ on its loop: a restarted class follows its plan at once)
            asyncio.get_running_loop()
            self._ensure_loop()
        except RuntimeError:
            pass  # no loop here (an older Ray): the first call starts it
        log.info("session %s up: epoch %s, restored=%s", session_id, self.cell.epoch, self.cell.restored)

    # -- lifecycle --------------------------------------------------------------------
    def _ensure_loop(self) -> SessionCell:
        self.cell.check()
        if self._loop is None or self._loop.done():
            self._loop = asyncio.get_running_loop().create_task(checkpoint_loop(lambda: (self.cell,), self.interval_s, self.telemetry))
        if self.idle_deactivate_s > 0 and (self._idle_watch is None or self._idle_watch.done()):
            self._idle_watch = asyncio.get_running_loop().create_task(self._watch_idle())
        return self.cell

    async def _watch_idle(self) -> None:
        """Ask this actor to deactivate once its class has been idle for ``idle_deactivate_s``
        (through a call to itself: ``exit_actor`` ends an async actor from a method only)."""
        idle_s = self.idle_deactivate_s
        while True:
            await asyncio.sleep(SessionCell.idle_poll_s(idle_s))
            if self.cell.idle_for(time.monotonic()) >= idle_s:
                ray.get_runtime_context().current_actor.deactivate.options(max_task_retries=0).remote()
                return

    async def deactivate(self) -> bool:
        """Exit for good if the class is still idle (False, and it goes on, if not). Not through
        ``_ensure_loop``: asking is no activity. Its checkpoint already holds everything."""
        cell = self.cell
        if cell.fenced or cell.idle_for(time.monotonic()) < self.idle_deactivate_s:
            if not cell.fenced and (self._idle_watch is None or self._idle_watch.done()):  # (one watcher)
                self._idle_watch = asyncio.get_running_loop().create_task(self._watch_idle())
            return False
        await cell.checkpoint()  # (nothing to write: idle_for says clean; kept for safety)
        if self.stream is not None:
            self.stream.close()  # edges forget this endpoint at once
        log.info("session %s idle for %.0f s: deactivating (epoch %s); the next call restores it",
                 self.session_id, self.idle_deactivate_s, cell.epoch)
        await cell.close()
        ray.actor.exit_actor()
        return True  # (not reached)

    def _fenced(self, cell: SessionCell) -> None:
        """A newer instance exists: stop serving the stream (every later call is refused)."""
        if self.stream is not None:
            self.stream.close()

    # -- the hot path -------------------------------------------------------------------
    async def endpoint(self) -> Endpoint:
        """Where this instance serves its stream (started on the first call)."""
        cell = self._ensure_loop()
        if self.stream is None:
            stream = StreamServer(host=self.host)
            stream.register(self.session_id, cell.tick)
            await stream.start()
            self.stream = stream
        return Endpoint(self.host, self.stream.port, self.stream.token, cell.epoch, os.getpid())

    async def tick_wire(self, *, data: bytes) -> bytes:
        """A tick through Ray: ``actors.wire`` bytes in, ``TickResult`` bytes out."""
        request = decode_message(data)
        if not isinstance(request, TickRequest):
            raise TypeError(f"tick_wire takes a tick, not {type(request).__name__}")
        return encode_message(self._ensure_loop().tick(request))

    async def tick(
        self,
        *,
        batches: list[tuple[str, str, list[list[Any]], list[int]]],
        want_durable: list[str],
        known_version: int,
    ) -> dict[str, Any]:
        """Apply device batches (the Ray call of the first protocol; kept for tools and tests)."""
        return self._ensure_loop().tick_batches(batches, want_durable, known_version)

    # -- control --------------------------------------------------------------------------
    async def flush(self) -> dict[str, int]:
        """Checkpoint now; returns the durable seq of every device."""
        return await self._ensure_loop().flush()

    async def join(self, *, participant: str, tags: dict[str, str] | None = None) -> int:
        """Join (idempotent); ``tags`` replace the participant's tags, ``None`` keeps them.
        Bad tags raise ``TagError`` and change nothing."""
        return await self._ensure_loop().join(participant, tags)

    async def join_many(self, *, riders: list[tuple[str, dict[str, str] | None]]) -> list[int]:
        """Several joins in one call (``[participant, tags]`` each); their slots, in order."""
        return await self._ensure_loop().join_many(riders)

    async def class_clock(self) -> dict[str, Any]:
        """The class's phase and clock (what a class shard added later follows)."""
        return self._ensure_loop().class_clock()

    async def follow(self, *, phase: str, clock: dict[str, Any]) -> str:
        """Take the class's phase and clock (a class shard added while the class runs; idempotent)."""
        return await self._ensure_loop().follow(phase, clock)

    async def member(self, *, participant: str) -> bool:
        """On the roster (joined, or joined and left): what a rider's read is authorised by."""
        return self._ensure_loop().member(participant)

    async def leave(self, *, participant: str) -> bool:
        return await self._ensure_loop().leave(participant)

    async def set_replay(self, *, source: str) -> dict[str, Any]:
        """Ride the ended class ``source`` on demand (idempotent; ``ReplayError`` without a recording)."""
        return await self._ensure_loop().set_replay(source)

    async def set_plan(self, *, plan: dict[str, Any] | None, start_at: float | None) -> dict[str, Any]:
        """The class plan and scheduled start (idempotent; ``PlanError`` once live)."""
        return await self._ensure_loop().set_plan(plan, start_at)

    async def set_phase(self, *, phase: str) -> str:
        return await self._ensure_loop().set_phase(phase)

    async def snapshot(self) -> dict[str, Any]:
        return self._ensure_loop().snapshot()

    async def info(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "epoch": self.cell.epoch,
            "node_id": ray.get_runtime_context().get_node_id(),
            "fenced": self.cell.fenced,
            "stream_port": self.stream.port if self.stream is not None else None,
            "stream_ticks": self.stream.ticks if self.stream is not None else 0,
            "host": None,
        }
