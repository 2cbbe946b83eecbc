"""What the live metrics (``actors/metrics.py``: NP, zones, calories) cost the class actor.

    .venv/bin/python scripts/bench_metrics.py --riders 1000 --seconds 120

A class of ``--riders`` riders, each with one device sending power, heart rate and cadence
at 1 Hz, applied the way the edge delivers it: a tick every 0.1 s carrying the tenth of the
riders whose sample is due, for ``--seconds`` of class time (no Ray, no network: the
actor's own work, ``SessionState.apply_tick`` plus one board per tick). Run twice, with
the metrics and with ``RiderMetrics.update`` replaced by a no-op, and prints one JSON object:
microseconds per device-second for each and their difference (noisy on a shared machine),
and the time spent inside ``RiderMetrics.update`` itself, per device-second and per tick
(the steadier figure). The metric board columns are built in both runs.
A benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

import numpy as np

from actors.metrics import RiderMetrics
from actors.session import SessionState
from actors.wire import SampleColumns, TickRequest

TICK_S = 0.1


def _ticks(riders: int, seconds: int, seed: int = 16) -> list[TickRequest]:
    rng = np.random.default_rng(seed)
    devices = tuple((f"d{i}", f"p{i}") for i in range(riders))
    per_tick = int(round(1 / TICK_S))
    ticks = []
    for second in range(seconds):
        for k in range(per_tick):
            mine = np.arange(k, riders, per_tick, dtype=np.int32)
            ts = 1_000.0 + second + k * TICK_S
            values = np.column_stack([
                np.full(len(mine), ts), rng.normal(140, 15, len(mine)), rng.gamma(4, 55, len(mine)),
                rng.normal(88, 6, len(mine)), np.full(len(mine), np.nan), np.full(len(mine), np.nan),
            ])
            samples = SampleColumns(mine, np.full(len(mine), second + 1, np.int64), values)
            ticks.append(TickRequest("bench", devices=devices, samples=samples))
    return ticks


def _run(ticks: list[TickRequest], *, metrics: bool, spent: list[float]) -> float:
    """Seconds for the whole run; ``spent`` gets the seconds inside ``RiderMetrics.update``."""
    state = SessionState("bench")
    update = state.metrics.update

    def timed(*args: Any) -> None:
        start = time.perf_counter()
        if metrics:
            update(*args)
        spent.append(time.perf_counter() - start)

    state.metrics.update = timed  # type: ignore[method-assign]
    state.apply_tick(ticks[0])  # joins everyone (not timed)
    state.board()
    start = time.perf_counter()
    for tick in ticks[1:]:
        state.apply_tick(tick)
        state.board()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--riders", type=int, default=1000)
    parser.add_argument("--seconds", type=int, default=120)
    parser.add_argument("--repeat", type=int, default=3, help="best of N runs each")
    args = parser.parse_args()
    ticks = _ticks(args.riders, args.seconds)
    device_seconds = args.riders * args.seconds
    load_before = os.getloadavg()[0]
    best: dict[str, float] = {}
    inside = float("inf")
    for _ in range(args.repeat):
        for metrics in (True, False):
            key = "with_metrics" if metrics else "without_metrics"
            spent: list[float] = []
            best[key] = min(best.get(key, float("inf")), _run(ticks, metrics=metrics, spent=spent))
            if metrics:
                inside = min(inside, sum(spent[1:]))
    us = {k: v / device_seconds * 1e6 for k, v in best.items()}
    result: dict[str, Any] = {
        "riders": args.riders, "seconds": args.seconds, "ticks": len(ticks),
        "us_per_device_second": {k: round(v, 2) for k, v in us.items()},
        "metrics_us_per_device_second": round(us["with_metrics"] - us["without_metrics"], 2),
        "update_us_per_device_second": round(inside / device_seconds * 1e6, 2),  # timed inside it
        "update_us_per_tick": round(inside / (len(ticks) - 1) * 1e6, 1),
        "metrics_bytes_per_rider": RiderMetrics(1).nbytes(),
        "load_avg": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
