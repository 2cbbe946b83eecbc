"""``SessionCell``: one live class as a process hosts it — state, checkpoints, fencing.

A cell is everything a class needs besides Ray: one ``SessionState``, its
``CheckpointStore`` (its own Redis keys and fencing epoch), the durable seqs that may be
acknowledged, and the publishing of results. Two Ray shells host cells:

* ``SessionActor`` (``actors/session_actor.py``): one cell per actor process — the default,
  for classes that may grow large;
* ``SessionHost`` (``actors/session_host.py``): many small classes in one actor process (the
  *dense mode*), each cell still with its own name, state, checkpoints, epoch and restart.

The shell owns the event loop's tasks (checkpointing, the stream server); the cell is driven
by it. Opening a cell takes a new epoch and restores the last checkpoint, so every (re)open
fences off older instances of the same class, wherever they run. A cell that finds itself
fenced off (a checkpoint write refused) calls ``on_fenced`` and refuses every later call
with ``StaleInstance``; its shell stops serving it.

Profiles: a rider's profile (``actors.profile``) is read from Redis when it joins through
``join`` (before the call returns), and in the background for riders that first appear in a
tick (their device's first samples) or were restored from a checkpoint written before
profiles; metrics use estimates until it arrives (milliseconds). Every
``profile_refresh_s`` (default 60 s; 0: never) of a class that is not ended, every rider's
profile is read again (one pipelined round trip), so a profile changed mid-class counts
from then on. A failed read is logged and retried every ``PROFILE_RETRY_S``; it never
fails a call.

Results: once the class is ended (and again after late data changes it), the snapshot is
handed to the *results sink* named in ``settings.results_sink``, an import path
``"package.module:function"`` of a callable ``async (settings, snapshot) -> Any`` (an edge
with session leaderboards names the leaderboards' publisher there, see
docs/leaderboards.md). It is resolved with importlib when results are published, so
``actors`` imports nothing above itself; a sink that fails to import or raises is logged
and never fails a session call. No sink, or no ``settings.leaderboards``: nothing is
published.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from storage.checkpoint import CheckpointStore, key_base
from actors.board_part import BoardParts
from actors.class_shard import class_shard_count, class_standing, note_ended
from actors.errors import StaleInstance
from actors.plan import ClassClock, check_plan
from actors.replay import Replay, ReplayError, replay_keys
from actors.profile import ProfileStore
from storage.redis_url import AsyncRedis
from actors.session import DeviceBatch, Phase, SessionState, check_tags
from actors.settings import ActorSettings
from actors.wire import TickRequest, TickResult

log = logging.getLogger(__name__)

PROFILE_RETRY_S = 1.0
PERIOD_HELD_S = 5.0  # how long the fastest board period an edge asked for holds without being asked again
BEAT_LEAD_S = 0.02  # how long before the reader's tick (``SessionCell._pace``) the other edges' ticks should arrive

ResultsSink = Callable[[Mapping[str, Any], Mapping[str, Any]], Awaitable[Any]]


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


@dataclass(slots=True)
class _EdgeSeen:
    """One edge's ticks as a class sees them (``SessionCell._pace``)."""

    at: float = 0.0  # (monotonic) its last tick
    anchor: float = 0.0  # when its ticks come, give or take its period (``SessionCell._pace``)
    period: float | None = None  # its fastest viewer's board period, when it last had one
    period_at: float = 0.0  # when it last said it


class SessionCell:
    def __init__(self, session_id: str, settings: ActorSettings | Mapping[str, Any],
                 *, on_fenced: Callable[[SessionCell], None] | None = None, redis: AsyncRedis | None = None) -> None:
        """``redis``: an async client to share with other cells of the process (a dense
        host's); default, the cell's store makes its own."""
        self.session_id = session_id
        self.settings = settings = ActorSettings.of(settings)
        self.on_fenced = on_fenced
        self.store = CheckpointStore(
            settings.redis_url, prefix=settings.prefix, kind="session", ident=session_id, client=redis,
            side="rec",
        )
        data = self.store.acquire()  # (blocking: one Redis round trip; shells call it off their loop)
        if data is not None:
            self.state = SessionState.from_checkpoint(data, recording=self.store.side_data)
        else:
            self.state = SessionState(
                session_id,
                board_size=settings.board_size,
                max_gap_s=settings.max_gap_s,
                lobby_lead_s=settings.lobby_lead_s,
            )
        self.state.presence.grace_s = settings.presence_grace_s
        self._restore_replay()
        self.restored = data is not None
        self.durable: dict[str, int] = self.state.applied_seqs() if data is not None else {}
        self.checkpointed_version = self.state.version if data is not None else -1
        self.fenced = False
        self.checkpoints_written = 0
        # Telemetry (read and drained by the shell's ``actors.telemetry``, never by Ray here):
        self.dirty_since: float | None = None  # monotonic time the state first changed since its checkpoint
        self.checkpoint_times: list[tuple[float, float]] = []  # (write seconds, lag seconds), up to 1000
        self.checkpoint_failures = 0
        self.ticks_served = 0
        self._edges: dict[str, _EdgeSeen] = {}  # the edges that ticked lately, by id ("": one that does not say)
        self.samples_applied = 0
        self._write_lock = asyncio.Lock()
        # Leaderboards fed with this class's results once it ends (board names; default none),
        # through the results sink (an import path; default none: see the module docstring).
        self.leaderboards = list(settings.leaderboards)
        self.results_sink = settings.results_sink
        self.history_sink = settings.history_sink
        self._history_all = True  # the first history publication of an instance hands every rider
        self.publish_failures = 0
        self._publish_task: asyncio.Task[None] | None = None
        self._republish = False
        self.profile_store = ProfileStore(self.store.client(), prefix=self.store.prefix)
        self._unprofiled = {p for p in self.state.participants if p not in self.state.profiles}
        self._roster_seen = len(self.state.participants)
        self.profile_refresh_s = settings.profile_refresh_s
        self._profiles_read_at = time.monotonic()
        self._profile_task: asyncio.Task[None] | None = None
        self._seat_tasks: set[asyncio.Task[None]] = set()
        self.active_at = time.monotonic()  # the last tick or call (``idle_for``)
        self._parts = BoardParts()

    @property
    def epoch(self) -> int:
        return self.store.epoch

    def check(self) -> None:
        """Raise ``StaleInstance`` once a newer instance of this class exists (every tick and
        call passes here: it also marks the class active)."""
        if self.fenced:
            raise StaleInstance(self.store.epoch, None)
        self.active_at = time.monotonic()

    @staticmethod
    def idle_poll_s(idle_s: float) -> float:
        """How often a shell looks for idle classes (``idle_for``) given the idle limit."""
        return min(30.0, max(0.5, idle_s / 4))

    def idle_for(self, now: float) -> float:
        """Seconds this class has had nothing to do, 0 while it has: a tick or call, unsaved
        state, a class plan still to follow (its clock moves it with nobody connected), an
        on-demand class live (its ghosts ride on), results or seats being published."""
        state = self.state
        if self.fenced or self.dirty or (self._publish_task is not None and not self._publish_task.done()):
            return 0.0
        if self._seat_tasks or (state.phase is not Phase.ENDED and (
                state.schedule.plan is not None or state.replay is not None
                or (state.phase in (Phase.SCHEDULED, Phase.LOBBY) and state.schedule.start_at is not None))):
            return 0.0
        return max(0.0, now - self.active_at)

    # -- checkpoints ----------------------------------------------------------------------
    @property
    def dirty(self) -> bool:
        return not self.fenced and self.state.version != self.checkpointed_version

    async def checkpoint(self) -> None:
        """Write the state if it changed; a refused write fences this cell off (and raises)."""
        async with self._write_lock:
            if self.state.version == self.checkpointed_version:
                return
            version = self.state.version
            seqs = self.state.applied_seqs()  # taken together with the bytes, no await between
            data = self.state.to_checkpoint()
            chunks = self.state.recording.take_dirty()
            since, self.dirty_since = self.dirty_since, None
            began = time.monotonic()
            try:
                await self.store.write(data, side=chunks)
            except StaleInstance:
                self.fence()
                raise
            except BaseException as exc:
                self.state.recording.mark_dirty(list(chunks))  # (written with the next checkpoint)
                if isinstance(exc, Exception):
                    self.checkpoint_failures += 1
                if self.dirty_since is None:
                    self.dirty_since = since
                raise
            self.checkpointed_version = version
            self.durable = seqs
            self.checkpoints_written += 1
            done = time.monotonic()
            if len(self.checkpoint_times) < 1000:
                self.checkpoint_times.append((done - began, done - (since if since is not None else began)))

    def fence(self) -> None:
        """A newer instance exists: refuse every later call and tell the shell (once)."""
        if not self.fenced:
            self.fenced = True
            log.error("session %s epoch %s fenced off; stopping", self.session_id, self.store.epoch)
            if self.on_fenced is not None:
                self.on_fenced(self)

    async def close(self) -> None:
        if self._profile_task is not None:
            self._profile_task.cancel()
        await self.store.close()

    # -- profiles ---------------------------------------------------------------------------
    def _want_profiles(self) -> None:
        """Note riders new since the last call; start the background read if any lack a profile."""
        roster = self.state.participants
        if len(roster) > self._roster_seen:
            self._unprofiled.update(p for p in roster[self._roster_seen:] if p not in self.state.profiles)
            self._roster_seen = len(roster)
        now = time.monotonic()
        if self.profile_refresh_s > 0 and now - self._profiles_read_at >= self.profile_refresh_s \
                and self.state.phase is not Phase.ENDED:  # (a profile changed mid-class reaches it)
            self._profiles_read_at = now
            self._unprofiled.update(roster)
        if self._unprofiled and (self._profile_task is None or self._profile_task.done()):
            self._profile_task = asyncio.get_running_loop().create_task(self._profile_loop())

    async def _profile_loop(self) -> None:
        while self._unprofiled and not self.fenced:
            riders = sorted(self._unprofiled)
            if not await self._load_profiles(riders):
                await asyncio.sleep(PROFILE_RETRY_S)

    async def _load_profiles(self, riders: list[str]) -> bool:
        """Read and set the profiles of ``riders``; False (logged) when Redis failed."""
        try:
            found = await self.profile_store.get_many(riders)
        except Exception as exc:  # estimates meanwhile; the loop retries
            log.warning("session %s: reading %d rider profile(s) failed: %r", self.session_id, len(riders), exc)
            return False
        for rider in riders:
            self.state.set_profile(rider, found.get(rider))
            self._unprofiled.discard(rider)
        return True

    # -- the hot path -------------------------------------------------------------------
    def tick(self, request: TickRequest) -> TickResult:
        """Apply one micro-batch; the board comes back only if newer than ``known_version``."""
        self.check()
        return self._result(request, self.state.apply_tick(request))

    def _result(self, request: TickRequest, result: Any) -> TickResult:
        self._want_profiles()
        if self.state.age_presence() and self.state.gone:
            self._free_seats()
        self.advance()
        self.ticks_served += 1
        self.samples_applied += result.applied
        if self.dirty_since is None and self.state.version != self.checkpointed_version:
            self.dirty_since = time.monotonic()
        if result.applied and self.state.phase is Phase.ENDED:
            self._publish_results()  # late data: the corrected results replace the earlier ones
        version = self.state.version
        period, beat, edges = self._pace(request, time.monotonic())
        return TickResult(
            session=self.session_id, epoch=self.store.epoch, version=version,
            board=self._board(request.known_version) if version != request.known_version else None,
            durable={d: self.durable.get(d, 0) for d in request.want_durable},
            applied=result.applied, duplicates=result.duplicates, id=request.id,
            class_period_s=period, beat_s=beat, edges=edges,
        )

    def _pace(self, request: TickRequest, now: float) -> tuple[float | None, float | None, int]:
        """The class's pace as this tick's edge should keep it, and how many edges tick it.

        The pace is the fastest board period any edge asked for in the last ``PERIOD_HELD_S``
        (each edge's ticks say its own): an edge whose viewers are slower, or which has none,
        ticks at it while it has devices, so that their samples reach the fast viewers of
        other edges within a period, not within its own slow one. An edge other than the one
        of that fastest viewer (the *reader*) also gets its beat: the wait until its next
        tick should arrive here, ``BEAT_LEAD_S`` before the reader's next one, so the reader's
        board holds its samples (edges that each kept their own clock measured a
        sample-to-board p99 of ~0.2 s at 10 Hz, ``docs/stream.md``). The reader's ticks are
        placed by its ``anchor``: a tick that comes early moves it at once, a late one only
        an eighth of the way (a tick delayed on its edge does not drag the others later)."""
        edges = self._edges
        key = request.edge or ""
        seen = edges.get(key)
        if seen is None:
            seen = edges[key] = _EdgeSeen(anchor=now)
        seen.at = now
        if request.period_s is not None:
            period = request.period_s
            predicted = seen.anchor + round((now - seen.anchor) / period) * period
            late = now - predicted  # (within half a period either way)
            seen.anchor = now if late < 0 or seen.period != period else predicted + late / 8
            seen.period, seen.period_at = period, now
        else:
            seen.anchor = now
        fastest: float | None = None
        reader = ""
        for edge, other in list(edges.items()):
            if now - other.at > PERIOD_HELD_S:
                del edges[edge]  # (that edge went quiet)
            elif other.period is not None and now - other.period_at <= PERIOD_HELD_S and (
                    fastest is None or other.period < fastest or (other.period == fastest and edge < reader)):
                fastest, reader = other.period, edge
        count = len(edges)
        if fastest is None or request.edge is None or key == reader or count < 2:
            return fastest, None, count
        lead = min(BEAT_LEAD_S, fastest / 4)
        return fastest, (edges[reader].anchor - lead - now) % fastest, count

    def _board(self, known_version: int) -> dict[str, Any]:
        """The class board, or a class shard's board part (``settings.board_parts``: whole, or
        the rows changed since ``known_version``)."""
        if not self.settings.board_parts:
            return self.state.board()
        return self._parts.part(self.state, known_version)

    def tick_batches(self, batches: list[tuple[str, str, list[list[Any]], list[int]]],
                     want_durable: list[str], known_version: int) -> dict[str, Any]:
        """Apply device batches (the Ray call of the first protocol; kept for tools and tests)."""
        self.check()
        request = TickRequest(self.session_id, want_durable=tuple(want_durable), known_version=known_version)
        result = self._result(request, self.state.apply(DeviceBatch(d, p, rows, rej) for d, p, rows, rej in batches))
        return {
            "epoch": result.epoch, "version": result.version, "board": result.board,
            "durable": result.durable, "applied": result.applied, "duplicates": result.duplicates,
        }

    # -- seats (cluster.admission keeps them; the class frees those of riders who left) ---------
    def _free_seats(self) -> None:
        """Riders the presence grace took off the board give their seat back (``SREM`` on the
        class's ``seats`` set, the key ``cluster.admission`` owns), in the background."""
        gone, self.state.gone = self.state.gone, []
        task = asyncio.get_running_loop().create_task(self._srem_seats(gone))
        self._seat_tasks.add(task)
        task.add_done_callback(self._seat_tasks.discard)

    async def _srem_seats(self, riders: list[str]) -> None:
        try:
            await self.store.client().srem(f"{key_base(self.store.prefix, 'session', self.session_id)}:seats", *riders)
        except Exception as exc:  # the seats stay taken until a leave: logged, never fails a tick
            log.warning("session %s: freeing %d seat(s) failed: %r", self.session_id, len(riders), exc)

    # -- on demand (actors.replay) --------------------------------------------------------
    def _source_keys(self, source: str) -> tuple[str, str]:
        return replay_keys(key_base(self.store.prefix, "session", source))

    def _replay_of(self, source: str, data: Any, chunks: Any) -> Replay:
        if data is None:
            raise ReplayError(f"class {source!r} has no recording (never ran, or its retention is over)")
        recorded = SessionState.from_checkpoint(data, recording=chunks or {})
        return Replay.of_recording(source, recorded.participants, recorded.recording, recorded.schedule.live_at)

    def _restore_replay(self) -> None:
        """A restored on-demand class rebuilds its ghosts (blocking reads: in the constructor)."""
        source = self.state.replay_of
        if source is None:
            return
        ckpt, rec = self._source_keys(source)
        try:
            with self.store.sync_client() as client:
                replay = self._replay_of(source, client.get(ckpt), client.hgetall(rec))
        except Exception as exc:  # the riders here now still race each other
            log.warning("session %s: the recording of %s could not be read: %r", self.session_id, source, exc)
            return
        self.state.set_replay(replay)

    async def set_replay(self, source: str) -> dict[str, Any]:
        """Make this class an on-demand ride of the ended class ``source``, against its
        recorded riders (idempotent; ``ReplayError`` without a recording); live at once."""
        self.check()
        if self.state.replay is None or self.state.replay_of != source:
            ckpt, rec = self._source_keys(source)
            client = self.store.client()
            data = await client.get(ckpt)
            chunks = await client.hgetall(rec) if data is not None else {}
            self.state.set_replay(self._replay_of(source, data, chunks))
        if self.state.phase.can_go_to(Phase.LIVE):
            self.state.set_phase(Phase.LIVE)
        await self.checkpoint()
        return self.state.replay.block(int(self.state.active.sum())) if self.state.replay else {}

    def advance(self) -> None:
        """Follow the class plan's clock (``SessionState.advance_plan``): called on every tick
        and by the shell's own loop, so a class moves through its phases with nobody
        connected and no call from outside. A class the plan ends publishes its results;
        the phase change reaches Redis with the shell loop's next checkpoint."""
        if self.fenced:
            return
        ended = self.state.phase is Phase.ENDED
        self.state.advance_plan()
        if not ended and self.state.phase is Phase.ENDED:
            self._publish_results()

    # -- control --------------------------------------------------------------------------
    async def set_plan(self, plan: dict[str, Any] | None, start_at: float | None) -> dict[str, Any]:
        """Set the class plan and scheduled start (``PlanError``: bad plan, or the class is
        live already); idempotent. Checkpointed before it returns."""
        self.check()
        self.state.set_plan(None if plan is None else check_plan(plan), start_at)
        await self.checkpoint()
        return {"phase": self.state.phase.value, **self.state.schedule.as_dict()}

    def class_clock(self) -> dict[str, Any]:
        """This class's phase and clock, for a shard added to its class to follow (O(1))."""
        self.check()
        self.advance()
        return {"phase": self.state.phase.value, "clock": self.state.schedule.as_dict()}

    async def follow(self, phase: str, clock: Mapping[str, Any]) -> str:
        """Take the phase and clock of the class's shard 0 (``SessionState.follow``); idempotent."""
        self.check()
        ended = self.state.phase is Phase.ENDED
        if self.state.follow(Phase(phase), ClassClock.of(clock, lobby_lead_s=self.state.schedule.lobby_lead_s)):
            await self.checkpoint()
            if not ended and self.state.phase is Phase.ENDED:
                self._publish_results()
        return self.state.phase.value

    async def flush(self) -> dict[str, int]:
        """Checkpoint now; returns the durable seq of every device."""
        self.check()
        await self.checkpoint()
        return dict(self.durable)

    async def join(self, participant: str, tags: dict[str, str] | None = None) -> int:
        return (await self.join_many([(participant, tags)]))[0]

    async def join_many(self, riders: Sequence[Sequence[Any]]) -> list[int]:
        """Join each ``(participant, tags)`` (a join refreshes the profile): one profile read
        and one checkpoint for the lot (a join surge through one edge). Every rider's tags
        are checked before anyone joins, so a ``TagError`` changes nothing."""
        self.check()
        if len(riders) > 1:  # (one rider: ``state.join`` checks before it changes anything)
            for _, tags in riders:
                if tags is not None:
                    check_tags(tags)
        slots = [self.state.join(participant, tags) for participant, tags in riders]
        participants = list(dict.fromkeys(participant for participant, _ in riders))
        if not await self._load_profiles(participants):
            self._unprofiled.update(participants)
            self._want_profiles()
        await self.checkpoint()
        return slots

    def member(self, participant: str) -> bool:
        """True if ``participant`` joined this class (left riders too: its roster, O(1))."""
        self.check()
        return participant in self.state.slots

    async def leave(self, participant: str) -> bool:
        self.check()
        left = self.state.leave(participant)
        await self.checkpoint()
        return left

    async def set_phase(self, phase: str) -> str:
        self.check()
        self.state.set_phase(Phase(phase))
        await self.checkpoint()
        if self.state.phase is Phase.ENDED:
            self._publish_results()
        return self.state.phase.value

    def _publish_results(self) -> None:
        """Hand the results to the sinks in the background; never fails a call."""
        if not (self.leaderboards and self.results_sink) and not self.history_sink:
            return
        self._republish = True
        if self._publish_task is None or self._publish_task.done():
            self._publish_task = asyncio.get_running_loop().create_task(self._publish_loop())

    async def _publish_loop(self) -> None:
        while self._republish:
            self._republish = False
            snapshot = self.state.snapshot()
            if self.settings.class_id:  # a class shard: its riders' results are the class's
                snapshot["session"] = self.settings.class_id
            if self.leaderboards and self.results_sink:
                await self._call_sink(self.results_sink, snapshot)
            if self.history_sink:
                await self._publish_history(snapshot)

    async def _call_sink(self, path: str, snapshot: Mapping[str, Any]) -> tuple[bool, Any]:
        try:
            sink = resolve_sink(path)
            return True, await sink(self.settings.as_dict(), snapshot)
        except Exception:  # results are re-published on the next late data or phase call
            self.publish_failures += 1
            log.exception("session %s: sink %r failed", self.session_id, path)
            return False, None

    async def _publish_history(self, snapshot: dict[str, Any]) -> None:
        """The history sink gets the series of the riders whose recording changed since it
        last succeeded (every rider the first time); a failure hands them again next time."""
        recording = self.state.recording
        changed = recording.take_changed()
        slots = list(range(recording.used)) if self._history_all else changed.tolist()
        completes = False
        if self.settings.class_id:  # a class shard (every shard its class has now): one publishes the class's result
            try:
                shards = await class_shard_count(self.store.client(), self.settings.prefix, self.settings.class_id,
                                                 self.settings.class_shards)
                complete, completes = await note_ended(self.session_id, shards, prefix=self.settings.prefix,
                                                       client=self.store.client())
            except Exception as exc:  # its rides still go; the class's result with a later publication
                log.warning("class shard %s: could not note its end: %r", self.session_id, exc)
                shards, complete = self.settings.class_shards, False
        if not slots and not completes:
            return
        names = self.state.participants
        series = dict(zip((names[s] for s in slots), recording.series_many(slots), strict=True))
        if self.settings.class_id:  # its riders ranked among the whole class (actors/class_shard.py)
            standing = await class_standing(self.session_id, shards, snapshot["participants"],
                                            redis_url=self.settings.redis_url, prefix=self.settings.prefix,
                                            client=self.store.client())
            snapshot = {**snapshot, "class_ranks": standing.ranks, "class_riders": standing.riders,
                        "class_result": standing.result if complete else None, "class_completed": completes}
        ok, done = await self._call_sink(self.history_sink, {**snapshot, "series": series})
        if not ok:
            recording.changed[changed] = True
            return
        self._history_all = False
        records: dict[str, list[str]] = {}
        for event in (done or {}).get("events", ()) if isinstance(done, Mapping) else ():
            if event.get("type") == "record.set":  # (shown in the riders' end-of-class summaries)
                records.setdefault(str(event["rider"]), []).append(str(event["metric"]))
        self.state.set_records(records)

    def snapshot(self) -> dict[str, Any]:
        self.check()
        self.advance()
        if self.state.age_presence(force=True) and self.state.gone:
            self._free_seats()
        snap = self.state.snapshot()
        snap["epoch"] = self.store.epoch
        snap["durable"] = dict(self.durable)
        snap["checkpoints_written"] = self.checkpoints_written
        snap["state_bytes"] = self.state.nbytes()
        snap["publish_failures"] = self.publish_failures
        snap["metrics_errors"] = self.state.metrics_errors
        rec = self.state.recording
        snap["recording"] = {"t0": rec.t0, "riders": rec.used, "chunks": len(rec.chunks), "bytes": rec.nbytes(),
                             "dropped": rec.dropped, "errors": self.state.recording_errors}
        return snap
