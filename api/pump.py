"""``SessionPump``: the edge's per-session micro-batcher.

Samples from every connection of one session are gathered and sent to the session in one
tick (``actors.wire.TickRequest``, samples as columns) through the edge's ``TickChannel`` (``api/session_stream.py``: the direct stream to the actor's
process by default, one Ray call per tick behind ``PULSELINE_SESSION_TRANSPORT=ray``). The
result carries the board (when newer than the one this edge has), which is handed to
every local viewer (latest wins; each sends it when its slot has come, ``api/outbox.py``),
and the durable seqs of local devices, which become ``ack`` frames.

How often: once per period of the fastest local viewer (a 10 Hz viewer: every 0.1 s, a
class of 1 board/s riders: every second), never faster than ``tick_interval_s`` nor slower
than ``max_tick_interval_s``, which is also the pace of a class with devices and no viewer
(its acks). An edge with devices ticks at least as often as the fastest viewer on *any*
edge of the class: each tick says the period of this edge's fastest viewer and the class
answers with the fastest one asked for lately (``SessionCell._pace``), so the samples of
riders on an edge of 1 Hz phones reach a 10 Hz studio screen on another edge within about
a period, not within a second. The class also keeps its edges' ticks in step: an edge other
than the screen's is given a beat (``TickResult.beat_s``) and ticks on it (``_in_step``),
just before the screen's edge reads its board (``docs/stream.md``, "Several edges"). A device
that says hello (it waits for its ``welcome``) or a viewer that has no board yet does not
wait for the next period: it brings the next tick forward to
``tick_interval_s`` after the last one began (``_hurry``), so a rider joining a 1 Hz class
is welcomed within ~0.1 s, not up to a second later, and a burst of joins still costs at
most one tick per ``tick_interval_s``. A board therefore leaves the edge on the tick that
brings it (a viewer's slot allows half a tick of slack, ``api/outbox.py``), and one tick costs the same whatever the
number of samples in it, so a class pays for the boards its viewers asked for, not for a
fixed 10 Hz. (Until 7 Dec 2026 a class ticked twice per period: the same boards, the same
sample-to-board latency, ~25 % more CPU in all; ``docs/benchmarks.md``, "One tick per board
period".) A class with devices and no viewer that has nothing new backs off, doubling up to
twice ``max_tick_interval_s``, and the next sample wakes it. A class with more than
``SPREAD_VIEWERS`` viewers on this edge ticks twice per period: its viewers' slots fall on
either tick, so a 3,000-rider class writes two bursts of ~1,500 boards a second, not one
of 3,000 (one 3,000-rider class, peer loader: board age p99 84 ms rather than 154,
``docs/benchmarks.md``).

When the actor's epoch changes (it restarted from its checkpoint), or a
tick fails (stream lost, stale instance), every local device is sent a fresh ``welcome``
so it resends what was not durable, and the channel re-resolves the actor through Ray.

Bounded: at most ``max_pending`` samples wait per session; beyond that ``add`` refuses
and the connection throttles the device (the device keeps and resends its samples).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from actors.wire import StreamErrorCode, TickRequest
from api.metrics import (
    ACK_LATENCY_SECONDS,
    RESYNCS,
    SAMPLE_TO_BOARD_SECONDS,
    SAMPLES_ACKED,
    SAMPLES_RECEIVED,
    TICK_ERRORS,
    TICK_LAG_SECONDS,
    TICK_SECONDS,
)
from api.log_context import REQUEST_ID, SESSION
from api.outbox import Outbox
from api.session_stream import RayTicks, SessionStreamError, TickChannel
from cluster.directory import SessionDirectory
from devices.protocol import encode

log = logging.getLogger(__name__)

SPREAD_VIEWERS = 500  # more local viewers than this: tick twice per period (boards in two bursts)


def _settle(nap: asyncio.Future[None]) -> None:
    if not nap.done():
        nap.set_result(None)


class PumpState(enum.Enum):
    IDLE = "idle"  # created, not started
    RUNNING = "running"  # ticking (or waiting for work)
    STOPPING = "stopping"  # asked to stop: the loop ends after its current tick


class StaleResult(Exception):
    """A tick answered by an instance older than one this pump already heard from."""


@dataclass(slots=True, eq=False)
class DeviceLink:
    """One device of one connection, as the pump sees it."""

    device: str
    participant: str
    outbox: Outbox
    acked: int = 0
    sent: int = 0  # highest seq forwarded to the actor
    needs_welcome: bool = True
    acked_at: float = 0.0  # monotonic time of the last ack frame for this device
    unacked_since: float = 0.0  # when its oldest unacknowledged sample's batch began (0: none waiting)


@dataclass(slots=True)
class _Pending:
    participant: str
    rows: list[list[Any]] = field(default_factory=list)
    rejected: list[int] = field(default_factory=list)


class SessionPump:
    def __init__(
        self,
        session_id: str,
        directory: SessionDirectory,
        *,
        tick_interval_s: float,
        max_pending: int,
        ack_interval_s: float = 0.0,
        channel: TickChannel | None = None,
        max_tick_interval_s: float | None = None,
        on_phase: Callable[[str, str], Awaitable[None]] | None = None,
        on_join: Callable[[str, list[str]], Awaitable[None]] | None = None,
        edge_id: str | None = None,
    ) -> None:
        self.session_id = session_id
        self.edge_id = edge_id  # named in each tick: the class keeps the ticks of its edges in step
        # called (in the background) when a board shows the class in a new phase: a class
        # plan moves phases by itself, and the edge records them (cluster.session_records)
        self.on_phase = on_phase
        self._phase_task: asyncio.Task[None] | None = None
        # called (in the background) with the riders whose samples a tick applied for the
        # first time on this pump: a device's first samples join its rider (rider.joined)
        self.on_join = on_join
        self.joined: set[str] = set()  # riders reported to on_join (a leave through this edge takes one out)
        self._join_tasks: set[asyncio.Task[None]] = set()
        self.ack_interval_s = ack_interval_s
        self.directory = directory
        self.channel: TickChannel = channel if channel is not None else RayTicks(directory)
        self.tick_interval_s = tick_interval_s
        self.max_tick_interval_s = max(tick_interval_s, max_tick_interval_s if max_tick_interval_s is not None else tick_interval_s)
        self.max_pending = max_pending
        self.links: dict[str, DeviceLink] = {}
        self.viewers: set[Outbox] = set()
        self._period_of: dict[Outbox, float] = {}
        # the viewers by board period, fastest first (the fastest sets the pace): a tick hands
        # its board to a 10 Hz screen before the riders' 1 Hz boards of a big class
        self._tiers: dict[float, dict[Outbox, None]] = {}
        self._interval = self.max_tick_interval_s  # (no viewer yet: the slowest pace)
        self._class_period: float | None = None  # the fastest board period of the class, any edge (its last tick said)
        self._beat_at: float | None = None  # (monotonic) when the class wants this edge's ticks, give or take a class period
        self._edges = 1  # the edges that tick the class (its last tick said)
        self.pending: dict[str, _Pending] = {}
        self.pending_count = 0
        self.pending_rows = 0  # valid samples in ``pending`` (counted once per tick)
        self.batch_at = 0.0  # monotonic time the first sample of the pending batch came
        self.tick_seconds_avg: float | None = None  # moving average of the tick time (scrape-time gauge)
        self.known_version = -1
        self.epoch: int | None = None
        self.board: dict[str, Any] | None = None
        self.ticks = 0
        self.tick_errors = 0
        self._wake = asyncio.Event()
        self._quiet = 0  # ticks in a row that brought nothing new
        self._pace_s = 0.0  # the wait planned before the next tick (its lag is measured against it)
        self._tick_began = 0.0  # monotonic time the last tick began
        self._planned: float | None = None  # when the next tick was planned to begin (``_wait``)
        self._nap: asyncio.Future[None] | None = None  # the wait before the next tick
        self._soon = False  # someone waits for the next tick (``_hurry``): it comes tick_interval_s after the last
        self._task: asyncio.Task[None] | None = None
        self.state = PumpState.IDLE

    # -- registration -----------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self.state = PumpState.RUNNING
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"pump:{self.session_id}")

    async def stop(self) -> None:
        self.state = PumpState.STOPPING
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout=2.0)
            except (TimeoutError, asyncio.CancelledError):
                self._task.cancel()

    def attach(self, link: DeviceLink) -> None:
        link.needs_welcome = True
        self.links[link.device] = link
        self._wake.set()
        self._hurry()

    def detach(self, link: DeviceLink) -> None:
        if self.links.get(link.device) is link:
            del self.links[link.device]

    def add_viewer(self, outbox: Outbox) -> None:
        self.remove_viewer(outbox)
        self.viewers.add(outbox)
        period = outbox.board_interval_s
        self._period_of[outbox] = period
        if period not in self._tiers:
            self._tiers = dict(sorted({**self._tiers, period: {}}.items()))
        self._tiers[period][outbox] = None
        self._periods_changed()
        if self.board is not None:
            outbox.set_board(self.board)
        else:
            self._hurry()
        self._wake.set()

    def note_phase(self, phase: str) -> None:
        """The class moved to ``phase`` (a control call). A pump with nobody attached does not
        tick, so its last board would keep the old phase, and passivation, which reads it,
        would wait for "ended" forever. The copy drops the old board's cached encodings."""
        if self.board is not None and self.board.get("phase") != phase:
            self.board = {k: v for k, v in self.board.items() if not k.startswith("_")} | {"phase": phase}

    def _phase_seen(self, phase: str) -> None:
        if self.on_phase is not None and (self._phase_task is None or self._phase_task.done()):
            self._phase_task = asyncio.get_running_loop().create_task(self._report_phase(phase))

    async def _report_phase(self, phase: str) -> None:
        try:
            await self.on_phase(self.session_id, phase)  # type: ignore[misc]
        except Exception as exc:  # a record is bookkeeping: the class goes on
            log.warning("session %s: recording phase %s failed: %r", self.session_id, phase, exc)

    def _report_joins(self, pending: dict[str, _Pending]) -> None:
        new = {p.participant for p in pending.values() if p.rows} - self.joined
        if new:
            self.joined |= new
            task = asyncio.get_running_loop().create_task(self._report_join(sorted(new)))
            self._join_tasks.add(task)
            task.add_done_callback(self._join_tasks.discard)

    async def _report_join(self, riders: list[str]) -> None:
        try:
            await self.on_join(self.session_id, riders)  # type: ignore[misc]
        except Exception as exc:  # reported again with their next samples
            self.joined.difference_update(riders)
            log.warning("session %s: reporting %d joined rider(s) failed: %r", self.session_id, len(riders), exc)

    def remove_viewer(self, outbox: Outbox) -> None:
        self.viewers.discard(outbox)
        period = self._period_of.pop(outbox, None)
        if period is not None:
            tier = self._tiers[period]
            del tier[outbox]
            if not tier:
                del self._tiers[period]
            self._periods_changed()

    def _in_order(self) -> list[Outbox]:
        """Every viewer, the fastest board periods first (a copy: a viewer may close while
        its board is handed over)."""
        tiers = list(self._tiers.values())
        if len(tiers) == 1:
            return list(tiers[0])
        return [viewer for tier in tiers for viewer in tier]

    @property
    def interval_s(self) -> float:
        """Seconds between ticks: the fastest local viewer's period, within the bounds (kept up
        to date as viewers come and go), or, while devices send through this edge, the fastest
        period of the class on any edge if that is shorter (their samples must reach it)."""
        if self._class_period is not None and self.links and self._class_period < self._interval:
            return max(self.tick_interval_s, self._class_period)
        return self._interval

    def _periods_changed(self) -> None:
        period = self._fastest_period()
        if len(self.viewers) > SPREAD_VIEWERS:
            period /= 2  # a big audience's boards leave in two halves (by slot), not one burst
        self._interval = min(self.max_tick_interval_s, max(self.tick_interval_s, period))

    def _fastest_period(self) -> float:
        return next(iter(self._tiers)) if self._tiers else self.max_tick_interval_s * 2

    def _pace(self, news: bool) -> float:
        """Seconds until the next tick. A class with nothing new (no board, no sample, no ack
        due) backs off, doubling up to its fastest viewer's period (a board is then at most
        one period late, e.g. from samples through another edge); a sample wakes it at once."""
        interval = self.interval_s
        if news or self._has_work():
            self._quiet = 0
            return interval
        self._quiet = min(self._quiet + 1, 8)
        return min(max(interval, self._fastest_period()), interval * 2 ** self._quiet)

    def _beat_from(self, t: float) -> float | None:
        """The first of the class's beats for this edge at or after ``t`` (monotonic; None
        when it gave none: alone on the class, or this edge leads)."""
        beat_at, period = self._beat_at, self._class_period
        if beat_at is None or period is None:
            return None
        return t + (beat_at - t) % period

    def _in_step(self, pace_s: float) -> float:
        """``pace_s`` moved by less than a class period onto the class's beat (when it gave
        this edge one, ``SessionCell._pace``): the next tick then reaches the class just
        before the tick of the edge of its fastest viewer, whose board so holds this edge's
        samples. Later rather than earlier: at most a quarter of a period sooner."""
        if self._class_period is None:
            return pace_s
        beat = self._beat_from(self._tick_began + pace_s - self._class_period / 4)
        return pace_s if beat is None else beat - self._tick_began

    def _next_beat(self, started: float) -> float:
        """When a sample that woke this backing-off pump goes (monotonic). Alone on its class,
        at once. With other edges, on the class's beat for this edge (or, on the edge of the
        fastest viewer, on its own pace since ``started``, the last tick): ticking at once
        would put it out of step, and the samples of the edge that missed its reading would
        wait a whole period more."""
        now = time.monotonic()
        if self._edges < 2:
            return now
        beat = self._beat_from(now)
        if beat is not None:
            return beat
        interval = self.interval_s
        return started + -((started - now) // interval) * interval

    @property
    def idle(self) -> bool:
        return not self.links and not self.viewers and not self.pending

    # -- ingest -----------------------------------------------------------------------
    def add(self, link: DeviceLink, rows: list[list[Any]], rejected: list[int]) -> bool:
        """Queue a device's samples for the next tick; False when the session is saturated."""
        if self.pending_count + len(rows) > self.max_pending:
            return False
        if not self.pending:
            self.batch_at = time.monotonic()
        if not link.unacked_since:
            link.unacked_since = self.batch_at
        entry = self.pending.get(link.device)
        if entry is None:
            entry = self.pending[link.device] = _Pending(link.participant)
        entry.rows.extend(rows)
        entry.rejected.extend(rejected)
        self.pending_count += len(rows) + len(rejected)
        self.pending_rows += len(rows)
        if rows:  # (validated: every seq is an int)
            top = rows[0][0] if len(rows) == 1 else max(r[0] for r in rows)
            if top > link.sent:
                link.sent = top
        if rejected:
            link.sent = max(link.sent, max(rejected))
        self._wake.set()
        return True

    # -- the loop ---------------------------------------------------------------------
    def _has_work(self) -> bool:
        return bool(self.pending) or any(l.needs_welcome or l.sent > l.acked for l in self.links.values())

    async def _run(self) -> None:
        REQUEST_ID.set(None)  # (the task copied the context of the request that made the pump)
        SESSION.set(self.session_id)
        while self.state is PumpState.RUNNING:
            now = time.monotonic()
            planned, self._planned = self._planned, None
            # on the time planned when the wake-up was only a little late: a class's ticks keep
            # their cadence instead of each one starting the next period late (other edges keep
            # in step with it, ``_in_step``)
            started = self._tick_began = planned if planned is not None and now - planned < self.tick_interval_s / 2 else now
            self._soon = False  # (this tick welcomes whoever was waiting; a hello during it sets it again)
            news = False
            try:
                if self._has_work() or self.viewers:
                    news = await self._tick()
            except Exception as exc:  # the loop never dies; devices resend what was not acked
                if isinstance(exc, SessionStreamError) and exc.code is StreamErrorCode.UNKNOWN_SESSION:
                    # released by its host (idle, or passivated through another edge): not a fault
                    log.info("session %s is no longer on its host; reopening it", self.session_id)
                else:
                    self.tick_errors += 1
                    TICK_ERRORS.inc()
                    log.exception("session %s tick failed", self.session_id)
                self.channel.forget(self.session_id)
                self._resync_all()
                await asyncio.sleep(0.5)
            if not self._has_work() and not self.viewers:
                self._wake.clear()
                if not self._has_work():
                    await self._wake.wait()
                    beat = self._beat_from(time.monotonic()) if self._edges > 1 and not self._soon else None
                    if beat is not None:  # the class's beat for this edge
                        await self._nap_until(beat)  # (a hello ends it: ``_hurry``)
                        self._planned = None if self._soon else beat
                    else:
                        await asyncio.sleep(self.tick_interval_s)  # gather a tick's worth
                continue
            self._pace_s = self._in_step(self._pace(news))
            wait = max(0.0, self._pace_s - (time.monotonic() - started))
            if self._quiet:  # backing off: a sample ends the wait (on the class's beat, if it gave one)
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), wait)
                except TimeoutError:
                    pass
                else:
                    await self._wait(self._next_beat(started) - started)
            else:
                await self._wait(self._pace_s)
                TICK_LAG_SECONDS.observe(max(0.0, time.monotonic() - started - self._pace_s))

    async def _wait(self, pace_s: float) -> None:
        """Sleep until ``pace_s`` after the last tick began, or ``tick_interval_s`` after it
        once someone waits for a tick (``_hurry`` ends the nap and the deadline is re-read)."""
        while (deadline := self._tick_began + (self.tick_interval_s if self._soon else pace_s)) > time.monotonic():
            await self._nap_until(deadline)
        self._planned = deadline

    async def _nap_until(self, deadline: float) -> None:
        """Sleep until ``deadline`` (monotonic), or until ``_hurry`` ends the nap."""
        left = deadline - time.monotonic()
        if left <= 0:
            return
        nap = self._nap = asyncio.get_running_loop().create_future()
        timer = nap.get_loop().call_later(left, _settle, nap)
        try:
            await nap
        finally:
            timer.cancel()
            self._nap = None

    def _hurry(self) -> None:
        """Someone waits for a tick (a device's ``welcome``, a viewer's first board): the next
        one comes ``tick_interval_s`` after the last began, not a whole period (a burst of
        joins costs at most one tick per ``tick_interval_s``)."""
        if not self._soon:
            self._soon = True
            if self._nap is not None:
                _settle(self._nap)

    def _resync_all(self) -> None:
        for link in self.links.values():
            link.needs_welcome = True

    async def _tick(self) -> bool:
        """One round trip to the class; True if it brought something new (a board, samples sent)."""
        pending, self.pending, self.pending_count = self.pending, {}, 0
        batch_at, rows, self.pending_rows = self.batch_at, self.pending_rows, 0
        if rows:
            SAMPLES_RECEIVED.inc(rows)
        want = [d for d, l in self.links.items() if l.needs_welcome or l.sent > l.acked]
        request = TickRequest.from_batches(
            self.session_id, ((d, p.participant, p.rows, p.rejected) for d, p in pending.items()),
            want_durable=want, known_version=self.known_version,
            period_s=self._fastest_period() if self._tiers else None, edge=self.edge_id,
        )
        began = time.perf_counter()
        result = await self.channel.tick(request)
        took = time.perf_counter() - began
        TICK_SECONDS.observe(took)
        avg = self.tick_seconds_avg
        self.tick_seconds_avg = took if avg is None else avg + 0.2 * (took - avg)
        self.ticks += 1
        if self.epoch is not None and result.epoch < self.epoch:  # an instance older than one seen: fenced
            raise StaleResult(f"session {self.session_id}: epoch {result.epoch} answered after epoch {self.epoch}")
        if self.epoch is not None and result.epoch != self.epoch:
            # INFO: a class passivated by another edge, or moved, comes back this way too (a
            # crash is logged where it happened: the actor, Ray)
            log.info("session %s came back with a new epoch (%s -> %s): devices resume from their durable seqs",
                     self.session_id, self.epoch, result.epoch)
            self._resync_all()
            RESYNCS.inc()
        self.epoch = result.epoch
        self._class_period = result.class_period_s
        self._beat_at = None if result.beat_s is None else time.monotonic() + result.beat_s
        self._edges = result.edges
        self._dispatch_acks(result.durable, batch_at)
        if self.on_join is not None and pending:
            self._report_joins(pending)
        now = time.monotonic()
        slack = self.interval_s / 2
        board = result.board
        if board is not None:
            self.known_version = result.version
            board["ts"] = time.time()
            if self.board is not None and self.board.get("phase") != board.get("phase"):
                self._phase_seen(board["phase"])
            self.board = board
            for viewer in self._in_order():
                viewer.offer(board, now, slack)
            if pending:
                SAMPLE_TO_BOARD_SECONDS.observe(time.monotonic() - batch_at)
        else:
            for viewer in self._in_order():
                viewer.flush_due(now, slack)
        return board is not None or bool(pending)

    def _dispatch_acks(self, durable: dict[str, int], batch_at: float) -> None:
        """Welcome new devices; ack the others at most every ``ack_interval_s`` (acks are
        not on the latency path, and each one is a frame the edge pays for). Metrics, once
        per tick: the seqs acknowledged, and the longest wait of an acknowledged sample
        (from the start of the batch it came in; what is still unacknowledged after an ack
        counts from ``batch_at``, the batch this tick carried)."""
        acks: dict[Outbox, dict[str, int]] = defaultdict(dict)
        now = time.monotonic()
        acked = 0
        oldest = now
        for device, seq in durable.items():
            link = self.links.get(device)
            if link is None:
                continue
            if link.needs_welcome:
                link.needs_welcome = False
                link.acked = seq
                link.sent = max(link.sent, seq)
                link.outbox.send(encode({"t": "welcome", "session": self.session_id, "devices": {device: seq}}))
            elif seq > link.acked and now - link.acked_at >= self.ack_interval_s:
                acked += seq - link.acked
                if link.unacked_since:
                    oldest = min(oldest, link.unacked_since)
                link.unacked_since = batch_at if link.sent > seq else 0.0
                link.acked = seq
                link.acked_at = now
                acks[link.outbox][device] = seq
        for outbox, seqs in acks.items():
            outbox.ack(seqs)  # v1.1 connections carry it in their next board
        if acked:
            SAMPLES_ACKED.inc(acked)
            ACK_LATENCY_SECONDS.observe(now - oldest)
