"""Read a FIT file back with two independent decoders: Garmin's own SDK
(``garmin-fit-sdk``, with its CRC integrity check) and ``fitdecode`` (CRC checked).
``from_garmin`` and ``from_fitdecode`` give {epoch second: {recording field: value}} of the
file's ``record`` messages, fields without a value left out."""

from __future__ import annotations

import io
from typing import Any

import fitdecode
from garmin_fit_sdk import Decoder, Stream

# a FIT record's field -> the recording's (actors.recording.FIELDS)
NAMES = {"heart_rate": "hr_bpm", "power": "power_w", "cadence": "cadence_rpm", "speed": "speed_mps",
         "distance": "distance_m"}


def garmin_messages(fit: bytes) -> dict[str, list[dict[str, Any]]]:
    """Every message, as Garmin's SDK reads it, after its integrity (CRC) check."""
    decoder = Decoder(Stream.from_byte_array(bytearray(fit)))
    assert decoder.is_fit() and decoder.check_integrity()
    messages, errors = Decoder(Stream.from_byte_array(bytearray(fit))).read()
    assert errors == []
    assert messages["file_id_mesgs"][0]["type"] == "activity" and messages["session_mesgs"][0]["sport"] == "cycling"
    return messages  # type: ignore[no-any-return]


def from_garmin(fit: bytes) -> dict[int, dict[str, float]]:
    return {int(r["timestamp"].timestamp()): {NAMES[k]: float(v) for k, v in r.items() if k in NAMES}
            for r in garmin_messages(fit)["record_mesgs"]}


def from_fitdecode(fit: bytes) -> dict[int, dict[str, float]]:
    out = {}
    with fitdecode.FitReader(io.BytesIO(fit), check_crc=fitdecode.CrcCheck.RAISE) as reader:
        for frame in reader:
            if isinstance(frame, fitdecode.FitDataMessage) and frame.name == "record":
                values = {f.name: f.value for f in frame.fields if f.value is not None}
                out[int(values["timestamp"].timestamp())] = {NAMES[k]: float(v) for k, v in values.items() if k in NAMES}
    return out
