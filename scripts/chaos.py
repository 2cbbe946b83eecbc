"""A chaos soak: a class runs while, every ``--every-s``, one process of the stack is
SIGKILLed at random; it ends with the accounting, every recovery time and memory over time.

    .venv/bin/python scripts/chaos.py --minutes 30 --every-s 120 --report chaos.json

It starts ``pulseline up --edges 2`` (its own data dir, ports, local Ray and embedded
Redis; stopped by pid at the end) and runs a swarm in this process against both edges
(``--url a,b``: every client fails over). The victims, one per round, in turn (the order
of ``--victims``) then at random:

* ``redis-server`` — the supervisor restarts it on the same port and data dir;
  recovered (seconds from the SIGKILL) once the supervisor reports it restarted and
  ``/readyz`` of the first edge is 200 again;
* ``edge`` — the second edge process; the supervisor restarts it; recovered once it is
  restarted and its ``/readyz`` is 200 again;
* ``session-actor`` — one ``ray::SessionActor`` worker process of the stack; Ray restarts
  it from its checkpoint; recovered when every session answers ``GET`` again.

(The bridge is not a victim: there is no radio here; ``tests/devices`` covers its restarts.)
Prints one JSON object: the swarm's accounting (lost and duplicated must be 0), the kills
with their recovery seconds, and the RSS of the stack's process tree every ``--sample-s``.
Exit status 0 iff lost == 0, duplicated == 0 and everything was acknowledged.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
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

from cluster.supervisor import read_state  # noqa: E402
from sims.swarm import Swarm, SwarmConfig  # noqa: E402

VICTIMS = ("redis-server", "edge", "session-actor")


def _two_free_ports() -> int:
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = int(a.getsockname()[1])
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
                return port
    raise RuntimeError("no two adjacent free ports")


async def _ready(url: str) -> bool:
    try:
        async with httpx.AsyncClient(timeout=2) as http:
            return (await http.get(f"{url}/readyz")).status_code == 200
    except httpx.HTTPError:
        return False


async def _until(predicate: Any, timeout_s: float) -> float | None:
    began = time.monotonic()
    while time.monotonic() - began < timeout_s:
        if await predicate():
            return round(time.monotonic() - began, 2)
        await asyncio.sleep(0.1)
    return None


class Chaos:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.port = _two_free_ports()
        self.urls = [f"http://127.0.0.1:{self.port}", f"http://127.0.0.1:{self.port + 1}"]
        self.work = Path(tempfile.mkdtemp(prefix="pl-chaos-"))
        self.data = self.work / "data"
        self.proc: subprocess.Popen[bytes] | None = None
        self.kills: list[dict[str, Any]] = []
        self.memory: list[dict[str, Any]] = []
        self.began = time.monotonic()
        self.rng = random.Random(args.seed)

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "RAY_ADDRESS")}
        env["PULSELINE_RESTART_BACKOFF_MIN_S"] = "0.5"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "launch.cli", "up", "--edges", "2", "--port", str(self.port),
             "--data-dir", str(self.data)],
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

    def _pid(self, name: str) -> int | None:
        state = read_state(self.data) or {}
        process = state.get("processes", {}).get(name, {})
        return process.get("pid") if process.get("state") == "running" else None

    async def sample_memory(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            rss = 0
            for p in self._tree():
                try:
                    rss += p.memory_info().rss
                except psutil.Error:
                    pass
            self.memory.append({"t_s": round(time.monotonic() - self.began, 1), "rss_mib": round(rss / 2**20, 1)})
            try:
                await asyncio.wait_for(stop.wait(), self.args.sample_s)
            except TimeoutError:
                pass

    async def kill_loop(self, stop: asyncio.Event, sessions: list[str]) -> None:
        order = list(self.args.victims)
        while not stop.is_set() and not (self.args.rounds and len(self.kills) >= self.args.rounds):
            try:
                await asyncio.wait_for(stop.wait(), self.args.every_s)
                return
            except TimeoutError:
                pass
            victim = order.pop(0) if order else self.rng.choice(VICTIMS)
            self.kills.append(await self.kill(victim, sessions))

    async def kill(self, victim: str, sessions: list[str]) -> dict[str, Any]:
        at = round(time.monotonic() - self.began, 1)
        pid: int | None
        if victim == "session-actor":  # (on a busy box the classes' actors may still be starting: wait)
            actors = await self._session_actors(within_s=60)
            pid = self.rng.choice(actors).pid if actors else None
        else:
            pid = self._pid("redis-server" if victim == "redis-server" else f"edge-{self.port + 1}")
        if pid is None:
            return {"victim": victim, "at_s": at, "skipped": "no such process"}
        name = "redis-server" if victim == "redis-server" else f"edge-{self.port + 1}"
        restarts = self._restarts(name)
        killed = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        if victim == "session-actor":
            await asyncio.sleep(0.2)  # let the death be noticed before asking
            done = await _until(lambda: self._all_answer(sessions), 120)
        else:  # restarted by the supervisor (not just still answering), and ready again
            url = self.urls[0] if victim == "redis-server" else self.urls[1]
            done = await _until(lambda: self._restarted(name, restarts, url), 180)
        recovered = None if done is None else round(time.monotonic() - killed, 2)
        return {"victim": victim, "pid": pid, "at_s": at, "recovered_s": recovered}

    async def _session_actors(self, within_s: float) -> list[psutil.Process]:
        """The stack's session actor processes, waiting up to ``within_s`` for one to exist."""
        deadline = time.monotonic() + within_s
        while True:
            actors = [p for p in self._tree() if _cmdline(p).startswith("ray::SessionActor")]
            if actors or time.monotonic() > deadline:
                return actors
            await asyncio.sleep(0.2)

    def _restarts(self, name: str) -> int:
        state = read_state(self.data) or {}
        return int(state.get("processes", {}).get(name, {}).get("restarts", 0))

    async def _restarted(self, name: str, before: int, url: str) -> bool:
        return self._restarts(name) > before and self._pid(name) is not None and await _ready(url)

    async def _all_answer(self, sessions: list[str]) -> bool:
        token = await self.token()
        async with httpx.AsyncClient(timeout=5, headers={"Authorization": f"Bearer {token}"}) as http:
            try:
                for sid in sessions:
                    if (await http.get(f"{self.urls[0]}/v1/sessions/{sid}")).status_code != 200:
                        return False
            except httpx.HTTPError:
                return False
        return True

    async def token(self) -> str:
        from devices.client import DevTokens

        return await DevTokens(self.urls)(kind="operator")

    async def run(self) -> dict[str, Any]:
        await _until(lambda: _all_ready(self.urls), 180)
        config = SwarmConfig(
            base_url=",".join(self.urls), sessions=self.args.sessions, devices=self.args.devices,
            seconds=self.args.minutes * 60, rate_hz=1.0, board_hz=5.0, session_prefix=f"chaos-{os.getpid()}",
            drain_timeout_s=120, ready_timeout_s=120,
        )
        swarm = Swarm(config)
        stop = asyncio.Event()
        sampler = asyncio.create_task(self.sample_memory(stop))
        killer = asyncio.create_task(self.kill_loop(stop, swarm.sessions))
        try:
            summary = await swarm.run()
        finally:
            stop.set()
            await asyncio.gather(sampler, killer, return_exceptions=True)
        return {
            "minutes": self.args.minutes, "every_s": self.args.every_s,
            "accounting": {k: summary[k] for k in ("sent", "acknowledged", "applied", "rejected", "lost", "lost_detail",
                                                   "duplicated", "drained", "verified", "unverified", "phase_failures",
                                                   "reconnects", "failovers")},
            "latency_ms": summary["latency_ms"],
            "kills": self.kills,
            "memory": self.memory,
        }


async def _all_ready(urls: list[str]) -> bool:
    return all([await _ready(u) for u in urls])


def _cmdline(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())
    except psutil.Error:
        return ""


def _victims(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [v for v in names if v not in VICTIMS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"victims are {', '.join(VICTIMS)}; not {', '.join(unknown) or 'none'}")
    return names


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--every-s", type=float, default=120.0)
    parser.add_argument("--sessions", type=int, default=2)
    parser.add_argument("--devices", type=int, default=20)
    parser.add_argument("--sample-s", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs, AOF)")
    parser.add_argument("--rounds", type=int, default=0, help="stop killing after this many rounds (0: never)")
    parser.add_argument("--victims", type=_victims, default=list(VICTIMS),
                        help=f"the first rounds' victims in order, comma-separated (default {','.join(VICTIMS)})")
    parser.add_argument("--report", default=None)
    args = parser.parse_args()
    chaos = Chaos(args)
    chaos.start()
    try:
        result = asyncio.run(chaos.run())
    finally:
        chaos.stop()
    text = json.dumps(result, indent=2)
    print(text, flush=True)
    if args.report:
        Path(args.report).write_text(text + "\n")
    acc = result["accounting"]
    return 0 if acc["lost"] == 0 and acc["duplicated"] == 0 and acc["drained"] and acc["verified"] else 1


if __name__ == "__main__":
    sys.exit(main())
