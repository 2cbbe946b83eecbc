"""Prometheus metrics of the edge (served on ``/metrics``, docs/operations.md has the list).

Cost rules (the edge's per-frame path is what capacity is made of): every family that the
data path touches is counted once per frame, batch or tick, through children bound here at
import (``labels()`` is a dict lookup and a lock on every call); nothing is counted per
sample. What can be read when Prometheus scrapes (sessions by phase, samples waiting for a
tick, each class's tick time) is read then, by ``EdgeCollector``, and costs the data path
nothing. Session actors export their own families through Ray (``actors/telemetry.py``).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from devices.protocol import CloseCode, ErrorCode



class PumpView(Protocol):
    """What the collector reads of an ``api.pump.SessionPump`` (no import: the pump imports us)."""

    session_id: str
    board: dict[str, Any] | None
    pending_count: int
    tick_seconds_avg: float | None


class WaiterView(Protocol):
    @property
    def done(self) -> bool: ...


class AdmissionView(Protocol):
    @property
    def waiting(self) -> Mapping[str, Sequence[WaiterView]]: ...


class EdgeView(Protocol):
    @property
    def pumps(self) -> Mapping[str, PumpView]: ...

    @property
    def admission(self) -> AdmissionView: ...

# Latency buckets around the 150 ms p99 target (DESIGN.md 3.3); acks wait for a checkpoint
# (every 0.25 s) and go at most once per ack interval (1 s): seconds, not milliseconds.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5, 5.0)
ACK_BUCKETS = (0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)
TICK_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

SAMPLE_TO_BOARD_SECONDS = Histogram(
    "pulseline_sample_to_board_seconds",
    "Per tick that brings a board: how long the tick's oldest sample waited at the edge until its board went out",
    buckets=LATENCY_BUCKETS,
)
ACK_LATENCY_SECONDS = Histogram(
    "pulseline_ack_latency_seconds",
    "Per tick that sends acks: how long the oldest newly acknowledged sample waited at the edge for its durable ack",
    buckets=ACK_BUCKETS,
)
TICK_SECONDS = Histogram(
    "pulseline_tick_duration_seconds", "One session tick: edge -> session actor -> edge", buckets=TICK_BUCKETS,
)
TICK_LAG_SECONDS = Histogram(
    "pulseline_tick_lag_seconds", "How late a session tick started against its schedule", buckets=LAG_BUCKETS,
)
TICK_ERRORS = Counter("pulseline_tick_errors_total", "Session ticks that failed (devices resend)")
RESYNCS = Counter("pulseline_resyncs_total", "Session actor restarts noticed by the edge")
SAMPLES_RECEIVED = Counter("pulseline_samples_received_total", "Valid samples taken for a session tick")
SAMPLES_ACKED = Counter("pulseline_samples_acked_total", "Samples acknowledged to devices as durable")
SAMPLES_REJECTED = Counter("pulseline_samples_rejected_total", "Samples rejected, by reason", ["reason"])
SAMPLES_THROTTLED = Counter(
    "pulseline_samples_throttled_total", "Samples refused under backpressure (the device resends them)"
)
FRAMES_IN = Counter("pulseline_frames_received_total", "Device frames received, by type", ["type"])
BOARDS_OUT = Counter("pulseline_boards_sent_total", "Board frames sent (viewers and v1.1 devices)")
CONNECTIONS = Gauge("pulseline_connections", "Open WebSocket connections, by kind", ["kind"])
CLOSES = Counter("pulseline_closes_total", "WebSocket connections the edge closed, by close code (not those the client closed)", ["code"])
THROTTLES = Counter("pulseline_throttles_total", "Throttle frames sent, by reason", ["reason"])
REDIS_SECONDS = Histogram(
    "pulseline_redis_roundtrip_seconds", "The edge's Redis PING round trip (one probe a second)",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0),
)
REDIS_ERRORS = Counter("pulseline_redis_errors_total", "Redis probes that failed or timed out")
LOOP_LAG_SECONDS = Histogram(
    "pulseline_event_loop_lag_seconds", "How late the edge's event loop woke a 0.25 s timer", buckets=LAG_BUCKETS,
)

# Pre-bound children.
DEVICE_CONNECTIONS = CONNECTIONS.labels("device")
HUB_CONNECTIONS = CONNECTIONS.labels("hub")
VIEWER_CONNECTIONS = CONNECTIONS.labels("viewer")
FRAMES_BY_TYPE = {name: FRAMES_IN.labels(name) for name in ("hello", "samples", "bye", "auth")}
REJECTED_BY_REASON = {code: SAMPLES_REJECTED.labels(code.value) for code in ErrorCode}
CLOSES_BY_CODE = {int(code): CLOSES.labels(str(int(code))) for code in CloseCode}
THROTTLED_RATE = THROTTLES.labels("frame_rate")
THROTTLED_BACKLOG = THROTTLES.labels("backlog")


def count_close(code: int) -> None:
    """One connection closed with ``code`` (once per connection: not on the frame path)."""
    child = CLOSES_BY_CODE.get(code)
    if child is None:
        child = CLOSES_BY_CODE[code] = CLOSES.labels(str(code))
    child.inc()


class EdgeCollector(Collector):
    """What is read at scrape time from the edges of this process (usually one): the classes
    they serve by phase, the samples waiting for a tick, the riders waiting for a seat
    (``api.admission``), and each class's tick time."""

    def __init__(self) -> None:
        self.edges: weakref.WeakSet[EdgeView] = weakref.WeakSet()

    def collect(self) -> Iterator[Metric]:
        edges = list(self.edges)
        phases = GaugeMetricFamily("pulseline_sessions", "Classes this edge serves, by phase of their last board",
                                   labels=["phase"])
        queued = GaugeMetricFamily("pulseline_pending_samples",
                                   "Samples waiting at the edge for their class's next tick")
        waiting = GaugeMetricFamily("pulseline_admission_queue_riders",
                                    "Riders waiting on this edge for a seat in a full class (api.admission)")
        slow = GaugeMetricFamily("pulseline_session_tick_duration_seconds",
                                 "Each class's recent tick time (moving average), to find the slow one",
                                 labels=["session"])
        counts: dict[str, int] = {}
        pending = 0
        for pump in _pumps(edges):
            phase = str(pump.board.get("phase", "unknown")) if pump.board is not None else "unknown"
            counts[phase] = counts.get(phase, 0) + 1
            pending += pump.pending_count
            if pump.tick_seconds_avg is not None:
                slow.add_metric([pump.session_id], pump.tick_seconds_avg)
        for phase in ("lobby", "live", "cooldown", "ended", "unknown"):
            phases.add_metric([phase], counts.pop(phase, 0))
        for phase, n in counts.items():
            phases.add_metric([phase], n)
        queued.add_metric([], pending)
        waiting.add_metric([], sum(1 for edge in edges for waiters in list(edge.admission.waiting.values())
                                   for w in waiters if not w.done))
        yield from (phases, queued, waiting, slow)

    def describe(self) -> Iterable[Metric]:
        return ()  # (collected lazily; describe nothing so registration does not collect)


def _pumps(edges: list[EdgeView]) -> Iterator[PumpView]:
    for edge in edges:
        yield from list(edge.pumps.values())


EDGES = EdgeCollector()
REGISTRY.register(EDGES)
