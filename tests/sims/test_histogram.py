"""HDR-style histogram: percentiles within 1% of exact, mergeable, JSON round trip."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from sims.histogram import LatencyHistogram


def test_percentiles_are_within_one_percent_and_max_is_exact() -> None:
    rng = random.Random(1)
    values = [rng.lognormvariate(4, 0.6) for _ in range(50_000)]
    hist = LatencyHistogram()
    for v in values:
        hist.record(v)
    for q in (50, 90, 99, 99.9):
        exact = float(np.percentile(values, q, method="inverted_cdf"))
        assert hist.percentile(q) == pytest.approx(exact, rel=0.011)
        assert hist.percentile(q) >= exact  # reported as the bucket's upper edge
    summary = hist.summary()
    assert summary["max"] == round(max(values), 2) and summary["samples"] == 50_000
    assert set(summary) == {"samples", "p50", "p90", "p99", "p99_9", "max", "mean"}


def test_merge_equals_recording_everything_once() -> None:
    a, b, both = LatencyHistogram(), LatencyHistogram(), LatencyHistogram()
    for i in range(1, 2000):
        (a if i % 3 else b).record(i / 7)
        both.record(i / 7)
    merged = LatencyHistogram.from_dict(json.loads(json.dumps(a.to_dict()))).merge(b)
    assert merged.summary() == both.summary()


def test_empty_and_tiny_values() -> None:
    hist = LatencyHistogram()
    assert hist.percentile(99) is None and hist.summary()["p99"] is None
    hist.record(0.0)
    hist.record(-1.0)  # a clock step can make a latency negative: it lands in the first bucket
    assert hist.percentile(50) == pytest.approx(0.0, abs=0.011)
