"""``LatencyHistogram``: HDR-style, mergeable latency recording in constant memory.

Values (milliseconds) fall into logarithmic buckets 1% wide, from 0.01 ms to hours, so
any percentile is reported within 1% (as the bucket's upper edge, the conservative
choice HdrHistogram makes too), while ``max`` and ``count`` are exact. Histograms from
several swarm processes or time windows merge by adding counts, and round-trip through
JSON (``to_dict`` / ``from_dict``).
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["PERCENTILES", "LatencyHistogram"]

PERCENTILES = (50.0, 90.0, 99.0, 99.9)
_FLOOR_MS = 0.01
_GROWTH = math.log(1.01)


class LatencyHistogram:
    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.count = 0
        self.max_ms = 0.0
        self.sum_ms = 0.0

    @staticmethod
    def bucket(value_ms: float) -> int:
        if value_ms <= _FLOOR_MS:
            return 0
        return 1 + int(math.log(value_ms / _FLOOR_MS) / _GROWTH)

    @staticmethod
    def upper_edge(bucket: int) -> float:
        return _FLOOR_MS * math.exp(bucket * _GROWTH)

    def record(self, value_ms: float) -> None:
        b = self.bucket(value_ms)
        self.counts[b] = self.counts.get(b, 0) + 1
        self.count += 1
        self.sum_ms += value_ms
        if value_ms > self.max_ms:
            self.max_ms = value_ms

    def merge(self, other: LatencyHistogram) -> LatencyHistogram:
        for b, n in other.counts.items():
            self.counts[b] = self.counts.get(b, 0) + n
        self.count += other.count
        self.sum_ms += other.sum_ms
        self.max_ms = max(self.max_ms, other.max_ms)
        return self

    def percentile(self, q: float) -> float | None:
        """The value at or below which ``q`` percent of recordings fall (None if empty)."""
        if not self.count:
            return None
        rank = max(1, math.ceil(q / 100.0 * self.count))
        seen = 0
        for b in sorted(self.counts):
            seen += self.counts[b]
            if seen >= rank:
                return min(self.upper_edge(b), self.max_ms)
        return self.max_ms

    def summary(self) -> dict[str, Any]:
        """``samples``, ``p50``/``p90``/``p99``/``p99_9``, ``max``, ``mean`` (ms, 2 decimals)."""
        out: dict[str, Any] = {"samples": self.count}
        for q in PERCENTILES:
            value = self.percentile(q)
            out[_name(q)] = None if value is None else round(value, 2)
        out["max"] = round(self.max_ms, 2) if self.count else None
        out["mean"] = round(self.sum_ms / self.count, 2) if self.count else None
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"counts": {str(b): n for b, n in sorted(self.counts.items())}, "max_ms": self.max_ms, "sum_ms": self.sum_ms}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencyHistogram:
        hist = cls()
        hist.counts = {int(b): int(n) for b, n in data.get("counts", {}).items()}
        hist.count = sum(hist.counts.values())
        hist.max_ms = float(data.get("max_ms", 0.0))
        hist.sum_ms = float(data.get("sum_ms", 0.0))
        return hist


def _name(q: float) -> str:
    return f"p{q:g}".replace(".", "_")
