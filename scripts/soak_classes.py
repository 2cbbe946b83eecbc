"""A memory soak over many classes: classes come and go and the stack's memory stays flat.

    .venv/bin/python scripts/soak_classes.py --classes 200 --wave 10 --report soak.json

It starts ``pulseline up`` (its own data dir, port, local Ray and embedded Redis; stopped by
pid at the end) with a short passivation delay, then runs the classes in waves of
``--wave``: each wave is one swarm (a rider per class by default, class viewers, phases
lobby -> live -> cooldown -> ended), after which the edge passivates the ended classes
(their actors stop, the edge releases their pumps). After every wave it waits until the
edge holds no pump and no session actor of the wave is left, then samples:

* ``edge_rss_mib`` — the ``pulseline up`` process (the edge, its supervisor, the Ray driver);
* ``session_actors`` and ``actors_rss_mib`` — ``ray::SessionActor`` processes and their RSS;
  ``host_processes`` and ``hosts_rss_mib`` — the dense hosts (``--placement dense``), which stay;
* ``tree_rss_mib`` — the whole process tree (raylet, GCS, workers, redis-server);
* ``pumps`` — pumps the edge holds (``GET /v1/cluster/status``);
* ``redis_used_mib`` and ``redis_keys`` — what Redis holds (ended classes stay there for
  their retention, ``PULSELINE_ENDED_RETENTION_S``: that growth is by design);
* ``peak_actors`` and ``peak_actors_rss_mib`` — session actors while the wave ran (sampled
  every second).

Prints one JSON object (``waves``: one sample per wave, plus the swarms' accounting summed);
exit status 0 iff every class ended exact (lost 0, duplicated 0) and the edge let go of
every class. Memory is judged by reading the samples: docs/benchmarks.md, "Memory over 200
classes".
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sims.swarm import Swarm, SwarmConfig  # noqa: E402

MIB = 2**20


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rss(processes: list[psutil.Process]) -> float:
    total = 0
    for p in processes:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return round(total / MIB, 1)


def _cmdline(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())
    except psutil.Error:
        return ""


def _by_process(processes: list[psutil.Process]) -> dict[str, float]:
    """RSS by kind of process (its command's short name: gcs_server, raylet, ray::Creator, ...)."""
    kinds: dict[str, list[psutil.Process]] = {}
    for p in processes:
        args = _cmdline(p).split()
        if not args:
            continue
        name = args[0] if args[0].startswith("ray::") else Path(args[0]).name
        if name.startswith("python") and len(args) > 1:  # a Python process: its script or module
            name = Path(args[2] if args[1] in ("-m", "-u") and len(args) > 2 else args[1]).name
        kinds.setdefault(name, []).append(p)
    return {name: _rss(group) for name, group in sorted(kinds.items())}


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.work = Path(tempfile.mkdtemp(prefix="pl-soak-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self.began = time.monotonic()

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "RAY_ADDRESS")}
        env.update(PULSELINE_PASSIVATE_IDLE_S=str(self.args.passivate_s), PULSELINE_PASSIVATE_INTERVAL_S="0.5")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "launch.cli", "up", "--port", str(self.port), "--data-dir", str(self.work / "data")],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=open(self.work / "up.log", "w"),
        )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(90)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if not self.args.keep:
            shutil.rmtree(self.work, ignore_errors=True)

    def _tree(self) -> list[psutil.Process]:
        assert self.proc is not None
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    async def _operator(self) -> dict[str, str]:
        from devices.client import DevTokens

        return {"Authorization": f"Bearer {await DevTokens(self.url)(kind='operator')}"}

    async def _pumps(self, headers: dict[str, str]) -> int | None:
        try:
            async with httpx.AsyncClient(timeout=30, headers=headers) as http:
                reply = await http.get(f"{self.url}/v1/cluster/status")
            return int(reply.json()["edge"]["pumps"]) if reply.status_code == 200 else None
        except (httpx.HTTPError, ValueError, KeyError):
            return None

    async def _ready(self) -> bool:
        try:
            async with httpx.AsyncClient(timeout=2) as http:
                return (await http.get(f"{self.url}/readyz")).status_code == 200
        except httpx.HTTPError:
            return False

    async def _settled(self, headers: dict[str, str], timeout_s: float) -> bool:
        """No pump left at the edge and no session actor process left (passivated)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            actors = [p for p in self._tree() if _cmdline(p).startswith("ray::SessionActor")]
            if await self._pumps(headers) == 0 and not actors:
                return True
            await asyncio.sleep(0.5)
        return False

    def sample(self, wave: int, classes: int, settled: bool, pumps: int | None) -> dict[str, Any]:
        tree = self._tree()
        actors = [p for p in tree if _cmdline(p).startswith("ray::SessionActor")]
        hosts = [p for p in tree if _cmdline(p).startswith("ray::SessionHost")]
        return {
            "wave": wave, "classes": classes, "t_s": round(time.monotonic() - self.began, 1), "settled": settled,
            "edge_rss_mib": _rss(tree[:1]), "session_actors": len(actors), "actors_rss_mib": _rss(actors),
            "host_processes": len(hosts), "hosts_rss_mib": _rss(hosts),
            "tree_rss_mib": _rss(tree), "pumps": pumps, **self._redis(tree),
            "by_process_mib": _by_process(tree[1:]),
        }

    @staticmethod
    def _redis(tree: list[psutil.Process]) -> dict[str, Any]:
        import redis

        for p in tree:
            args = _cmdline(p).split()  # redis-server retitles itself "redis-server 127.0.0.1:PORT"
            if len(args) > 1 and args[0].endswith("redis-server") and ":" in args[1]:
                client = redis.Redis(port=int(args[1].rsplit(":", 1)[1]), socket_timeout=5)
                used = client.info("memory")["used_memory"]
                return {"redis_used_mib": round(used / MIB, 2), "redis_keys": client.dbsize()}
        return {}

    async def _peaks(self, stop: asyncio.Event, peak: dict[str, float]) -> None:
        while not stop.is_set():
            actors = [p for p in self._tree() if _cmdline(p).startswith("ray::SessionActor")]
            peak["peak_actors"] = max(peak.get("peak_actors", 0), len(actors))
            peak["peak_actors_rss_mib"] = max(peak.get("peak_actors_rss_mib", 0.0), _rss(actors))
            try:
                await asyncio.wait_for(stop.wait(), 1.0)
            except TimeoutError:
                pass

    async def run(self) -> dict[str, Any]:
        deadline = time.monotonic() + 180
        while not await self._ready():
            if time.monotonic() > deadline:
                raise RuntimeError(f"the stack did not come up; see {self.work / 'up.log'}")
            await asyncio.sleep(0.5)
        headers = await self._operator()
        waves: list[dict[str, Any]] = [self.sample(0, 0, True, await self._pumps(headers))]
        totals = {"sent": 0, "acknowledged": 0, "applied": 0, "lost": 0, "duplicated": 0, "not_drained": 0}
        done = 0
        wave = 0
        while done < self.args.classes:
            wave += 1
            count = min(self.args.wave, self.args.classes - done)
            config = SwarmConfig(
                base_url=self.url, sessions=count, devices=count * self.args.riders, seconds=self.args.seconds,
                rate_hz=2.0, board_hz=2.0, session_prefix=f"soak-{os.getpid()}-w{wave}", drain_timeout_s=60,
                ready_timeout_s=120, placement=self.args.placement,
            )
            stop, peak = asyncio.Event(), dict[str, float]()
            sampler = asyncio.create_task(self._peaks(stop, peak))
            try:
                result = await Swarm(config).run()
            finally:
                stop.set()
                await sampler
            for key in ("sent", "acknowledged", "applied", "lost", "duplicated"):
                totals[key] += int(result.get(key) or 0)
            totals["not_drained"] += 0 if result.get("drained") else 1
            done += count
            settled = await self._settled(headers, self.args.settle_timeout_s)
            waves.append({**self.sample(wave, done, settled, await self._pumps(headers)), **peak})
            print(json.dumps(waves[-1]), file=sys.stderr, flush=True)
        return {"classes": done, "wave": self.args.wave, "riders_per_class": self.args.riders,
                "seconds_per_class": self.args.seconds, "accounting": totals, "waves": waves}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=200)
    parser.add_argument("--wave", type=int, default=10, help="classes run at the same time")
    parser.add_argument("--riders", type=int, default=1, help="riders per class")
    parser.add_argument("--seconds", type=float, default=3.0, help="each class's live time")
    parser.add_argument("--passivate-s", type=float, default=1.0, help="PULSELINE_PASSIVATE_IDLE_S of the stack")
    parser.add_argument("--settle-timeout-s", type=float, default=120.0)
    parser.add_argument("--placement", choices=("dense", "dedicated"), default=None,
                        help="where the classes run (default: the server's; dense: SessionHost processes that stay)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs, AOF)")
    parser.add_argument("--report", default=None)
    args = parser.parse_args()
    if args.classes < 1 or args.wave < 1 or args.riders < 1:
        parser.error("--classes, --wave and --riders must be at least 1")
    soak = Soak(args)
    soak.start()
    try:
        result = asyncio.run(soak.run())
    finally:
        soak.stop()
    text = json.dumps(result, indent=2)
    print(text, flush=True)
    if args.report:
        Path(args.report).write_text(text + "\n")
    acc = result["accounting"]
    settled = all(w["settled"] for w in result["waves"])
    return 0 if acc["lost"] == 0 and acc["duplicated"] == 0 and not acc["not_drained"] and settled else 1


if __name__ == "__main__":
    sys.exit(main())
