"""Recordings: the file format, and each shipped recording replayed through the bridge.

The replays go through ``pulseline bridge replay`` (``devices.bridge_cli.main``) against
the real edge, and the server's per-participant numbers are compared with what the
generator's known parameters (``sims.ble.RECORDINGS``) imply, computed here on their own.
"""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Any

import httpx
import pytest

from devices.bridge_cli import main
from devices.client import DevTokens
from devices.gatt import Characteristic, decode
from devices.links import SensorKind
from devices.replay import Recording, RecordingError, ReplayLink
from sims.ble import RECORDINGS, RECORDINGS_DIR, indoor_bike_speed_kmh, record

SPEED = 120.0


def _integral(f: Any, start: float, end: float, step: float = 0.01) -> float:
    n = int((end - start) / step)
    return sum(f(start + (i + 0.5) * step) for i in range(n)) * step


def _replay(edge: Any, name: str, session: str, spool: Path, capsys: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    token = asyncio.run(DevTokens(edge.url)(kind="operator"))
    auth = {"Authorization": f"Bearer {token}"}
    argv = [
        "replay", str(RECORDINGS_DIR / RECORDINGS[name].file), "--url", edge.url, "--session", session,
        "--speed", str(SPEED), "--spool", str(spool), "--create-session", "--name", "replay",
    ]
    code = main(argv)
    out = capsys.readouterr().out
    summary = json.loads(out[out.index('{\n  "bridge"'):])  # Ray may print warnings to stdout too
    assert code == 0, summary
    snap = httpx.get(f"{edge.url}/v1/sessions/{session}", headers=auth).json()
    assert snap["phase"] == "ended"  # --create-session drove the class: live while it played, then over
    server = {p["participant"]: p for p in snap["participants"]}
    return summary, server[RECORDINGS[name].participant]


@pytest.mark.parametrize("name", sorted(RECORDINGS))
def test_replay_of_a_shipped_recording(name: str, edge: Any, unique_id: str, tmp_path: Path, capsys: Any) -> None:
    spec = RECORDINGS[name]
    summary, server = _replay(edge, name, f"replay-{name}-{unique_id}", tmp_path / "spool.sqlite", capsys)

    assert summary["drained"] and summary["spooled"] == 0 and summary["rejected"] == 0, summary
    assert summary["emitted"] == summary["acked"] == server["samples"], (summary, server)
    assert summary["emitted"] >= spec.duration_s * 0.95  # one per second, from the first notification
    assert summary["participants"][spec.participant]["flags"] == {}  # rollovers raised nothing
    [sensor] = spec.sensors()
    duration = spec.duration_s
    if name == "heart_rate":
        assert server["hr_avg"] == pytest.approx(sensor.hr_bpm.mean, abs=1.0)
        assert server["hr_max"] == pytest.approx(sensor.hr_bpm.mean + sensor.hr_bpm.amplitude, abs=1.0)
    elif name == "power_meter":
        assert server["power_avg"] == pytest.approx(sensor.power_w.mean, abs=2.0)
        expected_kj = _integral(sensor.power_w.at, 0.0, duration) / 1000
        assert server["energy_kj"] == pytest.approx(expected_kj, rel=0.02)
        assert server["cadence_avg"] == pytest.approx(sensor.cadence_rpm.mean, abs=1.5)
    elif name == "csc":
        assert server["distance_m"] == pytest.approx(_integral(sensor.speed_mps.at, 0.0, duration), rel=0.02)
        assert server["cadence_avg"] == pytest.approx(sensor.cadence_rpm.mean, abs=1.5)
        top = sensor.speed_mps.mean + sensor.speed_mps.amplitude
        assert server["speed_max"] == pytest.approx(top, abs=0.3)
    else:
        assert server["power_avg"] == pytest.approx(sensor.power_w.mean, abs=2.0)
        assert server["cadence_avg"] == pytest.approx(sensor.cadence_rpm.mean, abs=1.5)
        assert server["hr_avg"] == pytest.approx(sensor.hr_bpm.mean, abs=1.0)
        distance = _integral(lambda t: indoor_bike_speed_kmh(sensor.power_w.at(t)) / 3.6, 0.0, duration)
        assert server["distance_m"] == pytest.approx(distance, rel=0.02)
        expected_kj = _integral(sensor.power_w.at, 0.0, duration) / 1000
        assert server["energy_kj"] == pytest.approx(expected_kj, rel=0.02)


def test_shipped_recordings_are_what_the_generator_makes() -> None:
    for spec in RECORDINGS.values():
        shipped = Recording.read(RECORDINGS_DIR / spec.file)
        assert shipped == record(spec), spec.file  # regenerate: python -m sims.ble record
        assert shipped.devices[0].participant == spec.participant
        for note in shipped.notifications:
            decode(note.characteristic, note.payload)  # every payload is a valid GATT payload


def test_csc_recording_crosses_both_rollovers() -> None:
    notes = Recording.read(RECORDINGS_DIR / RECORDINGS["csc"].file).notifications
    decoded = [decode(Characteristic.CSC_MEASUREMENT, n.payload) for n in notes]
    wheels = [m.wheel_revolutions for m in decoded]
    cranks = [m.crank_revolutions for m in decoded]
    assert any(b < a for a, b in zip(wheels, wheels[1:], strict=False))  # u32 wheel count wrapped
    assert any(b < a for a, b in zip(cranks, cranks[1:], strict=False))  # u16 crank count wrapped
    ticks = [m.crank_event_ticks for m in decoded]
    assert any(b < a for a, b in zip(ticks, ticks[1:], strict=False))  # 1/1024 s event clock wrapped


def test_recording_round_trip_and_header_less_files(tmp_path: Path) -> None:
    original = record(RECORDINGS["heart_rate"])
    path = tmp_path / "hr.jsonl"
    original.write(path)
    assert Recording.read(path) == original
    bare = tmp_path / "bare.jsonl"
    bare.write_text("\n".join(path.read_text().splitlines()[1:4]) + "\n")
    loaded = Recording.read(bare)
    assert [(d.address, d.kinds) for d in loaded.devices] == [("C0:FF:EE:00:00:01", (SensorKind.HEART_RATE,))]
    assert len(loaded.notifications) == 3 and loaded.duration_s == 2.0


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", "not JSON"),
        ("[1, 2]", "each line must be a JSON object"),
        ('{"ts": 1, "address": "A", "char": "2a37"}', "bad notification"),
        ('{"ts": 1, "address": "A", "char": "ffff", "hex": "00"}', "bad notification"),
        ('{"ts": 1, "address": "A", "char": "2a37", "hex": "zz"}', "bad notification"),
    ],
)
def test_bad_recording_lines_name_the_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"ts": 0, "address": "A", "char": "2a37", "hex": "002a"}\n' + line + "\n")
    with pytest.raises(RecordingError, match=rf"bad.jsonl:2: {message}"):
        Recording.read(path)


def test_replay_link_scans_and_plays_on_its_clock(run: Any) -> None:
    recording = Recording.merge(Recording.read(RECORDINGS_DIR / RECORDINGS[n].file) for n in ("heart_rate", "csc"))
    link = ReplayLink(recording, speed=120.0)
    received: list[Any] = []

    async def scenario() -> float:
        adverts = await link.scan([SensorKind.CSC], 1.0)
        assert [(a.name, a.battery_pct) for a in adverts] == [("SPD-CAD 0003", 41)]
        connection = await link.connect(adverts[0], received.append)
        end = await link.wait_end()
        await connection.close()
        return end

    end = run(scenario(), timeout=30)
    assert link.origin is not None and end == pytest.approx(link.origin + 180.0)
    assert {n.address for n in received} == {"C0:FF:EE:00:00:03"}  # only the connected sensor plays
    assert len(received) >= 355
    stamps = [n.ts - link.origin for n in received]
    assert stamps == sorted(stamps) and math.isclose(stamps[-1], 180.0)
