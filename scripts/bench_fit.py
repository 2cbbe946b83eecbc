"""What a ride's FIT export costs (docs/benchmarks.md, "FIT exports").

Prints JSON: the time to encode a ride of ``--seconds`` recorded seconds as FIT
(``history.exports.to_fit``), best and median of ``--repeat`` runs, and the file's size;
one ride with every field every second and one with gaps (seconds without heart rate,
cadence or power). Plain CPU work in this process; on a shared box the numbers are upper
bounds.

    python scripts/bench_fit.py [--seconds 3600] [--repeat 5] [--report out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from actors.recording import Recording
from history.exports import to_fit
from history.rides import Ride, build_ride

T0 = 1_795_000_000.0


def ride(seconds: int, *, gaps: bool) -> Ride:
    rec = Recording()
    n = np.arange(seconds)
    rows = np.column_stack([T0 + n + 0.2, 100 + n % 60, 150 + n % 200, 80 + n % 30, 7.5 + n % 5, 7.5 * n]).astype(float)
    if gaps:
        rows[n % 7 == 0, 1] = np.nan  # heart rate lost every 7th second
        rows[n % 11 == 0, 2:4] = np.nan  # power and cadence every 11th
    rec.add(np.zeros(seconds, np.int64), rows)
    summary = {"participant": "ann", "energy_kj": 600.0, "samples": seconds, "power_avg": 250.0,
               "metrics": {"kcal": 570}}
    built = build_ride("c", summary, rec.series(0), rank=1, riders=1)
    assert built is not None
    return built


def measure(seconds: int, repeat: int, *, gaps: bool) -> dict[str, float]:
    one = ride(seconds, gaps=gaps)
    spent, body = [], b""
    for _ in range(repeat):
        start = time.perf_counter()
        body = to_fit(one)
        spent.append(time.perf_counter() - start)
    return {"ride_s": seconds, "gaps": gaps, "fit_ms_best": round(min(spent) * 1e3, 2),
            "fit_ms_median": round(statistics.median(spent) * 1e3, 2), "fit_bytes": len(body)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=3600)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--report", default=None)
    args = parser.parse_args()
    report = {"fit": [measure(args.seconds, args.repeat, gaps=gaps) for gaps in (False, True)]}
    text = json.dumps(report, indent=2)
    print(text)
    if args.report:
        Path(args.report).write_text(text)


if __name__ == "__main__":
    main()
