"""A join storm against one class with a capacity, end to end through ``pulseline up``.

    PYTHONPATH=. .venv/bin/python scripts/bench_admission_storm.py --joiners 5000 --in-class 250

Starts its own stack (``python -m launch.cli up``: Redis, Ray, the edge, in its own process
group, ended whole afterwards), creates one live class with ``--capacity`` seats, connects
``--in-class`` riders first, then ``--joiners`` phones storm it, spread over ``--window-s``
(the seeds' spike at a scheduled start). Every rider is one ``devices.client.HubClient``
with one device (the real client: it waits on its socket through ``queue`` frames, keeps
its samples until its ``welcome``, resends what was not acknowledged), sending one sample
every ``--sample-period-s`` from the moment it says hello. Tokens are minted here with the
stack's secret (a real client gets its token from the identity provider; fetching 5,000 of
them from the edge's development route would measure the swarm, not the admission).

Prints one JSON object: joiners welcomed / not, how many queued and the longest position,
``admitted_in_order`` (no two joiners welcomed the other way round from their queue tickets
by more than one admission round plus a tick), the time from the first joiner's hello to
the last welcome, waits (hello -> welcome) p50 / p99 / max, samples sent / acknowledged /
rejected / lost (sent and never acknowledged after the drain) and the class's own count of
applied samples, reconnects, client errors, the in-class riders' ack latency (sample made
-> acknowledged, timed to 50 ms) before, during and after the storm (``--baseline-s`` of
riding before it), the edge's admission queue over time (``pulseline_admission_queue_riders``), and the
1-minute load average before and after. A benchmark, not a test: it asserts nothing.
``--url`` drives a stack that is already up instead (then ``--secret`` is its dev secret).

``--driver swarm`` runs the scenario's own swarm instead (``sims/scenarios/admission-storm.toml``
through ``sims.swarm.Swarm``, sized by the same flags, as ``pulseline swarm`` does: riders
with physiology, faults off, tokens fetched from the edge's development route per
connection) and prints its ``admission`` block with the swarm's accounting.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from devices.client import DeviceStream, HubClient  # noqa: E402
from sims.histogram import LatencyHistogram  # noqa: E402

ROUND_S = 1.0  # one admission round (0.5 s) plus a tick: riders admitted together welcome in any order


def _free_ports(count: int) -> int:
    """A port P with P + 1 ... P + count - 1 free too (``up --edges N`` serves on them)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        try:
            for i in range(1, count):
                with socket.socket() as t:
                    t.bind(("127.0.0.1", port + i))
        except OSError:
            continue
        return port
    raise RuntimeError(f"no {count} adjacent free ports")


def _raise_open_files_limit(wanted: int) -> None:
    """Every rider is a socket here and at an edge: this process and the stack (its children)
    need more open files than the usual limit (root may raise the hard limit too)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, max(hard, wanted)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Stack:
    """``python -m launch.cli up`` in its own process group."""

    def __init__(self, args: argparse.Namespace, secret: str) -> None:
        self.port = args.port or _free_ports(args.edges)
        self.edges = args.edges
        self.workdir = Path(tempfile.mkdtemp(prefix="admission-storm-"))
        self.log = self.workdir / "stack.log"
        # (every rider of this box comes from 127.0.0.1: the per-address limit, 4,096 by
        # default, would close the storm beyond it; real riders come from many addresses)
        env = dict(os.environ, PULSELINE_AUTH_SECRET=secret, PULSELINE_ADMIT_RATE_PER_S=str(args.rate),
                   PULSELINE_ADMIT_BURST=str(args.burst), RAY_USAGE_STATS_ENABLED="0",
                   PULSELINE_MAX_CONNECTIONS_PER_ADDRESS=str(max(4096, 2 * (args.joiners + args.in_class) + 100)))
        for item in args.env:
            key, _, value = item.partition("=")
            env[key] = value
        cmd = [sys.executable, "-m", "launch.cli", "up", "--port", str(self.port), "--edges", str(args.edges),
               "--data-dir", str(self.workdir / "data")]
        self._sink = open(self.log, "wb")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._sink, stderr=subprocess.STDOUT, start_new_session=True,
                                     cwd=Path(__file__).resolve().parents[1])

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{self.port + i}" for i in range(self.edges)]

    async def ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient(timeout=5) as http:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"the stack exited ({self.proc.returncode}); see {self.log}")
                try:
                    codes = [(await http.get(f"{url}/readyz")).status_code for url in self.urls]
                    if codes == [200] * len(codes):
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.5)
        raise RuntimeError(f"the stack was not ready in {timeout_s:g} s; see {self.log}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._sink.close()


class Rider:
    def __init__(self, index: int, sid: str, joins_at: float) -> None:
        self.index = index
        self.stream = DeviceStream(f"{sid}-d{index}", f"{sid}-r{index}", sid)
        self.client: HubClient  # its connection (its own, or a hub's it shares: _connect)
        self.joins_at = joins_at  # seconds after the storm's origin
        self.started_at: float | None = None  # monotonic: its first hello
        self.watched = False  # an in-class rider: its acks are timed
        self.made: dict[int, float] = {}
        # from the frames for its device (a hub carries several riders)
        self.welcomed_at: float | None = None
        self.queued_at: float | None = None
        self.queue_first: int | None = None
        self.queue_frames = 0

    def on_frame(self, frame: dict[str, Any]) -> None:
        kind = frame.get("t")
        if kind == "welcome" and self.welcomed_at is None:
            self.welcomed_at = time.monotonic()
        elif kind == "queue":
            self.queue_frames += 1
            if self.queued_at is None:
                self.queued_at, self.queue_first = time.monotonic(), frame.get("position")


def _connect(riders: list[Rider], size: int, urls: list[str], sid: str, token: Any) -> list[HubClient]:
    """One ``HubClient`` per ``size`` riders (in order), edges round-robin: a phone each with
    ``size`` 1 (a device token), a gym hub of ``size`` riders otherwise (a hub token). Every
    rider of a hub joins when its first does."""
    clients: list[HubClient] = []
    for k in range(0, len(riders), size):
        group = riders[k : k + size]
        url = f"{urls[len(clients) % len(urls)].replace('http', 'ws', 1)}/v1/devices"
        if size == 1:
            r = group[0]
            claims = {"kind": "device", "device": r.stream.device, "participant": r.stream.participant, "sessions": [sid]}
        else:
            claims = {"kind": "hub", "hub": f"{sid}-h{k // size}", "devices": [r.stream.device for r in group],
                      "sessions": [sid]}
        by_device = {r.stream.device: r for r in group}

        def on_frame(frame: dict[str, Any], by_device: dict[str, Rider] = by_device) -> None:
            if frame.get("t") == "welcome":
                for device in frame.get("devices", {}):
                    if device in by_device:
                        by_device[device].on_frame(frame)
            elif frame.get("device") in by_device:
                by_device[frame["device"]].on_frame(frame)

        client = HubClient(url, [r.stream for r in group], token=token(**claims), on_frame=on_frame)
        for r in group:
            r.client, r.joins_at = client, group[0].joins_at
        clients.append(client)
    return clients


async def _sampler(riders: list[Rider], period_s: float, stop: asyncio.Event) -> None:
    """Every rider that has said hello makes one sample per period (kept until welcomed)."""
    while not stop.is_set():
        began = time.monotonic()
        for rider in riders:
            if rider.started_at is None:
                continue
            if not rider.watched:  # (the in-class riders' acks are timed by _ack_watch)
                for seq in [s for s in rider.made if s <= rider.stream.acked]:
                    del rider.made[seq]
            row = rider.stream.new_sample(time.time(), 150.0 + rider.index % 100, 130.0)
            rider.made[row[0]] = began
            await rider.client.send_rows(rider.stream, [row])
        await asyncio.sleep(max(0.0, period_s - (time.monotonic() - began)))


class AckTimes:
    """The in-class riders' sample -> acknowledgement times, before, during and after the storm."""

    def __init__(self) -> None:
        self.storm: tuple[float, float] | None = None  # (monotonic) while the joiners come in and wait
        self.before, self.during, self.after = LatencyHistogram(), LatencyHistogram(), LatencyHistogram()

    def record(self, made: float, ms: float) -> None:
        if self.storm is None or made < self.storm[0]:
            self.before.record(ms)
        elif made <= self.storm[1]:
            self.during.record(ms)
        else:
            self.after.record(ms)


async def _ack_watch(riders: list[Rider], times: AckTimes, stop: asyncio.Event, every_s: float = 0.05) -> None:
    """Times the in-class riders' acks to within ``every_s`` (the sampler's period is too coarse)."""
    while not stop.is_set():
        now = time.monotonic()
        for rider in riders:
            if rider.made and min(rider.made) <= rider.stream.acked:
                for seq in [s for s in rider.made if s <= rider.stream.acked]:
                    made = rider.made.pop(seq)
                    times.record(made, (now - made) * 1000.0)
        await asyncio.sleep(every_s)


async def _queue_gauge(urls: list[str], headers: dict[str, str], series: list[tuple[float, float]], origin: float,
                       stop: asyncio.Event) -> None:
    """Riders waiting in the edges' admission queues (added over the edges), once a second."""
    pattern = re.compile(r"^pulseline_admission_queue_riders(?:\{[^}]*\})? ([0-9.e+]+)$", re.M)
    async with httpx.AsyncClient(timeout=10, headers=headers) as http:
        while not stop.is_set():
            total, seen = 0.0, False
            for url in urls:
                try:
                    match = pattern.search((await http.get(f"{url}/metrics")).text)
                except httpx.HTTPError:
                    continue
                if match:
                    total, seen = total + float(match.group(1)), True
            if seen:
                series.append((round(time.monotonic() - origin, 1), total))
            await asyncio.sleep(1.0)


def _quantiles(text: str, name: str) -> dict[str, float | None]:
    """p50 / p99 (bucket upper bounds, s) of a Prometheus histogram in ``text``."""
    buckets = []
    for match in re.finditer(rf'^{name}_bucket{{le="([^"]+)"}} ([0-9.e+]+)$', text, re.M):
        buckets.append((float(match.group(1)), float(match.group(2))))
    total = buckets[-1][1] if buckets else 0.0
    out: dict[str, float | None] = {"count": total}
    for q in (0.5, 0.99):
        out[f"p{int(q * 100)}_s"] = next((le for le, n in buckets if total and n >= q * total), None)
    return out


async def _edge_histograms(urls: list[str], headers: dict[str, str]) -> dict[str, Any]:
    """The edges' own view: ack and sample->board latency of every tick of the run (every
    edge's buckets added up)."""
    async with httpx.AsyncClient(timeout=30, headers=headers) as http:
        texts = [(await http.get(f"{url}/metrics")).text for url in urls]
    text = _added_buckets(texts, ("pulseline_ack_latency_seconds", "pulseline_sample_to_board_seconds"))
    return {"ack_latency": _quantiles(text, "pulseline_ack_latency_seconds"),
            "sample_to_board": _quantiles(text, "pulseline_sample_to_board_seconds")}


def _added_buckets(texts: list[str], names: tuple[str, ...]) -> str:
    """The histogram bucket lines of ``names`` with each bucket's counts added over ``texts``."""
    added: dict[tuple[str, str], float] = {}
    for text in texts:
        for name in names:
            for match in re.finditer(rf'^{name}_bucket{{le="([^"]+)"}} ([0-9.e+]+)$', text, re.M):
                key = (name, match.group(1))
                added[key] = added.get(key, 0.0) + float(match.group(2))
    return "\n".join(f'{name}_bucket{{le="{le}"}} {count}' for (name, le), count in added.items())


def _progress(text: str) -> None:
    print(f"[storm {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


async def storm(args: argparse.Namespace, urls: list[str], secret: str) -> dict[str, Any]:
    from api.auth import mint_token

    def token(**claims: Any) -> str:
        return mint_token(secret.encode(), audience="pulseline", ttl_s=6 * 3600, **claims)

    operator = {"Authorization": f"Bearer {token(kind='operator', subject='storm')}"}
    sid = f"storm-{secrets.token_hex(3)}"
    rng = random.Random(args.seed)
    url = urls[0]
    async with httpx.AsyncClient(base_url=url, headers=operator, timeout=60) as http:
        (await http.post("/v1/sessions", json={"id": sid, "capacity": args.capacity,
                                               "expected_riders": args.in_class + args.joiners})).raise_for_status()
        (await http.post(f"/v1/sessions/{sid}/phase", json={"phase": "live"})).raise_for_status()
        n = args.in_class + args.joiners
        times = sorted(rng.uniform(0, args.window_s) for _ in range(args.joiners))
        riders = [Rider(i, sid, 0.0 if i < args.in_class else times[i - args.in_class]) for i in range(n)]
        in_class, joiners = riders[:args.in_class], riders[args.in_class:]
        in_class_clients = _connect(in_class, args.hub_size, urls, sid, token)
        joiner_clients = _connect(joiners, args.hub_size, urls, sid, token)
        stop, acks = asyncio.Event(), AckTimes()
        queue_series: list[tuple[float, float]] = []
        origin = time.monotonic()
        gauge = asyncio.create_task(_queue_gauge(urls, operator, queue_series, origin, stop))
        for rider in in_class:
            rider.started_at = time.monotonic()
        for client in in_class_clients:
            client.start()
        await asyncio.wait_for(asyncio.gather(*(c.ready.wait() for c in in_class_clients)), args.admit_timeout_s)
        for rider in in_class:
            rider.watched = True
        sampler = asyncio.create_task(_sampler(riders, args.sample_period_s, stop))
        watched = asyncio.Event()  # (its own: the watcher times the last acks through the drain too)
        watch = asyncio.create_task(_ack_watch(in_class, acks, watched))
        _progress(f"{len(in_class)} riders in class {sid}; riding {args.baseline_s:g} s before the storm")
        await asyncio.sleep(args.baseline_s)
        _progress(f"{len(joiners)} joiners over {args.window_s:g} s")
        storm_origin = time.monotonic()
        acks.storm = (storm_origin, storm_origin + 3600.0)  # (until the last welcome, below)
        lag = LatencyHistogram()  # how late this process started a joiner (its own lag)
        for k, client in enumerate(joiner_clients):
            group = joiners[k * args.hub_size : (k + 1) * args.hub_size]
            delay = storm_origin + group[0].joins_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                lag.record(-delay * 1000.0)
            for rider in group:
                rider.started_at = time.monotonic()
            client.start()
        last_report, deadline = 0.0, time.monotonic() + args.admit_timeout_s
        while time.monotonic() < deadline:
            welcomed = sum(1 for r in joiners if r.welcomed_at is not None)
            if welcomed == len(joiners):
                break
            if time.monotonic() - last_report > 5:
                last_report = time.monotonic()
                queued = sum(1 for r in joiners if r.queued_at is not None)
                _progress(f"welcomed {welcomed}/{len(joiners)}, queued at some point {queued}, "
                          f"edge queue {queue_series[-1][1] if queue_series else '?'}")
            await asyncio.sleep(0.2)
        admit_done = time.monotonic()
        acks.storm = (storm_origin, admit_done)
        await asyncio.sleep(args.ride_after_s)
        stop.set()
        await asyncio.gather(sampler, gauge, return_exceptions=True)
        drain_deadline = time.monotonic() + args.drain_s
        while any(r.stream.unacked for r in riders if r.welcomed_at is not None) and time.monotonic() < drain_deadline:
            await asyncio.sleep(0.2)
        watched.set()
        await asyncio.gather(watch, return_exceptions=True)
        (await http.post(f"/v1/sessions/{sid}/flush")).raise_for_status()
        snapshot = (await http.get(f"/v1/sessions/{sid}")).json()
        edge_view = await _edge_histograms(urls, operator)
        await asyncio.gather(*(c.close() for c in in_class_clients + joiner_clients), return_exceptions=True)
    result = _summary(args, sid, in_class, joiners, storm_origin, admit_done, acks, lag, queue_series, snapshot)
    result["edge_histograms"] = edge_view  # (the edges', whole run: not this driver's own lag)
    result["edges"] = len(urls)
    return result


def _summary(args: argparse.Namespace, sid: str, in_class: list[Rider], joiners: list[Rider], storm_origin: float,
             admit_done: float, acks: AckTimes, lag: LatencyHistogram,
             queue_series: list[tuple[float, float]], snapshot: dict[str, Any]) -> dict[str, Any]:
    riders = in_class + joiners
    welcomed = [r for r in joiners if r.welcomed_at is not None]
    waits = LatencyHistogram()
    for r in welcomed:
        assert r.started_at is not None and r.welcomed_at is not None
        waits.record((r.welcomed_at - r.started_at) * 1000.0)
    queued = [r for r in joiners if r.queued_at is not None]
    by_ticket = sorted((r.queued_at, r.welcomed_at) for r in queued  # type: ignore[type-var]
                       if r.welcomed_at is not None)
    inversions = sum(1 for a, b in zip(by_ticket, by_ticket[1:]) if a[1] > b[1] + ROUND_S)
    worst = max((a[1] - b[1] for a, b in zip(by_ticket, by_ticket[1:])), default=0.0)
    sent = sum(r.stream.sent for r in riders)
    rejected = sum(sum(r.stream.rejected.values()) for r in riders)
    unacked = sum(len(r.stream.unacked) for r in riders)
    errors: dict[str, int] = {}
    clients = list({id(r.client): r.client for r in riders}.values())
    for client in clients:
        for kind, count in client.errors.items():
            errors[kind] = errors.get(kind, 0) + count
    last_welcome = max((r.welcomed_at for r in welcomed), default=None)  # type: ignore[type-var]
    w = waits.summary()
    return {
        "session": sid, "joiners": len(joiners), "in_class": len(in_class), "window_s": args.window_s,
        "capacity": args.capacity, "rate_per_s": args.rate, "burst": args.burst,
        "welcomed": len(welcomed), "not_welcomed": len(joiners) - len(welcomed),
        "queued": len(queued), "max_position": max((r.queue_first or 0 for r in queued), default=0),
        "queue_frames": sum(r.queue_frames for r in joiners), "connections": len(clients), "hub_size": args.hub_size,
        "admitted_in_order": inversions == 0, "order_inversions": inversions,
        "worst_inversion_s": round(max(0.0, worst), 2),
        "time_to_admit_all_s": None if len(welcomed) < len(joiners) or last_welcome is None
        else round(last_welcome - storm_origin, 2),
        "admission_gave_up_after_s": None if len(welcomed) == len(joiners) else round(admit_done - storm_origin, 1),
        "wait_s": {k: (None if w[k] is None else round(w[k] / 1000.0, 2)) for k in ("p50", "p99", "max")},
        "samples": {"sent": sent, "acknowledged": sent - unacked - rejected, "rejected": rejected, "lost": unacked,
                    "applied_by_class": (snapshot.get("totals") or {}).get("applied")},
        "participants_in_class": len(snapshot.get("participants", [])),
        "reconnects": sum(max(0, c.connects - 1) for c in clients),
        "client_errors": errors,
        "in_class_ack_ms": {"before_storm": acks.before.summary(), "during_storm": acks.during.summary(),
                            "after_storm": acks.after.summary()},
        "driver_start_lag_ms": lag.summary(),
        "edge_queue_riders": queue_series[:: max(1, len(queue_series) // 60)],
    }


async def swarm_storm(args: argparse.Namespace, url: str) -> dict[str, Any]:
    """The scenario's swarm (``pulseline swarm``'s riders), sized by the flags."""
    from sims.scenario import load
    from sims.swarm import Swarm

    scenario = load(Path(__file__).resolve().parents[1] / "sims" / "scenarios" / "admission-storm.toml")
    n = args.in_class + args.joiners
    config = scenario.swarm_config(url, session_prefix=f"storm-{secrets.token_hex(3)}", devices=n,
                                   seconds=args.swarm_seconds, join_window_s=args.window_s,
                                   storm_at_s=args.storm_at_s, in_class=args.in_class / n,
                                   capacity=args.capacity, progress=True)
    began = time.monotonic()
    swarm = Swarm(config)
    result = await swarm.run()
    keys = ("drained", "sent", "acknowledged", "applied", "rejected", "lost", "duplicated", "connect_s", "http_failures",
            "swarm_lag_ms", "reconnects", "server_frames", "join_s")
    errors: dict[str, int] = {}
    for client in swarm.clients:
        for kind, count in client.errors.items():
            errors[kind] = errors.get(kind, 0) + count
    clients = {
        "never_started": sum(1 for c in swarm.clients if c.started_at is None),
        "never_connected": sum(1 for c in swarm.clients if c.started_at is not None and c.connects == 0),
        "never_welcomed": sum(1 for c in swarm.clients if c.welcomed_at is None),
        "errors": errors,
    }
    return {"driver": "swarm", "joiners": args.joiners, "in_class": args.in_class, "window_s": args.window_s,
            "capacity": args.capacity, "rate_per_s": args.rate, "burst": args.burst,
            "admission": result.get("admission"), "clients": clients, **{k: result.get(k) for k in keys},
            "elapsed_s": round(time.monotonic() - began, 1)}


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    load_before = os.getloadavg()[0]
    stack = None
    secret = args.secret or secrets.token_hex(32)
    _raise_open_files_limit(2 * (args.in_class + args.joiners) + 4096)
    if args.url:
        urls = args.url.split(",")
    else:
        stack = Stack(args, secret)
        urls = stack.urls
    url = urls[0]
    try:
        if stack is not None:
            await stack.ready(args.ready_timeout_s)
            _progress(f"stack up on {', '.join(urls)} (log {stack.log})")
        result = await (swarm_storm(args, url) if args.driver == "swarm" else storm(args, urls, secret))
    finally:
        if stack is not None:
            await asyncio.to_thread(stack.stop)
    result["load_1m"] = {"before": round(load_before, 1), "after": round(os.getloadavg()[0], 1)}
    result["command"] = " ".join(sys.argv)
    if stack is not None:
        result["stack_log"] = str(stack.log)
    return result


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--joiners", type=int, default=5000, help="riders storming the class")
    p.add_argument("--in-class", type=int, default=250, help="riders in class before the storm")
    p.add_argument("--window-s", type=float, default=10.0, help="the joiners' hellos are spread over this")
    p.add_argument("--capacity", type=int, default=None, help="the class's seats (default: everyone fits)")
    p.add_argument("--rate", type=float, default=200.0, help="PULSELINE_ADMIT_RATE_PER_S of the stack")
    p.add_argument("--burst", type=int, default=400, help="PULSELINE_ADMIT_BURST of the stack")
    p.add_argument("--sample-period-s", type=float, default=1.0, help="each rider makes a sample this often")
    p.add_argument("--admit-timeout-s", type=float, default=300.0, help="give up waiting for welcomes after this")
    p.add_argument("--hub-size", type=int, default=1,
                   help="riders per connection: 1 = a phone each; 30 = gym hubs (a hub's riders join together)")
    p.add_argument("--baseline-s", type=float, default=10.0, help="the in-class riders ride this long before the storm")
    p.add_argument("--ride-after-s", type=float, default=3.0, help="keep riding this long after the last welcome")
    p.add_argument("--drain-s", type=float, default=60.0, help="wait this long for the last acknowledgements")
    p.add_argument("--ready-timeout-s", type=float, default=240.0)
    p.add_argument("--port", type=int, default=0, help="the stack's edge port (default: a free one)")
    p.add_argument("--env", action="append", default=[], help="KEY=VALUE for the stack (repeatable)")
    p.add_argument("--url", default=None, help="drive this edge (several: comma-separated) instead of starting a stack")
    p.add_argument("--edges", type=int, default=1, help="the stack's edges (up --edges N); riders go round-robin")
    p.add_argument("--secret", default=None, help="with --url: the stack's development secret")
    p.add_argument("--seed", type=int, default=16)
    p.add_argument("--driver", choices=["lean", "swarm"], default="lean",
                   help="lean: one HubClient per rider, tokens minted here; swarm: the scenario's Swarm")
    p.add_argument("--swarm-seconds", type=float, default=30.0, help="--driver swarm: the class's length")
    p.add_argument("--storm-at-s", type=float, default=5.0, help="--driver swarm: when the storm starts")
    p.add_argument("--report", default=None, help="also write the JSON here")
    return p


def main() -> int:
    import logging

    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("websockets").setLevel(logging.CRITICAL)  # (a closed socket's keepalive traceback each)
    args = parser().parse_args()
    if args.capacity is None:
        args.capacity = args.in_class + args.joiners + 1000
    if args.url and not args.secret:
        raise SystemExit("--url needs --secret (the stack's PULSELINE_AUTH_SECRET or data-dir dev-secret)")
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    result = asyncio.run(main_async(args))
    text = json.dumps(result, indent=2)
    print(text, flush=True)
    if args.report:
        Path(args.report).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
