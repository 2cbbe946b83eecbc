"""A first swarm: N simulated 1 Hz devices over S sessions, with exact accounting.

Each device is a ``DeviceStream`` on its own connection (a phone) or, with ``hub_size``,
many devices share one connection (a gym bridge). One viewer per session watches the
full board (``view=all``) at ``board_hz`` and times every sample from its *scheduled*
send time to the first board that shows it (no coordinated omission). At the end the
swarm waits for every sample to be acknowledged, reads the server's totals over HTTP and
compares them with the ground truth it kept.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import httpx
import msgpack
import numpy as np
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from devices.client import DeviceStream, HubClient


@dataclass
class SwarmConfig:
    base_url: str = "http://127.0.0.1:8000"
    sessions: int = 2
    devices: int = 10
    seconds: float = 10.0
    rate_hz: float = 1.0
    board_hz: float = 10.0
    hub_size: int = 1
    session_prefix: str = "swarm"
    dup_rate: float = 0.0  # probability a frame is sent twice (idempotency check)
    bad_rate: float = 0.0  # probability a sample carries an out-of-range value
    drain_timeout_s: float = 30.0
    max_gap_s: float = 5.0
    seed: int = 1

    @property
    def ws_url(self) -> str:
        return self.base_url.replace("http://", "ws://").replace("https://", "wss://")


@dataclass
class Rider:
    stream: DeviceStream
    client: HubClient
    ftp: float
    rng: random.Random
    distance_m: float = 0.0
    truth_energy_kj: float = 0.0
    last_valid_ts: float | None = None

    def reading(self, t: float, bad: bool) -> tuple[float | None, ...]:
        phase = math.sin(t / 30.0 + self.ftp)
        power = max(0.0, self.ftp * (0.75 + 0.25 * phase) + self.rng.gauss(0, 8))
        hr = 95 + 0.3 * power + self.rng.gauss(0, 2)
        cadence = 70 + 20 * phase + self.rng.gauss(0, 2)
        speed = max(0.0, 6.0 + power / 60.0)
        self.distance_m += speed / 1.0
        if bad:
            power = 9999.0
        return (round(hr, 1), round(power, 1), round(cadence, 1), round(speed, 3), round(self.distance_m, 1))


@dataclass
class Viewer:
    session: str
    pending: dict[str, deque[float]] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    sent_at: list[float] = field(default_factory=list)
    boards: int = 0

    def expect(self, participant: str, ts: float) -> None:
        self.pending.setdefault(participant, deque()).append(ts)

    def on_board(self, frame: dict[str, Any], now: float) -> None:
        self.boards += 1
        cols = frame["cols"]
        ip, its = cols.index("participant"), cols.index("last_ts")
        for row in frame.get("rows", []):
            queue = self.pending.get(row[ip])
            last = row[its]
            if not queue or last is None:
                continue
            while queue and queue[0] <= last + 1e-6:
                ts = queue.popleft()
                self.sent_at.append(ts)
                self.latencies_ms.append((now - ts) * 1000.0)


class Swarm:
    def __init__(self, config: SwarmConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.riders: list[Rider] = []
        self.clients: list[HubClient] = []
        self.viewers: dict[str, Viewer] = {}
        self.sessions = [f"{config.session_prefix}-{i}" for i in range(config.sessions)]
        self.frames_in: Counter[str] = Counter()
        self._viewer_tasks: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()

    async def run(self) -> dict[str, Any]:
        async with httpx.AsyncClient(base_url=self.config.base_url, timeout=60) as http:
            for sid in self.sessions:
                (await http.post("/v1/sessions", json={"id": sid})).raise_for_status()
            self._build()
            for sid in self.sessions:
                self.viewers[sid] = Viewer(sid)
                self._viewer_tasks.append(asyncio.create_task(self._watch(sid)))
            for client in self.clients:
                client.start()
            ready_s = await self._wait_ready()
            started = time.time()
            await self._drive(started)
            drained = await self._drain()
            await asyncio.sleep(2.0 / self.config.board_hz + 0.3)  # let the last boards arrive
            states = {sid: (await http.get(f"/v1/sessions/{sid}")).json() for sid in self.sessions}
        self._stop.set()
        await asyncio.gather(*(c.close() for c in self.clients))
        for task in self._viewer_tasks:
            task.cancel()
        await asyncio.gather(*self._viewer_tasks, return_exceptions=True)
        result = self.accounting(states, drained, time.time() - started)
        result["connect_s"] = ready_s
        return result

    async def _wait_ready(self) -> float:
        """A class starts once its devices are connected: wait for every welcome (bounded)."""
        began = time.monotonic()
        await asyncio.wait(
            [asyncio.ensure_future(c.ready.wait()) for c in self.clients], timeout=self.config.drain_timeout_s
        )
        return round(time.monotonic() - began, 2)

    def _build(self) -> None:
        cfg = self.config
        streams = []
        for i in range(cfg.devices):
            sid = self.sessions[i % cfg.sessions]
            streams.append(DeviceStream(f"{sid}-dev{i}", f"{sid}-p{i}", sid))
        groups: dict[str, list[DeviceStream]] = {}
        for stream in streams:
            groups.setdefault(stream.session, []).append(stream)
        for members in groups.values():
            for j in range(0, len(members), cfg.hub_size):
                chunk = members[j : j + cfg.hub_size]
                client = HubClient(f"{cfg.ws_url}/v1/devices", chunk, on_frame=self._count)
                self.clients.append(client)
                for stream in chunk:
                    rng = random.Random(self.rng.random())
                    self.riders.append(Rider(stream, client, ftp=rng.uniform(150, 320), rng=rng))

    def _count(self, frame: dict[str, Any]) -> None:
        self.frames_in[frame.get("t", "?")] += 1

    async def _drive(self, started: float) -> None:
        cfg = self.config
        period = 1.0 / cfg.rate_hz
        ticks = int(cfg.seconds * cfg.rate_hz)
        offsets = [self.rng.random() * period for _ in self.riders]
        order = sorted(range(len(self.riders)), key=offsets.__getitem__)
        for k in range(ticks):
            base = started + k * period
            for idx in order:
                scheduled = base + offsets[idx]
                delay = scheduled - time.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                await self._emit(self.riders[idx], scheduled)

    async def _emit(self, rider: Rider, scheduled: float) -> None:
        bad = self.rng.random() < self.config.bad_rate
        values = rider.reading(scheduled, bad)
        row = rider.stream.new_sample(scheduled, *values)
        if not bad:
            self._truth(rider, scheduled, values[1])
            self.viewers[rider.stream.session].expect(rider.stream.participant, scheduled)
        sent = await rider.client.send_rows(rider.stream, [row])
        if sent and self.rng.random() < self.config.dup_rate:
            await rider.client.send_rows(rider.stream, [row])

    def _truth(self, rider: Rider, ts: float, power: float | None) -> None:
        if rider.last_valid_ts is not None and power:
            dt = min(max(ts - rider.last_valid_ts, 0.0), self.config.max_gap_s)
            rider.truth_energy_kj += power * dt / 1000.0
        rider.last_valid_ts = ts

    async def _drain(self) -> bool:
        deadline = time.monotonic() + self.config.drain_timeout_s
        while time.monotonic() < deadline:
            if all(not r.stream.unacked for r in self.riders):
                return True
            await asyncio.sleep(0.1)
        return False

    async def _watch(self, sid: str) -> None:
        url = f"{self.config.ws_url}/v1/sessions/{sid}/board?rate={self.config.board_hz:g}&view=all"
        viewer = self.viewers[sid]
        while not self._stop.is_set():
            try:
                async with connect(url, max_size=2**24) as ws:
                    async for message in ws:
                        frame = msgpack.unpackb(message, raw=False)
                        if frame.get("t") == "board":
                            viewer.on_board(frame, time.time())
            except (OSError, ConnectionClosed, TimeoutError):
                await asyncio.sleep(0.2)

    def accounting(self, states: dict[str, Any], drained: bool, elapsed_s: float) -> dict[str, Any]:
        server = {}
        for sid, snap in states.items():
            for p in snap.get("participants", []):
                server[p["participant"]] = p
        sent = acked = rejected = applied = lost = duplicated = 0
        energy_errors = []
        rejected_by_reason: Counter[str] = Counter()
        for rider in self.riders:
            s = rider.stream
            truth_applied = s.sent - len(s.rejected_seqs)
            row = server.get(s.participant, {})
            got = int(row.get("samples", 0))
            sent += s.sent
            rejected += len(s.rejected_seqs)
            rejected_by_reason.update(s.rejected)
            acked += s.sent - len(s.unacked) - len(s.rejected_seqs)
            applied += got
            lost += max(0, truth_applied - got) + len(s.unacked)
            duplicated += max(0, got - truth_applied)
            energy_errors.append(abs(float(row.get("energy_kj", 0.0)) - rider.truth_energy_kj))
        latencies = np.array([x for v in self.viewers.values() for x in v.latencies_ms])
        pct = (lambda q: round(float(np.percentile(latencies, q)), 2)) if latencies.size else (lambda q: None)
        return {
            "sessions": self.config.sessions,
            "session_ids": self.sessions,
            "devices": self.config.devices,
            "seconds": round(elapsed_s, 2),
            "sent": sent,
            "acknowledged": acked,
            "applied": applied,
            "rejected": rejected,
            "rejected_by_reason": dict(rejected_by_reason),
            "lost": lost,
            "duplicated": duplicated,
            "drained": drained,
            "energy_max_abs_error_kj": round(max(energy_errors, default=0.0), 9),
            "latency_ms": {
                "samples": int(latencies.size),
                "p50": pct(50), "p90": pct(90), "p99": pct(99),
                "max": round(float(latencies.max()), 2) if latencies.size else None,
            },
            "latency_over_time": self._timeline(),
            "boards_received": sum(v.boards for v in self.viewers.values()),
            "reconnects": sum(max(0, c.connects - 1) for c in self.clients),
            "server_frames": dict(self.frames_in),
        }


    def _timeline(self, window_s: float = 5.0) -> list[dict[str, Any]]:
        """p50/p99/max latency per window of scheduled send time."""
        sent = np.array([t for v in self.viewers.values() for t in v.sent_at])
        lat = np.array([x for v in self.viewers.values() for x in v.latencies_ms])
        if not sent.size:
            return []
        bucket = ((sent - sent.min()) // window_s).astype(int)
        out = []
        for b in range(int(bucket.max()) + 1):
            sel = lat[bucket == b]
            if sel.size:
                out.append({"t_s": b * window_s, "n": int(sel.size), "p50": round(float(np.percentile(sel, 50)), 1),
                            "p99": round(float(np.percentile(sel, 99)), 1), "max": round(float(sel.max()), 1)})
        return out


async def run_swarm(config: SwarmConfig) -> dict[str, Any]:
    return await Swarm(config).run()
