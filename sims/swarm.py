"""The swarm: simulated riders and their devices against a running edge, with exact accounting.

``Swarm(SwarmConfig(...)).run()`` creates the sessions, connects the devices (one
connection per rider like a phone, or ``hub_size`` devices per connection like a gym
bridge), drives every rider through a class plan (``sims.physiology``) at ``rate_hz``
with the load shape of ``sims.load`` (join window, surges), injects the faults of
``sims.faults``, watches each session's board at ``board_hz`` to time every sample from
its *scheduled* send time to the first board showing it, optionally opens one board per
participant (``participant_boards``), waits until every sample is durably acknowledged,
and compares the server's per-participant totals with the ground truth it kept
(``sims.accounting``).

``run()`` returns the summary (the keys the tests and the CLI rely on: ``sent``,
``acknowledged``, ``applied``, ``rejected``, ``rejected_by_reason``, ``lost``,
``duplicated``, ``drained``, ``energy_max_abs_error_kj``, ``latency_ms``,
``latency_over_time``, ``boards_received``, ``server_frames``, ``session_ids``, ...);
``report()`` afterwards adds the per-participant rows and the per-second timeline that
``sims.report`` turns into JSON and plots.

Latency is measured for samples sent live; samples a fault held back on purpose (while
offline, reordered, uploaded late) are accounted for but not latency-probed.
"""

from __future__ import annotations

import asyncio
import gc
import heapq
import logging
import math
import random
import string
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any
from urllib.parse import quote

import httpx

from devices.client import DevTokens, DeviceStream, stream_token_source
from sims.accounting import ParticipantTruth, account, server_rows
from sims.faults import BAD_TS_AGE_S, DeviceClock, DeviceFaults, FaultConfig, FlakyHubClient
from sims.histogram import LatencyHistogram
from sims.load import Surge, rate_at
from sims.admission import admission_summary
from sims.class_plan import physiology_plan, plan_summary
from sims.physiology import ClassPlan, Reading, RiderModel, random_profile, standard_plan
from sims.progress import Progress
from sims.viewers import ParticipantViewer, Viewer, watch
from sims.errors import SimsError

__all__ = ["DEVICE_KINDS", "Rider", "Swarm", "SwarmConfig", "Viewer", "run_swarm"]

log = logging.getLogger(__name__)

# Devices here speak protocol v1 samples directly; the BLE-level mode (GATT sensors through
# the bridge) is sims/ble_swarm.py (scenario mode = "ble").
# Which of (hr, power, cadence, speed, distance) each kind of device reports.
DEVICE_KINDS: dict[str, tuple[bool, bool, bool, bool, bool]] = {
    "phone": (True, True, True, True, True),  # an app that merges its sensors
    "strap": (True, False, False, False, False),  # heart-rate strap
    "power": (False, True, True, False, False),  # pedal / crank power meter
    "trainer": (False, True, True, True, True),  # FTMS smart bike / trainer
    "cadence": (False, False, True, False, False),  # CSC cadence sensor
}


class SwarmUnavailable(SimsError):
    """No edge answered the swarm's set-up calls (creating its sessions)."""


def _settle_collector() -> None:
    """What lives for the whole class (riders, connections) leaves the cyclic collector, and
    the young generation is collected every 10,000 net new objects instead of 700: the
    server's processes do the same (``actors.gctune``, which sims may not import), for the
    same reason — a swarm's per-sample objects live about a second and, at 700, push full
    collections over everything it holds, late on its own schedule by their length."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(10_000, gen1, gen2)


class GcWatch:
    """The cyclic collections this process ran while installed, by generation, with their
    total and longest pause (a collection stops the swarm's loop: it shows as swarm lag)."""

    def __init__(self) -> None:
        self.counts = [0, 0, 0]
        self.pause_ms = [0.0, 0.0, 0.0]
        self.longest_ms = 0.0
        self._began = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
            return
        ms = (time.perf_counter() - self._began) * 1000.0
        gen = int(info.get("generation", 0))
        self.counts[gen] += 1
        self.pause_ms[gen] += ms
        self.longest_ms = max(self.longest_ms, ms)

    def install(self) -> None:
        if self not in gc.callbacks:
            gc.callbacks.append(self)

    def remove(self) -> None:
        if self in gc.callbacks:
            gc.callbacks.remove(self)

    def summary(self) -> dict[str, Any]:
        return {"collections": list(self.counts), "pause_ms": [round(p, 1) for p in self.pause_ms],
                "longest_ms": round(self.longest_ms, 1)}


class EdgeHttp:
    """The swarm's HTTP control calls over one or more edges. A transport error (refused,
    reset, timed out) or a 5xx moves to the next edge after a short jittered back-off;
    after ``attempts`` it gives up and returns None instead of raising, so the swarm always
    reaches its accounting."""

    def __init__(self, urls: list[str], headers: dict[str, str], *, timeout_s: float = 30.0, attempts: int = 6) -> None:
        self.urls = urls
        self.attempts = attempts
        self.failures: Counter[str] = Counter()
        self._index = 0
        self._client = httpx.AsyncClient(timeout=timeout_s, headers=headers)

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response | None:
        for attempt in range(self.attempts):
            url = self.urls[self._index] + path
            try:
                response = await self._client.request(method, url, **kwargs)
            except httpx.HTTPError as exc:
                self.failures[type(exc).__name__] += 1
                log.warning("%s %s: %s", method, url, type(exc).__name__)
            else:
                if response.status_code < 500:
                    return response
                self.failures[f"http_{response.status_code}"] += 1
                log.warning("%s %s: %s %s", method, url, response.status_code, response.text[:200])
            self._index = (self._index + 1) % len(self.urls)
            await asyncio.sleep(min(2.0, 0.2 * 2**attempt) * (0.5 + random.random()))
        return None

    async def aclose(self) -> None:
        await self._client.aclose()


FIRST_NAMES = ("Ana", "Ben", "Chloé", "Dev", "Emma", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Kemi", "Liam",
               "Maya", "Noor", "Oskar", "Priya", "Quinn", "Rosa", "Sam", "Tariq", "Uma", "Vera", "Wei", "Yara", "Zoe")


@dataclass
class SwarmConfig:
    base_url: str = "http://127.0.0.1:8000"  # several edges comma-separated: clients fail over
    sessions: int = 2
    devices: int = 10  # riders in live sessions (each has one device per kind of its kit)
    seconds: float = 10.0
    rate_hz: float = 1.0
    board_hz: float = 10.0
    hub_size: int = 1  # devices per connection; 1 = one connection per rider (a phone)
    session_prefix: str = "swarm"
    dup_rate: float = 0.0  # shorthands for faults.dup_rate / faults.bad_rate
    bad_rate: float = 0.0
    drain_timeout_s: float = 30.0
    max_gap_s: float = 5.0  # must equal the server's (energy integration clamp)
    seed: int = 1
    name: str = "swarm"
    kits: dict[str, float] = field(default_factory=lambda: {"phone": 1.0})
    faults: FaultConfig | None = None
    join_window_s: float = 0.0
    surges: tuple[Surge, ...] = ()
    participant_boards: bool = False
    participant_board_hz: float = 1.0
    # "1.1": a one-rider connection asks for its board in its hello (one socket per rider,
    # acks inside the boards); "1": a second socket per rider on /v1/sessions/{id}/board
    board_protocol: str = "1.1"
    phases: bool = True  # drive lobby -> live -> cooldown -> ended
    # a class plan (the server's format, docs/protocol.md): classes are created with it and
    # start_at = now + plan_start_in_s, and move through their phases by themselves
    class_plan: dict[str, Any] | None = None
    plan_start_in_s: float = 8.0
    # Riders get display names in their profiles (the demo: boards show names, not ids).
    display_names: bool = False
    # seats and admission (sims/admission.py): the classes' capacity (None: no limit); the
    # share of riders in class from the start; when the others' join storm begins
    capacity: int | None = None
    in_class: float = 0.0
    storm_at_s: float = 0.0
    session_ids: tuple[str, ...] = ()  # ride these classes (e.g. on-demand ones) instead of prefix-N
    # where the server runs each class: None lets it choose by the expected size (the
    # riders per class are sent as ``expected_riders``); "dense" or "dedicated" forces it
    placement: str | None = None
    progress: bool = False
    # settle the process's cyclic collector once the riders are connected (a process of its
    # own: the swarm CLI; never inside a test run, it is process-wide)
    settle_gc: bool = False
    ready_timeout_s: float = 60.0
    http_attempts: int = 6  # tries of each control call over the edges before it is given up (and reported)
    # async (**claims) -> JWT; default: development tokens from the edge (DevTokens)
    token_provider: Callable[..., Awaitable[str]] | None = None
    # keep every valid sample each device sent (``Swarm.sent_samples``): what ride exports
    # are compared with, sample for sample (memory grows with the run: tests only)
    keep_sent: bool = False

    @property
    def urls(self) -> list[str]:
        return [u.strip().rstrip("/") for u in self.base_url.split(",") if u.strip()]

    @property
    def ws_urls(self) -> list[str]:
        return [u.replace("http://", "ws://").replace("https://", "wss://") for u in self.urls]

    @property
    def ws_url(self) -> str:
        return self.ws_urls[0]

    def fault_config(self) -> FaultConfig:
        if self.faults is not None:
            return self.faults
        return FaultConfig(dup_rate=self.dup_rate, bad_rate=self.bad_rate)


@dataclass
class Participant:
    """One rider: a body (``RiderModel``) shared by all its devices."""

    id: str
    session: str
    model: RiderModel
    late: bool = False
    last_t: float | None = None

    def reading(self, t: float) -> Reading:
        dt = 1.0 if self.last_t is None else max(0.0, t - self.last_t)
        self.last_t = t
        return self.model.step(t, dt)


@dataclass
class Rider:
    """One device of one participant (named for compatibility: the first swarm had one
    device per rider). Holds the device's ground truth."""

    stream: DeviceStream
    client: FlakyHubClient
    participant: Participant
    kind: str
    faults: DeviceFaults
    clock: DeviceClock
    truth_energy_kj: float = 0.0
    last_valid_ts: float | None = None
    invalid: int = 0
    held: list[Any] | None = None  # a sample held back to be sent after the next one
    last_t: float | None = None
    sent_log: list[tuple[float, list[float | None]]] | None = None  # (ts, values) when keep_sent

    def values(self, reading: Reading) -> list[float | None]:
        raw = (round(reading.hr_bpm, 1), round(reading.power_w, 1), round(reading.cadence_rpm, 1),
               round(reading.speed_mps, 3), round(reading.distance_m, 1))
        out: list[float | None] = [v if keep else None for v, keep in zip(raw, DEVICE_KINDS[self.kind], strict=True)]
        while out and out[-1] is None:
            out.pop()
        return out

    def credit(self, ts: float, values: list[float | None], max_gap_s: float) -> None:
        """Integrate energy exactly as the server does (by seq order over device time)."""
        if self.sent_log is not None:
            self.sent_log.append((ts, list(values)))
        power = values[1] if len(values) > 1 else None
        if self.last_valid_ts is not None and power:
            self.truth_energy_kj += power * min(max(ts - self.last_valid_ts, 0.0), max_gap_s) / 1000.0
        self.last_valid_ts = ts if self.last_valid_ts is None else max(self.last_valid_ts, ts)


def _spoil(values: list[float | None]) -> list[float | None]:
    """Make a reading out of range (the server must reject it as ``out_of_range``)."""
    spoilt = list(values) + [None] * (5 - len(values))
    index = next((i for i, v in enumerate(spoilt) if v is not None), 0)
    spoilt[index] = 9999.0
    return spoilt


class Swarm:
    def __init__(self, config: SwarmConfig) -> None:
        self.config = config
        self.fault_config = config.fault_config()
        self.rng = random.Random(config.seed)
        self.sessions = list(config.session_ids) or [f"{config.session_prefix}-{i}" for i in range(config.sessions)]
        self.late_sessions: list[str] = []
        self.participants: list[Participant] = []
        self.riders: list[Rider] = []
        self.clients: list[FlakyHubClient] = []
        self.phase_failures = 0
        self.http_failures: dict[str, int] = {}
        self.join_at: dict[int, float] = {}  # id(client) -> class time it connects
        self.viewers: dict[str, Viewer] = {}
        self.participant_viewers: list[ParticipantViewer] = []
        self._board_on_device: set[str] = set()  # participants whose board rides their device socket (v1.1)
        self.frames_in: Counter[str] = Counter()
        self.injected: Counter[str] = Counter()
        self.lag = LatencyHistogram()  # how late the swarm emitted vs its schedule
        self.gc = GcWatch()  # the collections it ran from the class's start (a pause is lag too)
        self.per_second: dict[str, Counter[int]] = defaultdict(Counter)
        self.connections: dict[int, int] = {}
        self._by_device: dict[str, DeviceStream] = {}
        self._client_by_participant: dict[str, FlakyHubClient] = {}
        self._tasks: list[asyncio.Task[Any]] = []
        self._stop = asyncio.Event()
        self.started = 0.0
        self.plan_start: float | None = None  # the classes' start_at (a scenario with a plan)
        self.in_class: set[str] = set()  # riders in class before a join storm (their latency is watched)
        self._summary: dict[str, Any] | None = None
        self._accounting: dict[str, Any] | None = None

    # -- building -----------------------------------------------------------------------
    def _plan(self) -> ClassPlan:
        if self.config.class_plan is not None:
            return physiology_plan(self.config.class_plan)
        return standard_plan(max(self.config.seconds, 1.0))

    def _kit(self, rng: random.Random) -> list[str]:
        kits = self.config.kits
        names = sorted(kits)
        choice = rng.choices(names, weights=[kits[n] for n in names])[0]
        return choice.split("+")

    def _build(self) -> None:
        cfg = self.config
        plan = self._plan()
        for i in range(cfg.devices):
            sid = self.sessions[i % cfg.sessions]
            self.participants.append(self._participant(f"{sid}-p{i}", sid, plan, late=False))
        late = self.fault_config.late_sync
        n_late = round(cfg.devices * late.fraction)
        if n_late:
            self.late_sessions = [f"{cfg.session_prefix}-late-{k}" for k in range(max(1, math.ceil(n_late / 100)))]
            late_plan = standard_plan(late.ride_s)
            for j in range(n_late):
                sid = self.late_sessions[j % len(self.late_sessions)]
                self.participants.append(self._participant(f"{sid}-p{j}", sid, late_plan, late=True))
        self._connect_groups()

    def _participant(self, pid: str, sid: str, plan: ClassPlan, *, late: bool) -> Participant:
        rng = random.Random(self.rng.random())
        return Participant(pid, sid, RiderModel(random_profile(rng), plan, rng), late=late)

    def _connect_groups(self) -> None:
        """Pack each session's riders' devices onto connections without splitting a rider."""
        cfg = self.config
        by_session: dict[tuple[str, bool], list[Participant]] = defaultdict(list)
        for p in self.participants:
            by_session[(p.session, p.late)].append(p)
        for (_, late), members in by_session.items():
            group: list[tuple[Participant, list[str]]] = []
            size = 0
            for p in members:
                kit = self._kit(p.model.rng)
                if group and size + len(kit) > cfg.hub_size:
                    self._connection(group, late)
                    group, size = [], 0
                group.append((p, kit))
                size += len(kit)
            if group:
                self._connection(group, late)

    def _connection(self, group: list[tuple[Participant, list[str]]], late: bool) -> None:
        cfg = self.config
        rng = random.Random(self.rng.random())
        streams: list[tuple[Participant, str, DeviceStream]] = []
        for p, kit in group:
            index = p.id.rsplit("-p", 1)[1]
            for kind in kit:
                device = f"{p.session}-dev{index}" if len(kit) == 1 else f"{p.session}-dev{index}-{kind}"
                streams.append((p, kind, DeviceStream(device, p.id, p.session)))
        board, viewer = None, None
        if cfg.participant_boards and cfg.board_protocol == "1.1" and len(group) == 1 and not late:
            rider = group[0][0]
            board, viewer = {"rate": cfg.participant_board_hz}, ParticipantViewer(rider.session, rider.id)
            self.participant_viewers.append(viewer)
            self._board_on_device.add(rider.id)
        edges = cfg.ws_urls
        first = len(self.clients) % len(edges)  # spread the connections; each fails over to the others
        client = FlakyHubClient([f"{u}/v1/devices" for u in edges[first:] + edges[:first]], [s for _, _, s in streams],
                                on_frame=partial(self._count, viewer),
                                token_provider=stream_token_source(self.tokens, [s for _, _, s in streams]), board=board)
        clock = DeviceClock.random(self.fault_config, rng)
        for p, kind, stream in streams:
            faults = DeviceFaults(self.fault_config, random.Random(rng.random()))
            self.riders.append(Rider(stream, client, p, kind, faults, clock,
                                     sent_log=[] if self.config.keep_sent else None))
            self._by_device[stream.device] = stream
            self._client_by_participant[p.id] = client
        self.clients.append(client)
        late_cfg = self.fault_config.late_sync
        if late:
            self.join_at[id(client)] = late_cfg.upload_at_s + rng.uniform(0, late_cfg.window_s)
        else:
            self.join_at[id(client)] = rng.uniform(0, cfg.join_window_s) if cfg.join_window_s > 0 else 0.0
            if cfg.in_class > 0:  # a join storm: some riders are in class already, the rest storm in
                in_class = rng.random() < cfg.in_class
                self.join_at[id(client)] = 0.0 if in_class else cfg.storm_at_s + rng.uniform(0, cfg.join_window_s)
                if in_class:
                    self.in_class.update(p.id for p, _ in group)

    def _record_late_rides(self) -> None:
        """A late rider's phone recorded the whole ride hours ago; it is all in the buffer."""
        late = self.fault_config.late_sync
        origin = time.time() - late.hours_ago * 3600.0
        devices_of: dict[str, list[Rider]] = defaultdict(list)
        for rider in self.riders:
            if rider.participant.late:
                devices_of[rider.participant.id].append(rider)
        for riders in devices_of.values():
            model = riders[0].participant.model
            readings = [model.step(float(k), 1.0) for k in range(int(late.ride_s))]
            for rider in riders:
                for k, reading in enumerate(readings):
                    ts = rider.clock(origin + k)
                    values = rider.values(reading)
                    rider.stream.new_sample(ts, *values)
                    rider.credit(ts, values, self.config.max_gap_s)
                self.injected["late_sync_samples"] += len(readings)

    # -- running ------------------------------------------------------------------------
    async def run(self) -> dict[str, Any]:
        cfg = self.config
        self.tokens = cfg.token_provider or DevTokens(cfg.urls)
        self._own_tokens = cfg.token_provider is None
        self.operator_token = await self.tokens(kind="operator")
        http = EdgeHttp(cfg.urls, {"Authorization": f"Bearer {self.operator_token}"}, attempts=cfg.http_attempts)
        try:
            await self._create_sessions(http)
            self._build()
            if cfg.display_names:
                await self._name_riders(http)
            self._record_late_rides()
            ready_s = await self._connect_before_start()
            if cfg.settle_gc:
                _settle_collector()
            self.gc.install()
            if self.plan_start is not None:  # the classes go live by themselves at their start
                self._started_early()
                await asyncio.sleep(max(0.0, self.plan_start - time.time()))
            self.started = self.plan_start or time.time()
            if self.plan_start is None:
                self._start_viewers()
            await self._set_phase(http, self.sessions, "live")
            self._tasks.append(asyncio.create_task(self._joiner()))
            self._tasks.append(asyncio.create_task(self._fault_loop()))
            self._tasks.append(asyncio.create_task(self._monitor()))
            await self._drive()
            await self._flush_held()
            await self._set_phase(http, self.sessions, "cooldown")
            drained = await self._drain()
            await asyncio.sleep(2.0 / cfg.board_hz + 0.3)  # let the last boards arrive
            await self._set_phase(http, self.sessions, "ended")
            await self._until_planned_end()
            ids = self.sessions + self.late_sessions
            states = {sid: await self._state(http, sid) for sid in ids}
        finally:
            self.gc.remove()
            await http.aclose()
        self.http_failures = dict(http.failures)
        elapsed = time.time() - self.started
        await self._shutdown()
        self._summary = self._summarise(states, drained, elapsed)
        self._summary["connect_s"] = ready_s
        return self._summary

    async def _create_sessions(self, http: EdgeHttp) -> None:
        n_late = round(self.config.devices * self.fault_config.late_sync.fraction)
        late_ids = [f"{self.config.session_prefix}-late-{k}" for k in range(max(1, math.ceil(n_late / 100)))] if n_late else []
        body: dict[str, Any] = {"expected_riders": max(1, math.ceil(self.config.devices / max(1, len(self.sessions))))}
        if self.config.capacity is not None:
            body["capacity"] = self.config.capacity
        planned: dict[str, Any] = {}
        if self.config.class_plan is not None:
            self.plan_start = time.time() + self.config.plan_start_in_s
            planned = {"start_at": self.plan_start, "plan": self.config.class_plan}
        if self.config.placement is not None:
            body["placement"] = self.config.placement
        for sid in self.sessions + late_ids:
            response = await http.request("POST", "/v1/sessions", json={"id": sid, **body, **(planned if sid in self.sessions else {})})
            if response is None:
                raise SwarmUnavailable(f"no edge of {self.config.urls} could create session {sid}")
            response.raise_for_status()
        # a late upload belongs to a class that is long over
        await self._set_phase(http, late_ids, "ended")

    async def _name_riders(self, http: EdgeHttp) -> None:
        """Give each rider a display name through its profile (the boards and the class page
        show it): first names and an initial, the same for the same seed."""
        rng = random.Random(f"{self.config.seed}-names")
        for p in self.participants:
            name = f"{rng.choice(FIRST_NAMES)} {rng.choice(string.ascii_uppercase)}."
            response = await http.request("PUT", f"/v1/riders/{quote(p.id, safe='')}/profile", json={"display_name": name})
            if response is None or response.status_code != 200:
                log.warning("swarm: could not name rider %s (%s)", p.id, None if response is None else response.status_code)

    def _started_early(self) -> None:
        """Viewers of planned classes watch from the lobby on (their boards count it down)."""
        self.started = self.plan_start or time.time()
        self._start_viewers()

    async def _until_planned_end(self) -> None:
        """Planned classes end by themselves: wait (bounded) until their boards say so."""
        if self.plan_start is None or self.config.class_plan is None:
            return
        total = sum(float(s["duration_s"]) for s in self.config.class_plan["segments"])
        deadline = self.plan_start + total + self.config.drain_timeout_s
        while time.time() < deadline and not all(
                v.plan.phases and v.plan.phases[-1] == "ended" for v in self.viewers.values()):
            await asyncio.sleep(0.5)

    async def _set_phase(self, http: EdgeHttp, sids: list[str], phase: str) -> None:
        """Never raises: a phase that no edge took is logged and counted (``phase_failures``).
        Classes with a plan move by themselves: nothing to do."""
        if not self.config.phases or self.config.class_plan is not None:
            return
        for sid in sids:
            response = await http.request("POST", f"/v1/sessions/{sid}/phase", json={"phase": phase})
            if response is None or response.status_code >= 400:
                self.phase_failures += 1
                detail = "no edge answered" if response is None else f"{response.status_code} {response.text[:200]}"
                log.warning("phase %s for %s: %s", phase, sid, detail)

    async def _state(self, http: EdgeHttp, sid: str) -> dict[str, Any] | None:
        """The session's state, or None when no edge could give it (the accounting says so)."""
        response = await http.request("GET", f"/v1/sessions/{sid}")
        if response is None or response.status_code != 200:
            return None
        state: dict[str, Any] = response.json()
        return state

    async def _connect_before_start(self) -> float:
        """Connections due at class time 0 connect now; the class starts once they are
        welcomed (bounded by ``ready_timeout_s``)."""
        began = time.monotonic()
        early = [c for c in self.clients if self.join_at[id(c)] == 0.0]
        for client in early:
            client.start()
        if early:
            await asyncio.wait([asyncio.ensure_future(c.ready.wait()) for c in early], timeout=self.config.ready_timeout_s)
        if self.config.participant_boards:
            await self._open_participant_boards(began)
        return round(time.monotonic() - began, 2)

    async def _open_participant_boards(self, began: float) -> None:
        """Riders on from the start watch their board from the start: open those boards
        before the class begins (bounded), so their connection burst is not measured."""
        for p in self.participants:
            if not p.late and self.join_at[id(self._client_of(p))] == 0.0:
                self._start_participant_viewer(p)
        while any(v.connects == 0 for v in self.participant_viewers):
            if time.monotonic() - began > self.config.ready_timeout_s:
                break
            await asyncio.sleep(0.1)

    def _start_viewers(self) -> None:
        for sid in self.sessions:
            viewer = self.viewers[sid] = Viewer(sid, origin=self.started, tracked=self.in_class)
            viewer.on_pages = partial(self._watch_pages, viewer)
            self._watch_pages(viewer, 1)

    def _watch_pages(self, viewer: Viewer, pages: int) -> None:
        """Probe pages ``viewer.watched`` .. ``pages - 1`` of the class board: a big class's
        ``view=all`` is paged by rank (docs/protocol.md), and the probe must see every rider."""
        cfg = self.config
        for page in range(viewer.watched, pages):
            url = [f"{u}/v1/sessions/{viewer.session}/board?rate={cfg.board_hz:g}&view=all&page={page}"
                   for u in cfg.ws_urls]
            self._tasks.append(asyncio.create_task(
                watch(url, viewer.on_board, self._stop, partial(self._connected, viewer), token=self.operator_token)))
        viewer.watched = max(viewer.watched, pages)

    def _connected(self, viewer: Viewer | ParticipantViewer) -> None:
        viewer.connects += 1

    def _client_of(self, p: Participant) -> FlakyHubClient:
        return self._client_by_participant[p.id]

    def _start_participant_viewer(self, p: Participant) -> None:
        cfg = self.config
        if p.id in self._board_on_device:
            return  # v1.1: its board comes on its device connection
        pv = ParticipantViewer(p.session, p.id)
        self.participant_viewers.append(pv)
        url = [f"{u}/v1/sessions/{p.session}/board?rate={cfg.participant_board_hz:g}&participant={quote(p.id, safe='')}"
               for u in cfg.ws_urls]
        self._tasks.append(asyncio.create_task(
            watch(url, pv.on_board, self._stop, lambda: self._connected(pv), token=self.operator_token)))

    async def _joiner(self) -> None:
        """Connect the clients that join after the start, at their join times."""
        later = sorted((c for c in self.clients if self.join_at[id(c)] > 0.0), key=lambda c: self.join_at[id(c)])
        members: dict[int, list[Participant]] = defaultdict(list)
        for r in self.riders:
            if r.participant not in members[id(r.client)]:
                members[id(r.client)].append(r.participant)
        for client in later:
            delay = self.started + self.join_at[id(client)] - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            client.start()
            if self.config.participant_boards:
                for p in members[id(client)]:
                    if not p.late:
                        self._start_participant_viewer(p)

    async def _drive(self) -> None:
        cfg = self.config
        heap: list[tuple[float, int]] = []
        for idx, rider in enumerate(self.riders):
            if not rider.participant.late:
                offset = self.rng.random() / cfg.rate_hz
                heapq.heappush(heap, (self.started + self.join_at[id(rider.client)] + offset, idx))
        behind = 0
        while heap:
            due, idx = heapq.heappop(heap)
            t = due - self.started
            if t >= cfg.seconds:
                continue
            delay = due - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                behind += 1
                if behind % 200 == 0:
                    await asyncio.sleep(0)  # never starve the readers (acks, boards)
            self.lag.record(max(0.0, time.time() - due) * 1000.0)
            await self._emit(self.riders[idx], due, t)
            heapq.heappush(heap, (due + 1.0 / rate_at(cfg.rate_hz, cfg.surges, t), idx))

    async def _emit(self, rider: Rider, scheduled: float, t: float) -> None:
        dt = 1.0 if rider.last_t is None else t - rider.last_t
        rider.last_t = t
        faults = rider.faults
        if faults.silent(t, dt):
            return
        values = rider.values(rider.participant.reading(t))
        ts = rider.clock(scheduled)
        invalid = True
        if faults.bad_value():
            values = _spoil(values)
        elif faults.bad_timestamp():
            ts -= BAD_TS_AGE_S
        else:
            invalid = False
        row = rider.stream.new_sample(ts, *values)
        self.per_second["sent"][int(t)] += 1
        if invalid:
            rider.invalid += 1
        else:
            rider.credit(ts, values, self.config.max_gap_s)
        if rider.held is None and not invalid and faults.reorder():
            rider.held = row
            return
        live = await self._send(rider, [row])
        if live and not invalid:
            self.viewers[rider.stream.session].expect(rider.participant.id, ts, scheduled)
        if rider.held is not None:
            held, rider.held = rider.held, None
            await self._send(rider, [held])

    async def _send(self, rider: Rider, rows: list[list[Any]]) -> bool:
        if not rider.client.online:
            return False
        sent = await rider.client.send_rows(rider.stream, rows)
        if sent and rider.faults.duplicate():
            await rider.client.send_rows(rider.stream, rows)
        return sent

    async def _flush_held(self) -> None:
        for rider in self.riders:
            if rider.held is not None:
                held, rider.held = rider.held, None
                await self._send(rider, [held])

    async def _fault_loop(self) -> None:
        """Connection-level faults: random link dropouts and scheduled reconnect storms."""
        fc = self.fault_config
        storms = sorted(fc.reconnect_storms, key=lambda s: s.at_s)
        rng = random.Random(self.rng.random())
        while not self._stop.is_set():
            await asyncio.sleep(1.0)
            t = time.time() - self.started
            live = [c for c in self.clients if c.online]
            if fc.link_dropout_rate > 0:
                for client in live:
                    if rng.random() < fc.link_dropout_rate:
                        self.injected["link_dropouts"] += 1
                        self._tasks.append(asyncio.create_task(client.go_offline(rng.uniform(*fc.link_dropout_s))))
            while storms and storms[0].at_s <= t:
                storm = storms.pop(0)
                victims = rng.sample(live, int(len(live) * storm.fraction))
                self.injected["reconnect_storms"] += 1
                self.injected["storm_disconnects"] += len(victims)
                await asyncio.gather(*(c.go_offline(0.0) for c in victims), return_exceptions=True)

    async def _monitor(self) -> None:
        cfg = self.config
        bar = Progress(cfg.seconds) if cfg.progress else None
        while not self._stop.is_set():
            await asyncio.sleep(1.0)
            second = int(time.time() - self.started)
            up = sum(1 for c in self.clients if c.ready.is_set())
            self.connections[second] = up
            if bar is not None:
                bar.update(min(second, cfg.seconds), self._status(up))

    def _status(self, up: int) -> str:
        """The progress line: ``sent`` and ``acked`` count the same samples (late uploads
        included); acked means settled by the server (acknowledged, or rejected with a reason)."""
        sent = sum(r.stream.sent for r in self.riders)
        acked = sent - sum(len(r.stream.unacked) for r in self.riders)
        hist = LatencyHistogram()
        for v in self.viewers.values():
            hist.merge(v.histogram)
        p99 = hist.percentile(99)
        p99_text = f"{p99:.0f}ms" if p99 is not None else "-"
        return f"conns {up}/{len(self.clients)} sent {sent} acked {acked} p99 {p99_text}"

    def _count(self, viewer: ParticipantViewer | None, frame: dict[str, Any]) -> None:
        kind = frame.get("t", "?")
        self.frames_in[kind] += 1
        if kind == "board" and viewer is not None:
            viewer.connects = max(viewer.connects, 1)
            viewer.on_board(frame, time.time())
        if (kind == "ack" or "acks" in frame) and self.started:
            second = int(time.time() - self.started)
            for device, seq in frame.get("acks", {}).items():
                stream = self._by_device.get(device)
                if stream is not None and seq > stream.acked:
                    self.per_second["acked"][second] += sum(1 for s in stream.unacked if s <= seq)

    async def _drain(self) -> bool:
        deadline = time.monotonic() + self.config.drain_timeout_s
        while time.monotonic() < deadline:
            if all(not r.stream.unacked for r in self.riders):
                return True
            await asyncio.sleep(0.1)
        return False

    async def _shutdown(self) -> None:
        self._stop.set()
        await asyncio.gather(*(c.close() for c in self.clients), return_exceptions=True)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        closer = getattr(self.tokens, "aclose", None)
        if closer is not None and getattr(self, "_own_tokens", False):  # (our DevTokens keeps one HTTP client)
            await closer()

    # -- results ------------------------------------------------------------------------
    def sent_samples(self) -> dict[tuple[str, str], list[tuple[float, list[float | None]]]]:
        """(session, participant) -> every valid sample its devices sent, as (ts, [hr, power,
        cadence, speed, distance]) (None or missing: not carried); needs ``keep_sent``."""
        out: dict[tuple[str, str], list[tuple[float, list[float | None]]]] = defaultdict(list)
        for rider in self.riders:
            out[(rider.participant.session, rider.participant.id)].extend(rider.sent_log or [])
        return dict(out)

    def truths(self) -> list[ParticipantTruth]:
        by_participant: dict[str, ParticipantTruth] = {}
        for r in self.riders:
            p = r.participant
            truth = by_participant.get(p.id)
            if truth is None:
                truth = by_participant[p.id] = ParticipantTruth(p.session, p.id)
            truth.sent += r.stream.sent
            truth.invalid += r.invalid
            truth.told_rejected.update(r.stream.rejected)
            truth.unacked += len(r.stream.unacked)
            truth.energy_kj += r.truth_energy_kj
        return list(by_participant.values())

    def latency(self) -> LatencyHistogram:
        hist = LatencyHistogram()
        for viewer in self.viewers.values():
            hist.merge(viewer.histogram)
        return hist

    def timeline(self) -> dict[int, LatencyHistogram]:
        merged: dict[int, LatencyHistogram] = defaultdict(LatencyHistogram)
        for viewer in self.viewers.values():
            for second, hist in viewer.timeline.items():
                merged[second].merge(hist)
        return dict(merged)

    def _windows(self, window_s: int = 5) -> list[dict[str, Any]]:
        """Latency percentiles per ``window_s`` of scheduled send time."""
        windows: dict[int, LatencyHistogram] = defaultdict(LatencyHistogram)
        for second, hist in self.timeline().items():
            windows[second // window_s].merge(hist)
        return [{"t_s": w * window_s, "n": h.count, **{k: v for k, v in h.summary().items() if k != "samples"}}
                for w, h in sorted(windows.items())]

    def _summarise(self, states: dict[str, Any], drained: bool, elapsed_s: float) -> dict[str, Any]:
        cfg = self.config
        unreachable = sorted(sid for sid, state in states.items() if state is None)
        truths = self.truths()
        verified = [t for t in truths if t.session not in unreachable]
        self._accounting = account(verified, server_rows({k: v for k, v in states.items() if v is not None}))
        summary = {k: v for k, v in self._accounting.items() if k != "participants"}
        unverified = [t for t in truths if t.session in unreachable]
        # sessions whose state no edge returned: what the swarm knows without the server
        summary["unverified"] = {
            "sessions": unreachable,
            "sent": sum(t.sent for t in unverified),
            "not_acknowledged": sum(t.unacked for t in unverified),
        }
        summary["verified"] = not unreachable  # False: the numbers above cover only the other sessions
        summary["phase_failures"] = self.phase_failures
        summary["http_failures"] = self.http_failures
        summary["failovers"] = sum(c.failovers for c in self.clients)
        for rider in self.riders:
            self.injected.update(rider.faults.injected)
        pv = self.participant_viewers
        return {
            "scenario": cfg.name,
            "sessions": cfg.sessions,
            "session_ids": self.sessions,
            "late_session_ids": self.late_sessions,
            "devices": cfg.devices,
            "riders": len(self.participants),
            "device_streams": len(self.riders),
            "connections": len(self.clients),
            "hub_size": cfg.hub_size,
            "seconds": round(elapsed_s, 2),
            "started_at": round(self.started, 3),
            "class_seconds": cfg.seconds,
            **summary,
            "drained": drained,
            "latency_ms": self.latency().summary(),
            "latency_over_time": self._windows(),
            "latency_unseen": sum(v.unseen for v in self.viewers.values()),
            "swarm_lag_ms": self.lag.summary(),
            "swarm_gc": self.gc.summary(),
            "throughput_samples_per_s": round(summary["sent"] / cfg.seconds, 1) if cfg.seconds else None,
            "boards_received": sum(v.boards for v in self.viewers.values()),
            "participant_boards": {
                "viewers": len(pv), "boards": sum(v.boards for v in pv),
                "with_own_row": sum(v.with_own_row for v in pv),
                "reconnects": sum(max(0, v.connects - 1) for v in pv),
            },
            "presence": self._presence(states),
            **({"admission": self._admission()} if cfg.in_class > 0 else {}),
            **({"plan": plan_summary({sid: v.plan for sid, v in self.viewers.items()},
                                     {sid: (st or {}).get("phase") for sid, st in states.items()})}
               if cfg.class_plan is not None else {}),
            "join_s": self._join_times(),
            "reconnects": sum(max(0, c.connects - 1) for c in self.clients),
            "faults_injected": dict(sorted(self.injected.items())),
            "server_frames": dict(self.frames_in),
        }

    def _admission(self) -> dict[str, Any]:
        cfg = self.config
        in_class, by_second = LatencyHistogram(), dict[int, LatencyHistogram]()
        for viewer in self.viewers.values():
            in_class.merge(viewer.tracked_histogram)
            for second, hist in viewer.tracked_timeline.items():
                by_second.setdefault(second, LatencyHistogram()).merge(hist)
        storm = [c for c in self.clients if self.join_at[id(c)] > 0.0]
        window = (int(cfg.storm_at_s), int(math.ceil(cfg.storm_at_s + cfg.join_window_s)) + 1)
        return admission_summary(storm, in_class, by_second, window)

    def _presence(self, states: dict[str, Any]) -> dict[str, Any]:
        """Riders the boards showed ``reconnecting`` at some point, and the classes' final
        presence counts (``GET /v1/sessions/{id}``; servers before presence: empty)."""
        final: dict[str, int] = defaultdict(int)
        for state in states.values():
            for key, count in ((state or {}).get("presence") or {}).items():
                final[key] += int(count)
        seen = set().union(*(v.reconnecting for v in self.viewers.values())) if self.viewers else set()
        return {"seen_reconnecting": len(seen), "final": dict(final)}

    def _join_times(self) -> dict[str, Any]:
        """Seconds from each connection's join time to its first welcome."""
        hist = LatencyHistogram()
        for c in self.clients:
            if c.welcomed_at is not None and c.started_at is not None:
                hist.record(max(0.0, c.welcomed_at - c.started_at) * 1000.0)
        s = hist.summary()
        return {"connections": s["samples"], **{k: (None if v is None else round(v / 1000.0, 3))
                                                   for k, v in s.items() if k in ("p50", "p99", "max")}}

    def report(self) -> dict[str, Any]:
        """The full report: the summary plus per-participant rows, per-second timeline and
        the latency histograms (mergeable, for multi-process swarms)."""
        if self._summary is None or self._accounting is None:
            raise RuntimeError("run() first")
        seconds = sorted(set(self.per_second["sent"]) | set(self.per_second["acked"]) | set(self.connections))
        timeline = self.timeline()
        return {
            **self._summary,
            "participants": self._accounting["participants"],
            "timeline": [
                {
                    "t_s": s,
                    "sent": self.per_second["sent"].get(s, 0),
                    "acked": self.per_second["acked"].get(s, 0),
                    "connections": self.connections.get(s),
                    "latency_ms": timeline[s].summary() if s in timeline else None,
                }
                for s in seconds
            ],
            "histograms": {
                "latency": self.latency().to_dict(),
                "by_second": {str(s): h.to_dict() for s, h in sorted(timeline.items())},
            },
        }


async def run_swarm(config: SwarmConfig) -> dict[str, Any]:
    return await Swarm(config).run()
