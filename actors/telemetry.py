"""The session actors' metrics, exported through Ray's metrics agent.

Every Ray node runs a metrics agent that serves Prometheus text on the node's metrics export
port (``ray start --metrics-export-port``; Ray writes the ports of every node to
``/tmp/ray/prom_metrics_service_discovery.json`` for Prometheus' ``file_sd``), so one
Prometheus config sees every session actor and host of the cluster wherever Ray placed it,
with no port of ours to open per process (docs/operations.md). Ray prefixes the names with
``ray_`` and adds ``WorkerId``, ``NodeAddress`` and ``SessionName`` labels (``WorkerId``
keeps the gauges of different processes apart); ours carry ``process``: a dense host's name
(``host:pl.0``: a fixed set), or ``session`` for a class's own actor (never the class's id:
one label value per class ever served would leave series behind for good; Ray's agent already
keeps one per worker, docs/benchmarks.md "Memory over 200 classes").

Recording a Ray metric costs ~7-15 µs here (measured on a loaded 2-core box), so nothing is
recorded per tick: cells keep plain counters (``SessionCell.ticks_served`` and friends) and
``ActorTelemetry.report`` turns them into Ray metrics from the checkpoint loop, every
``REPORT_S``. Ray itself pushes them to the agent every few seconds.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from ray.util.metrics import Counter, Gauge, Histogram

from actors.presence import Presence
from actors.session import Phase
from actors.session_cell import SessionCell

REPORT_S = 2.0

CHECKPOINT_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]
LAG_BUCKETS = [0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 30.0]


class ActorTelemetry:
    """One per actor process (``process``: ``session`` or the host's name, e.g. ``host:pl.0``)."""

    def __init__(self, process: str) -> None:
        tag = ("process",)
        self.tags = {"process": process}
        self.checkpoint_seconds = Histogram(
            "pulseline_checkpoint_duration_seconds", description="One checkpoint write to Redis (fenced, compare-and-set)",
            boundaries=CHECKPOINT_BUCKETS, tag_keys=tag)
        self.checkpoint_lag = Histogram(
            "pulseline_checkpoint_lag_seconds",
            description="From a class's first change to the checkpoint that covers it (acks wait for this)",
            boundaries=LAG_BUCKETS, tag_keys=tag)
        self.checkpoint_failures = Counter(
            "pulseline_checkpoint_failures_total", description="Checkpoint writes that failed (Redis down, slow)",
            tag_keys=tag)
        self.ticks = Counter("pulseline_actor_ticks_total", description="Ticks applied by session actors", tag_keys=tag)
        self.applied = Counter("pulseline_actor_samples_applied_total",
                               description="Samples applied by session actors (duplicates excluded)", tag_keys=tag)
        self.sessions = Gauge("pulseline_actor_sessions", description="Classes held by session actors, by phase",
                              tag_keys=("process", "phase"))
        self.riders = Gauge("pulseline_riders", description="Riders of the held classes, by presence",
                            tag_keys=("process", "presence"))
        self._seen: dict[int, tuple[int, int, int]] = {}  # id(cell) -> (ticks, applied, failures) reported
        self._next = 0.0

    def due(self, now: float | None = None) -> bool:
        return (time.monotonic() if now is None else now) >= self._next

    def report(self, cells: Iterable[SessionCell]) -> None:
        """Turn the cells' counters into Ray metrics (called every ``REPORT_S`` at most)."""
        self._next = time.monotonic() + REPORT_S
        phases = dict.fromkeys((p.value for p in Phase), 0)
        presence = dict.fromkeys((p.value for p in Presence), 0)
        ticks = applied = failures = 0
        seen: dict[int, tuple[int, int, int]] = {}
        for cell in cells:
            old = self._seen.get(id(cell), (0, 0, 0))
            now = (cell.ticks_served, cell.samples_applied, cell.checkpoint_failures)
            ticks, applied, failures = ticks + now[0] - old[0], applied + now[1] - old[1], failures + now[2] - old[2]
            seen[id(cell)] = now
            times, cell.checkpoint_times = cell.checkpoint_times, []
            for took, lag in times:
                self.checkpoint_seconds.observe(took, self.tags)
                self.checkpoint_lag.observe(lag, self.tags)
            phases[cell.state.phase.value] += 1
            for name, n in cell.state.presence.counts(len(cell.state.participants)).items():
                presence[name] += n
        self._seen = seen
        for name, value in (("ticks", ticks), ("applied", applied), ("checkpoint_failures", failures)):
            if value > 0:
                getattr(self, name).inc(value, self.tags)
        for phase, n in phases.items():
            self.sessions.set(n, {**self.tags, "phase": phase})
        for name, n in presence.items():
            self.riders.set(n, {**self.tags, "presence": name})
