"""Swarms against seats and admission (issue 16): a join storm into a class that admits
riders in order at its admission rate, and what the swarm saw of it.

A scenario's ``[admission]`` table: ``capacity`` (the class's seats; none: no limit),
``in_class`` (the share of riders connected before the start: the riders "already in
class" whose latency must hold during the storm), ``storm_at_s`` (when the others start
joining, spread over ``load.join_window_s``).

``admission_summary`` is the report's ``admission`` block: how many connections were
queued, the longest queue position told, how many were admitted and how long they waited
(``hello`` to ``welcome``), how often a joiner queued later was welcomed before one queued
earlier (``order_inversions``: neighbours in the order of their first ``queue`` frame —
which follows their tickets — whose welcomes are the other way round by more than
``ROUND_S``, one admission round plus a tick: riders admitted together are welcomed in
the same tick, in any order), and the latency of the riders already in class, overall and
during the storm.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from sims.histogram import LatencyHistogram

__all__ = ["admission_summary"]


ROUND_S = 1.0


class _Client(Protocol):
    started_at: float | None
    welcomed_at: float | None
    queue_first: int | None
    queued_at: float | None
    queue_frames: int


def _inversions(queued: list[tuple[float, float]]) -> int:
    """Neighbours in queueing order (``(queued_at, welcomed_at)``) welcomed the other way
    round by more than ``ROUND_S``."""
    welcomes = [welcomed for _, welcomed in sorted(queued)]
    return sum(1 for a, b in zip(welcomes, welcomes[1:]) if a > b + ROUND_S)


def admission_summary(storm: Iterable[_Client], in_class: LatencyHistogram,
                      in_class_by_second: Mapping[int, LatencyHistogram], storm_s: tuple[float, float]) -> dict[str, Any]:
    clients = list(storm)
    queued = [c for c in clients if c.queue_first is not None]
    admitted = [(c.started_at, c.welcomed_at) for c in clients if c.welcomed_at is not None and c.started_at is not None]
    waits = LatencyHistogram()
    for started, welcomed in admitted:
        waits.record(max(0.0, welcomed - started) * 1000.0)
    during = LatencyHistogram()
    for second, hist in in_class_by_second.items():
        if storm_s[0] <= second < storm_s[1]:
            during.merge(hist)
    w = waits.summary()
    return {
        "joiners": len(clients),
        "queued": len(queued),
        "max_position": max((c.queue_first or 0 for c in queued), default=0),
        "queue_frames": sum(c.queue_frames for c in clients),
        "admitted": len(admitted),
        "not_admitted": len(clients) - len(admitted),
        "wait_s": {k: (None if w[k] is None else round(w[k] / 1000.0, 2)) for k in ("p50", "p99", "max")},
        "order_inversions": _inversions([(c.queued_at, c.welcomed_at) for c in queued  # type: ignore[misc]
                                         if c.queued_at is not None and c.welcomed_at is not None]),
        "in_class_latency_ms": in_class.summary(),
        "in_class_latency_during_storm_ms": during.summary(),
    }
