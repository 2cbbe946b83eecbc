"""``pulseline bench``: a swarm in its own process against a freshly started stack, with
CPU and memory of every process (edge, each Ray worker, Redis, swarm) from psutil.

Prints one JSON document: the swarm's accounting and latency, ``processes`` (CPU seconds
used during the run, CPU % of one core, peak RSS), and per-session actor memory.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import httpx
import psutil


CLASS_ACTORS = ("SessionActor", "SessionHost")  # a class's own process; a host of dense classes
CLASS_LABELS = tuple(f"ray-worker:{a}:" for a in CLASS_ACTORS)


def _classify(proc: psutil.Process, edge_pid: int, swarm_pid: int | set[int]) -> str | None:
    swarm_pids = swarm_pid if isinstance(swarm_pid, set) else {swarm_pid}
    try:
        if proc.pid == edge_pid:
            return "edge"
        if proc.pid in swarm_pids:
            return "swarm" if len(swarm_pids) == 1 else f"swarm:{proc.pid}"
        name = " ".join(proc.cmdline())[:200]
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    if "redis-server" in name:
        return "redis"
    for actor in CLASS_ACTORS:
        if actor in name:
            return f"ray-worker:{actor}:{proc.pid}"
    if name.startswith("ray::") or "default_worker.py" in name:
        return f"ray-worker:{proc.pid}"
    for part in ("raylet", "gcs_server", "dashboard", "log_monitor", "monitor.py", "runtime_env"):
        if part in name:
            return f"ray-system:{part}"
    return None


class ProcessSampler:
    """CPU seconds and peak RSS per process, by role. With ``only_descendants`` only the
    edge's own process tree (its Ray, its Redis) and the swarm pids are looked at — on a
    shared machine, other people's Ray workers and Redis servers are not ours."""

    def __init__(self, edge_pid: int, swarm_pid: int | set[int], *, only_descendants: bool = False) -> None:
        self.edge_pid = edge_pid
        self.swarm_pid = swarm_pid
        self.only_descendants = only_descendants
        self.start_cpu: dict[int, float] = {}
        self.last_cpu: dict[int, float] = {}
        self.peak_rss: dict[int, int] = {}
        self.labels: dict[int, str] = {}
        self.series: list[tuple[float, dict[int, float]]] = []  # (wall time, pid -> cpu seconds)

    def _procs(self) -> list[psutil.Process]:
        me = psutil.Process(self.edge_pid)
        procs = [me, *me.children(recursive=True)]
        seen = {p.pid for p in procs}
        if self.only_descendants:
            swarm = self.swarm_pid if isinstance(self.swarm_pid, set) else {self.swarm_pid}
            for pid in swarm - seen:
                try:
                    procs.append(psutil.Process(pid))
                except psutil.NoSuchProcess:
                    pass
            return procs
        for p in psutil.process_iter():
            if p.pid not in seen:
                procs.append(p)
        return procs

    def sample(self) -> None:
        point: dict[int, float] = {}
        self.series.append((time.time(), point))
        for proc in self._procs():
            label = self.labels.get(proc.pid)
            if label is None or (label.startswith("ray-worker:") and not label.startswith(CLASS_LABELS)):
                label = _classify(proc, self.edge_pid, self.swarm_pid) or label  # idle workers become actors
            if label is None:
                continue
            try:
                times = proc.cpu_times()
                rss = proc.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            self.labels[proc.pid] = label
            cpu = times.user + times.system
            self.start_cpu.setdefault(proc.pid, cpu)
            self.last_cpu[proc.pid] = cpu
            point[proc.pid] = cpu
            self.peak_rss[proc.pid] = max(self.peak_rss.get(proc.pid, 0), rss)

    def report_window(self, t0: float, t1: float) -> dict[str, Any]:
        """Like ``report`` but for CPU used between wall times ``t0`` and ``t1`` (the
        nearest samples inside the window)."""
        inside = [(t, point) for t, point in self.series if t0 <= t <= t1]
        if len(inside) < 2:
            return {}
        (ta, first), (tb, last) = inside[0], inside[-1]
        wall = tb - ta
        out: dict[str, Any] = {}
        for pid, cpu in last.items():
            if pid in first and pid in self.labels:
                used = cpu - first[pid]
                out[self.labels[pid]] = {
                    "pid": pid, "cpu_s": round(used, 2), "cpu_pct_of_one_core": round(100 * used / wall, 1),
                    "peak_rss_mib": round(self.peak_rss[pid] / 2**20, 1),
                }
        return dict(sorted(out.items()))

    def report(self, wall_s: float) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for pid, label in self.labels.items():
            used = self.last_cpu[pid] - self.start_cpu[pid]
            out[label] = {
                "pid": pid,
                "cpu_s": round(used, 2),
                "cpu_pct_of_one_core": round(100 * used / wall_s, 1) if wall_s else None,
                "peak_rss_mib": round(self.peak_rss[pid] / 2**20, 1),
            }
        return dict(sorted(out.items()))


def bench_after_start(args: Any, swarm_config: Callable[[Any, str], Any], emit: Callable[[dict[str, Any], str | None], None]) -> Callable[[Any], Any]:
    async def after_start(server: Any) -> None:
        url = f"http://{server.config.host}:{server.config.port}"
        report = tempfile.NamedTemporaryFile(suffix=".json", delete=False).name
        cmd = [
            sys.executable, "-m", "launch.cli", "swarm", "--url", url, "--sessions", str(args.sessions),
            "--devices", str(args.devices), "--seconds", str(args.seconds), "--board-hz", str(args.board_hz),
            "--hub-size", str(args.hub_size), "--report", report,
        ]
        if args.session_prefix:
            cmd += ["--session-prefix", args.session_prefix]
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.DEVNULL)
        # Only our own processes (this edge's tree: its Ray, its Redis; and the swarm): other
        # stacks on a shared host are not ours. Attached to an external Ray, its workers are
        # not our children, so every process on the host is looked at (and the report says so).
        own_tree = not os.environ.get("RAY_ADDRESS")
        sampler = ProcessSampler(os.getpid(), proc.pid, only_descendants=own_tree)
        while proc.returncode is None:
            sampler.sample()
            try:
                await asyncio.wait_for(proc.wait(), 1.0)
            except TimeoutError:
                pass
        wall = time.monotonic() - started
        result = json.loads(open(report).read())
        from devices.client import DevTokens  # a development edge: an operator token from it

        auth = {"Authorization": f"Bearer {await DevTokens(url)(kind='operator')}"}
        async with httpx.AsyncClient(base_url=url, timeout=30, headers=auth) as http:
            actors = {}
            for sid in result["session_ids"]:
                snap = (await http.get(f"/v1/sessions/{sid}")).json()
                n = max(1, len(snap["participants"]))
                actors[sid] = {"participants": n, "state_bytes": snap["state_bytes"], "bytes_per_participant": round(snap["state_bytes"] / n, 1), "checkpoints_written": snap["checkpoints_written"]}
        result["processes"] = sampler.report(wall)
        result["actors"] = actors
        result["config"] = {"devices": args.devices, "sessions": args.sessions, "seconds": args.seconds, "board_hz": args.board_hz, "hub_size": args.hub_size, "cpus": os.cpu_count(),
                            "processes_counted": "this stack's process tree and the swarm" if own_tree else "every process on the host"}
        emit(result, args.report)
        server.should_exit = True

    return after_start
