"""What the per-second recording and the ride exports cost (docs/history.md, "Costs").

Prints JSON: ``Recording.add`` per tick (one sample per rider, 1 Hz) for a few class sizes,
the bytes of the chunks each checkpoint then carries, the memory an hour takes, and the
time and size of a one-hour ride's stored series, FIT and TCX. Plain CPU work in this
process (no Redis, no Ray); on a shared box the numbers are upper bounds.

    python scripts/bench_recording.py [--seconds 600] [--riders 100,1000] [--report out.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from actors.recording import Recording
from history.exports import to_fit, to_tcx
from history.rides import build_ride, encode_series

T0 = 1_795_000_000.0


def ticks(riders: int, seconds: int) -> dict[str, float]:
    rec = Recording()
    rng = np.random.default_rng(1)
    slot = np.arange(riders, dtype=np.int64)
    spent, chunk_bytes, checkpoints = 0.0, 0, 0
    for second in range(seconds):
        values = np.column_stack([
            T0 + second + rng.uniform(0, 0.9, riders), rng.uniform(90, 180, riders), rng.uniform(50, 400, riders),
            rng.uniform(60, 110, riders), rng.uniform(5, 12, riders), np.full(riders, 8.0 * second)])
        start = time.perf_counter()
        rec.add(slot, values)
        spent += time.perf_counter() - start
        chunk_bytes += sum(len(b) for b in rec.take_dirty().values())
        checkpoints += 1
    return {"riders": riders, "seconds": seconds, "add_us_per_tick": round(spent / seconds * 1e6, 1),
            "add_ns_per_sample": round(spent / (seconds * riders) * 1e9, 1),
            "chunk_bytes_per_checkpoint": round(chunk_bytes / checkpoints), "bytes_in_memory": rec.nbytes(),
            "bytes_per_rider_hour": round(rec.nbytes() / riders * 3600 / seconds)}


def exports(seconds: int) -> dict[str, float]:
    rec = Recording()
    n = seconds
    rows = np.column_stack([T0 + np.arange(n) + 0.2, 100 + np.arange(n) % 60, 150 + np.arange(n) % 200,
                            80 + np.arange(n) % 30, 7.5 + np.arange(n) % 5, 7.5 * np.arange(n)])
    rec.add(np.zeros(n, np.int64), rows.astype(float))
    summary = {"participant": "ann", "energy_kj": 600.0, "samples": n, "power_avg": 250.0, "metrics": {"kcal": 570}}
    start = time.perf_counter()
    ride = build_ride("c", summary, rec.series(0), rank=1, riders=1)
    built = time.perf_counter() - start
    assert ride is not None
    out: dict[str, float] = {"ride_s": seconds, "build_ms": round(built * 1e3, 1)}
    for name, make in (("series", encode_series), ("fit", to_fit), ("tcx", to_tcx)):
        start = time.perf_counter()
        body = make(ride.series) if name == "series" else make(ride)  # type: ignore[operator]
        out[f"{name}_ms"] = round((time.perf_counter() - start) * 1e3, 1)
        out[f"{name}_bytes"] = len(body)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=600)
    parser.add_argument("--riders", default="100,1000")
    parser.add_argument("--report", default=None)
    args = parser.parse_args()
    report = {"ticks": [ticks(int(r), args.seconds) for r in args.riders.split(",")], "export": exports(3600)}
    text = json.dumps(report, indent=2)
    print(text)
    if args.report:
        Path(args.report).write_text(text)


if __name__ == "__main__":
    main()
