"""The BLE-level swarm: simulated sensors → real GATT bytes → the bridge → the edge → the board.

Every other swarm speaks protocol v1 samples directly. Here each rider wears a *kit* of
``sims.ble`` sensors (``strap``, ``power``, ``csc``, ``trainer``) that notify the bytes a
real sensor would; a ``SimLink`` serves them to a real ``devices.bridge.Bridge`` through
the ``devices.links.Link`` interface, so decoding (``devices.gatt``), merging
(``devices.normalise``), the spool and the hub connection are all exercised.

* ``SimLink(sensors, clock)`` — a ``Link``: ``scan`` lists the sensors (filtered by
  kind), ``connect`` starts playing one sensor live at its real notification rate on the
  link's clock (a ``ScaledClock``: ``speed`` link seconds per real second, never ahead
  of real time during the run). Sensor time 0 is the link's ``origin`` (its creation);
  a sensor keeps its own state (counters, RR beats, odometer) across reconnects.
* ``BleStudio(BleStudioConfig(...)).run()`` — creates ``studios`` sessions, gives each
  one Bridge (its own SimLink and SQLite spool) carrying ``riders`` riders, runs for
  ``seconds`` link seconds, finishes, waits for the spools to drain, reads the server's
  state and returns the summary.

Accounting (ground truth = what the bridge emitted, counted through its ``on_emit``):
``emitted``, ``acknowledged`` (acked by the edge), ``rejected``, ``lost`` (emitted but
neither on the server nor rejected), ``duplicated`` (server count above emitted). Per
rider, the server's ``hr_avg`` / ``power_avg`` are compared with the mean of the wave
that generated them (``Wave.mean``). Tolerance: the mean of ``A·sin(2πt/P)`` over any
window of length ``T`` is at most ``A·P/(π·T)`` from 0, plus ``AVG_SLACK`` for rounding
(bpm and watts are integers on the wire) and the start of the ride (the first ticks
before every sensor is connected) — see ``tolerance``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx

from devices.bridge import Assignment, Bridge, BridgeConfig
from devices.client import DevTokens
from devices.links import (
    Advert,
    Clock,
    ConnectFailed,
    EventSink,
    Notification,
    PlaybackConnection,
    ScaledClock,
    SensorKind,
)
from sims.ble import HeartRateStrap, IndoorBike, PowerMeter, SimSensor, SpeedCadenceSensor, Wave

__all__ = [
    "AVG_SLACK",
    "BLE_KINDS",
    "BleStudio",
    "BleStudioConfig",
    "SimLink",
    "StudioRider",
    "tolerance",
]

log = logging.getLogger(__name__)

BLE_KINDS: Final = ("strap", "power", "csc", "trainer")
AVG_SLACK: Final = 3.0  # bpm or W on top of the wave bound (integer payloads, the first ticks)
WAVE_PERIOD_S: Final = 30.0


def tolerance(amplitude: float, period_s: float, span_s: float) -> float:
    """How far a measured average may be from ``Wave.mean`` over ``span_s`` seconds."""
    return AVG_SLACK + abs(amplitude) * period_s / (math.pi * max(span_s, 1.0))


# --- the link ------------------------------------------------------------------------


class SimLink:
    """A ``devices.links.Link`` over ``sims.ble`` sensors; see the module docstring."""

    def __init__(self, sensors: Collection[SimSensor], clock: Clock, *, rssi: int = -60) -> None:
        self.clock = clock
        self.origin = clock.now()
        self.rssi = rssi
        self.sensors = {s.address: s for s in sensors}
        self.notified: Counter[str] = Counter()  # per address

    def elapsed(self) -> float:
        return self.clock.now() - self.origin

    async def scan(self, kinds: Collection[SensorKind], timeout_s: float) -> list[Advert]:
        wanted = set(kinds) or set(SensorKind)
        await asyncio.sleep(0)
        return [
            Advert(s.address, s.name, (s.kind,), self.rssi, s.battery_pct)
            for s in self.sensors.values()
            if s.kind in wanted
        ]

    async def connect(self, advert: Advert, sink: EventSink) -> PlaybackConnection:
        sensor = self.sensors.get(advert.address)
        if sensor is None:
            raise ConnectFailed(f"{advert.address}: no such simulated sensor", address=advert.address)
        conn = PlaybackConnection(sensor.address, sensor.battery_pct, (sensor.characteristic.uuid,))
        conn.task = asyncio.get_running_loop().create_task(self._play(sensor, sink), name=f"sim-{sensor.address}")
        return conn

    async def _play(self, sensor: SimSensor, sink: EventSink) -> None:
        for t, uuid, payload in sensor.notifications(math.inf, start_s=self.elapsed()):
            at = self.origin + t
            await self.clock.sleep_until(at)
            self.notified[sensor.address] += 1
            sink(Notification(sensor.address, uuid, payload, at))


# --- riders and their kits -----------------------------------------------------------


@dataclass
class StudioRider:
    """One rider: participant id, their sensors, and the waves that generate hr and power."""

    participant: str
    kit: str
    sensors: list[SimSensor]
    hr: Wave | None
    power: Wave | None


def make_rider(participant: str, kit: str, studio: int, index: int, rng: random.Random) -> StudioRider:
    """A rider wearing ``kit`` (kinds of ``BLE_KINDS`` joined by ``+``), personal waves."""
    hr = Wave(rng.uniform(110, 160), rng.uniform(5, 15), WAVE_PERIOD_S)
    power = Wave(rng.uniform(140, 280), rng.uniform(20, 50), WAVE_PERIOD_S)
    cadence = Wave(rng.uniform(80, 95))
    sensors: list[SimSensor] = []
    has_hr = has_power = False
    for k, kind in enumerate(kit.split("+")):
        address = f"5E:{studio % 256:02X}:{index // 256 % 256:02X}:{index % 256:02X}:00:{k:02X}"
        name = f"{kind} {participant}"
        if kind == "strap":
            sensors.append(HeartRateStrap(address, name, hr_bpm=hr))
            has_hr = True
        elif kind == "power":
            sensors.append(PowerMeter(address, name, power_w=power, cadence_rpm=cadence))
            has_power = True
        elif kind == "csc":
            sensors.append(SpeedCadenceSensor(address, name, cadence_rpm=cadence))
        elif kind == "trainer":
            bike_hr = Wave(hr.mean) if "strap" in kit else hr  # one source of the hr truth
            sensors.append(IndoorBike(address, name, power_w=power, cadence_rpm=cadence, hr_bpm=bike_hr))
            has_hr = has_power = True
        else:
            raise ValueError(f"unknown BLE kit kind {kind!r} (kinds: {', '.join(BLE_KINDS)})")
    return StudioRider(participant, kit, sensors, hr if has_hr else None, power if has_power else None)


def pick_kits(kits: dict[str, float], n: int, rng: random.Random) -> list[str]:
    """``n`` kits drawn by weight, every kit at least once when ``n`` allows (mixed studios)."""
    names = sorted(kits)
    chosen = names[:n] + rng.choices(names, weights=[kits[k] for k in names], k=max(0, n - len(names)))
    rng.shuffle(chosen)
    return chosen


# --- the runner ------------------------------------------------------------------------


@dataclass
class BleStudioConfig:
    base_url: str = "http://127.0.0.1:8000"
    name: str = "ble-studio"
    studios: int = 1  # sessions, one bridge each
    riders: int = 4  # per studio
    kits: dict[str, float] = field(default_factory=lambda: {"strap+power": 1.0, "strap+csc": 1.0, "trainer": 1.0})
    seconds: float = 60.0  # link seconds of riding
    speed: float = 1.0  # link seconds per real second
    seed: int = 1
    session_prefix: str | None = None
    drain_timeout_s: float = 60.0
    phases: bool = True
    spool_dir: Path | None = None  # default: a temporary directory, removed afterwards


class BleStudio:
    """Runs ``BleStudioConfig``; ``run()`` returns the summary (see the module docstring)."""

    def __init__(self, config: BleStudioConfig) -> None:
        self.config = config
        rng = random.Random(config.seed)
        prefix = config.session_prefix or f"{config.name}-{rng.getrandbits(24):06x}"
        self.sessions = [f"{prefix}-{s}" for s in range(config.studios)]
        self.riders: dict[str, list[StudioRider]] = {}
        for s, sid in enumerate(self.sessions):
            kits = pick_kits(config.kits, config.riders, rng)
            self.riders[sid] = [make_rider(f"rider-{i:03d}", kit, s, i, rng) for i, kit in enumerate(kits)]
        self.emitted: dict[str, Counter[str]] = {sid: Counter() for sid in self.sessions}
        self.bridges: dict[str, dict[str, Any]] = {}

    async def run(self) -> dict[str, Any]:
        cfg = self.config
        tokens = DevTokens(cfg.base_url)
        auth = {"Authorization": f"Bearer {await tokens(kind='operator')}"}
        spool_dir = cfg.spool_dir or Path(tempfile.mkdtemp(prefix="pulseline-ble-"))
        started = time.time()
        try:
            async with httpx.AsyncClient(base_url=cfg.base_url, timeout=60, headers=auth) as http:
                for sid in self.sessions:
                    (await http.post("/v1/sessions", json={"id": sid})).raise_for_status()
                await self._phase(http, "live")
                results = await asyncio.gather(
                    *(self._studio(sid, spool_dir, tokens) for sid in self.sessions)
                )
                await self._phase(http, "ended")
                states = {sid: (await http.get(f"/v1/sessions/{sid}")).json() for sid in self.sessions}
        finally:
            if cfg.spool_dir is None:
                shutil.rmtree(spool_dir, ignore_errors=True)
        self.bridges = dict(zip(self.sessions, results, strict=True))
        return self._summarise(states, time.time() - started)

    async def _phase(self, http: httpx.AsyncClient, phase: str) -> None:
        if not self.config.phases:
            return
        for sid in self.sessions:
            response = await http.post(f"/v1/sessions/{sid}/phase", json={"phase": phase})
            if response.status_code >= 400:
                log.warning("phase %s for %s: %s %s", phase, sid, response.status_code, response.text[:200])

    async def _studio(self, sid: str, spool_dir: Path, tokens: DevTokens) -> dict[str, Any]:
        cfg = self.config
        riders = self.riders[sid]
        clock = ScaledClock(cfg.speed, span_s=cfg.seconds + 5.0)
        link = SimLink([s for r in riders for s in r.sensors], clock)
        assignments = tuple(Assignment(r.participant, address=s.address) for r in riders for s in r.sensors)
        config = BridgeConfig(
            url=cfg.base_url, session=sid, assignments=assignments, spool_path=spool_dir / f"{sid}.sqlite",
            name=f"sim-{sid}"[:60], scan_timeout_s=1.0, rescan_interval_s=3.0, backoff_min_s=1.0, backoff_max_s=4.0,
        )
        counts = self.emitted[sid]

        def on_emit(participant: str, _row: list[Any]) -> None:
            counts[participant] += 1

        bridge = Bridge(config, link, on_emit=on_emit, tokens=tokens)
        await bridge.start()
        try:
            await clock.sleep_until(link.origin + cfg.seconds)
            await bridge.finish()
            drained = await bridge.drain(cfg.drain_timeout_s)
            summary = bridge.summary()
        finally:
            await bridge.close()
        return {**summary, "drained": drained, "notifications": sum(link.notified.values())}

    def _summarise(self, states: dict[str, Any], elapsed_s: float) -> dict[str, Any]:
        emitted = acked = rejected = lost = duplicated = 0
        participants: list[dict[str, Any]] = []
        for sid in self.sessions:
            server = {p["participant"]: p for p in states[sid].get("participants", [])}
            bridge = self.bridges[sid]
            for rider in self.riders[sid]:
                row = self._rider_row(sid, rider, server.get(rider.participant, {}), bridge)
                participants.append(row)
                emitted += row["emitted"]
                rejected += row["rejected"]
                lost += row["lost"]
                duplicated += row["duplicated"]
            acked += int(bridge["acked"])
        averages_ok = all(p["hr_ok"] and p["power_ok"] for p in participants)
        return {
            "mode": "ble",
            "name": self.config.name,
            "session_ids": list(self.sessions),
            "studios": len(self.sessions),
            "riders": len(participants),
            "link_seconds": self.config.seconds,
            "speed": self.config.speed,
            "elapsed_s": round(elapsed_s, 3),
            "notifications": sum(int(b["notifications"]) for b in self.bridges.values()),
            "emitted": emitted,
            "sent": emitted,
            "acknowledged": acked,
            "rejected": rejected,
            "lost": lost,
            "duplicated": duplicated,
            "drained": all(b["drained"] for b in self.bridges.values()),
            "decode_errors": sum(int(s["decode_errors"]) for b in self.bridges.values() for s in b["sensors"]),
            "averages_ok": averages_ok,
            "participants": participants,
        }

    def _rider_row(self, sid: str, rider: StudioRider, server: dict[str, Any], bridge: dict[str, Any]) -> dict[str, Any]:
        emitted = self.emitted[sid][rider.participant]
        samples = int(server.get("samples", 0))
        rejected = int(server.get("rejected", 0))
        row: dict[str, Any] = {
            "session": sid, "participant": rider.participant, "kit": rider.kit,
            "emitted": emitted, "bridge_acked": bridge["participants"].get(rider.participant, {}).get("acked", 0),
            "server_samples": samples, "rejected": rejected,
            "lost": max(0, emitted - samples - rejected), "duplicated": max(0, samples + rejected - emitted),
        }
        for key, wave in (("hr", rider.hr), ("power", rider.power)):
            measured = server.get(f"{key}_avg")
            row[f"{key}_expected"] = None if wave is None else round(wave.mean, 2)
            row[f"{key}_avg"] = measured
            if wave is None:
                row[f"{key}_ok"] = True
                continue
            tol = tolerance(wave.amplitude, wave.period_s, emitted * 1.0)
            row[f"{key}_tolerance"] = round(tol, 2)
            row[f"{key}_ok"] = measured is not None and abs(float(measured) - wave.mean) <= tol
        return row


def summary_text(summary: dict[str, Any]) -> str:
    """A few human lines about a BLE studio run."""
    bad = [p for p in summary["participants"] if not (p["hr_ok"] and p["power_ok"])]
    lines = [
        f"{summary['name']}: {summary['studios']} studio(s), {summary['riders']} riders, "
        f"{summary['link_seconds']:g} s at {summary['speed']:g}x in {summary['elapsed_s']:.1f} s real",
        f"notifications {summary['notifications']}, decode errors {summary['decode_errors']}",
        f"emitted {summary['emitted']}, acknowledged {summary['acknowledged']}, rejected {summary['rejected']}, "
        f"lost {summary['lost']}, duplicated {summary['duplicated']}, drained {summary['drained']}",
        f"averages within tolerance: {summary['averages_ok']}"
        + "".join(f"\n  {p['session']}/{p['participant']} ({p['kit']}): hr {p['hr_avg']} vs {p['hr_expected']}, "
                  f"power {p['power_avg']} vs {p['power_expected']}" for p in bad),
    ]
    return "\n".join(lines)
