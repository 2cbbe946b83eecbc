"""Idle costs and memory density of a real stack (issue 12, points 6 and 7: the measuring half).

    .venv/bin/python scripts/bench_idle.py [--seconds 20] [--classes 10] [--riders 20] [--placement dense]
                                           [--report bench-idle.json]

Starts ``pulseline up`` (local Ray + embedded Redis + the edge) on a free loopback port in a
new session, then measures from ``/proc`` (utime+stime, RSS and USS of every process of
that session):

1. the idle stack (no class) over ``--seconds``;
2. one idle class: its session actor's process over ``--seconds`` (the class exists, no
   device is connected);
3. memory per class: ``--classes`` classes in all (USS and RSS of the session actors, and
   of the whole stack, per class);
4. memory per rider and per edge connection: ``--riders`` device connections per class,
   each a phone that says hello and sends one sample (edge USS and actor USS deltas).

With ``--placement dense`` the classes are created dense (``actors/session_host.py``: many
classes per actor process, ``PULSELINE_DENSE_HOSTS`` processes), and the per-class figures
are the hosts' memory divided by the classes. Prints JSON (``--report`` writes it too). The stack is stopped with SIGTERM, then anything
left of its session is killed by pid. Loopback only; every wait is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import msgpack

CLK = os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stat(pid: int) -> tuple[int, float] | None:
    """(session id, CPU seconds) of ``pid``."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[3]), (int(fields[11]) + int(fields[12])) / CLK


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _name(pid: int) -> str:
    """A short name: the script or binary's base name (and its ``ray::`` title)."""
    words = _cmdline(pid).split()
    if not words:
        return "?"
    if words[0].startswith("ray::"):
        return words[0]
    script = next((w for w in words[1:] if w.endswith(".py") or w.endswith("pulseline")), words[0])
    return script.rsplit("/", 1)[-1]


def _memory_kib(pid: int) -> tuple[int, int]:
    """(RSS, USS) in KiB, from smaps_rollup (USS = private clean + private dirty)."""
    rss = uss = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name == "Rss":
                rss = int(rest.split()[0])
            elif name in ("Private_Clean", "Private_Dirty"):
                uss += int(rest.split()[0])
    except OSError:
        pass
    return rss, uss


def session_pids(sid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st is not None and st[0] == sid:
                pids.append(int(entry))
    return pids


def role(pid: int) -> str:
    cmd = _cmdline(pid)
    if "redis-server" in cmd:
        return "redis"
    if "SessionActor" in cmd or "SessionHost" in cmd:
        return "session_actor"
    if "pulseline" in cmd and "up" in cmd:
        return "edge"
    if cmd.startswith("ray::IDLE"):
        return "ray_idle_worker"  # prestarted by the raylet (one per CPU), waiting for tasks
    if "Agent" in cmd or "/raylet" in cmd or "gcs_server" in cmd or "monitor" in cmd:
        return "ray_system"
    if "default_worker" in cmd or cmd.startswith("ray::"):
        return "ray_worker_other"
    return "ray_system"


def snapshot(sid: int) -> dict[int, dict[str, Any]]:
    out = {}
    for pid in session_pids(sid):
        st = _stat(pid)
        if st is None:
            continue
        rss, uss = _memory_kib(pid)
        out[pid] = {"cpu_s": st[1], "rss_kib": rss, "uss_kib": uss, "role": role(pid)}
    return out


def measure_cpu(sid: int, seconds: float) -> dict[str, Any]:
    before, t0 = snapshot(sid), time.monotonic()
    time.sleep(seconds)
    after, wall = snapshot(sid), time.monotonic() - t0
    by_role: dict[str, float] = {}
    per_pid: dict[int, float] = {}
    for pid, now in after.items():
        used = now["cpu_s"] - before.get(pid, {"cpu_s": now["cpu_s"]})["cpu_s"]
        per_pid[pid] = used / wall
        by_role[now["role"]] = by_role.get(now["role"], 0.0) + used / wall
    return {"cores": round(sum(by_role.values()), 4), "by_role_cores": {k: round(v, 4) for k, v in sorted(by_role.items())},
            "per_pid_cores": per_pid, "roles": {pid: s["role"] for pid, s in after.items()}}


def memory(sid: int) -> dict[str, Any]:
    snap = snapshot(sid)
    by_role: dict[str, dict[str, int]] = {}
    for s in snap.values():
        agg = by_role.setdefault(s["role"], {"procs": 0, "rss_kib": 0, "uss_kib": 0})
        agg["procs"] += 1
        agg["rss_kib"] += s["rss_kib"]
        agg["uss_kib"] += s["uss_kib"]
    return {"by_role": by_role, "rss_kib": sum(s["rss_kib"] for s in snap.values()),
            "uss_kib": sum(s["uss_kib"] for s in snap.values())}


class Stack:
    def __init__(self, args: argparse.Namespace) -> None:
        self.port = _free_port()
        self.run_dir = Path(tempfile.mkdtemp(prefix="plidle-", dir="/tmp"))
        self.data_dir = self.run_dir / "data"
        env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "RAY_ADDRESS")}
        env.update(RAY_TMPDIR=str(self.run_dir), RAY_USAGE_STATS_ENABLED="0", PULSELINE_MAX_CONNECTIONS_PER_ADDRESS="100000",
                   PULSELINE_DENSE_HOSTS=str(args.dense_hosts))
        exe = str(Path(sys.executable).with_name("pulseline"))
        self.log = open(self.run_dir / "stack.log", "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([exe, "up", "--host", "127.0.0.1", "--port", str(self.port), "--data-dir",
                                      str(self.data_dir)], env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pulseline up exited: see {self.run_dir / 'stack.log'}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200 and (self.data_dir / "dev-secret").exists():
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise TimeoutError("the stack did not become ready")

    def token(self, kind: str, **claims: Any) -> str:
        from api.auth import dev_token
        from cluster.settings import Settings

        return dev_token(Settings(data_dir=self.data_dir), kind=kind, **claims)

    def stop(self) -> None:
        sid = self.proc.pid
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
        for _ in range(5):
            left = session_pids(sid)
            if not left:
                break
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.5)
        self.log.close()


def _actor_pids(sid: int) -> set[int]:
    return {pid for pid, s in snapshot(sid).items() if s["role"] == "session_actor"}


def _wait_actors(sid: int, count: int, timeout_s: float = 120.0) -> set[int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pids = _actor_pids(sid)
        if len(pids) >= count:
            return pids
        time.sleep(0.3)
    raise TimeoutError(f"{count} session actors did not start")


async def _riders(stack: Stack, sessions: list[str], riders: int) -> list[Any]:
    from websockets.asyncio.client import connect

    conns = []
    for sid in sessions:
        for i in range(riders):
            device, rider = f"{sid}-d{i}", f"{sid}-r{i}"
            token = stack.token("device", device=device, participant=rider, sessions=[sid])
            ws = await connect(f"ws://127.0.0.1:{stack.port}/v1/devices", additional_headers={"Authorization": f"Bearer {token}"})
            await ws.send(msgpack.packb({"t": "hello", "v": 1, "devices": [{"device": device, "participant": rider, "session": sid}]}))
            await ws.send(msgpack.packb({"t": "samples", "device": device, "samples": [[1, time.time(), 140.0, 200.0, 85.0]]}))
            conns.append(ws)
    await asyncio.sleep(3.0)  # the joins and samples reach the actors on the next ticks
    return conns


async def _hubs(stack: Stack, sessions: list[str], riders: int) -> list[Any]:
    """One hub connection per class carrying its ``riders`` devices, subscribed to the
    class's board (protocol v1.1, 1 board/s); one sample per device sent now."""
    from websockets.asyncio.client import connect

    conns = []
    for sid in sessions:
        devices = [{"device": f"{sid}-d{i}", "participant": f"{sid}-r{i}", "session": sid} for i in range(riders)]
        token = stack.token("hub", hub=f"{sid}-hub", devices=[d["device"] for d in devices], sessions=[sid])
        ws = await connect(f"ws://127.0.0.1:{stack.port}/v1/devices", additional_headers={"Authorization": f"Bearer {token}"},
                           max_size=2**20)
        await ws.send(msgpack.packb({"t": "hello", "v": 1.1, "hub": f"{sid}-hub", "devices": devices,
                                     "board": {"rate": 1, "session": sid}}))
        conns.append((ws, [d["device"] for d in devices]))
    return conns


async def _flow(conns: list[Any], seconds: float, period_s: float) -> dict[str, Any]:
    """Every ``period_s`` one sample per device of every hub; count the boards each hub receives."""
    boards = [0] * len(conns)
    acked = [0] * len(conns)
    seq = 0

    async def reader(k: int, ws: Any) -> None:
        async for message in ws:
            frame = msgpack.unpackb(message)
            if frame.get("t") == "board":
                boards[k] += 1
                acked[k] += len(frame.get("acks") or {})  # v1.1: acks ride in boards when one is due
            elif frame.get("t") == "ack":
                acked[k] += len(frame.get("acks") or {})  # ... and go alone when none came

    readers = [asyncio.create_task(reader(k, ws)) for k, (ws, _) in enumerate(conns)]
    deadline = time.monotonic() + seconds
    sent = 0
    while time.monotonic() < deadline:
        seq += 1
        now = time.time()
        for ws, devices in conns:
            for device in devices:
                await ws.send(msgpack.packb({"t": "samples", "device": device, "samples": [[seq, now, 140.0, 200.0, 85.0]]}))
                sent += 1
        await asyncio.sleep(max(0.0, period_s - (time.time() - now)))
    await asyncio.sleep(2.0)
    for task in readers:
        task.cancel()
    await asyncio.gather(*readers, return_exceptions=True)
    rounds = int(seconds / period_s)
    flowing = sum(1 for b in boards if b >= rounds)  # a board (at least) after every round of samples
    return {"seconds": seconds, "sample_period_s": period_s, "rounds": rounds, "samples_sent": sent, "boards": sum(boards),
            "classes_with_boards_flowing": flowing, "boards_per_class_per_s": round(sum(boards) / len(conns) / seconds, 3),
            "device_acks": sum(acked)}


async def _close(conns: list[Any]) -> None:
    await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)


def run(args: argparse.Namespace) -> dict[str, Any]:
    stack = Stack(args)
    result: dict[str, Any] = {"seconds": args.seconds, "classes": args.classes, "riders_per_class": args.riders,
                              "load_before": os.getloadavg()}
    try:
        stack.wait_ready()
        sid = stack.proc.pid
        time.sleep(args.settle)
        idle = measure_cpu(sid, args.seconds)
        result["idle_stack"] = {"cores": idle["cores"], "by_role_cores": idle["by_role_cores"], "memory": memory(sid),
                                "processes": sorted(f"{idle['per_pid_cores'].get(p, 0):.4f} {r}: {_name(p)}"
                                                    for p, r in idle["roles"].items())}
        operator = {"Authorization": f"Bearer {stack.token('operator')}"}
        sessions = [f"idle-{i}" for i in range(args.classes)]
        body = {"expected_riders": args.riders, **({"placement": args.placement} if args.placement else {})}
        result["placement"] = args.placement or "default"
        httpx.post(f"{stack.url}/v1/sessions", json={"id": sessions[0], **body}, headers=operator, timeout=60).raise_for_status()
        (actor,) = _wait_actors(sid, 1)
        time.sleep(args.settle)
        one = measure_cpu(sid, args.seconds)
        result["idle_class"] = {"actor_cores": round(one["per_pid_cores"].get(actor, 0.0), 4), "stack_cores": one["cores"],
                                "by_role_cores": one["by_role_cores"]}
        with httpx.Client(base_url=stack.url, headers=operator, timeout=60) as http:
            for s in sessions[1:]:
                http.post("/v1/sessions", json={"id": s, **body}).raise_for_status()
                if args.placement == "dense":  # a dense class opens on its first call
                    http.get(f"/v1/sessions/{s}").raise_for_status()
        _wait_actors(sid, min(args.classes, args.dense_hosts) if args.placement == "dense" else args.classes)
        time.sleep(args.settle)
        before_riders = memory(sid)
        actors = before_riders["by_role"].get("session_actor", {"procs": 0, "rss_kib": 0, "uss_kib": 0})
        result["per_class"] = {
            "actor_processes": actors["procs"],
            "actor_rss_mib": round(actors["rss_kib"] / 1024 / max(1, args.classes), 2),
            "actor_uss_mib": round(actors["uss_kib"] / 1024 / max(1, args.classes), 2),
            "stack_uss_mib_per_class": round((before_riders["uss_kib"] - result["idle_stack"]["memory"]["uss_kib"]) / 1024 / args.classes, 1),
        }
        loop = asyncio.new_event_loop()
        if args.hubs:
            hubs = loop.run_until_complete(_hubs(stack, sessions, args.riders))
            conns = [ws for ws, _ in hubs]
            result["flow"] = loop.run_until_complete(_flow(hubs, args.flow_seconds, args.sample_period))
            cpu = measure_cpu(sid, min(args.seconds, 10.0))  # after the flow: the stack with every class open
            result["flow"]["cores_after"] = cpu["by_role_cores"]
            n = len(conns) * args.riders
        else:
            conns = loop.run_until_complete(_riders(stack, sessions, args.riders))
            n = len(conns)
        after = memory(sid)
        edge_delta = after["by_role"]["edge"]["uss_kib"] - before_riders["by_role"]["edge"]["uss_kib"]
        actor_delta = after["by_role"]["session_actor"]["uss_kib"] - actors["uss_kib"]
        result["per_rider"] = {
            "riders": n,
            "connections": len(conns),
            "edge_uss_kib_per_connection": round(edge_delta / len(conns), 2),
            "actor_uss_kib_per_rider": round(actor_delta / n, 2),
            "stack_uss_kib_per_rider": round((after["uss_kib"] - before_riders["uss_kib"]) / n, 2),
        }
        result["memory_with_riders"] = after
        loop.run_until_complete(_close(conns))
        loop.close()
    finally:
        stack.stop()
    result["load_after"] = os.getloadavg()
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--settle", type=float, default=5.0)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--riders", type=int, default=20)
    p.add_argument("--placement", choices=("dense", "dedicated"), default=None,
                   help="where the classes run (default: the server's default placement)")
    p.add_argument("--dense-hosts", type=int, default=2, help="PULSELINE_DENSE_HOSTS for the stack (default 2)")
    p.add_argument("--hubs", action="store_true",
                   help="each class's riders on one hub connection subscribed to its board, then samples flow")
    p.add_argument("--flow-seconds", type=float, default=30.0, help="with --hubs: how long samples flow")
    p.add_argument("--sample-period", type=float, default=5.0, help="with --hubs: seconds between a device's samples")
    p.add_argument("--report", default=None)
    args = p.parse_args(argv)
    text = json.dumps(run(args), indent=2)
    print(text)
    if args.report:
        Path(args.report).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
