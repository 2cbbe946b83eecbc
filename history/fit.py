"""FIT activity files, encoded here (Garmin's FIT protocol, profile 21).

A FIT file is a header, a run of records and a CRC:

* **header** (14 bytes): its size, the protocol version (2.0), the profile version, the size
  of the records, ``.FIT`` and the CRC of the 12 bytes before it;
* **records**, each a one-byte header then either a **definition** (local message type
  -> global message number, little-endian, and each field's number, size and base type)
  or **data** (the field values of the local type's current definition, in its order);
* the **CRC** of everything before it (``crc16``: FIT's CRC-16, i.e. CRC-16/ARC).

``FitWriter`` writes one-off messages (file_id, event, lap, session, activity) field by
field with ``struct`` and a ride's per-second ``record`` messages in bulk: one definition,
then every record as one row of a packed numpy structured array (``records``). A field
with no value is left out of a one-off message; in a record it holds the base type's
invalid value (0xFF, 0xFFFF, 0xFFFFFFFF), which decoders read as "no value", and a field
no second of the ride has is left out of the definition. The recording already stores
each field as the integer a FIT record carries, with the same invalid value meaning
absent (``actors.recording.FIELDS``), so the columns go in as they are.

Only what pulseline writes is here; the profile's numbers are Garmin's (FIT SDK
``Profile.xlsx``, the same as ``garmin_fit_sdk.profile``, checked in
``tests/history/test_fit.py``).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

FIT_EPOCH_S = 631_065_600  # 1989-12-31T00:00:00Z, a FIT date_time's zero, in Unix seconds
PROTOCOL_VERSION = 0x20  # 2.0
PROFILE_VERSION = 21_158  # 21.158 (major * 1000 + minor)
HEADER_SIZE = 14
_DEFINITION = 0x40  # record header bit: a definition message (else data); low 4 bits: local type


@dataclass(frozen=True, slots=True)
class BaseType:
    code: int  # the base type byte of a field definition
    numpy: str  # little-endian numpy / struct code
    invalid: int  # the value that means "no value"

    @property
    def size(self) -> int:
        return np.dtype(self.numpy).itemsize


ENUM = BaseType(0x00, "<u1", 0xFF)
UINT8 = BaseType(0x02, "<u1", 0xFF)
UINT16 = BaseType(0x84, "<u2", 0xFFFF)
UINT32 = BaseType(0x86, "<u4", 0xFFFF_FFFF)
UINT32Z = BaseType(0x8C, "<u4", 0)
_STRUCT = {"<u1": "B", "<u2": "H", "<u4": "I"}


@dataclass(frozen=True, slots=True)
class Field:
    number: int
    base: BaseType
    scale: float = 1.0  # stored = round(value * scale) - offset
    offset: int = 0

    def stored(self, value: float) -> int:
        raw = int(round(value * self.scale)) - self.offset
        return min(max(raw, 0), self.base.invalid - 1) if self.base.invalid else max(raw, 1)


@dataclass(frozen=True, slots=True)
class Message:
    number: int  # the global message number
    local: int  # the local message type pulseline gives it (0-15)
    fields: Mapping[str, Field]


def _time(number: int) -> Field:
    return Field(number, UINT32, offset=FIT_EPOCH_S)  # a date_time: pass Unix seconds


TIMESTAMP = _time(253)
FILE_ID = Message(0, 0, {"type": Field(0, ENUM), "manufacturer": Field(1, UINT16), "product": Field(2, UINT16),
                         "serial_number": Field(3, UINT32Z), "time_created": _time(4)})
EVENT = Message(21, 1, {"timestamp": TIMESTAMP, "event": Field(0, ENUM), "event_type": Field(1, ENUM)})
RECORD = Message(20, 2, {"timestamp": TIMESTAMP, "heart_rate": Field(3, UINT8), "cadence": Field(4, UINT8),
                         "distance": Field(5, UINT32, 100.0), "speed": Field(6, UINT16, 1000.0),
                         "power": Field(7, UINT16)})
_SUMMARY = {"timestamp": TIMESTAMP, "event": Field(0, ENUM), "event_type": Field(1, ENUM), "start_time": _time(2),
            "total_elapsed_time": Field(7, UINT32, 1000.0), "total_timer_time": Field(8, UINT32, 1000.0),
            "total_distance": Field(9, UINT32, 100.0), "total_calories": Field(11, UINT16),
            "message_index": Field(254, UINT16)}
LAP = Message(19, 3, {**_SUMMARY, "avg_heart_rate": Field(15, UINT8), "max_heart_rate": Field(16, UINT8),
                      "avg_cadence": Field(17, UINT8), "avg_power": Field(19, UINT16), "max_power": Field(20, UINT16),
                      "sport": Field(25, ENUM), "normalized_power": Field(33, UINT16), "sub_sport": Field(39, ENUM),
                      "total_work": Field(41, UINT32)})
SESSION = Message(18, 4, {**_SUMMARY, "sport": Field(5, ENUM), "sub_sport": Field(6, ENUM),
                          "avg_heart_rate": Field(16, UINT8), "max_heart_rate": Field(17, UINT8),
                          "avg_cadence": Field(18, UINT8), "avg_power": Field(20, UINT16),
                          "max_power": Field(21, UINT16), "first_lap_index": Field(25, UINT16),
                          "num_laps": Field(26, UINT16), "normalized_power": Field(34, UINT16),
                          "total_work": Field(48, UINT32)})
ACTIVITY = Message(34, 5, {"timestamp": TIMESTAMP, "total_timer_time": Field(0, UINT32, 1000.0),
                           "num_sessions": Field(1, UINT16), "type": Field(2, ENUM), "event": Field(3, ENUM),
                           "event_type": Field(4, ENUM), "local_timestamp": _time(5)})

# The profile's values pulseline uses (types file, manufacturer, sport, sub_sport, event, ...)
FILE_ACTIVITY, MANUFACTURER_DEVELOPMENT = 4, 255
SPORT_CYCLING, SUB_SPORT_INDOOR_CYCLING = 2, 6
EVENT_TIMER, EVENT_SESSION, EVENT_LAP, EVENT_ACTIVITY = 0, 8, 9, 26
EVENT_TYPE_START, EVENT_TYPE_STOP, EVENT_TYPE_STOP_ALL = 0, 1, 4
ACTIVITY_MANUAL = 0


# -- CRC ----------------------------------------------------------------------------------------
def _crc_table() -> np.ndarray:
    crc = np.arange(256, dtype=np.uint16)
    for _ in range(8):
        crc = np.where(crc & 1, (crc >> 1) ^ 0xA001, crc >> 1).astype(np.uint16)
    return crc


_TABLE = _crc_table()
_TABLE_LIST = _TABLE.tolist()
_BLOCK = 64  # bytes per block of the vectorised CRC


def _crc_bytes(data: bytes | np.ndarray, crc: int) -> int:
    table = _TABLE_LIST
    for byte in bytes(data):
        crc = (crc >> 8) ^ table[(crc ^ byte) & 0xFF]
    return crc


def _crc_blocks(blocks: np.ndarray, first: int) -> np.ndarray:
    """The CRC of each row of ``blocks`` (uint8, rows x _BLOCK), all at once; the first row
    starts from ``first``, the others from 0."""
    crc = np.zeros(len(blocks), np.uint16)
    crc[0] = first
    columns = np.ascontiguousarray(blocks.T)
    for column in columns:
        crc = (crc >> 8) ^ _TABLE[(crc ^ column) & 0xFF]
    return crc


def _advance_tables() -> tuple[list[int], list[int]]:
    """What ``_BLOCK`` zero bytes do to a CRC register, by its low and its high byte (the
    register is linear in its bits: advance(c) = LOW[c & 0xFF] ^ HIGH[c >> 8])."""
    low = np.arange(256, dtype=np.uint16)
    high = low << np.uint16(8)
    for _ in range(_BLOCK):
        low = (low >> 8) ^ _TABLE[low & 0xFF]
        high = (high >> 8) ^ _TABLE[high & 0xFF]
    return low.tolist(), high.tolist()


_ADVANCE_LOW, _ADVANCE_HIGH = _advance_tables()


def crc16(data: bytes, crc: int = 0) -> int:
    """FIT's CRC-16 of ``data`` (CRC-16/ARC: reflected polynomial 0x8005, register from
    ``crc``, 0 for a file). Blocks of 64 bytes are computed side by side in numpy and
    chained (a CRC over A then B is A's CRC advanced over len(B) zero bytes, xor B's CRC
    from 0), so a 50 KB file costs well under a millisecond, not the few a byte loop does."""
    view = np.frombuffer(data, np.uint8)
    whole = len(view) // _BLOCK
    if whole < 2:
        return _crc_bytes(view, crc)
    low, high = _ADVANCE_LOW, _ADVANCE_HIGH
    chained = 0
    for block in _crc_blocks(view[: whole * _BLOCK].reshape(whole, _BLOCK), crc).tolist():
        chained = low[chained & 0xFF] ^ high[chained >> 8] ^ block
    return _crc_bytes(view[whole * _BLOCK:], chained)


# -- writing ------------------------------------------------------------------------------------
def _definition(message: Message, fields: list[Field]) -> bytes:
    head = struct.pack("<BBBHB", _DEFINITION | message.local, 0, 0, message.number, len(fields))
    return head + b"".join(struct.pack("<BBB", f.number, f.base.size, f.base.code) for f in fields)


@dataclass(slots=True)
class FitWriter:
    """A FIT file, message by message; ``finish`` gives the bytes. A local type is
    (re)defined whenever a message's fields differ from its current definition."""

    _parts: list[bytes] = field(default_factory=list)
    _defined: dict[int, tuple[int, ...]] = field(default_factory=dict)

    def _define(self, message: Message, fields: list[Field]) -> None:
        layout = (message.number, *(f.number for f in fields))
        if self._defined.get(message.local) != layout:
            self._parts.append(_definition(message, fields))
            self._defined[message.local] = layout

    def message(self, message: Message, values: Mapping[str, float | None]) -> None:
        """One message: each named field with a value (None: left out), in SI units or,
        for a date_time, Unix seconds."""
        present = [(message.fields[name], value) for name, value in values.items() if value is not None]
        fields = [f for f, _ in present]
        self._define(message, fields)
        layout = "<B" + "".join(_STRUCT[f.base.numpy] for f in fields)
        self._parts.append(struct.pack(layout, message.local, *(f.stored(v) for f, v in present)))

    def records(self, timestamps: np.ndarray, columns: Mapping[str, np.ndarray]) -> None:
        """``record`` messages in bulk: one per Unix second in ``timestamps``, each column
        (a ``RECORD`` field name) already the stored integers with the field's invalid
        value where absent. A column that is all invalid is left out."""
        kept = {name: c for name, c in columns.items() if bool(np.any(c != RECORD.fields[name].base.invalid))}
        fields = [TIMESTAMP, *(RECORD.fields[name] for name in kept)]
        self._define(RECORD, fields)
        dtype = np.dtype([("header", "<u1"), ("timestamp", "<u4"), *((name, RECORD.fields[name].base.numpy)
                                                                       for name in kept)])
        rows = np.empty(len(timestamps), dtype)  # (a packed structured array: the records' bytes)
        rows["header"] = RECORD.local
        rows["timestamp"] = np.asarray(timestamps, np.int64) - FIT_EPOCH_S
        for name, column in kept.items():
            rows[name] = column
        self._parts.append(rows.tobytes())

    def finish(self) -> bytes:
        body = b"".join(self._parts)
        head = struct.pack("<BBHI4s", HEADER_SIZE, PROTOCOL_VERSION, PROFILE_VERSION, len(body), b".FIT")
        head += struct.pack("<H", crc16(head))
        return head + body + struct.pack("<H", crc16(body, crc16(head)))
