"""Recorded BLE notifications, and the link that plays them back.

A recording is a JSON-lines file. The first line describes it; every other line is one
notification, in time order::

    {"format": "pulseline-ble-recording", "version": 1, "duration_s": 180.0,
     "devices": [{"address": "C0:FF:EE:00:00:01", "name": "HRM-Pro 0001",
                  "kinds": ["heart_rate"], "battery_pct": 87, "participant": "hr-rider"}]}
    {"ts": 0.0, "address": "C0:FF:EE:00:00:01",
     "char": "00002a37-0000-1000-8000-00805f9b34fb", "hex": "1682"}

``ts`` is seconds since the start of the recording; ``char`` the characteristic's full
lower-case UUID; ``hex`` the raw payload. In the header, ``kinds``, ``battery_pct`` and
``participant`` are optional (kinds default to what the characteristics imply; a
participant is only a suggestion — the bridge's config decides). A file without a
header line is accepted; its devices are derived from the notifications.

``ReplayLink`` implements ``devices.links.Link``: ``scan`` lists the recorded devices,
``connect`` plays one device's notifications through the same sink a radio would use,
each at ``origin + ts`` on the link's clock, where ``origin`` is the time of the first
``connect``. The default clock is ``ScaledClock(speed, span_s=duration)``: at
``speed=10`` a 3-minute recording plays in 18 s, and the times it stamps are mapped onto
the current time so that the last notification lands "now" (never in the future).
Notifications that fall before a device is connected are skipped, as a real sensor's
would be.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from devices.gatt import Characteristic, DecodeError, parse_characteristic
from devices.links import (
    Advert,
    PlaybackConnection,
    Clock,
    ConnectFailed,
    EventSink,
    Notification,
    ScaledClock,
    SensorKind,
)
from devices.errors import DevicesError

__all__ = ["FORMAT", "RecordedDevice", "RecordedNotification", "Recording", "RecordingError", "ReplayLink"]

log = logging.getLogger(__name__)

FORMAT: Final = "pulseline-ble-recording"
VERSION: Final = 1

_KIND_OF: Final = {
    c: kind for kind in SensorKind for c in kind.measurements
}


class RecordingError(DevicesError, ValueError):
    """A recording file that cannot be read; the message names the line."""


@dataclass(frozen=True, slots=True)
class RecordedDevice:
    address: str
    name: str | None
    kinds: tuple[SensorKind, ...]
    battery_pct: int | None = None
    participant: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "name": self.name,
            "kinds": [k.value for k in self.kinds],
            "battery_pct": self.battery_pct,
            "participant": self.participant,
        }


@dataclass(frozen=True, slots=True)
class RecordedNotification:
    ts: float
    address: str
    characteristic: str
    payload: bytes

    def to_json(self) -> dict[str, Any]:
        return {"ts": round(self.ts, 6), "address": self.address, "char": self.characteristic, "hex": self.payload.hex()}


@dataclass(frozen=True)
class Recording:
    devices: tuple[RecordedDevice, ...]
    notifications: tuple[RecordedNotification, ...]
    duration_s: float

    def write(self, path: str | Path) -> None:
        header = {
            "format": FORMAT,
            "version": VERSION,
            "duration_s": self.duration_s,
            "devices": [d.to_json() for d in self.devices],
        }
        lines = [json.dumps(header)] + [json.dumps(n.to_json()) for n in self.notifications]
        Path(path).write_text("\n".join(lines) + "\n")

    @classmethod
    def read(cls, path: str | Path) -> Recording:
        header: dict[str, Any] | None = None
        notes: list[RecordedNotification] = []
        with open(path, encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                item = _json_line(path, number, line)
                if number == 1 and "format" in item:
                    header = _check_header(path, item)
                else:
                    notes.append(_notification(path, number, item))
        notes.sort(key=lambda n: n.ts)
        devices = _devices(header, notes)
        duration = float(header.get("duration_s", 0.0)) if header else 0.0
        duration = max(duration, notes[-1].ts if notes else 0.0)
        return cls(devices, tuple(notes), duration)

    @classmethod
    def merge(cls, recordings: Iterable[Recording]) -> Recording:
        """Several recordings played together from one origin."""
        items = list(recordings)
        devices = {d.address: d for r in items for d in r.devices}
        notes = sorted((n for r in items for n in r.notifications), key=lambda n: n.ts)
        return cls(tuple(devices.values()), tuple(notes), max((r.duration_s for r in items), default=0.0))


def _json_line(path: str | Path, number: int, line: str) -> dict[str, Any]:
    try:
        item = json.loads(line)
    except json.JSONDecodeError as exc:
        raise RecordingError(f"{path}:{number}: not JSON: {exc.msg}") from None
    if not isinstance(item, dict):
        raise RecordingError(f"{path}:{number}: each line must be a JSON object")
    return item


def _check_header(path: str | Path, item: dict[str, Any]) -> dict[str, Any]:
    if item.get("format") != FORMAT or item.get("version") != VERSION:
        raise RecordingError(f"{path}:1: not a {FORMAT} v{VERSION} header")
    return item


def _notification(path: str | Path, number: int, item: dict[str, Any]) -> RecordedNotification:
    try:
        characteristic = parse_characteristic(item["char"]).uuid
        return RecordedNotification(float(item["ts"]), str(item["address"]), characteristic, bytes.fromhex(item["hex"]))
    except (KeyError, TypeError, ValueError) as exc:  # DecodeError is a ValueError
        raise RecordingError(f"{path}:{number}: bad notification ({type(exc).__name__}: {exc})") from None


def _devices(header: dict[str, Any] | None, notes: list[RecordedNotification]) -> tuple[RecordedDevice, ...]:
    declared = {d["address"]: d for d in (header or {}).get("devices", []) if isinstance(d, dict) and "address" in d}
    implied: dict[str, set[SensorKind]] = {}
    for note in notes:
        seen = implied.setdefault(note.address, set())  # an address is implied even by unknown characteristics
        kind = _kind_of(note.characteristic)
        if kind is not None:
            seen.add(kind)
    devices = []
    for address in dict.fromkeys([*declared, *implied]):
        entry = declared.get(address, {})
        kinds = tuple(SensorKind.parse(k) for k in entry.get("kinds", ())) or tuple(
            sorted(implied.get(address, ()), key=lambda k: k.value)
        )
        devices.append(RecordedDevice(address, entry.get("name"), kinds, entry.get("battery_pct"), entry.get("participant")))
    return tuple(devices)


def _kind_of(characteristic: str) -> SensorKind | None:
    try:
        return _KIND_OF.get(parse_characteristic(characteristic))
    except DecodeError:
        return None


class ReplayLink:
    """Plays a ``Recording`` through the link interface; see the module docstring."""

    def __init__(self, recording: Recording, *, speed: float = 1.0, clock: Clock | None = None) -> None:
        self.recording = recording
        self.clock: Clock = clock or ScaledClock(speed, span_s=recording.duration_s)
        self.origin: float | None = None
        self._by_address = {d.address: d for d in recording.devices}
        self._notes: dict[str, list[RecordedNotification]] = {}
        for note in recording.notifications:
            self._notes.setdefault(note.address, []).append(note)
        self._started = asyncio.Event()
        self._plays: set[asyncio.Task[None]] = set()

    @property
    def end(self) -> float | None:
        """The link time of the recording's end (once started)."""
        return None if self.origin is None else self.origin + self.recording.duration_s

    async def scan(self, kinds: Collection[SensorKind], timeout_s: float) -> list[Advert]:
        wanted = set(kinds) or set(SensorKind)
        await asyncio.sleep(0)
        return [
            Advert(d.address, d.name, d.kinds, -60, d.battery_pct)
            for d in self.recording.devices
            if set(d.kinds) & wanted
        ]

    async def connect(self, advert: Advert, sink: EventSink) -> PlaybackConnection:
        device = self._by_address.get(advert.address)
        if device is None:
            raise ConnectFailed(f"{advert.address}: not in the recording", address=advert.address)
        if self.origin is None:
            self.origin = self.clock.now()
            self._started.set()
        notes = self._notes.get(advert.address, [])
        subscribed = tuple(sorted({n.characteristic for n in notes if n.characteristic != Characteristic.BATTERY_LEVEL.uuid}))
        conn = PlaybackConnection(advert.address, device.battery_pct, subscribed)
        conn.task = asyncio.get_running_loop().create_task(self._play(advert.address, notes, sink))
        self._plays.add(conn.task)
        conn.task.add_done_callback(self._plays.discard)
        return conn

    async def _play(self, address: str, notes: list[RecordedNotification], sink: EventSink) -> None:
        assert self.origin is not None
        connected_at = self.clock.now() - self.origin  # what came before was missed; late is not
        skipped = 0
        for note in notes:
            at = self.origin + note.ts
            if note.ts < connected_at - 0.5:
                skipped += 1
                continue
            await self.clock.sleep_until(at)
            sink(Notification(address, note.characteristic, note.payload, at))
        if skipped:
            log.info("replay %s: %d notification(s) before the connection skipped", address, skipped)

    async def wait_end(self) -> float:
        """Wait until the recording has played to its end; returns that link time."""
        await self._started.wait()
        assert self.origin is not None
        end = self.origin + self.recording.duration_s
        await self.clock.sleep_until(end)
        await asyncio.gather(*self._plays, return_exceptions=True)  # the last notes are out
        return end
