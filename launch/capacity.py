"""The capacity benchmark (``make bench``): how many 1 Hz devices one edge carries within target.

One process starts a local stack (embedded Redis, local Ray, the edge under uvicorn, all
in this process like ``pulseline up``) and then, for each connection shape (``phones``: one
connection per rider; ``hubs``: 30 devices per connection), steps the number of devices:
each step is a fresh set of classes of ``class_size`` riders, every device at 1 Hz, every
rider also watching its own board (``?participant=ID&rate=1``) and one latency viewer per
class at 10 Hz (``view=all``). The swarm runs in its own process(es) — ``--swarm-procs``,
by default one per 1,500 devices — so it never shares the edge's event loop; its CPU is
reported with everyone else's (psutil, this process tree only).

A step passes when p99 sample->board latency <= ``--p99-ms`` (150), nothing is lost or
duplicated, every sample was acknowledged, and every latency probe saw its sample. The
stepping of a shape stops at its first failing step. The result (stdout, and
``--out``/capacity.json) is JSON: per shape the largest passing load and every step with
its latency, accounting and CPU figures (edge, swarm, session actors, Redis, Ray system),
and the edge's CPU cost per device-second.

``python -m launch.capacity worker SCENARIO.json URL OUT.json`` is the swarm process;
``python -m launch.capacity table capacity.json`` prints a result as a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import math
import os
import platform
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SHAPES = {"phones": 1, "hubs": 30}
DEFAULT_STEPS = (250, 500, 750, 1000, 1500, 2000, 3000, 4000)


def step_scenario(shape: str, devices: int, *, seconds: float, class_size: int, prefix: str,
                  procs: int, board_protocol: str = "1.1") -> list[dict[str, Any]]:
    """The scenario of one step, split into ``procs`` swarm processes by whole classes."""
    sessions = max(1, math.ceil(devices / class_size))
    procs = max(1, min(procs, sessions))
    out = []
    for k in range(procs):
        mine = len(range(k, sessions, procs))
        riders = round(devices * mine / sessions)
        scenario: dict[str, Any] = {
            "name": f"capacity-{shape}-{devices}",
            "seed": 1000 + k,
            "sessions": {"count": mine, "prefix": f"{prefix}-w{k}"},
            "riders": {"count": riders, "kits": {"phone": 1.0}},
            "connections": {"shape": shape} if shape == "phones" else {"shape": "hubs", "hub_size": SHAPES[shape]},
            "load": {"seconds": seconds, "rate_hz": 1.0, "board_hz": 10, "participant_boards": True,
                     "participant_board_hz": 1, "board_protocol": board_protocol},
            "run": {"drain_timeout_s": 60, "phases": True},
        }
        out.append(scenario)
    return out


def verdict(report: dict[str, Any], p99_ms: float) -> tuple[bool, str]:
    lat = report.get("latency_ms", {})
    reasons = []
    if report.get("lost", 1):
        reasons.append(f"lost {report.get('lost')}")
    if report.get("duplicated", 1):
        reasons.append(f"duplicated {report.get('duplicated')}")
    if not report.get("drained"):
        reasons.append("not every sample acknowledged")
    if report.get("latency_unseen", 0):
        reasons.append(f"{report['latency_unseen']} samples never shown on a board")
    if lat.get("p99") is None or lat["p99"] > p99_ms:
        reasons.append(f"p99 {lat.get('p99')} ms > {p99_ms:g} ms")
    return (not reasons, "; ".join(reasons) or "ok")


def cpu_groups(processes: dict[str, Any], devices: int, seconds: float) -> dict[str, Any]:
    """Sum per role: edge, swarm, session actors (a class's own process, or a host of dense
    classes: ``session_actors`` counts processes), Redis, Ray system, other Ray workers."""
    from launch.bench import CLASS_LABELS

    groups: dict[str, float] = {}
    actors = []
    for label, p in processes.items():
        pct = p.get("cpu_pct_of_one_core") or 0.0
        if label.startswith(CLASS_LABELS):  # a class's own process, or a host of dense classes
            role = "session_actors"
            actors.append(pct)
        elif label.startswith("swarm"):
            role = "swarm"
        elif label.startswith("ray-worker"):
            role = "ray_workers_other"
        elif label.startswith("ray-system"):
            role = "ray_system"
        else:
            role = label
        groups[role] = groups.get(role, 0.0) + pct
    out: dict[str, Any] = {f"{k}_pct": round(v, 1) for k, v in sorted(groups.items())}
    out["total_pct"] = round(sum(groups.values()), 1)
    out["session_actors"] = len(actors)
    out["per_session_actor_pct"] = round(sum(actors) / len(actors), 1) if actors else None
    edge_s = groups.get("edge", 0.0) / 100.0 * seconds
    out["edge_us_per_device_second"] = round(1e6 * edge_s / (devices * seconds), 1) if devices and seconds else None
    return out


class CapacityBench:
    """Runs inside the process that serves the edge; ``url`` is that edge."""

    def __init__(self, args: argparse.Namespace, url: str, namespace: str) -> None:
        self.args = args
        self.url = url
        self.namespace = namespace
        self.workdir = Path(tempfile.mkdtemp(prefix="pulseline-capacity-"))

    async def run(self) -> dict[str, Any]:
        result: dict[str, Any] = {"machine": machine(), "config": self._config(), "shapes": {}}
        for shape in self.args.shapes.split(","):
            result["shapes"][shape] = await self.run_shape(shape)
        return result

    def _config(self) -> dict[str, Any]:
        a = self.args
        return {"steps": a.steps, "step_seconds": a.step_seconds, "class_size": a.class_size, "p99_ms": a.p99_ms,
                "loop": a.loop, "swarm_procs": a.swarm_procs, "keep_going": a.keep_going, "rate_hz": 1, "participant_board_hz": 1,
                "board_protocol": a.board_protocol,
                "class_viewer_hz": 10}

    async def run_shape(self, shape: str) -> dict[str, Any]:
        steps = []
        best = None
        for devices in [int(x) for x in self.args.steps.split(",")]:
            step = await self.run_step(shape, devices)
            steps.append(step)
            _progress(f"{shape} {devices}: {'PASS' if step['pass'] else 'FAIL'} ({step['reason']}); "
                      f"p99 {step['latency_ms'].get('p99')} ms, edge {step['cpu'].get('edge_pct')}%, "
                      f"swarm {step['cpu'].get('swarm_pct')}%")
            if step["pass"] and (self.args.keep_going or all(s["pass"] for s in steps)):
                best = devices
            if not step["pass"] and not self.args.keep_going:
                break
        return {"largest_passing_devices": best, "steps": steps}

    def _procs(self, devices: int) -> int:
        if self.args.swarm_procs != "auto":
            return int(self.args.swarm_procs)
        return max(1, math.ceil(devices / 1500))

    async def run_step(self, shape: str, devices: int) -> dict[str, Any]:
        from launch.bench import ProcessSampler
        from sims.report import merge_reports

        prefix = f"cap-{uuid.uuid4().hex[:5]}"
        parts = step_scenario(shape, devices, seconds=self.args.step_seconds, class_size=self.args.class_size,
                              prefix=prefix, procs=self._procs(devices), board_protocol=self.args.board_protocol)
        load_before = os.getloadavg()
        started = time.monotonic()
        procs, outs = [], []
        for k, scenario in enumerate(parts):
            path = self.workdir / f"{prefix}-{k}.json"
            path.write_text(json.dumps(scenario))
            out = self.workdir / f"{prefix}-{k}.report.json"
            outs.append(out)
            procs.append(await asyncio.create_subprocess_exec(
                sys.executable, "-m", "launch.capacity", "worker", str(path), self.url, str(out),
                stdout=asyncio.subprocess.DEVNULL))
        sampler = ProcessSampler(os.getpid(), {p.pid for p in procs}, only_descendants=True)
        # CPU over the class only: from when the class runs (after connecting) to its end
        await self._sample_until_done(sampler, procs)
        wall = time.monotonic() - started
        reports = [json.loads(o.read_text()) for o in outs if o.exists()]
        if len(reports) != len(parts):
            return {"devices": devices, "pass": False, "reason": "a swarm process failed", "latency_ms": {},
                    "cpu": {}}
        report = merge_reports(reports)
        ok, reason = verdict(report, self.args.p99_ms)
        await self._retire(report.get("session_ids", []) + [s for r in reports for s in r.get("late_session_ids", [])])
        # CPU over the class itself (connected, sending), not the connect and drain phases
        t0 = min(r.get("started_at", 0.0) for r in reports) + 2.0
        t1 = t0 + self.args.step_seconds - 3.0
        processes = sampler.report_window(t0, t1) or sampler.report(wall)
        window_s = (t1 - t0) if sampler.report_window(t0, t1) else wall
        self._without_sampling(processes, t0, t1, window_s)
        return {
            "devices": devices, "shape": shape, "sessions": report.get("sessions"),
            "connections": report.get("connections"), "swarm_processes": len(parts),
            "pass": ok, "reason": reason,
            "latency_ms": report.get("latency_ms"),
            "sent": report.get("sent"), "lost": report.get("lost"), "duplicated": report.get("duplicated"),
            "drained": report.get("drained"), "throughput_samples_per_s": report.get("throughput_samples_per_s"),
            "participant_boards": report.get("participant_boards"), "boards_received": report.get("boards_received"),
            "swarm_lag_p99_ms": report.get("swarm_lag_ms", {}).get("p99", report.get("swarm_lag_ms", {}).get(
                "p99_max_over_processes")),
            "swarm_gc": report.get("swarm_gc"),
            "cpu": cpu_groups(processes, devices, window_s),
            "cpu_window_s": round(window_s, 1),
            "wall_s": round(wall, 1),
            "loadavg_1m_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
            "processes": processes,
        }

    async def _sample_until_done(self, sampler: Any, procs: list[Any]) -> None:
        waiters = [asyncio.ensure_future(p.wait()) for p in procs]
        self.sampling_cost: list[tuple[float, float]] = []  # the sampler runs in the edge's process
        try:
            while not all(w.done() for w in waiters):
                self._sample(sampler)
                await asyncio.wait(waiters, timeout=1.0)
        except asyncio.CancelledError:  # Ctrl-C: the swarm processes go too
            for proc in procs:
                if proc.returncode is None:
                    proc.terminate()
            raise
        self._sample(sampler)

    def _sample(self, sampler: Any) -> None:
        began = time.thread_time()
        sampler.sample()
        self.sampling_cost.append((time.time(), time.thread_time() - began))

    def _without_sampling(self, processes: dict[str, Any], t0: float, t1: float, window_s: float) -> None:
        """Take the sampler's own CPU out of the edge's figure (it runs on the edge's loop)."""
        edge = processes.get("edge")
        if not edge or window_s <= 0:
            return
        cost = sum(c for t, c in self.sampling_cost if t0 <= t <= t1)
        edge["cpu_s"] = round(max(0.0, edge["cpu_s"] - cost), 2)
        edge["cpu_pct_of_one_core"] = round(100 * edge["cpu_s"] / window_s, 1)
        edge["sampler_cpu_s_removed"] = round(cost, 3)

    async def _retire(self, session_ids: list[str]) -> None:
        """Stop the step's session actors (state stays in Redis) so steps do not pile up."""
        await asyncio.to_thread(_kill_actors, session_ids, self.namespace)


def _kill_actors(session_ids: list[str], namespace: str) -> None:
    import ray

    from actors.session_actor import actor_name

    for sid in session_ids:
        try:
            ray.kill(ray.get_actor(actor_name(sid), namespace=namespace), no_restart=True)
        except ValueError:
            pass


def machine() -> dict[str, Any]:
    import psutil
    import ray

    return {
        "cpus": os.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(), "ray": ray.__version__, "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
    }


def _progress(text: str) -> None:
    print(f"capacity: {text}", file=sys.stderr, flush=True)


# -- the edge in this process ----------------------------------------------------------------
async def _serve_and_bench(args: argparse.Namespace, settings: Any) -> dict[str, Any]:
    import uvicorn

    from api.app import create_app

    try:  # the same transport options as ``pulseline up``
        from api.limits import uvicorn_options

        options = uvicorn_options(settings)
    except ImportError:
        options = {"ws_max_size": 1 << 20}
    config = uvicorn.Config(create_app(settings), host=settings.host, port=settings.port, log_level="warning",
                            loop=args.loop, lifespan="on", **options)
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    while not server.started and not serving.done():
        await asyncio.sleep(0.05)
    if not server.started:  # e.g. the port is taken (uvicorn logged why): stop, do not bench nothing
        await serving
        raise SystemExit(f"capacity: the edge did not start on {settings.host}:{settings.port}")
    try:
        bench = CapacityBench(args, f"http://{settings.host}:{settings.port}", settings.namespace)
        return await bench.run()
    finally:
        server.should_exit = True
        await serving


def bench_main(args: argparse.Namespace) -> int:
    from launch.stack import Stack
    from cluster.settings import from_environment

    settings = from_environment(port=args.port, data_dir=Path(args.data_dir).resolve())  # redis needs absolute
    if hasattr(settings, "max_connections_per_address"):
        # the whole swarm comes from 127.0.0.1: a per-address guard is not what we measure
        settings.max_connections_per_address = max(settings.max_connections_per_address, 100_000)
    stack = Stack(settings).start()
    profiler = None
    if args.profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    try:
        if args.loop == "uvloop":
            import uvloop

            result = uvloop.run(_serve_and_bench(args, settings))
        else:
            result = asyncio.run(_serve_and_bench(args, settings))
    finally:
        if profiler is not None:
            profiler.disable()
            _write_profile(profiler, args.profile)
        stack.stop()
    text = json.dumps(result, indent=1)
    brief = {shape: r["largest_passing_devices"] for shape, r in result["shapes"].items()}
    print(json.dumps({"largest_passing_devices": brief, **result}, indent=1), flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return 0


def _write_profile(profiler: Any, path: str) -> None:
    """The edge process's profile (its event loop thread): top functions by own and total time."""
    import io
    import pstats

    buf = io.StringIO()
    stats = pstats.Stats(profiler, stream=buf)
    stats.sort_stats("tottime").print_stats(40)
    stats.sort_stats("cumulative").print_stats(60)
    Path(path).write_text(buf.getvalue())


def worker_main(scenario_path: str, url: str, out: str) -> int:
    """One swarm process of a step: run the scenario, write the full report."""
    from sims.scenario import load
    from sims.swarm import Swarm

    swarm = Swarm(load(scenario_path).swarm_config(url))
    # A step's swarm is a measuring instrument: its own collections (young ones up to ~100 ms
    # on this box at 3,000 riders, ``swarm_gc``) stall its loop and show as the server's
    # latency. Its garbage is acyclic (freed by reference counting), and a step is short: the
    # cyclic collector stays off in the worker (swarm_gc then reports none).
    gc.disable()
    try:  # the loader's own loop: uvloop when installed (3,000 phones: lag p99 678 -> 124 ms, same CPU)
        import uvloop
    except ImportError:
        asyncio.run(swarm.run())
    else:
        uvloop.run(swarm.run())
    Path(out).write_text(json.dumps(swarm.report()))
    return 0


def markdown_table(result: dict[str, Any]) -> str:
    """The steps of a capacity result as a Markdown table (for docs/benchmarks.md)."""
    head = ("| shape | devices | conns | p50 | p90 | p99 | p99.9 | max | lost | dup | edge % | swarm % "
            "| actors % (n) | redis % | edge µs/device-s | swarm lag p99 | load 1m | pass |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for shape, data in result["shapes"].items():
        for st in data["steps"]:
            lat, cpu = st.get("latency_ms") or {}, st.get("cpu") or {}
            load = st.get("loadavg_1m_before_after", ["?", "?"])
            lines.append(
                f"| {shape} | {st['devices']} | {st.get('connections')} | {lat.get('p50')} | {lat.get('p90')} "
                f"| {lat.get('p99')} | {lat.get('p99_9')} | {lat.get('max')} | {st.get('lost')} | {st.get('duplicated')} "
                f"| {cpu.get('edge_pct')} | {cpu.get('swarm_pct')} | {cpu.get('session_actors_pct')} "
                f"({cpu.get('session_actors')}) | {cpu.get('redis_pct')} | {cpu.get('edge_us_per_device_second')} "
                f"| {st.get('swarm_lag_p99_ms')} | {load[0]}→{load[1]} | {'yes' if st['pass'] else 'no: ' + st['reason']} |")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m launch.capacity", description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="phones,hubs")
    p.add_argument("--steps", default=",".join(str(s) for s in DEFAULT_STEPS), help="device counts, ascending")
    p.add_argument("--step-seconds", type=float, default=30.0)
    p.add_argument("--class-size", type=int, default=100, help="riders per class (session)")
    p.add_argument("--p99-ms", type=float, default=150.0)
    p.add_argument("--board-protocol", choices=("1", "1.1"), default="1.1",
                   help="riders' own boards: 1.1 on the device socket (one per rider), 1 on a second socket")
    p.add_argument("--swarm-procs", default="auto", help="swarm processes per step (auto: one per 1,500 devices)")
    p.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio", help="the edge's event loop")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--data-dir", default=".pulseline/capacity")
    p.add_argument("--out", default="capacity.json")
    p.add_argument("--keep-going", action="store_true",
                   help="run every step even after one fails (the CPU/latency curve on a noisy machine); "
                        "the largest passing load is then the largest step that passed")
    p.add_argument("--profile", default=None, help="cProfile the edge process into this text file")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if argv[:1] == ["worker"]:
        return worker_main(*argv[1:4])
    if argv[:1] == ["table"]:
        print(markdown_table(json.loads(Path(argv[1]).read_text())))
        return 0
    return bench_main(parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
