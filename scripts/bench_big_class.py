"""One big class end to end, one actor against class shards: p99 sample->board and CPU.

    .venv/bin/python scripts/bench_big_class.py --riders 1000,3000,5000 --seconds 20

For each class size and each mode — ``single`` (``PULSELINE_CLASS_SHARD_RIDERS=0``: the
class is one actor) and ``sharded`` (``PULSELINE_CLASS_SHARD_RIDERS=--per-shard``, default
1,000) — runs the capacity benchmark (``launch.capacity``: its own local stack, the swarm
in its own process, every device at 1 Hz, every rider watching its own board at 1 Hz, the
latency probe at 10 Hz on ``view=all``, which pages on a sharded class and is followed page
by page) for one step of ``--seconds`` with one class of that size, connections as
``--shape`` (hubs: 30 devices each). Prints one JSON object: per size and mode, p50/p99
sample->board, lost, duplicated, whether the step passed (p99 <= 150 ms, lost 0, dup 0),
the CPU of the edge, the session actors (and how many) and the swarm, the swarm's own lag
(a swarm behind its schedule on a loaded box shows as latency), and the 1-minute load
average before and after. Keep runs short on a shared box and quote the load with the
numbers. A benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def run(riders: int, mode: str, args: argparse.Namespace) -> dict[str, Any]:
    out = Path(tempfile.mkdtemp(prefix="bigclass-")) / "capacity.json"
    env = dict(os.environ, PULSELINE_CLASS_SHARD_RIDERS="0" if mode == "single" else str(args.per_shard))
    cmd = [sys.executable, "-m", "launch.capacity", "--shapes", args.shape, "--steps", str(riders),
           "--class-size", str(riders), "--step-seconds", str(args.seconds), "--port", str(args.port),
           "--data-dir", str(out.parent / "data"), "--out", str(out), "--loop", args.loop]
    log = out.parent / "capacity.log"
    with open(log, "wb") as sink:  # its own process group: a run that hangs is ended whole
        proc = subprocess.Popen(cmd, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + args.seconds * 4 + 240
        while proc.poll() is None and not out.exists() and time.monotonic() < deadline:
            time.sleep(1.0)
        if proc.poll() is None:  # the result is written (or time is up): stop the stack
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    if not out.exists():
        return {"error": f"no result; see {log}"}
    step = json.loads(out.read_text())["shapes"][args.shape]["steps"][0]
    cpu = step.get("cpu", {})
    latency = step.get("latency_ms", {})
    return {
        "pass": step.get("pass"), "reason": step.get("reason"),
        "p50_ms": latency.get("p50"), "p99_ms": latency.get("p99"),
        "lost": step.get("lost"), "duplicated": step.get("duplicated"),
        "edge_pct": cpu.get("edge_pct"), "session_actors_pct": cpu.get("session_actors_pct"),
        "session_actors": cpu.get("session_actors"), "swarm_pct": cpu.get("swarm_pct"),
        "edge_us_per_device_second": cpu.get("edge_us_per_device_second"),
        "swarm_lag_p99_ms": step.get("swarm_lag_p99_ms"), "load_1m": step.get("loadavg_1m_before_after"),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--riders", default="1000,3000,5000")
    p.add_argument("--modes", default="single,sharded")
    p.add_argument("--per-shard", type=int, default=1000)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--shape", choices=("hubs", "phones"), default="hubs")
    p.add_argument("--loop", choices=("asyncio", "uvloop"), default="uvloop")
    p.add_argument("--port", type=int, default=8915)
    a = p.parse_args()
    report: dict[str, Any] = {"shape": a.shape, "seconds": a.seconds, "per_shard": a.per_shard, "runs": {}}
    for riders in (int(r) for r in a.riders.split(",")):
        for mode in a.modes.split(","):
            report["runs"][f"{riders}/{mode}"] = run(riders, mode, a)
            print(json.dumps({f"{riders}/{mode}": report["runs"][f"{riders}/{mode}"]}), file=sys.stderr)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
