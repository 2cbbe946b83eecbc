"""The one interface the bridge uses to talk to sensors, and its bleak backend.

A ``Link`` finds sensors (``scan``) and connects to one (``connect``); a connected sensor
reports through an ``EventSink``: every notification as a ``Notification`` (address,
characteristic UUID, raw bytes, receive time on the link's clock) and a drop as a
``Disconnected``. The sink must be safe to call from any thread and must never block:
the bridge's sink only hands the event to its event loop (``call_soon_threadsafe``) and
a consumer task decodes it. Backends:

* ``BleakLink`` — real radios through bleak (``BleakScanner.discover`` with service
  filters, ``BleakClient`` with ``disconnected_callback``, ``start_notify``,
  ``read_gatt_char`` for the battery). The scanner and client classes are injectable,
  so tests put a fake at exactly the bleak boundary (``tests/devices/fakeble.py``).
* ``devices.replay.ReplayLink`` — plays a recorded log of notifications.

Every link carries a ``Clock``: the bridge stamps, ticks and backs off on it, so a
time-accelerated replay or fake behaves like real time, only faster. bleak's errors are
translated here into ``LinkError`` subclasses; nothing bleak-specific leaves this module.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, TypeAlias

from devices.gatt import Characteristic, DecodeError, decode
from devices.normalise import Source
from devices.errors import DevicesError

__all__ = [
    "Advert",
    "BleakLink",
    "Clock",
    "ConnectFailed",
    "Connection",
    "Disconnected",
    "EventSink",
    "Link",
    "LinkError",
    "LinkEvent",
    "Notification",
    "ScaledClock",
    "ScanFailed",
    "SensorKind",
    "WallClock",
    "service_uuid",
]

log = logging.getLogger(__name__)

SIG_SUFFIX: Final = "-0000-1000-8000-00805f9b34fb"


def service_uuid(assigned_number: int) -> str:
    """The full lower-case 128-bit UUID of a 16-bit SIG number (what bleak compares)."""
    return f"0000{assigned_number:04x}{SIG_SUFFIX}"


class SensorKind(enum.Enum):
    """A kind of sensor, as advertised by its GATT service."""

    HEART_RATE = "heart_rate"  # 0x180D
    CYCLING_POWER = "cycling_power"  # 0x1818
    CSC = "csc"  # 0x1816 cycling speed and cadence
    RSC = "rsc"  # 0x1814 running speed and cadence
    FITNESS_MACHINE = "fitness_machine"  # 0x1826 indoor bike / treadmill

    @property
    def service(self) -> str:
        return service_uuid(_SERVICES[self])

    @property
    def measurements(self) -> tuple[Characteristic, ...]:
        """The characteristics the bridge subscribes to for this kind (those present)."""
        return _MEASUREMENTS[self]

    @classmethod
    def from_service(cls, uuid: str) -> SensorKind | None:
        return _BY_SERVICE.get(uuid.lower())

    @classmethod
    def parse(cls, text: str) -> SensorKind:
        """``heart_rate``, ``cycling_power``, ``csc``, ``rsc``, ``fitness_machine`` (or an alias)."""
        key = text.strip().lower().replace("-", "_")
        kind = _ALIASES.get(key)
        if kind is None:
            names = ", ".join(k.value for k in cls)
            raise ValueError(f"unknown sensor kind {text!r}; one of {names}")
        return kind


_SERVICES: Final = {
    SensorKind.HEART_RATE: 0x180D,
    SensorKind.CYCLING_POWER: 0x1818,
    SensorKind.CSC: 0x1816,
    SensorKind.RSC: 0x1814,
    SensorKind.FITNESS_MACHINE: 0x1826,
}
_MEASUREMENTS: Final = {
    SensorKind.HEART_RATE: (Characteristic.HEART_RATE_MEASUREMENT,),
    SensorKind.CYCLING_POWER: (Characteristic.CYCLING_POWER_MEASUREMENT,),
    SensorKind.CSC: (Characteristic.CSC_MEASUREMENT,),
    SensorKind.RSC: (Characteristic.RSC_MEASUREMENT,),
    SensorKind.FITNESS_MACHINE: (Characteristic.INDOOR_BIKE_DATA, Characteristic.TREADMILL_DATA),
}
_BY_SERVICE: Final = {kind.service: kind for kind in SensorKind}
_ALIASES: Final = {
    **{kind.value: kind for kind in SensorKind},
    "hr": SensorKind.HEART_RATE,
    "power": SensorKind.CYCLING_POWER,
    "power_meter": SensorKind.CYCLING_POWER,
    "speed_cadence": SensorKind.CSC,
    "foot_pod": SensorKind.RSC,
    "ftms": SensorKind.FITNESS_MACHINE,
    "trainer": SensorKind.FITNESS_MACHINE,
    "indoor_bike": SensorKind.FITNESS_MACHINE,
    "treadmill": SensorKind.FITNESS_MACHINE,
}

# The normaliser source each measurement characteristic feeds (reset on reconnect).
SOURCE_OF_CHARACTERISTIC: Final = {
    Characteristic.HEART_RATE_MEASUREMENT: Source.HEART_RATE_STRAP,
    Characteristic.CYCLING_POWER_MEASUREMENT: Source.POWER_METER,
    Characteristic.CSC_MEASUREMENT: Source.SPEED_CADENCE,
    Characteristic.RSC_MEASUREMENT: Source.FOOT_POD,
    Characteristic.INDOOR_BIKE_DATA: Source.INDOOR_BIKE,
    Characteristic.TREADMILL_DATA: Source.TREADMILL,
}


# --- clocks -------------------------------------------------------------------------


class Clock(Protocol):
    """Unix-seconds time as a link sees it; ``speed`` is link seconds per real second."""

    speed: float

    def now(self) -> float: ...

    async def sleep_until(self, t: float) -> None: ...


class WallClock:
    """Real time."""

    speed = 1.0

    def now(self) -> float:
        return time.time()

    async def sleep_until(self, t: float) -> None:
        await asyncio.sleep(max(0.0, t - time.time()))


class ScaledClock:
    """Time running ``speed`` times faster than real time, never ahead of it.

    It starts ``span_s · (1 − 1/speed)`` seconds in the past, so after ``span_s`` link
    seconds (``span_s / speed`` real ones) it meets the real clock: a replay of a
    ``span_s`` recording ends "now", and no timestamp it produces is in the future of the
    server (which refuses samples more than 5 minutes ahead). Past ``span_s`` it runs
    ahead; keep ``span_s`` at least as long as the run.
    """

    def __init__(self, speed: float = 1.0, *, span_s: float = 0.0) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.speed = speed
        self._real0 = time.time()
        self._mono0 = time.monotonic()
        self._anchor = self._real0 - span_s * (1.0 - 1.0 / speed)

    def now(self) -> float:
        return self._anchor + (time.monotonic() - self._mono0) * self.speed

    async def sleep_until(self, t: float) -> None:
        await asyncio.sleep(max(0.0, (t - self.now()) / self.speed))


# --- what links report --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Advert:
    """A sensor in range: what a scan saw (``battery_pct`` only if it was read)."""

    address: str
    name: str | None
    kinds: tuple[SensorKind, ...]
    rssi: int | None = None
    battery_pct: int | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "name": self.name,
            "kinds": [k.value for k in self.kinds],
            "rssi": self.rssi,
            "battery_pct": self.battery_pct,
        }


@dataclass(frozen=True, slots=True)
class Notification:
    address: str
    characteristic: str  # lower-case 128-bit UUID
    payload: bytes
    ts: float  # receive time on the link's clock


@dataclass(frozen=True, slots=True)
class Disconnected:
    address: str
    ts: float


LinkEvent: TypeAlias = Notification | Disconnected
EventSink: TypeAlias = Callable[[LinkEvent], None]


class LinkError(DevicesError):
    """Root of the link errors; ``address`` names the sensor when there is one."""

    def __init__(self, message: str, *, address: str | None = None) -> None:
        super().__init__(message)
        self.address = address


class ScanFailed(LinkError):
    """The radio could not scan (adapter off, permission, backend error)."""


_SCAN_HINTS = (  # (what the error says, what it means on Linux/BlueZ and what to do)
    ("No such file or directory", "no D-Bus system bus (is dbus running? in a container, mount "
                                  "/run/dbus/system_bus_socket)"),
    ("ServiceUnknown", "BlueZ is not running: start bluetoothd (systemctl start bluetooth)"),
    ("org.bluez.Error.NotReady", "the Bluetooth adapter is off: bluetoothctl power on"),
    ("No Bluetooth adapters found", "no Bluetooth adapter: plug one in, or check that the kernel sees it (hciconfig / bluetoothctl list)"),
    ("AccessDenied", "no permission to use Bluetooth over D-Bus: run as a user in the 'bluetooth' group, or as root"),
    ("NotAuthorized", "no permission to use Bluetooth over D-Bus: run as a user in the 'bluetooth' group, or as root"),
)


def explain_scan_error(exc: BaseException) -> str:
    """One line for an operator: the likely cause of a failed scan, then the raw error."""
    raw = f"{type(exc).__name__}: {exc}"
    for marker, hint in _SCAN_HINTS:
        if marker in raw:
            return f"{hint} ({raw})"
    return raw


class ConnectFailed(LinkError):
    """A sensor could not be connected or subscribed (out of range, refused, timeout)."""


class Connection(Protocol):
    """A connected sensor. ``close`` is idempotent and does not fire ``Disconnected``."""

    address: str
    battery_pct: int | None
    subscribed: tuple[str, ...]

    async def close(self) -> None: ...


@dataclass(eq=False)
class PlaybackConnection:
    """A ``Connection`` whose notifications come from one task (replays, simulated sensors)."""

    address: str
    battery_pct: int | None
    subscribed: tuple[str, ...]
    task: asyncio.Task[None] | None = None
    closed: bool = field(default=False)

    async def close(self) -> None:
        self.closed = True
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)


class Link(Protocol):
    """What the bridge needs from a radio (or a replay): scan, connect, a clock."""

    clock: Clock

    async def scan(self, kinds: Collection[SensorKind], timeout_s: float) -> list[Advert]: ...

    async def connect(self, advert: Advert, sink: EventSink) -> Connection: ...


# --- bleak --------------------------------------------------------------------------


@dataclass(eq=False)
class BleakConnection:
    """A connected ``BleakClient`` (or a fake with the same methods)."""

    address: str
    client: Any
    battery_pct: int | None = None
    subscribed: tuple[str, ...] = ()
    closed: bool = field(default=False)

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            await self.client.disconnect()
        except Exception as exc:  # a sensor that already went away; nothing left to do
            log.debug("disconnect %s: %s", self.address, exc)


class BleakLink:
    """Sensors through bleak. ``scanner_cls`` / ``client_cls`` default to bleak's own.

    Calls made on them, and nothing else (a fake implements exactly these):
    ``scanner_cls.discover(timeout=, return_adv=True, service_uuids=[...])``,
    ``client_cls(address, disconnected_callback=, timeout=)``, ``.connect()``,
    ``.disconnect()``, ``.services.get_characteristic(uuid)``,
    ``.start_notify(uuid, callback)``, ``.read_gatt_char(uuid)``.
    """

    def __init__(
        self,
        *,
        scanner_cls: Any = None,
        client_cls: Any = None,
        clock: Clock | None = None,
        connect_timeout_s: float = 20.0,
        read_battery_on_scan: bool = False,
    ) -> None:
        if scanner_cls is None or client_cls is None:
            import bleak  # lazy: importing bleak probes the platform backend

            scanner_cls = scanner_cls or bleak.BleakScanner
            client_cls = client_cls or bleak.BleakClient
        self.scanner_cls = scanner_cls
        self.client_cls = client_cls
        self.clock: Clock = clock or WallClock()
        self.connect_timeout_s = connect_timeout_s
        self.read_battery_on_scan = read_battery_on_scan

    async def scan(self, kinds: Collection[SensorKind], timeout_s: float) -> list[Advert]:
        wanted = list(kinds) or list(SensorKind)
        try:
            found = await self.scanner_cls.discover(
                timeout=timeout_s, return_adv=True, service_uuids=[k.service for k in wanted]
            )
        except Exception as exc:  # bleak raises BleakError, OSError, dbus errors...
            raise ScanFailed(f"scan failed: {explain_scan_error(exc)}") from exc
        adverts = [a for a in (_advert(d, adv) for d, adv in found.values()) if a.kinds]
        adverts = [a for a in adverts if set(a.kinds) & set(wanted)]
        if self.read_battery_on_scan:
            adverts = [await self._with_battery(a) for a in adverts]
        return sorted(adverts, key=lambda a: (a.rssi is None, -(a.rssi or 0), a.address))

    async def _with_battery(self, advert: Advert) -> Advert:
        client = self.client_cls(advert.address, timeout=self.connect_timeout_s)
        try:
            await asyncio.wait_for(client.connect(), self.connect_timeout_s)
            battery = await _read_battery(client)
        except Exception as exc:  # battery is best effort in a listing
            log.info("battery of %s not read: %s", advert.address, exc)
            return advert
        finally:
            await BleakConnection(advert.address, client).close()
        return Advert(advert.address, advert.name, advert.kinds, advert.rssi, battery)

    async def connect(self, advert: Advert, sink: EventSink) -> Connection:
        address = advert.address

        def on_disconnect(_client: Any) -> None:
            sink(Disconnected(address, self.clock.now()))

        client = self.client_cls(address, disconnected_callback=on_disconnect, timeout=self.connect_timeout_s)
        conn = BleakConnection(address, client)
        try:
            await asyncio.wait_for(client.connect(), self.connect_timeout_s)
            conn.subscribed = await self._subscribe(client, advert, sink)
            conn.battery_pct = await _read_battery(client)
        except asyncio.CancelledError:
            await conn.close()
            raise
        except Exception as exc:  # BleakError, TimeoutError, OSError... all mean "not now"
            await conn.close()
            raise ConnectFailed(f"{address}: {type(exc).__name__}: {exc}", address=address) from exc
        if not conn.subscribed:
            await conn.close()
            raise ConnectFailed(f"{address}: no measurement characteristic to subscribe to", address=address)
        return conn

    async def _subscribe(self, client: Any, advert: Advert, sink: EventSink) -> tuple[str, ...]:
        address = advert.address
        clock = self.clock

        def on_notify(characteristic: Any, data: bytearray) -> None:
            sink(Notification(address, str(characteristic.uuid).lower(), bytes(data), clock.now()))

        subscribed = []
        for uuid in _measurement_uuids(advert.kinds):
            if client.services.get_characteristic(uuid) is None:
                continue
            await client.start_notify(uuid, on_notify)
            subscribed.append(uuid)
        return tuple(subscribed)


def _measurement_uuids(kinds: Iterable[SensorKind]) -> list[str]:
    return [c.uuid for kind in kinds for c in kind.measurements]


async def _read_battery(client: Any) -> int | None:
    uuid = Characteristic.BATTERY_LEVEL.uuid
    if client.services.get_characteristic(uuid) is None:
        return None
    try:
        level = decode(Characteristic.BATTERY_LEVEL, await client.read_gatt_char(uuid))
    except DecodeError as exc:
        log.info("unreadable battery level: %s", exc)
        return None
    return getattr(level, "battery_pct", None)


def _advert(device: Any, adv: Any) -> Advert:
    kinds = {SensorKind.from_service(u) for u in (adv.service_uuids or ())}
    kinds.discard(None)
    return Advert(
        address=device.address,
        name=adv.local_name or device.name,
        kinds=tuple(sorted((k for k in kinds if k is not None), key=lambda k: k.value)),
        rssi=adv.rssi,
    )
