"""Decoders for the GATT characteristics a fitness sensor notifies.

``decode(characteristic, payload)`` turns one notification into a frozen dataclass whose
field names carry their canonical unit (``heart_rate_bpm``, ``wheel_event_time_s``). A
field the payload does not carry is ``None`` (``rr_intervals_s`` is an empty tuple).

Contract of ``decode``:

* ``characteristic`` is a 16-bit assigned number (``0x2A37``), its hex string (``"2a37"``,
  ``"0x2A37"``), the full 128-bit SIG UUID string (any case) or a ``uuid.UUID``.
* ``payload`` is ``bytes``, ``bytearray`` or ``memoryview``; it is copied, never kept.
* A payload too short for the fields its flags announce, a value the characteristic
  forbids (a Battery Level above 100 %), an unknown characteristic or a payload that is
  not bytes raises ``DecodeError`` (a ``ValueError``) whose ``reason`` says which, and
  whose message says what was wrong. It raises nothing else, for any input.
* Bytes beyond the fields the flags announce are ignored (reserved for future fields).

Layouts follow the Bluetooth SIG definitions summarised in ``docs/devices.md``; all
multi-byte fields are little-endian. Rate tracking from cumulative counters lives in
``devices.rates``; ``RevolutionRate`` is re-exported here for convenience.
"""

from __future__ import annotations

import enum
import re
import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, TypeAlias, TypedDict

from devices.rates import RevolutionRate
from devices.errors import DevicesError

__all__ = [
    "BatteryLevel",
    "Characteristic",
    "CharacteristicRef",
    "CscMeasurement",
    "CyclingPowerMeasurement",
    "DecodeError",
    "DecodeFailure",
    "HeartRateMeasurement",
    "IndoorBikeData",
    "Measurement",
    "RevolutionRate",
    "RscMeasurement",
    "TreadmillData",
    "decode",
    "parse_characteristic",
]

SIG_BASE_UUID_SUFFIX: Final = "-0000-1000-8000-00805f9b34fb"


class Characteristic(enum.IntEnum):
    """The characteristics ``decode`` understands, by 16-bit assigned number."""

    HEART_RATE_MEASUREMENT = 0x2A37
    CYCLING_POWER_MEASUREMENT = 0x2A63
    CSC_MEASUREMENT = 0x2A5B
    RSC_MEASUREMENT = 0x2A53
    INDOOR_BIKE_DATA = 0x2AD2
    TREADMILL_DATA = 0x2ACD
    BATTERY_LEVEL = 0x2A19

    @property
    def uuid(self) -> str:
        """The full lower-case 128-bit form, as bleak compares it."""
        return f"0000{self.value:04x}{SIG_BASE_UUID_SUFFIX}"

    @property
    def label(self) -> str:
        """Human name for messages, e.g. ``CSC Measurement 0x2A5B``."""
        words = (w if w in {"CSC", "RSC"} else w.capitalize() for w in self.name.split("_"))
        return f"{' '.join(words)} 0x{self.value:04X}"


CharacteristicRef: TypeAlias = "int | str | uuid.UUID | Characteristic"


class DecodeFailure(enum.Enum):
    """Why a payload could not be decoded (``DecodeError.reason``)."""

    UNKNOWN_CHARACTERISTIC = "unknown_characteristic"
    NOT_BYTES = "not_bytes"
    TRUNCATED = "truncated"
    INVALID_VALUE = "invalid_value"


class DecodeError(DevicesError, ValueError):
    """A notification that cannot be decoded; ``reason`` is machine-readable."""

    def __init__(
        self,
        reason: DecodeFailure,
        message: str,
        *,
        characteristic: Characteristic | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.characteristic = characteristic


# --- measurements -------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class HeartRateMeasurement:
    """0x2A37. ``sensor_contact`` is ``None`` when the strap cannot detect contact."""

    heart_rate_bpm: int
    sensor_contact: bool | None = None
    energy_expended_kj: int | None = None
    rr_intervals_s: tuple[float, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class CyclingPowerMeasurement:
    """0x2A63. Event times are also kept as raw ticks (wheel 1/2048 s, crank 1/1024 s)."""

    power_w: int
    pedal_balance_pct: float | None = None
    pedal_balance_is_left: bool = False
    accumulated_torque_nm: float | None = None
    torque_source_is_crank: bool = False
    wheel_revolutions: int | None = None
    wheel_event_ticks: int | None = None
    wheel_event_time_s: float | None = None
    crank_revolutions: int | None = None
    crank_event_ticks: int | None = None
    crank_event_time_s: float | None = None
    max_force_n: int | None = None
    min_force_n: int | None = None
    max_torque_nm: float | None = None
    min_torque_nm: float | None = None
    max_angle_deg: int | None = None
    min_angle_deg: int | None = None
    top_dead_spot_deg: int | None = None
    bottom_dead_spot_deg: int | None = None
    accumulated_energy_kj: int | None = None
    offset_compensation: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class CscMeasurement:
    """0x2A5B. Both event times are in 1/1024 s ticks."""

    wheel_revolutions: int | None = None
    wheel_event_ticks: int | None = None
    wheel_event_time_s: float | None = None
    crank_revolutions: int | None = None
    crank_event_ticks: int | None = None
    crank_event_time_s: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RscMeasurement:
    """0x2A53. Cadence is in steps (not strides) per minute, as transmitted."""

    speed_mps: float
    cadence_spm: int
    stride_length_m: float | None = None
    total_distance_m: float | None = None
    is_running: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class IndoorBikeData:
    """0x2AD2 (FTMS). ``resistance_level`` is the raw signed value, unscaled."""

    speed_kmh: float | None = None
    average_speed_kmh: float | None = None
    cadence_rpm: float | None = None
    average_cadence_rpm: float | None = None
    total_distance_m: int | None = None
    resistance_level: int | None = None
    power_w: int | None = None
    average_power_w: int | None = None
    energy_total_kcal: int | None = None
    energy_per_hour_kcal: int | None = None
    energy_per_minute_kcal: int | None = None
    heart_rate_bpm: int | None = None
    metabolic_equivalent: float | None = None
    elapsed_time_s: int | None = None
    remaining_time_s: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TreadmillData:
    """0x2ACD (FTMS). Paces are seconds per km (GSS uint16 layout, see docs/devices.md)."""

    speed_kmh: float | None = None
    average_speed_kmh: float | None = None
    total_distance_m: int | None = None
    inclination_pct: float | None = None
    ramp_angle_deg: float | None = None
    positive_elevation_gain_m: float | None = None
    negative_elevation_gain_m: float | None = None
    instantaneous_pace_s_per_km: int | None = None
    average_pace_s_per_km: int | None = None
    energy_total_kcal: int | None = None
    energy_per_hour_kcal: int | None = None
    energy_per_minute_kcal: int | None = None
    heart_rate_bpm: int | None = None
    metabolic_equivalent: float | None = None
    elapsed_time_s: int | None = None
    remaining_time_s: int | None = None
    force_on_belt_n: int | None = None
    power_w: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class BatteryLevel:
    """0x2A19."""

    battery_pct: int


Measurement: TypeAlias = (
    "HeartRateMeasurement | CyclingPowerMeasurement | CscMeasurement | RscMeasurement"
    " | IndoorBikeData | TreadmillData | BatteryLevel"
)


# --- reading ------------------------------------------------------------------------

_FORMATS: Final = {name: struct.Struct("<" + name) for name in ("B", "H", "h", "I")}


class _Reader:
    """Walks a payload field by field; running out of bytes is a ``TRUNCATED`` error."""

    __slots__ = ("_characteristic", "_data", "_pos")

    def __init__(self, data: bytes, characteristic: Characteristic) -> None:
        self._data = data
        self._pos = 0
        self._characteristic = characteristic

    @property
    def remaining(self) -> int:
        return len(self._data) - self._pos

    def fail(self, reason: DecodeFailure, detail: str) -> DecodeError:
        return DecodeError(
            reason, f"{self._characteristic.label}: {detail}", characteristic=self._characteristic
        )

    def _take(self, size: int, field: str) -> int:
        if size > self.remaining:
            raise self.fail(
                DecodeFailure.TRUNCATED,
                f"{field} needs {size} byte(s) at offset {self._pos} "
                f"but the payload has {len(self._data)} byte(s)",
            )
        start = self._pos
        self._pos += size
        return start

    def _unpack(self, fmt: str, field: str) -> int:
        packer = _FORMATS[fmt]
        value: int = packer.unpack_from(self._data, self._take(packer.size, field))[0]
        return value

    def u8(self, field: str) -> int:
        return self._unpack("B", field)

    def u16(self, field: str) -> int:
        return self._unpack("H", field)

    def s16(self, field: str) -> int:
        return self._unpack("h", field)

    def u32(self, field: str) -> int:
        return self._unpack("I", field)

    def u24(self, field: str) -> int:
        start = self._take(3, field)
        return int.from_bytes(self._data[start : start + 3], "little")

    def u12_pair(self, field: str) -> tuple[int, int]:
        """Two 12-bit values packed in 3 bytes, the first in the low bits."""
        packed = self.u24(field)
        return packed & 0xFFF, packed >> 12


def _scaled(raw: int | None, divisor: int) -> float | None:
    return None if raw is None else raw / divisor


def _unless(raw: int | None, not_available: int) -> int | None:
    """FTMS marks a field it cannot measure with a sentinel; that reads as absent."""
    return None if raw == not_available else raw


def _bit(flags: int, bit: int) -> bool:
    return bool(flags >> bit & 1)


# --- decoders -----------------------------------------------------------------------

# Heart-rate flag bits 1-2: 0 and 1 mean "contact detection not supported".
_SENSOR_CONTACT: Final[tuple[bool | None, ...]] = (None, None, False, True)


def _decode_heart_rate(r: _Reader) -> HeartRateMeasurement:
    flags = r.u8("flags")
    bpm = r.u16("heart rate (u16)") if _bit(flags, 0) else r.u8("heart rate (u8)")
    energy = r.u16("energy expended") if _bit(flags, 3) else None
    return HeartRateMeasurement(
        heart_rate_bpm=bpm,
        sensor_contact=_SENSOR_CONTACT[flags >> 1 & 0b11],
        energy_expended_kj=energy,
        rr_intervals_s=_rr_intervals(r) if _bit(flags, 4) else (),
    )


def _rr_intervals(r: _Reader) -> tuple[float, ...]:
    """As many whole u16 intervals as remain; the flag promises at least one."""
    count = r.remaining // 2
    if count == 0:
        raise r.fail(
            DecodeFailure.TRUNCATED,
            f"flag bit 4 announces RR intervals but only {r.remaining} byte(s) follow "
            "the earlier fields (an RR interval needs 2)",
        )
    return tuple(r.u16("RR interval") / 1024 for _ in range(count))


def _decode_cycling_power(r: _Reader) -> CyclingPowerMeasurement:
    flags = r.u16("flags")
    power = r.s16("instantaneous power")
    balance = r.u8("pedal power balance") if _bit(flags, 0) else None
    torque = r.u16("accumulated torque") if _bit(flags, 2) else None
    wheel = (r.u32("wheel revolutions"), r.u16("wheel event time")) if _bit(flags, 4) else None
    crank = (r.u16("crank revolutions"), r.u16("crank event time")) if _bit(flags, 5) else None
    force = (r.s16("max force"), r.s16("min force")) if _bit(flags, 6) else (None, None)
    ext_torque = (r.s16("max torque"), r.s16("min torque")) if _bit(flags, 7) else (None, None)
    angles = r.u12_pair("extreme angles") if _bit(flags, 8) else (None, None)
    return CyclingPowerMeasurement(
        power_w=power,
        pedal_balance_pct=_scaled(balance, 2),
        pedal_balance_is_left=_bit(flags, 1),
        accumulated_torque_nm=_scaled(torque, 32),
        torque_source_is_crank=_bit(flags, 3),
        **_wheel_fields(wheel, 2048),
        **_crank_fields(crank, 1024),
        max_force_n=force[0],
        min_force_n=force[1],
        max_torque_nm=_scaled(ext_torque[0], 32),
        min_torque_nm=_scaled(ext_torque[1], 32),
        max_angle_deg=angles[0],
        min_angle_deg=angles[1],
        top_dead_spot_deg=r.u16("top dead spot angle") if _bit(flags, 9) else None,
        bottom_dead_spot_deg=r.u16("bottom dead spot angle") if _bit(flags, 10) else None,
        accumulated_energy_kj=r.u16("accumulated energy") if _bit(flags, 11) else None,
        offset_compensation=_bit(flags, 12),
    )


class _WheelFields(TypedDict):
    wheel_revolutions: int | None
    wheel_event_ticks: int | None
    wheel_event_time_s: float | None


class _CrankFields(TypedDict):
    crank_revolutions: int | None
    crank_event_ticks: int | None
    crank_event_time_s: float | None


def _wheel_fields(data: tuple[int, int] | None, ticks_per_second: int) -> _WheelFields:
    revolutions, ticks = data if data is not None else (None, None)
    return _WheelFields(
        wheel_revolutions=revolutions,
        wheel_event_ticks=ticks,
        wheel_event_time_s=_scaled(ticks, ticks_per_second),
    )


def _crank_fields(data: tuple[int, int] | None, ticks_per_second: int) -> _CrankFields:
    revolutions, ticks = data if data is not None else (None, None)
    return _CrankFields(
        crank_revolutions=revolutions,
        crank_event_ticks=ticks,
        crank_event_time_s=_scaled(ticks, ticks_per_second),
    )


def _decode_csc(r: _Reader) -> CscMeasurement:
    flags = r.u8("flags")
    wheel = (r.u32("wheel revolutions"), r.u16("wheel event time")) if _bit(flags, 0) else None
    crank = (r.u16("crank revolutions"), r.u16("crank event time")) if _bit(flags, 1) else None
    return CscMeasurement(
        **_wheel_fields(wheel, 1024),
        **_crank_fields(crank, 1024),
    )


def _decode_rsc(r: _Reader) -> RscMeasurement:
    flags = r.u8("flags")
    speed = r.u16("instantaneous speed")
    cadence = r.u8("instantaneous cadence")
    stride = r.u16("stride length") if _bit(flags, 0) else None
    distance = r.u32("total distance") if _bit(flags, 1) else None
    return RscMeasurement(
        speed_mps=speed / 256,
        cadence_spm=cadence,
        stride_length_m=_scaled(stride, 100),
        total_distance_m=_scaled(distance, 10),
        is_running=_bit(flags, 2),
    )


def _energy(r: _Reader, flags: int, bit: int) -> tuple[int | None, int | None, int | None]:
    """FTMS expended energy: total u16, per hour u16, per minute u8 (kcal)."""
    if not _bit(flags, bit):
        return None, None, None
    total, per_hour = r.u16("total energy"), r.u16("energy per hour")
    per_minute = r.u8("energy per minute")
    return _unless(total, 0xFFFF), _unless(per_hour, 0xFFFF), _unless(per_minute, 0xFF)


def _decode_indoor_bike(r: _Reader) -> IndoorBikeData:
    flags = r.u16("flags")
    speed = r.u16("instantaneous speed") if not _bit(flags, 0) else None  # inverted bit
    avg_speed = r.u16("average speed") if _bit(flags, 1) else None
    cadence = r.u16("instantaneous cadence") if _bit(flags, 2) else None
    avg_cadence = r.u16("average cadence") if _bit(flags, 3) else None
    distance = r.u24("total distance") if _bit(flags, 4) else None
    resistance = r.s16("resistance level") if _bit(flags, 5) else None
    power = r.s16("instantaneous power") if _bit(flags, 6) else None
    avg_power = r.s16("average power") if _bit(flags, 7) else None
    energy = _energy(r, flags, 8)
    return IndoorBikeData(
        speed_kmh=_scaled(speed, 100),
        average_speed_kmh=_scaled(avg_speed, 100),
        cadence_rpm=_scaled(cadence, 2),
        average_cadence_rpm=_scaled(avg_cadence, 2),
        total_distance_m=distance,
        resistance_level=resistance,
        power_w=power,
        average_power_w=avg_power,
        energy_total_kcal=energy[0],
        energy_per_hour_kcal=energy[1],
        energy_per_minute_kcal=energy[2],
        heart_rate_bpm=r.u8("heart rate") if _bit(flags, 9) else None,
        metabolic_equivalent=_scaled(r.u8("metabolic equivalent"), 10) if _bit(flags, 10) else None,
        elapsed_time_s=r.u16("elapsed time") if _bit(flags, 11) else None,
        remaining_time_s=r.u16("remaining time") if _bit(flags, 12) else None,
    )


def _decode_treadmill(r: _Reader) -> TreadmillData:
    flags = r.u16("flags")
    speed = r.u16("instantaneous speed") if not _bit(flags, 0) else None  # inverted bit
    avg_speed = r.u16("average speed") if _bit(flags, 1) else None
    distance = r.u24("total distance") if _bit(flags, 2) else None
    incline = (r.s16("inclination"), r.s16("ramp angle")) if _bit(flags, 3) else (None, None)
    gain = (r.u16("positive elevation"), r.u16("negative elevation")) if _bit(flags, 4) else None
    pace = r.u16("instantaneous pace") if _bit(flags, 5) else None
    avg_pace = r.u16("average pace") if _bit(flags, 6) else None
    energy = _energy(r, flags, 7)
    heart_rate = r.u8("heart rate") if _bit(flags, 8) else None
    met = r.u8("metabolic equivalent") if _bit(flags, 9) else None
    elapsed = r.u16("elapsed time") if _bit(flags, 10) else None
    remaining = r.u16("remaining time") if _bit(flags, 11) else None
    force_power = (r.s16("force on belt"), r.s16("power output")) if _bit(flags, 12) else None
    return TreadmillData(
        speed_kmh=_scaled(speed, 100),
        average_speed_kmh=_scaled(avg_speed, 100),
        total_distance_m=distance,
        inclination_pct=_scaled(_unless(incline[0], 0x7FFF), 10),
        ramp_angle_deg=_scaled(_unless(incline[1], 0x7FFF), 10),
        positive_elevation_gain_m=_scaled(gain[0], 10) if gain else None,
        negative_elevation_gain_m=_scaled(gain[1], 10) if gain else None,
        instantaneous_pace_s_per_km=pace,
        average_pace_s_per_km=avg_pace,
        energy_total_kcal=energy[0],
        energy_per_hour_kcal=energy[1],
        energy_per_minute_kcal=energy[2],
        heart_rate_bpm=heart_rate,
        metabolic_equivalent=_scaled(met, 10),
        elapsed_time_s=elapsed,
        remaining_time_s=remaining,
        force_on_belt_n=force_power[0] if force_power else None,
        power_w=force_power[1] if force_power else None,
    )


def _decode_battery(r: _Reader) -> BatteryLevel:
    if r.remaining != 1:
        raise r.fail(DecodeFailure.INVALID_VALUE, f"expected exactly 1 byte, got {r.remaining}")
    level = r.u8("battery level")
    if level > 100:
        raise r.fail(DecodeFailure.INVALID_VALUE, f"{level} % is above 100 %")
    return BatteryLevel(battery_pct=level)


_DECODERS: Final[dict[Characteristic, Callable[[_Reader], Measurement]]] = {
    Characteristic.HEART_RATE_MEASUREMENT: _decode_heart_rate,
    Characteristic.CYCLING_POWER_MEASUREMENT: _decode_cycling_power,
    Characteristic.CSC_MEASUREMENT: _decode_csc,
    Characteristic.RSC_MEASUREMENT: _decode_rsc,
    Characteristic.INDOOR_BIKE_DATA: _decode_indoor_bike,
    Characteristic.TREADMILL_DATA: _decode_treadmill,
    Characteristic.BATTERY_LEVEL: _decode_battery,
}


# --- entry points -------------------------------------------------------------------

_BY_NUMBER: Final[dict[int | None, Characteristic]] = {c.value: c for c in Characteristic}
_SHORT_FORM: Final = re.compile(r"(?:0[xX])?([0-9a-fA-F]{4})")
_LONG_FORM: Final = re.compile(r"0000([0-9a-fA-F]{4})" + re.escape(SIG_BASE_UUID_SUFFIX), re.I)


def parse_characteristic(characteristic: object) -> Characteristic:
    """Resolve any accepted spelling of a characteristic; ``DecodeError`` if unknown."""
    known = _BY_NUMBER.get(_assigned_number(characteristic))
    if known is not None:
        return known
    raise DecodeError(
        DecodeFailure.UNKNOWN_CHARACTERISTIC,
        f"unknown or unsupported characteristic {characteristic!r:.80}",
    )


def _assigned_number(characteristic: object) -> int | None:
    if isinstance(characteristic, int):
        return characteristic
    if isinstance(characteristic, uuid.UUID):
        characteristic = str(characteristic)
    if isinstance(characteristic, str):
        match = _SHORT_FORM.fullmatch(characteristic) or _LONG_FORM.fullmatch(characteristic)
        return int(match.group(1), 16) if match else None
    return None


def _as_bytes(payload: object, characteristic: Characteristic) -> bytes:
    if isinstance(payload, bytes | bytearray | memoryview):
        try:
            return bytes(payload)
        except (ValueError, TypeError, BufferError):  # e.g. a released memoryview
            pass
    raise DecodeError(
        DecodeFailure.NOT_BYTES,
        f"{characteristic.label}: payload must be bytes, bytearray or memoryview, "
        f"not {type(payload).__name__}",
        characteristic=characteristic,
    )


def decode(
    characteristic: CharacteristicRef, payload: bytes | bytearray | memoryview
) -> Measurement:
    """Decode one notification of ``characteristic``; see the module docstring."""
    known = parse_characteristic(characteristic)
    return _DECODERS[known](_Reader(_as_bytes(payload, known), known))
