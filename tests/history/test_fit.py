"""FIT exports (``history.exports.to_fit``, Garmin's SDK encoding) without a server: rides with
gaps (seconds missing, fields missing in some seconds or in all) read back by Garmin's SDK and
by fitdecode, sample for sample. The swarm's rides are checked the same way over HTTP
(test_history_http.py)."""

from __future__ import annotations

import io
from typing import Any

import fitdecode
import numpy as np

from actors.recording import FIELDS, Recording
from history.exports import to_fit
from history.rides import build_ride
from tests.history.fit_decoders import from_fitdecode, from_garmin, garmin_messages

T0 = 1_795_000_000
NAN = float("nan")


def ride_of(rows: list[list[float]]) -> Any:
    rec = Recording()
    rec.add(np.zeros(len(rows), np.int64), np.array(rows, float))
    summary = {"participant": "ann", "energy_kj": 12.5, "samples": len(rows), "power_avg": 201.0, "hr_avg": 131.0,
               "metrics": {"kcal": 12.0, "np_w": 210.0}}
    ride = build_ride("c1", summary, rec.series(0), rank=2, riders=3)
    assert ride is not None
    return ride


def expected(rows: list[list[float]]) -> dict[int, dict[str, float]]:
    """What each second holds (one sample per second here), at a FIT record's resolution."""
    out = {}
    for ts, *values in rows:
        out[int(ts)] = {f.name: round(v * f.scale) / f.scale for f in FIELDS
                        if not np.isnan(v := values[f.value_column - 1])}
    return out


def test_a_ride_with_gaps_reads_back_sample_for_sample() -> None:
    """Seconds missing (a dropout), heart rate missing in some seconds (FIT's 0xFF), power
    and cadence in others (0xFFFF, 0xFF), speed in none: every second reads back exactly,
    with no value where none was sent."""
    rows = []
    for i in range(40):
        if 10 <= i < 15:
            continue  # five seconds with nothing
        hr = NAN if i % 4 == 0 else 120.0 + i
        power, cadence = (NAN, NAN) if i % 6 == 1 else (180.0 + 3.4 * i, 85.0 + (i % 7))
        rows.append([T0 + i + 0.25, hr, power, cadence, 8.123 + i / 1000, 8.3 * i])
    rows.append([T0 + 41.5, NAN, NAN, NAN, NAN, 8.3 * 41])  # a second with distance only
    body = to_fit(ride_of(rows))
    want = expected(rows)
    assert from_garmin(body) == want
    assert from_fitdecode(body) == want
    messages = garmin_messages(body)
    session, lap = messages["session_mesgs"][0], messages["lap_mesgs"][0]
    for summary in (session, lap):
        assert summary["start_time"].timestamp() == T0 and summary["total_elapsed_time"] == 42.0
        assert summary["total_work"] == 12_500 and summary["avg_power"] == 201 and summary["sub_sport"] == "indoor_cycling"
        assert summary["avg_heart_rate"] == 131 and summary["normalized_power"] == 210 and "max_power" not in summary
    assert session["num_laps"] == 1 and messages["activity_mesgs"][0]["num_sessions"] == 1
    assert [e["event_type"] for e in messages["event_mesgs"]] == ["start", "stop_all"]


def test_a_field_no_second_has_is_not_in_the_file() -> None:
    rows = [[T0 + i + 0.5, NAN, 150.0 + i, NAN, NAN, NAN] for i in range(5)]  # a power meter alone
    body = to_fit(ride_of(rows))
    assert from_garmin(body) == from_fitdecode(body) == expected(rows)
    record_fields = set().union(*(r.keys() for r in garmin_messages(body)["record_mesgs"]))
    assert record_fields == {"timestamp", "power"}
    with fitdecode.FitReader(io.BytesIO(body)) as reader:
        definitions = [f for f in reader if isinstance(f, fitdecode.FitDefinitionMessage) and f.name == "record"]
    assert [[(d.def_num, d.size) for d in f.field_defs] for f in definitions] == [[(253, 4), (7, 2)]]
    assert int.from_bytes(body[4:8], "little") == len(body) - body[0] - 2  # the header's data size
