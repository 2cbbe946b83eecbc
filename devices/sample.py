"""The canonical sample: what every device, decoder and swarm turns its data into.

A sample is one reading of one device at one instant of the *device* clock. Every
metric is optional (a heart-rate strap carries no power); an absent metric is ``None``.

On the wire (protocol v1, see ``docs/protocol.md``) a sample is the fixed-order array
``[seq, ts, hr_bpm, power_w, cadence_rpm, speed_mps, distance_m]``; ``FIELDS`` is that
order and ``Sample.to_wire`` / ``Sample.from_wire`` convert.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NewType

SessionId = NewType("SessionId", str)
DeviceId = NewType("DeviceId", str)
ParticipantId = NewType("ParticipantId", str)

FIELDS: tuple[str, ...] = (
    "seq",
    "ts",
    "hr_bpm",
    "power_w",
    "cadence_rpm",
    "speed_mps",
    "distance_m",
)
METRICS: tuple[str, ...] = FIELDS[2:]

# Physical bounds a value must fall in to be applied; outside them the sample is
# rejected with reason ``out_of_range`` (never averaged in).
BOUNDS: dict[str, tuple[float, float]] = {
    "hr_bpm": (20.0, 250.0),
    "power_w": (0.0, 3000.0),
    "cadence_rpm": (0.0, 250.0),
    "speed_mps": (0.0, 30.0),
    "distance_m": (0.0, 1_000_000.0),
}


@dataclass(frozen=True, slots=True)
class Sample:
    """One canonical reading. ``seq`` starts at 1 per (device, session) and grows by 1."""

    seq: int
    ts: float
    hr_bpm: float | None = None
    power_w: float | None = None
    cadence_rpm: float | None = None
    speed_mps: float | None = None
    distance_m: float | None = None

    def to_wire(self) -> list[float | int | None]:
        return [
            self.seq,
            self.ts,
            self.hr_bpm,
            self.power_w,
            self.cadence_rpm,
            self.speed_mps,
            self.distance_m,
        ]

    @classmethod
    def from_wire(cls, row: list[float | int | None]) -> Sample:
        seq, ts, hr, power, cadence, speed, distance = row
        return cls(int(seq), float(ts), hr, power, cadence, speed, distance)  # type: ignore[arg-type]
