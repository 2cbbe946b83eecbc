"""Simulated BLE sensors that notify REAL GATT payloads, and the recordings made from them.

Each ``SimSensor`` follows a known plan (``Wave``: mean, amplitude, period), keeps the
state a real sensor keeps (cumulative revolution counters and 1/1024 s event clocks that
roll over, RR intervals of the beats since the last notification, an odometer) and
turns it into the bytes the sensor would notify — which ``devices.gatt.decode`` reads
back. Sensors are driven by their own elapsed time: ``notifications(until_s)`` yields
``(t, characteristic_uuid, payload)`` at the sensor's real rate.

* ``HeartRateStrap`` — 0x2A37 at 1 Hz, u8 bpm, contact detected, RR intervals.
* ``PowerMeter`` — 0x2A63 at 2 Hz, signed power, crank revolutions + event time.
* ``SpeedCadenceSensor`` — 0x2A5B at 2 Hz, wheel and crank data; both revolution
  counters start close to their rollover so every recording crosses it.
* ``IndoorBike`` — 0x2AD2 at 1 Hz (FTMS): speed, cadence, distance, power, HR, elapsed.

``python -m sims.ble record [--out DIR]`` writes the shipped recordings
(``sims/recordings/*.jsonl``, format in ``devices.replay``); ``RECORDINGS`` holds the
parameters each one was made with, so tests compute the expected numbers on their own.
"""

from __future__ import annotations

import argparse
import math
import struct
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from devices.gatt import Characteristic
from devices.links import SensorKind
from devices.replay import RecordedDevice, Recording, RecordedNotification

__all__ = [
    "RECORDINGS",
    "HeartRateStrap",
    "IndoorBike",
    "PowerMeter",
    "RecordingSpec",
    "SimSensor",
    "SpeedCadenceSensor",
    "Wave",
    "indoor_bike_speed_kmh",
    "record",
]

RECORDINGS_DIR: Final = Path(__file__).parent / "recordings"
TICKS_PER_S: Final = 1024
U16: Final = 1 << 16
U32: Final = 1 << 32


@dataclass(frozen=True, slots=True)
class Wave:
    """``mean + amplitude · sin(2π t / period_s)``: a class plan in one line.

    Its mean over any whole number of periods is ``mean``.
    """

    mean: float
    amplitude: float = 0.0
    period_s: float = 60.0

    def at(self, t: float) -> float:
        return self.mean + self.amplitude * math.sin(2 * math.pi * t / self.period_s)


class _Revolutions:
    """A crank or wheel turning at a varying rate: cumulative count + last event time."""

    def __init__(self, start_count: int, bits: int) -> None:
        self.count = start_count
        self.modulus = 1 << bits
        self.event_time_s = 0.0
        self._phase = 0.0  # fraction of a revolution since the last event
        self._t = 0.0

    def advance(self, t: float, rpm: Callable[[float], float], step_s: float = 0.05) -> None:
        while self._t < t - 1e-12:
            dt = min(step_s, t - self._t)
            rate = max(rpm(self._t), 0.0) / 60.0  # rev/s over this step
            gained = self._phase + rate * dt
            while gained >= 1.0:
                gained -= 1.0
                self.count = (self.count + 1) % self.modulus
                self.event_time_s = self._t + dt - gained / rate
            self._phase = gained
            self._t += dt

    @property
    def event_ticks(self) -> int:
        return round(self.event_time_s * TICKS_PER_S) % U16


@dataclass
class SimSensor:
    """A simulated sensor; subclasses say what they notify and how often."""

    address: str
    name: str
    rate_hz: float = 1.0
    battery_pct: int = 87
    kind: SensorKind = field(init=False, default=SensorKind.HEART_RATE)
    characteristic: Characteristic = field(init=False, default=Characteristic.HEART_RATE_MEASUREMENT)

    def payload_at(self, t: float) -> bytes:
        """Advance the sensor to its elapsed time ``t`` (non-decreasing) and notify."""
        raise NotImplementedError

    def notifications(self, until_s: float, *, start_s: float = 0.0) -> Iterator[tuple[float, str, bytes]]:
        period = 1.0 / self.rate_hz
        k = math.ceil(start_s / period - 1e-9)
        while k * period <= until_s + 1e-9:
            t = round(k * period, 6)
            yield t, self.characteristic.uuid, self.payload_at(t)
            k += 1

    def battery_payload(self) -> bytes:
        return bytes([self.battery_pct])

    def device(self, participant: str | None = None) -> RecordedDevice:
        return RecordedDevice(self.address, self.name, (self.kind,), self.battery_pct, participant)


@dataclass
class HeartRateStrap(SimSensor):
    hr_bpm: Wave = field(default_factory=lambda: Wave(130.0, 20.0, 60.0))

    def __post_init__(self) -> None:
        self.kind = SensorKind.HEART_RATE
        self.characteristic = Characteristic.HEART_RATE_MEASUREMENT
        self._next_beat = 0.0
        self._t = 0.0

    def payload_at(self, t: float) -> bytes:
        rr = []
        while self._next_beat + 60.0 / self.hr_bpm.at(self._next_beat) <= t:
            interval = 60.0 / self.hr_bpm.at(self._next_beat)
            self._next_beat += interval
            rr.append(round(interval * 1024))
        self._t = t
        rr = rr[-9:]  # what fits in one 20-byte ATT payload
        flags = 0x06 | (0x10 if rr else 0)  # u8 value, contact detected, RR when beats
        bpm = round(self.hr_bpm.at(t))
        return struct.pack(f"<BB{len(rr)}H", flags, bpm, *rr)


@dataclass
class PowerMeter(SimSensor):
    power_w: Wave = field(default_factory=lambda: Wave(200.0, 60.0, 60.0))
    cadence_rpm: Wave = field(default_factory=lambda: Wave(90.0))
    rate_hz: float = 2.0

    def __post_init__(self) -> None:
        self.kind = SensorKind.CYCLING_POWER
        self.characteristic = Characteristic.CYCLING_POWER_MEASUREMENT
        self._crank = _Revolutions(start_count=0, bits=16)

    def payload_at(self, t: float) -> bytes:
        self._crank.advance(t, self.cadence_rpm.at)
        flags = 0x0020  # crank revolution data present
        return struct.pack(
            "<HhHH", flags, round(self.power_w.at(t)), self._crank.count, self._crank.event_ticks
        )


@dataclass
class SpeedCadenceSensor(SimSensor):
    speed_mps: Wave = field(default_factory=lambda: Wave(8.0, 1.0, 90.0))
    cadence_rpm: Wave = field(default_factory=lambda: Wave(85.0))
    circumference_m: float = 2.105
    wheel_start: int = U32 - 300  # rolls over about 80 s in
    crank_start: int = U16 - 40  # rolls over about 28 s in
    rate_hz: float = 2.0

    def __post_init__(self) -> None:
        self.kind = SensorKind.CSC
        self.characteristic = Characteristic.CSC_MEASUREMENT
        self._wheel = _Revolutions(start_count=self.wheel_start, bits=32)
        self._crank = _Revolutions(start_count=self.crank_start, bits=16)

    def wheel_rpm(self, t: float) -> float:
        return self.speed_mps.at(t) / self.circumference_m * 60.0

    def payload_at(self, t: float) -> bytes:
        self._wheel.advance(t, self.wheel_rpm)
        self._crank.advance(t, self.cadence_rpm.at)
        return struct.pack(
            "<BIHHH", 0x03, self._wheel.count, self._wheel.event_ticks, self._crank.count, self._crank.event_ticks
        )


def indoor_bike_speed_kmh(power_w: float) -> float:
    """The trainer's virtual speed for a power (a simple, monotonic road model)."""
    return 3.6 * 1.6 * max(power_w, 0.0) ** (1.0 / 3.0)


@dataclass
class IndoorBike(SimSensor):
    power_w: Wave = field(default_factory=lambda: Wave(180.0, 40.0, 90.0))
    cadence_rpm: Wave = field(default_factory=lambda: Wave(88.0, 6.0, 45.0))
    hr_bpm: Wave = field(default_factory=lambda: Wave(140.0, 10.0, 90.0))

    def __post_init__(self) -> None:
        self.kind = SensorKind.FITNESS_MACHINE
        self.characteristic = Characteristic.INDOOR_BIKE_DATA
        self._distance_m = 0.0
        self._t = 0.0

    def speed_kmh(self, t: float) -> float:
        return indoor_bike_speed_kmh(self.power_w.at(t))

    def payload_at(self, t: float) -> bytes:
        while self._t < t - 1e-12:
            dt = min(0.05, t - self._t)
            self._distance_m += self.speed_kmh(self._t) / 3.6 * dt
            self._t += dt
        flags = 0x0004 | 0x0010 | 0x0040 | 0x0200 | 0x0800  # speed, cadence, distance, power, HR, elapsed
        distance = int(self._distance_m) % (1 << 24)
        return struct.pack(
            "<HHH3shBH",
            flags,
            round(self.speed_kmh(t) * 100),
            round(self.cadence_rpm.at(t) * 2),
            distance.to_bytes(3, "little"),
            round(self.power_w.at(t)),
            round(self.hr_bpm.at(t)),
            int(t) % U16,
        )


# --- recordings ---------------------------------------------------------------------


@dataclass(frozen=True)
class RecordingSpec:
    """A shipped recording: which sensors, for how long, as which participant."""

    file: str
    duration_s: float
    participant: str
    make: Callable[[], list[SimSensor]]

    def sensors(self) -> list[SimSensor]:
        return self.make()


RECORDINGS: Final[dict[str, RecordingSpec]] = {
    "heart_rate": RecordingSpec(
        "heart_rate.jsonl", 180.0, "hr-rider",
        lambda: [HeartRateStrap("C0:FF:EE:00:00:01", "HRM-Pro 0001")],
    ),
    "power_meter": RecordingSpec(
        "power_meter.jsonl", 180.0, "power-rider",
        lambda: [PowerMeter("C0:FF:EE:00:00:02", "Assioma 0002", battery_pct=64)],
    ),
    "csc": RecordingSpec(
        "csc.jsonl", 180.0, "csc-rider",
        lambda: [SpeedCadenceSensor("C0:FF:EE:00:00:03", "SPD-CAD 0003", battery_pct=41)],
    ),
    "trainer": RecordingSpec(
        "trainer.jsonl", 180.0, "trainer-rider",
        lambda: [IndoorBike("C0:FF:EE:00:00:04", "KICKR 0004", battery_pct=100)],
    ),
}


def record(spec: RecordingSpec) -> Recording:
    """Run the spec's sensors for its duration and collect every notification."""
    sensors = spec.sensors()
    notes = [
        RecordedNotification(t, sensor.address, uuid, payload)
        for sensor in sensors
        for t, uuid, payload in sensor.notifications(spec.duration_s)
    ]
    notes.sort(key=lambda n: (n.ts, n.address))
    devices = tuple(sensor.device(spec.participant) for sensor in sensors)
    return Recording(devices=devices, notifications=tuple(notes), duration_s=spec.duration_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sims.ble", description="BLE recordings from simulated sensors")
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record", help="write the shipped recordings")
    rec.add_argument("--out", type=Path, default=RECORDINGS_DIR)
    rec.add_argument("names", nargs="*", help=f"which (default all): {', '.join(RECORDINGS)}")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.names or list(RECORDINGS):
        spec = RECORDINGS[name]
        path = args.out / spec.file
        record(spec).write(path)
        print(f"{path}: {spec.duration_s:.0f} s", file=sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
