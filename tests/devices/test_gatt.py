"""Decoders: public vectors, every flag bit's field position, and property tests."""

from __future__ import annotations

import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devices import gatt
from devices.gatt import (
    BatteryLevel,
    Characteristic,
    CscMeasurement,
    CyclingPowerMeasurement,
    DecodeError,
    DecodeFailure,
    HeartRateMeasurement,
    IndoorBikeData,
    RscMeasurement,
    TreadmillData,
    decode,
)

FAST = settings(max_examples=300, deadline=None, database=None)

HR, CPM, CSC, RSC = 0x2A37, 0x2A63, 0x2A5B, 0x2A53
IBD, TM, BATTERY = 0x2AD2, 0x2ACD, 0x2A19
ALL_CHARACTERISTICS = (HR, CPM, CSC, RSC, IBD, TM, BATTERY)


def hx(text: str) -> bytes:
    return bytes.fromhex(text)


def u24(value: int) -> bytes:
    return value.to_bytes(3, "little")


# --- public vectors (BLE_NOTES.md) --------------------------------------------------


def test_hr_vector_u8_no_contact_support() -> None:
    assert decode(HR, hx("00 2A")) == HeartRateMeasurement(
        heart_rate_bpm=42, sensor_contact=None, energy_expended_kj=None, rr_intervals_s=()
    )


def test_hr_vector_contact_and_rr() -> None:
    m = decode(HR, hx("16 48 54 01 EC 02"))
    assert m == HeartRateMeasurement(
        heart_rate_bpm=72, sensor_contact=True, rr_intervals_s=(0.33203125, 0.73046875)
    )


def test_hr_vector_rr_flag_without_interval_is_invalid() -> None:
    # 0x17: u16 value (01 01 = 257 bpm, present), contact detected, RR flag: no RR bytes.
    with pytest.raises(DecodeError, match="RR") as info:
        decode(HR, hx("17 01 01"))
    assert info.value.reason is DecodeFailure.TRUNCATED
    assert info.value.characteristic is Characteristic.HEART_RATE_MEASUREMENT


def test_cpm_vector_pedal_balance() -> None:
    m = decode(CPM, hx("01 00 2C 01 64"))
    assert isinstance(m, CyclingPowerMeasurement)
    assert (m.power_w, m.pedal_balance_pct, m.crank_revolutions) == (300, 50.0, None)


def test_cpm_vector_crank() -> None:
    m = decode(CPM, hx("20 00 70 01 90 01 00 04"))
    assert isinstance(m, CyclingPowerMeasurement)
    assert (m.power_w, m.crank_revolutions, m.crank_event_time_s) == (368, 400, 1.0)
    assert m.crank_event_ticks == 1024
    assert m.pedal_balance_pct is None and m.wheel_revolutions is None


def test_csc_vector_wheel_only() -> None:
    assert decode(CSC, hx("01 50 C3 00 00 00 14")) == CscMeasurement(
        wheel_revolutions=50000, wheel_event_ticks=5120, wheel_event_time_s=5.0
    )


def test_rsc_vector_walking_with_stride() -> None:
    assert decode(RSC, hx("01 9A 01 78 50 00")) == RscMeasurement(
        speed_mps=1.6015625, cadence_spm=120, stride_length_m=0.8, is_running=False
    )


def test_ibd_vector_speed_cadence_power() -> None:
    assert decode(IBD, hx("44 00 CA 0C A0 00 2C 01")) == IndoorBikeData(
        speed_kmh=32.74, cadence_rpm=80.0, power_w=300
    )


def test_battery_vector_101_is_invalid() -> None:
    with pytest.raises(DecodeError, match="101") as info:
        decode(BATTERY, hx("65"))
    assert info.value.reason is DecodeFailure.INVALID_VALUE


# --- characteristic and payload spellings -------------------------------------------


@pytest.mark.parametrize(
    "spelling",
    [
        0x2A37,
        Characteristic.HEART_RATE_MEASUREMENT,
        "2a37",
        "2A37",
        "0x2a37",
        "0X2A37",
        "00002a37-0000-1000-8000-00805f9b34fb",
        "00002A37-0000-1000-8000-00805F9B34FB",
        uuid.UUID("00002a37-0000-1000-8000-00805f9b34fb"),
    ],
)
def test_accepted_characteristic_spellings(spelling: object) -> None:
    m = decode(spelling, b"\x00\x2a")  # type: ignore[arg-type]
    assert m == HeartRateMeasurement(heart_rate_bpm=42)


@pytest.mark.parametrize(
    "spelling",
    [
        0x2A38,
        -1,
        1 << 80,
        True,
        "2a3",
        "2a37 ",
        " 2a37",
        "12a37",
        "0x2a_37",
        "0x",
        "",
        "00002a37-0000-1000-8000-00805f9b34fc",
        "00002a37000010008000-00805f9b34fb",
        "0000\uff12a37-0000-1000-8000-00805f9b34fb",
        b"2a37",
        None,
        37.0,
        ["2a37"],
    ],
)
def test_rejected_characteristics_raise_decode_error(spelling: object) -> None:
    with pytest.raises(DecodeError) as info:
        decode(spelling, b"\x00\x2a")  # type: ignore[arg-type]
    assert info.value.reason is DecodeFailure.UNKNOWN_CHARACTERISTIC


def test_characteristic_uuid_is_lower_case_128_bit() -> None:
    assert Characteristic.CSC_MEASUREMENT.uuid == "00002a5b-0000-1000-8000-00805f9b34fb"


@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview])
def test_payload_bytes_like(wrap: Callable[[bytes], Any]) -> None:
    assert decode(HR, wrap(b"\x00\x2a")) == HeartRateMeasurement(heart_rate_bpm=42)


@pytest.mark.parametrize("payload", ["002a", [0, 42], None, 42, object()])
def test_payload_not_bytes(payload: object) -> None:
    with pytest.raises(DecodeError) as info:
        decode(HR, payload)  # type: ignore[arg-type]
    assert info.value.reason is DecodeFailure.NOT_BYTES


def test_payload_released_memoryview() -> None:
    view = memoryview(b"\x00\x2a")
    view.release()
    with pytest.raises(DecodeError) as info:
        decode(HR, view)
    assert info.value.reason is DecodeFailure.NOT_BYTES


def test_decode_error_is_value_error() -> None:
    assert issubclass(DecodeError, ValueError)


def test_public_surface() -> None:
    assert set(gatt.__all__) == {
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
    }
    assert all(hasattr(gatt, name) for name in gatt.__all__)


def test_measurements_are_frozen() -> None:
    m = decode(HR, b"\x00\x2a")
    with pytest.raises(AttributeError):
        m.heart_rate_bpm = 1  # type: ignore[misc]


# --- heart rate, bit by bit ---------------------------------------------------------


@pytest.mark.parametrize(
    ("contact_bits", "expected"), [(0b00, None), (0b01, None), (0b10, False), (0b11, True)]
)
def test_hr_sensor_contact_bits(contact_bits: int, expected: bool | None) -> None:
    m = decode(HR, bytes([contact_bits << 1, 60]))
    assert isinstance(m, HeartRateMeasurement)
    assert m.sensor_contact is expected


def test_hr_u16_value() -> None:
    assert decode(HR, struct.pack("<BH", 0x01, 300)) == HeartRateMeasurement(heart_rate_bpm=300)


def test_hr_energy_follows_value() -> None:
    m = decode(HR, struct.pack("<BHH", 0x09, 0x0102, 4321))
    assert m == HeartRateMeasurement(heart_rate_bpm=0x0102, energy_expended_kj=4321)


def test_hr_all_fields_in_order() -> None:
    payload = struct.pack("<BHH3H", 0x1F, 150, 900, 1024, 512, 2048)
    assert decode(HR, payload) == HeartRateMeasurement(
        heart_rate_bpm=150,
        sensor_contact=True,
        energy_expended_kj=900,
        rr_intervals_s=(1.0, 0.5, 2.0),
    )


def test_hr_odd_trailing_byte_after_rr_is_ignored() -> None:
    m = decode(HR, struct.pack("<BBHB", 0x10, 70, 1024, 0xFF))
    assert isinstance(m, HeartRateMeasurement)
    assert m.rr_intervals_s == (1.0,)


def test_hr_bytes_beyond_unflagged_fields_are_ignored() -> None:
    assert decode(HR, hx("00 2A 99 99 99")) == HeartRateMeasurement(heart_rate_bpm=42)


@pytest.mark.parametrize(
    "payload",
    ["", "01", "01 2A", "08 2A", "08 2A 01", "10 2A", "10 2A 01", "19 2A 00 01 00"],
)
def test_hr_truncated(payload: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode(HR, hx(payload))
    assert info.value.reason is DecodeFailure.TRUNCATED


# --- explicit all-flags payloads ----------------------------------------------------


def test_cpm_every_field_in_order() -> None:
    payload = (
        struct.pack("<Hh", 0x1FFF, -12)
        + struct.pack("<B", 101)  # bit0 balance, 50.5 %
        + struct.pack("<H", 640)  # bit2 torque, 20 N·m
        + struct.pack("<IH", 0x01020304, 4096)  # bit4 wheel, 2.0 s at 1/2048
        + struct.pack("<HH", 0xFFFE, 512)  # bit5 crank, 0.5 s
        + struct.pack("<hh", 900, -40)  # bit6 force
        + struct.pack("<hh", 320, -64)  # bit7 torque, 10 / -2 N·m
        + u24(0xABC | 0x123 << 12)  # bit8 angles: max 0xABC, min 0x123
        + struct.pack("<HHH", 15, 195, 7777)  # bits 9, 10, 11
    )
    assert decode(CPM, payload) == CyclingPowerMeasurement(
        power_w=-12,
        pedal_balance_pct=50.5,
        pedal_balance_is_left=True,
        accumulated_torque_nm=20.0,
        torque_source_is_crank=True,
        wheel_revolutions=0x01020304,
        wheel_event_ticks=4096,
        wheel_event_time_s=2.0,
        crank_revolutions=0xFFFE,
        crank_event_ticks=512,
        crank_event_time_s=0.5,
        max_force_n=900,
        min_force_n=-40,
        max_torque_nm=10.0,
        min_torque_nm=-2.0,
        max_angle_deg=0xABC,
        min_angle_deg=0x123,
        top_dead_spot_deg=15,
        bottom_dead_spot_deg=195,
        accumulated_energy_kj=7777,
        offset_compensation=True,
    )


def test_csc_both_counters() -> None:
    payload = struct.pack("<BIHHH", 0x03, 123456, 2048, 77, 65535)
    assert decode(CSC, payload) == CscMeasurement(
        wheel_revolutions=123456,
        wheel_event_ticks=2048,
        wheel_event_time_s=2.0,
        crank_revolutions=77,
        crank_event_ticks=65535,
        crank_event_time_s=65535 / 1024,
    )


def test_rsc_every_field_running() -> None:
    payload = struct.pack("<BHBHI", 0x07, 768, 180, 125, 42195)
    assert decode(RSC, payload) == RscMeasurement(
        speed_mps=3.0,
        cadence_spm=180,
        stride_length_m=1.25,
        total_distance_m=4219.5,
        is_running=True,
    )


def test_ibd_every_field_in_order() -> None:
    payload = (
        struct.pack("<HHHHH", 0x1FFE, 3000, 2950, 181, 170)
        + u24(12345)
        + struct.pack("<hhhHHBBBHH", -5, 250, 240, 321, 600, 10, 142, 87, 1800, 600)
    )
    assert decode(IBD, payload) == IndoorBikeData(
        speed_kmh=30.0,
        average_speed_kmh=29.5,
        cadence_rpm=90.5,
        average_cadence_rpm=85.0,
        total_distance_m=12345,
        resistance_level=-5,
        power_w=250,
        average_power_w=240,
        energy_total_kcal=321,
        energy_per_hour_kcal=600,
        energy_per_minute_kcal=10,
        heart_rate_bpm=142,
        metabolic_equivalent=8.7,
        elapsed_time_s=1800,
        remaining_time_s=600,
    )


def test_ibd_cadence_is_bit2_not_bit1() -> None:
    # The old definition swapped bits 1 and 2; real captures need bit2 = cadence.
    assert decode(IBD, struct.pack("<HHH", 0x0004, 1000, 160)) == IndoorBikeData(
        speed_kmh=10.0, cadence_rpm=80.0
    )
    assert decode(IBD, struct.pack("<HHH", 0x0002, 1000, 900)) == IndoorBikeData(
        speed_kmh=10.0, average_speed_kmh=9.0
    )


def test_ibd_energy_not_available_sentinels() -> None:
    payload = struct.pack("<HHHB", 0x0101, 0xFFFF, 0xFFFF, 0xFF)
    assert decode(IBD, payload) == IndoorBikeData()


def test_tm_every_field_in_order() -> None:
    payload = (
        struct.pack("<HHH", 0x1FFE, 1250, 1100)
        + u24(5000)
        + struct.pack("<hhHH", -15, 20, 123, 45)  # incline, ramp, elevation gains
        + struct.pack("<HH", 288, 327)  # paces
        + struct.pack("<HHB", 410, 700, 12)  # energy
        + struct.pack("<BBHHhh", 160, 95, 1500, 300, 80, 210)
    )
    assert decode(TM, payload) == TreadmillData(
        speed_kmh=12.5,
        average_speed_kmh=11.0,
        total_distance_m=5000,
        inclination_pct=-1.5,
        ramp_angle_deg=2.0,
        positive_elevation_gain_m=12.3,
        negative_elevation_gain_m=4.5,
        instantaneous_pace_s_per_km=288,
        average_pace_s_per_km=327,
        energy_total_kcal=410,
        energy_per_hour_kcal=700,
        energy_per_minute_kcal=12,
        heart_rate_bpm=160,
        metabolic_equivalent=9.5,
        elapsed_time_s=1500,
        remaining_time_s=300,
        force_on_belt_n=80,
        power_w=210,
    )


def test_tm_inclination_not_available() -> None:
    payload = struct.pack("<Hhh", 0x0009, 0x7FFF, 0x7FFF)
    assert decode(TM, payload) == TreadmillData()


@pytest.mark.parametrize("level", [0, 1, 57, 100])
def test_battery_valid(level: int) -> None:
    assert decode(BATTERY, bytes([level])) == BatteryLevel(battery_pct=level)


@pytest.mark.parametrize("payload", ["", "64 00", "32 32 32", "FF"])
def test_battery_invalid(payload: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode(BATTERY, hx(payload))
    assert info.value.reason is DecodeFailure.INVALID_VALUE


# --- layout table: one group of fields per flag bit ---------------------------------

Convert = Callable[[int], Any]


def same(raw: int) -> int:
    return raw


def div(n: int) -> Convert:
    return lambda raw: raw / n


def unless(sentinel: int, convert: Convert = same) -> Convert:
    return lambda raw: None if raw == sentinel else convert(raw)


@dataclass(frozen=True)
class Group:
    """Fields gated by one flag bit (``bit=None``: always present)."""

    bit: int | None
    fields: tuple[tuple[str, str, Convert], ...]  # (name, struct code or "T" for u24, convert)
    inverted: bool = False


@dataclass(frozen=True)
class Layout:
    characteristic: int
    flags_code: str
    groups: tuple[Group, ...]
    booleans: tuple[tuple[str, int], ...] = ()  # flag-only fields: (name, bit)
    derived: tuple[tuple[str, str, int], ...] = ()  # (name, from field, divisor)


LAYOUTS = (
    Layout(
        CPM,
        "H",
        (
            Group(None, (("power_w", "h", same),)),
            Group(0, (("pedal_balance_pct", "B", div(2)),)),
            Group(2, (("accumulated_torque_nm", "H", div(32)),)),
            Group(4, (("wheel_revolutions", "I", same), ("wheel_event_ticks", "H", same))),
            Group(5, (("crank_revolutions", "H", same), ("crank_event_ticks", "H", same))),
            Group(6, (("max_force_n", "h", same), ("min_force_n", "h", same))),
            Group(7, (("max_torque_nm", "h", div(32)), ("min_torque_nm", "h", div(32)))),
            Group(8, (("max_angle_deg", "A", same), ("min_angle_deg", "A", same))),
            Group(9, (("top_dead_spot_deg", "H", same),)),
            Group(10, (("bottom_dead_spot_deg", "H", same),)),
            Group(11, (("accumulated_energy_kj", "H", same),)),
        ),
        (("pedal_balance_is_left", 1), ("torque_source_is_crank", 3), ("offset_compensation", 12)),
        (
            ("wheel_event_time_s", "wheel_event_ticks", 2048),
            ("crank_event_time_s", "crank_event_ticks", 1024),
        ),
    ),
    Layout(
        CSC,
        "B",
        (
            Group(0, (("wheel_revolutions", "I", same), ("wheel_event_ticks", "H", same))),
            Group(1, (("crank_revolutions", "H", same), ("crank_event_ticks", "H", same))),
        ),
        derived=(
            ("wheel_event_time_s", "wheel_event_ticks", 1024),
            ("crank_event_time_s", "crank_event_ticks", 1024),
        ),
    ),
    Layout(
        RSC,
        "B",
        (
            Group(None, (("speed_mps", "H", div(256)), ("cadence_spm", "B", same))),
            Group(0, (("stride_length_m", "H", div(100)),)),
            Group(1, (("total_distance_m", "I", div(10)),)),
        ),
        (("is_running", 2),),
    ),
    Layout(
        IBD,
        "H",
        (
            Group(0, (("speed_kmh", "H", div(100)),), inverted=True),
            Group(1, (("average_speed_kmh", "H", div(100)),)),
            Group(2, (("cadence_rpm", "H", div(2)),)),
            Group(3, (("average_cadence_rpm", "H", div(2)),)),
            Group(4, (("total_distance_m", "T", same),)),
            Group(5, (("resistance_level", "h", same),)),
            Group(6, (("power_w", "h", same),)),
            Group(7, (("average_power_w", "h", same),)),
            Group(
                8,
                (
                    ("energy_total_kcal", "H", unless(0xFFFF)),
                    ("energy_per_hour_kcal", "H", unless(0xFFFF)),
                    ("energy_per_minute_kcal", "B", unless(0xFF)),
                ),
            ),
            Group(9, (("heart_rate_bpm", "B", same),)),
            Group(10, (("metabolic_equivalent", "B", div(10)),)),
            Group(11, (("elapsed_time_s", "H", same),)),
            Group(12, (("remaining_time_s", "H", same),)),
        ),
    ),
    Layout(
        TM,
        "H",
        (
            Group(0, (("speed_kmh", "H", div(100)),), inverted=True),
            Group(1, (("average_speed_kmh", "H", div(100)),)),
            Group(2, (("total_distance_m", "T", same),)),
            Group(
                3,
                (
                    ("inclination_pct", "h", unless(0x7FFF, div(10))),
                    ("ramp_angle_deg", "h", unless(0x7FFF, div(10))),
                ),
            ),
            Group(
                4,
                (
                    ("positive_elevation_gain_m", "H", div(10)),
                    ("negative_elevation_gain_m", "H", div(10)),
                ),
            ),
            Group(5, (("instantaneous_pace_s_per_km", "H", same),)),
            Group(6, (("average_pace_s_per_km", "H", same),)),
            Group(
                7,
                (
                    ("energy_total_kcal", "H", unless(0xFFFF)),
                    ("energy_per_hour_kcal", "H", unless(0xFFFF)),
                    ("energy_per_minute_kcal", "B", unless(0xFF)),
                ),
            ),
            Group(8, (("heart_rate_bpm", "B", same),)),
            Group(9, (("metabolic_equivalent", "B", div(10)),)),
            Group(10, (("elapsed_time_s", "H", same),)),
            Group(11, (("remaining_time_s", "H", same),)),
            Group(12, (("force_on_belt_n", "h", same), ("power_w", "h", same))),
        ),
    ),
)

RANGES = {
    "B": (0, 0xFF),
    "H": (0, 0xFFFF),
    "h": (-0x8000, 0x7FFF),
    "I": (0, 0xFFFFFFFF),
    "T": (0, 0xFFFFFF),
    "A": (0, 0xFFF),
}
SIZES = {"B": 1, "H": 2, "h": 2, "I": 4, "T": 3}


def present(group: Group, flags: int) -> bool:
    if group.bit is None:
        return True
    return bool(flags >> group.bit & 1) != group.inverted


def pack_group(group: Group, raws: list[int]) -> bytes:
    codes = [code for _, code, _ in group.fields]
    if codes == ["A", "A"]:
        return u24(raws[0] | raws[1] << 12)
    return b"".join(
        u24(raw) if code == "T" else struct.pack("<" + code, raw)
        for code, raw in zip(codes, raws, strict=True)
    )


def build(layout: Layout, flags: int, raws: dict[str, int]) -> tuple[bytes, dict[str, Any]]:
    """The payload for ``flags`` and the field values ``decode`` must return for it."""
    payload = struct.pack("<" + layout.flags_code, flags)
    expected: dict[str, Any] = {}
    for group in layout.groups:
        names = [name for name, _, _ in group.fields]
        if present(group, flags):
            payload += pack_group(group, [raws[name] for name in names])
            expected.update({name: conv(raws[name]) for name, _, conv in group.fields})
        else:
            expected.update(dict.fromkeys(names))
    for name, bit in layout.booleans:
        expected[name] = bool(flags >> bit & 1)
    for name, source, divisor in layout.derived:
        expected[name] = None if expected[source] is None else expected[source] / divisor
    return payload, expected


def assert_decodes_to(layout: Layout, payload: bytes, expected: dict[str, Any]) -> None:
    m = decode(layout.characteristic, payload)
    actual = {name: getattr(m, name) for name in expected}
    assert actual == expected


def distinct_raws(layout: Layout) -> dict[str, int]:
    """Different, in-range values for every field, so a shifted offset shows."""
    raws: dict[str, int] = {}
    for i, group in enumerate(layout.groups):
        for j, (name, code, _) in enumerate(group.fields):
            low, high = RANGES[code]
            raws[name] = low + (17 * (i + 1) + 5 * j) % (high - low)
    return raws


def bit_cases() -> list[tuple[Layout, Group]]:
    return [(lay, group) for lay in LAYOUTS for group in lay.groups if group.bit is not None]


def case_id(case: tuple[Layout, Group]) -> str:
    layout, group = case
    return f"0x{layout.characteristic:04X}-bit{group.bit}"


def flags_for(layout: Layout, group: Group) -> int:
    """Only ``group``'s bit asks for data (an inverted bit asks by being clear)."""
    base = 0
    for other in layout.groups:
        if other.inverted:
            base |= 1 << other.bit  # type: ignore[operator]
    assert group.bit is not None
    return base ^ (1 << group.bit)


@pytest.mark.parametrize("case", bit_cases(), ids=[case_id(c) for c in bit_cases()])
def test_each_flag_bit_alone_puts_its_fields_after_the_mandatory_ones(
    case: tuple[Layout, Group],
) -> None:
    layout, group = case
    payload, expected = build(layout, flags_for(layout, group), distinct_raws(layout))
    assert_decodes_to(layout, payload, expected)
    assert any(expected[name] is not None for name, _, _ in group.fields)


@pytest.mark.parametrize("case", bit_cases(), ids=[case_id(c) for c in bit_cases()])
def test_each_flag_bit_short_by_one_byte_is_truncated(case: tuple[Layout, Group]) -> None:
    layout, group = case
    payload, _ = build(layout, flags_for(layout, group), distinct_raws(layout))
    with pytest.raises(DecodeError) as info:
        decode(layout.characteristic, payload[:-1])
    assert info.value.reason is DecodeFailure.TRUNCATED


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda lay: f"0x{lay.characteristic:04X}")
def test_all_bits_set_reads_every_field_in_flag_order(layout: Layout) -> None:
    flags = sum(1 << g.bit for g in layout.groups if g.bit is not None and not g.inverted)
    payload, expected = build(layout, flags, distinct_raws(layout))
    assert_decodes_to(layout, payload + b"\xee\xee", expected)  # trailing bytes ignored


def test_layout_table_covers_every_field() -> None:
    for layout in LAYOUTS:
        cls = type(decode(layout.characteristic, build(layout, 0, distinct_raws(layout))[0]))
        tabled = {name for g in layout.groups for name, _, _ in g.fields}
        tabled |= {name for name, _ in layout.booleans} | {name for name, _, _ in layout.derived}
        assert tabled == {f.name for f in fields(cls)}


# --- properties ---------------------------------------------------------------------


@st.composite
def layout_payloads(draw: st.DrawFn) -> tuple[Layout, bytes, dict[str, Any]]:
    layout = draw(st.sampled_from(LAYOUTS))
    flag_bits = 16 if layout.flags_code == "H" else 8
    flags = draw(st.integers(0, (1 << flag_bits) - 1))
    raws = {
        name: draw(st.integers(*RANGES[code]))
        for group in layout.groups
        for name, code, _ in group.fields
    }
    payload, expected = build(layout, flags, raws)
    return layout, payload, expected


@FAST
@given(layout_payloads())
def test_round_trip_random_fields_and_flags(case: tuple[Layout, bytes, dict[str, Any]]) -> None:
    layout, payload, expected = case
    assert_decodes_to(layout, payload, expected)


@FAST
@given(
    st.integers(0, 0xFF),
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFF),
    st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=8),
)
def test_hr_round_trip(flags: int, bpm: int, energy: int, rr: list[int]) -> None:
    wide = bool(flags & 0x01)
    bpm = bpm if wide else bpm & 0xFF
    payload = struct.pack("<B", flags) + struct.pack("<H" if wide else "<B", bpm)
    if flags & 0x08:
        payload += struct.pack("<H", energy)
    if flags & 0x10:
        payload += struct.pack(f"<{len(rr)}H", *rr)
    m = decode(HR, payload)
    assert m == HeartRateMeasurement(
        heart_rate_bpm=bpm,
        sensor_contact=(None, None, False, True)[flags >> 1 & 3],
        energy_expended_kj=energy if flags & 0x08 else None,
        rr_intervals_s=tuple(v / 1024 for v in rr) if flags & 0x10 else (),
    )


@FAST
@given(st.sampled_from(ALL_CHARACTERISTICS), st.binary(max_size=48))
def test_any_bytes_decode_or_raise_decode_error(characteristic: int, payload: bytes) -> None:
    try:
        m = decode(characteristic, payload)
    except DecodeError as exc:
        assert exc.reason in (DecodeFailure.TRUNCATED, DecodeFailure.INVALID_VALUE)
        assert str(exc)
    else:
        assert type(m).__name__ in {
            "HeartRateMeasurement",
            "CyclingPowerMeasurement",
            "CscMeasurement",
            "RscMeasurement",
            "IndoorBikeData",
            "TreadmillData",
            "BatteryLevel",
        }


@FAST
@given(st.sampled_from((HR, CPM, CSC, RSC, IBD, TM)), st.binary(max_size=48))
def test_prefixes_fail_until_the_flagged_fields_fit_then_decode_the_same(
    characteristic: int, payload: bytes
) -> None:
    results: list[object] = []
    for end in range(len(payload) + 1):
        try:
            results.append(decode(characteristic, memoryview(payload)[:end]))
        except DecodeError as exc:
            assert exc.reason is DecodeFailure.TRUNCATED
            results.append(None)
    first = next((i for i, r in enumerate(results) if r is not None), len(results))
    assert all(r is not None for r in results[first:])
    if characteristic == HR:  # more bytes may add RR intervals; the rest stays put
        decoded = [r for r in results[first:] if isinstance(r, HeartRateMeasurement)]
        assert len({(r.heart_rate_bpm, r.energy_expended_kj) for r in decoded}) <= 1
    else:
        assert len(set(results[first:])) <= 1


ANYTHING = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True),
    st.text(max_size=40),
    st.binary(max_size=40),
    st.uuids(),
    st.lists(st.integers(0, 255), max_size=4),
)


@FAST
@given(ANYTHING, ANYTHING)
def test_any_inputs_decode_or_raise_decode_error(characteristic: object, payload: object) -> None:
    try:
        decode(characteristic, payload)  # type: ignore[arg-type]
    except DecodeError as exc:
        assert isinstance(exc.reason, DecodeFailure)
