"""What the edge's metrics cost on the data path (a benchmark, not a test; prints JSON).

    .venv/bin/python scripts/bench_edge_metrics.py [--n 200000]

Times, in this process, the metric operations the edge does per frame and per tick
(``api/metrics.py``, ``api/pump.py``): a pre-bound counter's ``inc``, a histogram's
``observe``, the pump's per-tick set (samples received, tick time and its moving average,
tick lag, sample->board, acks and ack latency) and, per frame, the checks ``SessionPump.add``
gained (the batch's start time, a link's oldest unacked batch) against the counter ``inc`` per
frame that the edge no longer does. Then the cost per device-second for a class of
``--riders`` phones at 1 Hz ticking ``--ticks-per-s`` times a second. Noisy on a busy box:
the load average is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from api.metrics import (
    ACK_LATENCY_SECONDS, SAMPLE_TO_BOARD_SECONDS, SAMPLES_ACKED, SAMPLES_RECEIVED, TICK_LAG_SECONDS, TICK_SECONDS,
)


def per_op_us(fn, n: int) -> float:  # type: ignore[no-untyped-def]
    began = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - began) / n * 1e6


def tick_metrics() -> None:
    SAMPLES_RECEIVED.inc(10)
    TICK_SECONDS.observe(0.002)
    avg = 0.002
    avg = avg + 0.2 * (0.0021 - avg)
    TICK_LAG_SECONDS.observe(0.0005)
    SAMPLE_TO_BOARD_SECONDS.observe(0.05)
    SAMPLES_ACKED.inc(10)
    ACK_LATENCY_SECONDS.observe(0.6)


class _Link:
    unacked_since = 0.0


def frame_checks(pending: dict[str, int] = {}, link: _Link = _Link()) -> None:  # noqa: B006
    if not pending:
        batch_at = time.monotonic()
    if not link.unacked_since:
        link.unacked_since = batch_at


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--riders", type=int, default=100)
    parser.add_argument("--ticks-per-s", type=float, default=10.0)
    args = parser.parse_args()
    inc_us = per_op_us(lambda: SAMPLES_RECEIVED.inc(), args.n)
    observe_us = per_op_us(lambda: TICK_SECONDS.observe(0.002), args.n)
    tick_us = per_op_us(tick_metrics, args.n // 4)
    frame_us = per_op_us(frame_checks, args.n)
    old_tick_us = observe_us  # before: one observe per tick (the tick time)
    per_device_s = ((tick_us - old_tick_us) * args.ticks_per_s / args.riders) + (frame_us - inc_us)
    print(json.dumps({
        "load_avg_1m": os.getloadavg()[0],
        "counter_inc_us": round(inc_us, 3), "histogram_observe_us": round(observe_us, 3),
        "per_tick_metrics_us": round(tick_us, 3), "per_frame_checks_us": round(frame_us, 3),
        "riders": args.riders, "ticks_per_s": args.ticks_per_s,
        "added_us_per_device_second": round(per_device_s, 3),
    }, indent=2))


if __name__ == "__main__":
    main()
