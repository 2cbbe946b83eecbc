"""Prometheus metrics of the edge (served on ``/metrics``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

TICK_SECONDS = Histogram(
    "pulseline_tick_seconds", "Duration of one session tick call (edge -> actor -> edge)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
TICK_ERRORS = Counter("pulseline_tick_errors_total", "Session tick calls that failed")
SAMPLES_IN = Counter("pulseline_samples_total", "Samples received by the edge", ["outcome"])
FRAMES_IN = Counter("pulseline_frames_in_total", "Device frames received", ["type"])
BOARDS_OUT = Counter("pulseline_boards_sent_total", "Board frames sent to viewers")
CONNECTIONS = Gauge("pulseline_connections", "Open WebSocket connections", ["kind"])
RESYNCS = Counter("pulseline_resyncs_total", "Session actor restarts noticed by the edge")

# Pre-bound children: ``labels()`` costs a dict lookup and a lock on every call.
SAMPLES_ACCEPTED = SAMPLES_IN.labels("accepted")
SAMPLES_REJECTED = SAMPLES_IN.labels("rejected")
SAMPLES_THROTTLED = SAMPLES_IN.labels("throttled")
DEVICE_CONNECTIONS = CONNECTIONS.labels("device")
FRAMES_BY_TYPE = {name: FRAMES_IN.labels(name) for name in ("hello", "samples", "bye", "auth")}
