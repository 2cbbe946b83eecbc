"""Board connections the swarm opens: latency probes and participants' own boards.

* ``Viewer`` — one per session, ``view=all`` at ``board_hz``: the latency probe (one
  connection per page when the board says it has several: a big class pages its rows). The swarm
  tells it every sample it sent live (``expect(participant, device_ts, scheduled)``); the
  first board whose ``last_ts`` for that participant reaches the sample's device timestamp
  shows it, and its latency is *board receipt - scheduled send time* — so a swarm that
  fell behind its schedule cannot hide latency (no coordinated omission). Latencies go
  into one ``LatencyHistogram`` overall and one per second of scheduled time. On boards
  with a ``presence`` column it also notes every rider it saw ``reconnecting``.
* ``ParticipantViewer`` — what each rider's phone shows: ``?participant=ID&rate=1``;
  counts boards and whether they carried the rider's own row (``you``).

Both reconnect until ``stop`` is set; both only read (a viewer that does not read would
be closed by the edge as too slow).
"""

from __future__ import annotations

import asyncio
import heapq
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from sims.class_plan import PlanSeen
from sims.histogram import LatencyHistogram

__all__ = ["ParticipantViewer", "Viewer", "watch"]


@dataclass
class Viewer:
    session: str
    origin: float = 0.0  # the class start (wall clock): timeline buckets are seconds since
    pending: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    histogram: LatencyHistogram = field(default_factory=LatencyHistogram)
    timeline: dict[int, LatencyHistogram] = field(default_factory=dict)
    boards: int = 0
    connects: int = 0
    reconnecting: set[str] = field(default_factory=set)  # riders a board showed reconnecting
    plan: PlanSeen = field(default_factory=PlanSeen)  # the class plan as its boards showed it
    replay_recorded: int = 0  # on-demand classes: the recorded riders its boards said
    replay_ranked: set[str] = field(default_factory=set)  # riders a board gave a replay_rank
    replay_rank_boards: int = 0  # rider-rows with a replay_rank
    tracked: set[str] = field(default_factory=set)  # riders timed apart too (those already in class)
    tracked_histogram: LatencyHistogram = field(default_factory=LatencyHistogram)
    tracked_timeline: dict[int, LatencyHistogram] = field(default_factory=dict)
    watched: int = 0  # board pages probed (a big class pages view=all by rank)
    on_pages: Callable[[int], None] | None = None  # told when a board says there are more pages


    def expect(self, participant: str, device_ts: float, scheduled: float | None = None) -> None:
        heapq.heappush(self.pending.setdefault(participant, []), (device_ts, device_ts if scheduled is None else scheduled))

    def on_board(self, frame: dict[str, Any], now: float) -> None:
        self.boards += 1
        self.plan.on_board(frame)
        pages = frame.get("pages")
        if pages is not None and pages > self.watched and self.on_pages is not None:
            self.on_pages(pages)
        cols = frame["cols"]
        if frame.get("replay") and "replay_rank" in cols:
            self._replay(frame, cols)
        ip, its = cols.index("participant"), cols.index("last_ts")
        at = cols.index("presence") if "presence" in cols else None
        for row in frame.get("rows") or ():
            if at is not None and row[at] == "reconnecting":
                self.reconnecting.add(row[ip])
            heap = self.pending.get(row[ip])
            last = row[its]
            if not heap or last is None:
                continue
            while heap and heap[0][0] <= last + 1e-6:
                _, scheduled = heapq.heappop(heap)
                self._record(scheduled, (now - scheduled) * 1000.0, row[ip] in self.tracked)

    def _replay(self, frame: dict[str, Any], cols: list[str]) -> None:
        self.replay_recorded = int(frame["replay"].get("recorded") or 0)
        ir, who = cols.index("replay_rank"), cols.index("participant")
        ranked = [row[who] for row in frame.get("rows") or () if row[ir] is not None]
        self.replay_rank_boards += len(ranked)
        self.replay_ranked.update(ranked)

    def _record(self, scheduled: float, latency_ms: float, tracked: bool = False) -> None:
        second = int(scheduled - self.origin)
        for histogram, timeline in ((self.histogram, self.timeline),) + (
                ((self.tracked_histogram, self.tracked_timeline),) if tracked else ()):
            histogram.record(latency_ms)
            hist = timeline.get(second)
            if hist is None:
                hist = timeline[second] = LatencyHistogram()
            hist.record(latency_ms)

    @property
    def unseen(self) -> int:
        return sum(len(h) for h in self.pending.values())


@dataclass
class ParticipantViewer:
    session: str
    participant: str
    boards: int = 0
    with_own_row: int = 0
    connects: int = 0

    def on_board(self, frame: dict[str, Any], now: float) -> None:
        self.boards += 1
        if frame.get("you") is not None or frame.get("me") is not None:  # v1 board socket / v1.1 board
            self.with_own_row += 1


async def watch(url: str | Sequence[str], on_board: Callable[[dict[str, Any], float], None], stop: asyncio.Event,
                on_connect: Callable[[], None] | None = None, *, token: str | None = None) -> None:
    """Read board frames from ``url`` until ``stop``; reconnect after 0.2-1 s on failure,
    to the next of several URLs (fail-over between edges). ``token`` goes in the
    ``Authorization`` header, never in the URL."""
    urls = [url] if isinstance(url, str) else list(url)
    backoff = 0.2
    attempt = 0
    headers = {"Authorization": f"Bearer {token}"} if token else None
    while not stop.is_set():
        try:
            async with connect(urls[attempt % len(urls)], max_size=2**24, open_timeout=20, additional_headers=headers) as ws:
                backoff = 0.2
                if on_connect is not None:
                    on_connect()
                async for message in ws:
                    frame = msgpack.unpackb(message, raw=False)
                    if frame.get("t") == "board":
                        on_board(frame, time.time())
        except (OSError, ConnectionClosed, TimeoutError, InvalidHandshake):  # (a loaded edge may close a slow upgrade)
            attempt += 1
            await asyncio.sleep(backoff * (0.5 + random.random()))
            backoff = min(1.0, backoff * 2)
