"""A fake at the bleak boundary: a scanner and a client class with bleak's methods.

``FakeAir`` holds simulated sensors (``sims.ble``) on a (possibly accelerated) clock.
``air.scanner_cls`` / ``air.client_cls`` are what ``devices.links.BleakLink`` takes in
place of ``bleak.BleakScanner`` / ``bleak.BleakClient``; they return bleak's own
``BLEDevice`` and ``AdvertisementData`` and raise bleak's own exceptions. Sensors behave
like real ones:

* they advertise their service (a scan filters on full 128-bit lower-case UUIDs, as
  bleak's backends compare them — anything else is refused loudly);
* once subscribed they notify real GATT payloads at their own rate, on the clock;
  sensors keep running while nobody listens (counters move on);
* ``drop(address, at_s, refuse_for_s)`` makes a sensor fall off mid-stream (the client's
  ``disconnected_callback`` fires) and refuse connections for a while (it still
  advertises; ``connect`` raises bleak's not-found error); ``refuse(address, until_s)``
  makes it refuse from the start, ``refuse_first(address, n)`` its first n attempts;
* the battery is readable (0x2A19).

The air also records how the bridge used the radio: scans, connection attempts and the
most connection attempts in flight at once.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bleak.exc import BleakCharacteristicNotFoundError, BleakDeviceNotFoundError, BleakError

from devices.gatt import Characteristic
from devices.links import Clock
from sims.ble import SimSensor

CONNECT_TIME_S = 0.4  # link seconds a connection takes


@dataclass(frozen=True)
class FakeCharacteristic:
    uuid: str


@dataclass
class _Peripheral:
    sim: SimSensor
    refuse_until_s: float = -1.0
    refuse_attempts: int = 0
    drops: list[tuple[float, float]] = field(default_factory=list)  # (at_s, refuse_for_s)
    client: FakeBleakClient | None = None

    @property
    def characteristics(self) -> set[str]:
        return {self.sim.characteristic.uuid, Characteristic.BATTERY_LEVEL.uuid}


class FakeAir:
    def __init__(self, sensors: list[SimSensor], clock: Clock, *, rssi: int = -62) -> None:
        self.clock = clock
        self.origin = clock.now()
        self.rssi = rssi
        self.peripherals = {s.address: _Peripheral(s) for s in sensors}
        self.scans: list[list[str]] = []
        self.connect_attempts: Counter[str] = Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        air = self
        self.scanner_cls = type("FakeBleakScanner", (FakeBleakScanner,), {"air": air})
        self.client_cls = type("FakeBleakClient", (FakeBleakClient,), {"air": air})

    def elapsed(self) -> float:
        """Sensor time: link seconds since the air was made."""
        return self.clock.now() - self.origin

    def drop(self, address: str, at_s: float, refuse_for_s: float) -> None:
        self.peripherals[address].drops.append((at_s, refuse_for_s))

    def refuse(self, address: str, until_s: float) -> None:
        self.peripherals[address].refuse_until_s = until_s

    def refuse_first(self, address: str, attempts: int) -> None:
        self.peripherals[address].refuse_attempts = attempts

    def reachable(self, address: str) -> bool:
        p = self.peripherals[address]
        if p.refuse_attempts > 0:
            p.refuse_attempts -= 1
            return False
        return self.elapsed() >= p.refuse_until_s


class FakeBleakScanner:
    air: FakeAir

    @classmethod
    async def discover(
        cls, timeout: float = 5.0, *, return_adv: bool = False, service_uuids: list[str] | None = None, **_: Any
    ) -> Any:
        for uuid in service_uuids or []:
            if uuid != uuid.lower() or len(uuid) != 36:
                raise BleakError(f"service filter {uuid!r} is not a lower-case 128-bit UUID")
        cls.air.scans.append(list(service_uuids or []))
        await cls.air.clock.sleep_until(cls.air.clock.now() + min(timeout, 1.0))
        found = {}
        for address, p in cls.air.peripherals.items():
            service = p.sim.kind.service
            if service_uuids and service not in service_uuids:
                continue  # a refusing sensor still advertises (e.g. busy with another central)
            device = BLEDevice(address, p.sim.name, details=None)
            adv = AdvertisementData(
                local_name=p.sim.name, manufacturer_data={}, service_data={}, service_uuids=[service],
                tx_power=None, rssi=cls.air.rssi, platform_data=(),
            )
            found[address] = (device, adv)
        return found if return_adv else [d for d, _ in found.values()]


class _Services:
    def __init__(self, uuids: set[str]) -> None:
        self._uuids = uuids

    def get_characteristic(self, specifier: Any) -> FakeCharacteristic | None:
        uuid = str(specifier).lower()
        return FakeCharacteristic(uuid) if uuid in self._uuids else None


class FakeBleakClient:
    air: FakeAir

    def __init__(
        self,
        address_or_ble_device: Any,
        disconnected_callback: Callable[[Any], None] | None = None,
        services: Any = None,
        *,
        timeout: float = 30.0,
        **_: Any,
    ) -> None:
        address = getattr(address_or_ble_device, "address", address_or_ble_device)
        self.address: str = address
        self._callback = disconnected_callback
        self._connected = False
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def is_connected(self) -> bool:
        return self._connected

    @property
    def _peripheral(self) -> _Peripheral:
        p = self.air.peripherals.get(self.address)
        if p is None:
            raise BleakDeviceNotFoundError(self.address, f"Device with address {self.address} was not found.")
        return p

    @property
    def services(self) -> _Services:
        if not self._connected:
            raise BleakError("Service Discovery has not been performed yet")
        return _Services(self._peripheral.characteristics)

    async def connect(self, **_: Any) -> None:
        air = self.air
        air.connect_attempts[self.address] += 1
        air.in_flight += 1
        air.max_in_flight = max(air.max_in_flight, air.in_flight)
        try:
            await air.clock.sleep_until(air.clock.now() + CONNECT_TIME_S)
            p = self._peripheral
            if not air.reachable(self.address) or p.client is not None:
                raise BleakDeviceNotFoundError(self.address, f"Device with address {self.address} was not found.")
            p.client = self
            self._connected = True
        finally:
            air.in_flight -= 1

    async def disconnect(self) -> None:
        if self._connected:
            self._lose(fire=True)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def read_gatt_char(self, char_specifier: Any, **_: Any) -> bytearray:
        uuid = str(getattr(char_specifier, "uuid", char_specifier)).lower()
        if uuid != Characteristic.BATTERY_LEVEL.uuid or uuid not in self.services._uuids:
            raise BleakCharacteristicNotFoundError(uuid)
        return bytearray(self._peripheral.sim.battery_payload())

    async def start_notify(self, char_specifier: Any, callback: Callable[[Any, bytearray], None], **_: Any) -> None:
        uuid = str(getattr(char_specifier, "uuid", char_specifier)).lower()
        if self.services.get_characteristic(uuid) is None:
            raise BleakCharacteristicNotFoundError(uuid)
        self._tasks.append(asyncio.get_running_loop().create_task(self._notify(uuid, callback)))

    async def _notify(self, uuid: str, callback: Callable[[Any, bytearray], None]) -> None:
        air, p = self.air, self._peripheral
        for t, char_uuid, payload in p.sim.notifications(float("inf"), start_s=air.elapsed()):
            await air.clock.sleep_until(air.origin + t)
            if not self._connected:
                return
            if self._due_drop(p, t):
                return
            if char_uuid == uuid:
                callback(FakeCharacteristic(uuid), bytearray(payload))

    def _due_drop(self, p: _Peripheral, t: float) -> bool:
        for at_s, refuse_for_s in list(p.drops):
            if t >= at_s:
                p.drops.remove((at_s, refuse_for_s))
                p.refuse_until_s = at_s + refuse_for_s
                self._lose(fire=True)
                return True
        return False

    def _lose(self, *, fire: bool) -> None:
        self._connected = False
        p = self.air.peripherals.get(self.address)
        if p is not None and p.client is self:
            p.client = None
        if fire and self._callback is not None:
            self._callback(self)
