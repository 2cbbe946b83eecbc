"""The Ray shell around ``SessionState``: one detached, restartable actor per session.

Owns: one ``SessionState`` and its ``CheckpointStore``. On (re)start ``__init__`` takes a
new epoch and restores the last checkpoint, so every restart fences off older instances.
A background loop writes a checkpoint whenever the state changed, at most every
``checkpoint_interval_s`` (default 0.25 s, i.e. well over once a second while samples
arrive), and every phase change is checkpointed before the call returns.

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

Class results: once the session is ended (and again after late data changes it), the
snapshot is handed to the *results sink* named in ``settings["results_sink"]``, an import
path ``"package.module:function"`` of a callable ``async (settings, snapshot) -> Any``
(an edge with session leaderboards names the leaderboards' publisher there, see
docs/leaderboards.md). It is resolved with importlib when results are published, so ``actors``
imports nothing above itself; a sink that fails to import or raises is logged and never
fails a session call. No sink, or no ``settings["leaderboards"]``: nothing is published.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import ray

from actors.checkpoint import CheckpointStore
from actors.errors import StaleInstance
from actors.session import DeviceBatch, Phase, SessionState
from actors.stream import StreamServer
from actors.wire import Endpoint, TickRequest, TickResult, decode_message, encode_message

log = logging.getLogger(__name__)

NAMESPACE = "pulseline"

ResultsSink = Callable[[Mapping[str, Any], Mapping[str, Any]], Awaitable[Any]]


def actor_name(session_id: str) -> str:
    return f"session:{session_id}"


def resolve_sink(path: str) -> ResultsSink:
    """Import ``"package.module:function"`` and return the function; raise ``ValueError``
    for a malformed path or a target that is not callable (import errors pass through)."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"results sink {path!r} is not 'package.module:function'")
    target: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(f"results sink {path!r} is not callable")
    return target  # type: ignore[no-any-return]


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class SessionActor:
    def __init__(self, session_id: str, settings: dict[str, Any]) -> None:
        logging.basicConfig(level=logging.INFO)
        self.session_id = session_id
        self.interval_s = float(settings.get("checkpoint_interval_s", 0.25))
        self.store = CheckpointStore(
            settings["redis_url"], prefix=settings.get("prefix", "pl"), kind="session", ident=session_id
        )
        data = self.store.acquire()
        if data is not None:
            self.state = SessionState.from_checkpoint(data)
        else:
            self.state = SessionState(
                session_id,
                board_size=int(settings.get("board_size", 10)),
                max_gap_s=float(settings.get("max_gap_s", 5.0)),
            )
        self.durable: dict[str, int] = self.state.applied_seqs() if data is not None else {}
        self.checkpointed_version = self.state.version if data is not None else -1
        self.fenced = False
        self.checkpoints_written = 0
        self._loop: asyncio.Task[None] | None = None
        self._write_lock: asyncio.Lock | None = None
        # Leaderboards fed with this class's results once it ends (board names; default none),
        # through the results sink (an import path; default none: see the module docstring).
        self.settings = settings
        self.leaderboards = [str(b) for b in settings.get("leaderboards") or ()]
        self.results_sink = str(settings.get("results_sink") or "")
        self.publish_failures = 0
        self._publish_task: asyncio.Task[None] | None = None
        self._republish = False
        self.host = ray.util.get_node_ip_address()
        self.stream: StreamServer | None = None
        log.info("session %s up: epoch %s, restored=%s", session_id, self.store.epoch, data is not None)

    # -- lifecycle --------------------------------------------------------------------
    def _ensure_loop(self) -> None:
        if self.fenced:
            raise StaleInstance(self.store.epoch, None)
        if self._loop is None or self._loop.done():
            self._write_lock = asyncio.Lock()
            self._loop = asyncio.get_running_loop().create_task(self._checkpoint_loop())

    async def _checkpoint_loop(self) -> None:
        while not self.fenced:
            await asyncio.sleep(self.interval_s)
            try:
                await self._checkpoint()
            except StaleInstance:
                log.error("session %s epoch %s fenced off; stopping", self.session_id, self.store.epoch)
                self._fence()
            except Exception:  # a control loop never dies: log and try again next round
                log.exception("session %s checkpoint failed", self.session_id)

    async def _checkpoint(self) -> None:
        assert self._write_lock is not None
        async with self._write_lock:
            if self.state.version == self.checkpointed_version:
                return
            version = self.state.version
            seqs = self.state.applied_seqs()  # taken together with the bytes, no await between
            data = self.state.to_checkpoint()
            try:
                await self.store.write(data)
            except StaleInstance:
                self._fence()
                raise
            self.checkpointed_version = version
            self.durable = seqs
            self.checkpoints_written += 1

    def _fence(self) -> None:
        """A newer instance exists: stop serving the stream and refuse every later call."""
        self.fenced = True
        if self.stream is not None:
            self.stream.close()

    # -- the hot path -------------------------------------------------------------------
    async def endpoint(self) -> Endpoint:
        """Where this instance serves its stream (started on the first call)."""
        self._ensure_loop()
        if self.stream is None:
            stream = StreamServer(host=self.host)
            stream.register(self.session_id, self._tick)
            await stream.start()
            self.stream = stream
        return Endpoint(self.host, self.stream.port, self.stream.token, self.store.epoch, os.getpid())

    def _tick(self, request: TickRequest) -> TickResult:
        """Apply one micro-batch; the board comes back only if newer than ``known_version``."""
        self._ensure_loop()
        return self._result(request, self.state.apply_tick(request))

    def _result(self, request: TickRequest, result: Any) -> TickResult:
        if result.applied and self.state.phase is Phase.ENDED:
            self._publish_results()  # late data: the corrected results replace the earlier ones
        version = self.state.version
        return TickResult(
            session=self.session_id, epoch=self.store.epoch, version=version,
            board=self.state.board() if version != request.known_version else None,
            durable={d: self.durable.get(d, 0) for d in request.want_durable},
            applied=result.applied, duplicates=result.duplicates, id=request.id,
        )

    async def tick_wire(self, *, data: bytes) -> bytes:
        """A tick through Ray: ``actors.wire`` bytes in, ``TickResult`` bytes out."""
        request = decode_message(data)
        if not isinstance(request, TickRequest):
            raise TypeError(f"tick_wire takes a tick, not {type(request).__name__}")
        return encode_message(self._tick(request))

    async def tick(
        self,
        *,
        batches: list[tuple[str, str, list[list[Any]], list[int]]],
        want_durable: list[str],
        known_version: int,
    ) -> dict[str, Any]:
        """Apply device batches (the Ray call of the first protocol; kept for tools and tests)."""
        self._ensure_loop()
        request = TickRequest(self.session_id, want_durable=tuple(want_durable), known_version=known_version)
        result = self._result(request, self.state.apply(DeviceBatch(d, p, rows, rej) for d, p, rows, rej in batches))
        return {
            "epoch": result.epoch, "version": result.version, "board": result.board,
            "durable": result.durable, "applied": result.applied, "duplicates": result.duplicates,
        }

    # -- control --------------------------------------------------------------------------
    async def flush(self) -> dict[str, int]:
        """Checkpoint now; returns the durable seq of every device."""
        self._ensure_loop()
        await self._checkpoint()
        return dict(self.durable)

    async def join(self, *, participant: str, tags: dict[str, str] | None = None) -> int:
        """Join (idempotent); ``tags`` replace the participant's tags, ``None`` keeps them.
        Bad tags raise ``TagError`` and change nothing."""
        self._ensure_loop()
        slot = self.state.join(participant, tags)
        await self._checkpoint()
        return slot

    async def leave(self, *, participant: str) -> bool:
        self._ensure_loop()
        left = self.state.leave(participant)
        await self._checkpoint()
        return left

    async def set_phase(self, *, phase: str) -> str:
        self._ensure_loop()
        self.state.set_phase(Phase(phase))
        await self._checkpoint()
        if self.state.phase is Phase.ENDED:
            self._publish_results()
        return self.state.phase.value

    def _publish_results(self) -> None:
        """Hand the results to the sink in the background; never fails a call."""
        if not self.leaderboards or not self.results_sink:
            return
        self._republish = True
        if self._publish_task is None or self._publish_task.done():
            self._publish_task = asyncio.get_running_loop().create_task(self._publish_loop())

    async def _publish_loop(self) -> None:
        while self._republish:
            self._republish = False
            try:
                sink = resolve_sink(self.results_sink)
                await sink(self.settings, self.state.snapshot())
            except Exception:  # results are re-published on the next late data or phase call
                self.publish_failures += 1
                log.exception("session %s: results sink %r failed", self.session_id, self.results_sink)

    async def snapshot(self) -> dict[str, Any]:
        self._ensure_loop()
        snap = self.state.snapshot()
        snap["epoch"] = self.store.epoch
        snap["durable"] = dict(self.durable)
        snap["checkpoints_written"] = self.checkpoints_written
        snap["state_bytes"] = self.state.nbytes()
        snap["publish_failures"] = self.publish_failures
        return snap

    async def info(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "epoch": self.store.epoch,
            "node_id": ray.get_runtime_context().get_node_id(),
            "fenced": self.fenced,
            "stream_port": self.stream.port if self.stream is not None else None,
            "stream_ticks": self.stream.ticks if self.stream is not None else 0,
        }
