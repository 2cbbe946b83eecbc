"""The BLE bridge: sensors in, one canonical sample per participant per second out.

``Bridge(config, link)`` owns, for one session on one edge:

* a **connector** task that, holding the radio lock (one scan-and-connect at a time),
  scans with service filters, matches what it finds against the config's assignments
  (by address, by name, or every device of a kind), and connects sensors one by one; a
  sensor that drops or refuses is retried with exponential backoff (with jitter) and
  gets a fresh decoder baseline (its normaliser sources are reset);
* the link's callbacks, which only enqueue (``loop.call_soon_threadsafe`` onto a bounded
  ``asyncio.Queue``), and a **consumer** task that decodes (``devices.gatt``) and feeds
  each participant's ``devices.normalise.Normaliser``;
* a **ticker** that every ``emit_interval_s`` of the link's clock asks each participant's
  normaliser for a reading and, when some source is fresh, makes it a sample of that
  participant's own device (``bridge-<name>-<participant>``), stores it in the spool
  (which also persists the seq counter) and only then sends it;
* one ``HubClient`` connection carrying every participant's stream, whose acks and
  rejections trim the spool (written in batches by a **flusher**); after a reconnect or
  a restart on the same spool every unacknowledged sample is resent.

Guarantee: every sample the bridge emits reaches the server exactly once (it is applied
once or rejected with a reason), across sensor drops, edge disconnects and bridge
restarts on the same spool file — until the spool is full (see ``devices.spool``).

Lifecycle: ``await start()``, then run; ``await drain(timeout_s)`` waits for every spooled
sample to be acknowledged; ``await close()`` stops taking data, disconnects sensors,
writes pending trims and closes the spool (unacknowledged samples stay spooled).
"""

from __future__ import annotations

import asyncio
import enum
import heapq
import logging
import math
import random
import re
from collections import Counter
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, ParamSpec, TypeVar

from devices.client import HubClient
from devices.gatt import BatteryLevel, DecodeError, Measurement, decode, parse_characteristic
from devices.links import (
    SOURCE_OF_CHARACTERISTIC,
    Advert,
    Connection,
    Disconnected,
    Link,
    LinkError,
    LinkEvent,
    Notification,
    SensorKind,
)
from devices.normalise import Normaliser, Source
from devices.spool import DEFAULT_MAX_ROWS, Spool, SpooledStream, SpoolFull, StreamRecord
from devices.errors import DevicesError

__all__ = ["Assignment", "Bridge", "BridgeConfig", "BridgeError", "Sensor", "SensorState", "device_id", "slug"]

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")
EmitObserver = Callable[[str, list[Any]], None]
TokenMinter = Callable[..., Awaitable[str]]  # (**claims) -> JWT, e.g. devices.client.DevTokens
MAX_ID: Final = 128
SKIP_AFTER_S: Final = 5.0  # real seconds behind before the ticker skips instead of catching up
_REFUSED: Final = {"unauthorised", "forbidden"}  # error codes of a refused hello binding
SEND_GAP_S: Final = 0.1  # at most one samples frame per device per this many real seconds
_DATA_TASKS: Final = {"bridge-_connector", "bridge-_ticker", "bridge-_consume"}


async def _to_completion(job: Awaitable[T]) -> T:
    """Await ``job`` to its end even if the caller is cancelled meanwhile, then re-raise
    the cancellation: for work that must not stop half-way (a spool write and the memory
    that has to follow it)."""
    task = asyncio.ensure_future(job)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        if not task.cancelled() and task.exception() is not None:
            log.error("bridge: %s failed while being cancelled", job, exc_info=task.exception())
        raise asyncio.CancelledError
    return task.result()


class BridgeError(DevicesError):
    """Root of the bridge's own errors (links raise ``LinkError``, the spool ``SpoolError``)."""


class SensorState(enum.Enum):
    FOUND = "found"  # seen in a scan, never connected
    CONNECTING = "connecting"
    CONNECTED = "connected"
    BACKOFF = "backoff"  # dropped or refused; retried at ``retry_at``
    CLOSED = "closed"


_TRANSITIONS: Final = {
    SensorState.FOUND: {SensorState.CONNECTING, SensorState.CLOSED},
    SensorState.CONNECTING: {SensorState.CONNECTED, SensorState.BACKOFF, SensorState.CLOSED},
    SensorState.CONNECTED: {SensorState.BACKOFF, SensorState.CLOSED},
    SensorState.BACKOFF: {SensorState.CONNECTING, SensorState.CLOSED},
    SensorState.CLOSED: set(),
}


def slug(text: str) -> str:
    """A participant or device id fragment: lower-case letters, digits and dashes."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:64] or "sensor"


def device_id(bridge: str, participant: str) -> str:
    """The wire device id of a participant's merged stream."""
    return f"bridge-{bridge}-{participant}"[:MAX_ID]


@dataclass(frozen=True, slots=True)
class Assignment:
    """Which sensors belong to which participant.

    Exactly one of ``address``, ``name`` (the advertised name, exact) or ``kind`` selects.
    ``participant=None`` (only sensible with ``kind``) names each matching sensor's
    participant after the sensor (its name, else its address).
    """

    participant: str | None
    address: str | None = None
    name: str | None = None
    kind: SensorKind | None = None

    def __post_init__(self) -> None:
        if sum(x is not None for x in (self.address, self.name, self.kind)) != 1:
            raise BridgeError("an assignment selects by exactly one of address, name or kind")
        if self.participant is not None and not 0 < len(self.participant) <= MAX_ID:
            raise BridgeError(f"participant ids are 1-{MAX_ID} characters")

    def matches(self, advert: Advert) -> bool:
        if self.address is not None:
            return advert.address.lower() == self.address.lower()
        if self.name is not None:
            return advert.name == self.name
        return self.kind in advert.kinds

    def participant_for(self, advert: Advert) -> str:
        return self.participant or slug(advert.name or advert.address)

    @property
    def precedence(self) -> int:
        return 0 if self.address is not None else 1 if self.name is not None else 2


@dataclass(frozen=True)
class BridgeConfig:
    """Everything one bridge needs; units in the names. See docs/devices.md."""

    url: str  # the edge, http(s):// or ws(s):// base; several edges comma-separated (fail-over)
    session: str
    assignments: tuple[Assignment, ...]
    spool_path: Path
    name: str = "bridge"
    token: str | None = None
    wheel_circumference_m: float = 2.105
    stale_after_s: float = 5.0
    emit_interval_s: float = 1.0
    scan_timeout_s: float = 5.0
    rescan_interval_s: float = 10.0
    backoff_min_s: float = 1.0
    backoff_max_s: float = 30.0
    spool_max_rows: int = DEFAULT_MAX_ROWS
    event_queue_size: int = 10_000
    flush_interval_s: float = 0.25

    @property
    def urls(self) -> list[str]:
        """Every edge in ``url`` (comma-separated); the hub connection fails over between them."""
        return [u.strip() for u in self.url.split(",") if u.strip()]

    @property
    def ws_urls(self) -> list[str]:
        return [_devices_url(u) for u in self.urls]

    @property
    def ws_url(self) -> str:
        return self.ws_urls[0]


def _devices_url(url: str) -> str:
    base = re.sub(r"^http", "ws", url.rstrip("/"))
    return base if base.endswith("/v1/devices") else base + "/v1/devices"


@dataclass(eq=False)
class Sensor:
    """One physical sensor the bridge wants, and its link state."""

    advert: Advert
    participant: str
    state: SensorState = SensorState.FOUND
    connection: Connection | None = None
    generation: int = 0  # bumped on every connect; events of older connections are dropped
    retry_at: float = 0.0
    backoff_s: float = 0.0
    connects: int = 0
    drops: int = 0
    refused: int = 0
    notifications: int = 0
    decode_errors: int = 0
    battery_pct: int | None = None
    sources: set[Source] = field(default_factory=set)

    @property
    def address(self) -> str:
        return self.advert.address

    def move(self, new: SensorState) -> None:
        if new not in _TRANSITIONS[self.state]:
            raise BridgeError(f"sensor {self.address}: {self.state.value} -> {new.value} is not allowed")
        self.state = new

    def describe(self) -> dict[str, Any]:
        return {
            **self.advert.describe(),
            "participant": self.participant,
            "state": self.state.value,
            "battery_pct": self.battery_pct if self.battery_pct is not None else self.advert.battery_pct,
            "connects": self.connects,
            "drops": self.drops,
            "refused": self.refused,
            "notifications": self.notifications,
            "decode_errors": self.decode_errors,
        }


@dataclass(eq=False)
class Rider:
    """One participant: the merge of their sensors, and their stream to the edge."""

    participant: str
    stream: SpooledStream
    normaliser: Normaliser
    rejected_before: int = 0  # rejections recorded by earlier runs on this spool
    emitted: int = 0  # this run
    send_after: float = 0.0  # loop time before which nothing is sent (rate, throttle)
    flags: Counter[str] = field(default_factory=Counter)
    _held: list[tuple[float, int, str, Measurement]] = field(default_factory=list)
    _order: int = 0

    def hold(self, ts: float, address: str, measurement: Measurement) -> None:
        """Keep a decoded measurement until the tick at or after ``ts``."""
        self._order += 1
        heapq.heappush(self._held, (ts, self._order, address, measurement))

    def release(self, ts: float) -> None:
        """Feed the normaliser, in time order, every measurement taken up to ``ts``.

        A tick that runs late (a loaded machine) thus never sees a later measurement.
        """
        while self._held and self._held[0][0] <= ts:
            taken, _, _, measurement = heapq.heappop(self._held)
            self.normaliser.add(measurement, taken)

    def forget(self, address: str) -> None:
        """Drop a dropped sensor's measurements not yet fed (its baseline starts over)."""
        self._held = [item for item in self._held if item[2] != address]
        heapq.heapify(self._held)

    def describe(self) -> dict[str, Any]:
        s = self.stream
        return {
            "device": s.device,
            "emitted": self.emitted,
            "emitted_total": s.next_seq - 1,
            "acked": s.acked,
            "rejected": self.rejected_before + sum(s.rejected.values()),
            "spooled": len(s.unacked),
            "flags": dict(self.flags),
        }


class Bridge:
    """See the module docstring. Not thread-safe: one event loop drives it."""

    def __init__(
        self,
        config: BridgeConfig,
        link: Link,
        *,
        on_emit: EmitObserver | None = None,
        tokens: TokenMinter | None = None,
    ) -> None:
        """``tokens`` mints hub tokens naming the bridge's devices (asked on every connect
        and whenever a participant is added); without it ``config.token`` is sent as is."""
        self.config = config
        self.link = link
        self.on_emit = on_emit
        self.tokens = tokens
        self.sensors: dict[str, Sensor] = {}
        self.riders: dict[str, Rider] = {}
        self.hub: HubClient | None = None
        self.spool: Spool | None = None
        self.counters: Counter[str] = Counter()
        self._radio = asyncio.Lock()  # one scan-and-connect at a time
        self._emit_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._events: asyncio.Queue[tuple[int, LinkEvent]] = asyncio.Queue(config.event_queue_size)
        self._io = ThreadPoolExecutor(1, thread_name_prefix="bridge-spool")
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_scan: float | None = None
        self.last_tick = -math.inf  # link time of the ticker's last tick
        self._closing = False
        self._closed = False
        self._spool_full = False
        self._rehello: set[str] = set()

    # -- lifecycle ------------------------------------------------------------------
    async def start(self) -> None:
        """Open the spool, restore its streams for this session, start every task."""
        self._loop = asyncio.get_running_loop()
        cfg = self.config
        self.spool = await self._call(Spool, cfg.spool_path, max_rows=cfg.spool_max_rows)
        for record in await self._call(self.spool.streams, cfg.session):
            await self._add_rider(record)
        restored = len(self.riders)
        for assignment in cfg.assignments:
            if assignment.participant is not None:
                await self._rider(assignment.participant)
        if self.riders:
            self._start_hub()
        loop = self._loop
        for job in (self._consume, self._connector, self._ticker, self._flusher):
            self._tasks.append(loop.create_task(job(), name=f"bridge-{job.__name__}"))
        log.info(
            "bridge %s started: session %s, %d participant(s) (%d from the spool, %d samples to resend)",
            cfg.name, cfg.session, len(self.riders), restored, sum(len(r.stream.unacked) for r in self.riders.values()),
        )

    async def finish(self) -> None:
        """Stop taking data (no scan, connection or new sample); forwarding goes on.

        Call it at the end of a class, then ``drain`` to wait for the last acks.
        """
        self._closing = True
        self._wake.set()
        data_tasks = [t for t in self._tasks if t.get_name() in _DATA_TASKS]
        for task in data_tasks:
            task.cancel()
        await asyncio.gather(*data_tasks, return_exceptions=True)
        await asyncio.gather(*(self._disconnect(s) for s in self.sensors.values()), return_exceptions=True)

    async def close(self) -> None:
        """Stop everything; unacknowledged samples stay in the spool for the next start."""
        if self._closed:
            return
        self._closed = True
        await self.finish()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._flush()
        if self.hub is not None:
            await self.hub.close()
        if self.spool is not None:
            await self._call(self.spool.close)
        self._io.shutdown(wait=False)  # idle: every spool call above was awaited
        log.info("bridge %s closed: %s", self.config.name, self.totals())

    async def drain(self, timeout_s: float) -> bool:
        """Wait (at most ``timeout_s`` real seconds) until nothing is left unacknowledged."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            if all(not r.stream.unacked for r in self.riders.values()):
                await self._flush()
                return True
            await asyncio.sleep(0.05)
        return False

    async def emit_now(self, ts: float) -> int:
        """Emit one tick at link time ``ts`` now (the ticker does this every interval)."""
        return await self._emit(ts)

    async def wait_tick(self, ts: float) -> None:
        """Wait until the ticker has emitted its tick at or after link time ``ts``."""
        while self.last_tick < ts and not self._closing:
            await asyncio.sleep(0.01)

    # -- state ----------------------------------------------------------------------
    def totals(self) -> dict[str, int]:
        riders = [r.describe() for r in self.riders.values()]
        keys = ("emitted", "emitted_total", "acked", "rejected", "spooled")
        totals = {k: sum(int(r[k]) for r in riders) for k in keys}
        return {**totals, **dict(self.counters)}

    def summary(self) -> dict[str, Any]:
        """JSON-ready: totals, per participant, per sensor, and the hub connection."""
        return {
            "bridge": self.config.name,
            "session": self.config.session,
            **self.totals(),
            "participants": {p: r.describe() for p, r in sorted(self.riders.items())},
            "sensors": [s.describe() for s in sorted(self.sensors.values(), key=lambda s: s.address)],
            "hub": {
                "connects": self.hub.connects if self.hub else 0,
                "errors": dict(self.hub.errors) if self.hub else {},
            },
        }

    # -- riders and the hub -----------------------------------------------------------
    async def _rider(self, participant: str) -> Rider:
        rider = self.riders.get(participant)
        if rider is not None:
            return rider
        assert self.spool is not None
        record = await self._call(
            self.spool.open_stream, self.config.session, device_id(self.config.name, participant), participant
        )
        return await self._add_rider(record)

    async def _add_rider(self, record: StreamRecord) -> Rider:
        assert self.spool is not None
        rows = await self._call(self.spool.pending, record.session, record.device)
        stream = SpooledStream(record, rows)
        normaliser = Normaliser(
            stale_after_s=self.config.stale_after_s, wheel_circumference_m=self.config.wheel_circumference_m
        )
        rider = Rider(record.participant, stream, normaliser, rejected_before=record.rejected)
        self.riders[record.participant] = rider
        if self._tasks:  # running: the hub carries the new stream from now on
            await self._carry(stream)
        return rider

    def _start_hub(self) -> None:
        streams = [r.stream for r in self.riders.values()]
        extra: dict[str, Any] = {} if self.tokens is None else {"token_provider": self._hub_token}
        self.hub = HubClient(
            self.config.ws_urls, streams, token=self.config.token, hub=self.config.name[:MAX_ID],
            on_frame=self._on_frame, **extra,
        )
        self.hub.start()

    async def _carry(self, stream: SpooledStream) -> None:
        if self.hub is None:
            self._start_hub()
            return
        if self.tokens is not None:  # the next hello carries a token that names the new device
            self.hub.token = await self._hub_token()
        await self.hub.add_stream(stream)

    async def _hub_token(self) -> str:
        assert self.tokens is not None
        devices = sorted(r.stream.device for r in self.riders.values())
        return await self.tokens(kind="hub", hub=self.config.name[:MAX_ID], devices=devices, sessions=[self.config.session])

    # -- events: callbacks only enqueue ---------------------------------------------
    def _sink_for(self, sensor: Sensor) -> Callable[[LinkEvent], None]:
        generation = sensor.generation
        loop = self._loop
        assert loop is not None

        def sink(event: LinkEvent) -> None:  # any thread; never blocks
            try:
                loop.call_soon_threadsafe(self._enqueue, generation, event)
            except RuntimeError:  # the loop is closed: the bridge is gone
                pass

        return sink

    def _enqueue(self, generation: int, event: LinkEvent) -> None:
        try:
            self._events.put_nowait((generation, event))
        except asyncio.QueueFull:
            if isinstance(event, Disconnected):
                self._process(generation, event)  # never lose a drop
            else:
                self.counters["events_dropped"] += 1

    async def _consume(self) -> None:
        while True:
            generation, event = await self._events.get()
            try:
                self._process(generation, event)
            except Exception:  # the consumer never dies
                log.exception("bridge: event %r not processed", event)

    def _drain_events(self) -> None:
        while not self._events.empty():
            self._process(*self._events.get_nowait())

    def _process(self, generation: int, event: LinkEvent) -> None:
        sensor = self.sensors.get(event.address)
        live = (SensorState.CONNECTING, SensorState.CONNECTED)
        if sensor is None or sensor.generation != generation or sensor.state not in live:
            self.counters["events_stale"] += 1
            return
        if isinstance(event, Notification):
            self._notification(sensor, event)
        else:
            self._dropped(sensor, event.ts)

    def _notification(self, sensor: Sensor, event: Notification) -> None:
        sensor.notifications += 1
        try:
            measurement = decode(event.characteristic, event.payload)
        except DecodeError as exc:
            sensor.decode_errors += 1
            log.log(logging.WARNING if sensor.decode_errors <= 3 else logging.DEBUG, "%s: %s", sensor.address, exc)
            return
        if isinstance(measurement, BatteryLevel):
            sensor.battery_pct = measurement.battery_pct
            return
        source = SOURCE_OF_CHARACTERISTIC.get(parse_characteristic(event.characteristic))
        if source is not None:
            sensor.sources.add(source)
        self.riders[sensor.participant].hold(event.ts, sensor.address, measurement)

    def _dropped(self, sensor: Sensor, ts: float) -> None:
        if sensor.state is SensorState.CONNECTING:
            sensor.generation += 1  # the connector sees the bump and backs off
            return
        log.info("sensor %s (%s) dropped", sensor.address, sensor.participant)
        sensor.drops += 1
        sensor.connection = None
        sensor.backoff_s = 0.0
        self._back_off(sensor, ts)
        self._wake.set()

    def _back_off(self, sensor: Sensor, now: float) -> None:
        """Fresh baseline for the sensor's sources, then wait before the next attempt."""
        rider = self.riders[sensor.participant]
        rider.forget(sensor.address)
        for source in sensor.sources:
            rider.normaliser.reset_source(source)
        cfg = self.config
        sensor.backoff_s = min(max(sensor.backoff_s * 2, cfg.backoff_min_s), cfg.backoff_max_s)
        sensor.retry_at = now + sensor.backoff_s * random.uniform(0.8, 1.2)
        sensor.move(SensorState.BACKOFF)

    # -- connector: one scan-and-connect at a time ------------------------------------
    async def _connector(self) -> None:
        while not self._closing:
            try:
                async with self._radio:
                    await self._scan_if_due()
                    await self._connect_due()
            except Exception:  # the loop never dies
                log.exception("bridge: connector round failed")
            await self._sleep_or_wake(self._next_round())

    def _unresolved(self) -> bool:
        found = list(self.sensors.values())
        for a in self.config.assignments:
            if a.kind is not None or not any(a.matches(s.advert) for s in found):
                return True
        return False

    async def _scan_if_due(self) -> None:
        now = self.link.clock.now()
        if not self._unresolved():
            return
        if self._last_scan is not None and now - self._last_scan < self.config.rescan_interval_s:
            return
        self._last_scan = now
        kinds = {a.kind for a in self.config.assignments}
        scan_kinds = set(SensorKind) if None in kinds else {k for k in kinds if k is not None}
        try:
            adverts = await self.link.scan(scan_kinds, self.config.scan_timeout_s)
        except LinkError as exc:
            log.warning("bridge: %s", exc)
            self.counters["scan_failures"] += 1
            return
        for advert in adverts:
            await self._adopt(advert)

    async def _adopt(self, advert: Advert) -> None:
        known = self.sensors.get(advert.address)
        if known is not None:
            return
        matching = sorted((a for a in self.config.assignments if a.matches(advert)), key=lambda a: a.precedence)
        if not matching:
            return
        participant = matching[0].participant_for(advert)
        await self._rider(participant)
        self.sensors[advert.address] = Sensor(advert, participant, battery_pct=advert.battery_pct)
        log.info("sensor %s (%s, %s) -> %s", advert.address, advert.name, [k.value for k in advert.kinds], participant)

    async def _connect_due(self) -> None:
        for sensor in sorted(self.sensors.values(), key=lambda s: s.address):
            if self._closing:
                return
            due = sensor.state is SensorState.FOUND or (
                sensor.state is SensorState.BACKOFF and sensor.retry_at <= self.link.clock.now()
            )
            if due:
                await self._connect(sensor)

    async def _connect(self, sensor: Sensor) -> None:
        sensor.move(SensorState.CONNECTING)
        sensor.generation += 1
        generation = sensor.generation
        try:
            connection = await self.link.connect(sensor.advert, self._sink_for(sensor))
        except LinkError as exc:
            sensor.refused += 1
            log.info("sensor %s not connected: %s", sensor.address, exc)
            self._back_off(sensor, self.link.clock.now())
            return
        if self._closing or sensor.generation != generation:  # closed, or dropped meanwhile
            await connection.close()
            if sensor.state is SensorState.CONNECTING:
                self._back_off(sensor, self.link.clock.now())
            return
        sensor.connection = connection
        sensor.connects += 1
        sensor.backoff_s = 0.0
        if connection.battery_pct is not None:
            sensor.battery_pct = connection.battery_pct
        sensor.move(SensorState.CONNECTED)
        log.info("sensor %s connected (%s)", sensor.address, ", ".join(connection.subscribed))

    async def _disconnect(self, sensor: Sensor) -> None:
        connection, sensor.connection = sensor.connection, None
        if sensor.state is not SensorState.CLOSED:
            sensor.move(SensorState.CLOSED)
        if connection is not None:
            await asyncio.wait_for(connection.close(), 5.0)

    def _next_round(self) -> float:
        clock = self.link.clock
        times = [s.retry_at for s in self.sensors.values() if s.state is SensorState.BACKOFF]
        if self._unresolved():
            times.append((self._last_scan or clock.now()) + self.config.rescan_interval_s)
        return min(times, default=clock.now() + self.config.rescan_interval_s)

    async def _sleep_or_wake(self, until: float) -> None:
        clock = self.link.clock
        delay = max(0.0, (until - clock.now()) / clock.speed)
        try:
            await asyncio.wait_for(self._wake.wait(), delay)
        except TimeoutError:
            pass
        self._wake.clear()

    # -- ticker: one sample per participant per interval --------------------------------
    async def _ticker(self) -> None:
        clock, interval = self.link.clock, self.config.emit_interval_s
        t = math.floor(clock.now() / interval) * interval + interval
        while not self._closing:
            await clock.sleep_until(t)
            try:
                await self._emit(t)
            except Exception:  # the loop never dies; the next tick tries again
                log.exception("bridge: tick at %.3f failed", t)
            self.last_tick = t
            t += interval
            if clock.now() - t > max(5 * interval, SKIP_AFTER_S * clock.speed):  # the machine slept
                self.counters["ticks_skipped"] += 1
                t = math.floor(clock.now() / interval) * interval + interval

    async def _emit(self, ts: float) -> int:
        async with self._emit_lock:  # seqs are taken in order, one tick at a time
            return await self._emit_locked(ts)

    async def _emit_locked(self, ts: float) -> int:
        self._drain_events()
        await self._skip_ahead()
        batch: list[tuple[Rider, list[Any]]] = []
        for rider in self.riders.values():
            rider.release(ts)
            reading = rider.normaliser.emit(ts)
            rider.flags.update(f.reason.value for f in reading.flags)
            if reading.sources:
                batch.append((rider, reading.to_sample(rider.stream.next_seq).to_wire()))
        if not batch:
            return 0
        if not await _to_completion(self._keep(batch)):
            return 0
        await self._send([rider for rider, _ in batch])
        return len(batch)

    async def _keep(self, batch: list[tuple[Rider, list[Any]]]) -> bool:
        """Store the batch, then add its rows to their streams: both or neither.

        Run to completion even when the emit is cancelled (``finish`` cancels the ticker
        wherever it is): a running spool append cannot be called back, and a row on disk
        that its stream never took would be resent by the next start without ever having
        been counted or seen by ``on_emit``.
        """
        if not await self._store(batch):
            return False
        for rider, row in batch:
            rider.stream.add_row(row)
            rider.emitted += 1
            if self.on_emit is not None:
                self.on_emit(rider.participant, row)
        return True

    async def _skip_ahead(self) -> None:
        """A server that holds seqs the spool never gave out (the spool was deleted or
        replaced): continue after them, or the new samples would be taken as duplicates."""
        assert self.spool is not None
        for rider in self.riders.values():
            stream = rider.stream
            if stream.resume_from > stream.next_seq:
                log.error(
                    "bridge: the server holds %s up to seq %d but the spool was at %d; skipping ahead"
                    " (was the spool deleted?)", stream.device, stream.resume_from - 1, stream.next_seq - 1,
                )
                await self._call(self.spool.skip_to, self.config.session, stream.device, stream.resume_from)
                stream.next_seq = stream.resume_from
                self.counters["seq_skips"] += 1

    async def _store(self, batch: list[tuple[Rider, list[Any]]]) -> bool:
        assert self.spool is not None
        entries = [(self.config.session, rider.stream.device, row) for rider, row in batch]
        try:
            await self._call(self.spool.append, entries)
        except SpoolFull as exc:
            self.counters["dropped_spool_full"] += len(batch)
            if not self._spool_full:
                log.warning("bridge: %s; new readings are dropped until acks make room", exc)
            self._spool_full = True
            return False
        self._spool_full = False
        return True

    async def _send(self, riders: list[Rider]) -> None:
        """Send what each stream may send now; the rest goes with the next flush.

        At most one frame per device per ``SEND_GAP_S`` (an accelerated replay stays
        under the edge's per-device frame rate), none during a throttle pause.
        """
        if self.hub is None:
            return
        now = asyncio.get_running_loop().time()
        for rider in riders:
            if now < rider.send_after:
                continue
            rows = rider.stream.take_sendable()
            if rows:
                rider.send_after = now + SEND_GAP_S
                await self.hub.send_rows(rider.stream, rows)

    def _on_frame(self, frame: dict[str, Any]) -> None:
        if frame.get("t") == "error" and frame.get("code") in _REFUSED and frame.get("device"):
            # a device the connection's token did not cover yet (added while connecting)
            self._rehello.add(str(frame["device"]))
            self.counters["hello_refused"] += 1
        if frame.get("t") == "throttle":
            rider = self._rider_of_device(frame.get("device"))
            if rider is not None:  # the hub resends after the pause; we wait for it too
                pause_s = float(frame.get("retry_after_ms", 1000)) / 1000
                rider.send_after = asyncio.get_running_loop().time() + pause_s
                self.counters["throttled"] += 1

    def _rider_of_device(self, device: Any) -> Rider | None:
        return next((r for r in self.riders.values() if r.stream.device == device), None)

    # -- flusher: acks and rejections into the spool, more of a backlog out -----------
    async def _flusher(self) -> None:
        while True:
            await asyncio.sleep(self.config.flush_interval_s)
            try:
                await self._flush()
                await self._hello_again()
                await self._send(list(self.riders.values()))
            except Exception:  # the loop never dies; trims are retried next time
                log.exception("bridge: flush failed")

    async def _hello_again(self) -> None:
        """Say hello again, with a fresh token, for devices the edge refused."""
        devices, self._rehello = self._rehello, set()
        for device in devices:
            rider = self._rider_of_device(device)
            if rider is not None and self.hub is not None:
                await self._carry(rider.stream)

    async def _flush(self) -> None:
        spool = self.spool
        if spool is None:
            return
        trims = [(r.stream.device, *r.stream.take_trims()) for r in self.riders.values()]
        trims = [t for t in trims if t[1] or t[2]]
        if trims:  # taken from memory: written even if the flusher is cancelled meanwhile
            await _to_completion(self._call(self._write_trims, spool, trims))

    def _write_trims(self, spool: Spool, trims: list[tuple[str, int, list[int]]]) -> None:
        for device, acked, rejected in trims:
            if rejected:
                spool.reject(self.config.session, device, rejected)
            if acked:
                spool.ack(self.config.session, device, acked)

    async def _call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a spool call on the bridge's single I/O thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._io, lambda: fn(*args, **kwargs))

