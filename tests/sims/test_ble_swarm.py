"""The BLE-level swarm end to end: sims.ble sensors → SimLink → the real Bridge → the REAL edge.

Nothing server-side is faked (uvicorn + Ray + Redis from tests/conftest.py); the only
simulation is the radio: sensors notifying real GATT payloads at their real rates, on a
clock ten times faster than life.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from sims.ble_swarm import BleStudio, BleStudioConfig
from sims.command import swarm_command
from sims.scenario import ScenarioError, parse


def test_a_mixed_studio_reaches_the_board_exactly(edge: Any, run: Any, unique_id: str) -> None:
    config = BleStudioConfig(
        base_url=edge.url, name="ble-test", studios=1, riders=4, seconds=40.0, speed=10.0, seed=7,
        kits={"strap+power": 1.0, "strap+csc": 1.0, "trainer": 1.0, "strap+trainer": 1.0},
        session_prefix=f"ble-{unique_id}", drain_timeout_s=30.0,
    )
    studio = BleStudio(config)
    summary = run(studio.run(), timeout=60)

    assert {p["kit"] for p in summary["participants"]} == set(config.kits)  # every kit worn once
    assert summary["drained"], summary
    assert summary["decode_errors"] == 0
    assert summary["emitted"] > 4 * 30, summary  # ~1 sample per rider per link second
    assert summary["lost"] == 0 and summary["duplicated"] == 0 and summary["rejected"] == 0, summary
    assert summary["acknowledged"] == summary["emitted"]
    for p in summary["participants"]:
        assert p["server_samples"] == p["emitted"] > 0, p
        assert p["hr_expected"] is not None and p["hr_avg"] == pytest.approx(p["hr_expected"], abs=p["hr_tolerance"]), p
        if "csc" not in p["kit"]:
            assert p["power_avg"] == pytest.approx(p["power_expected"], abs=p["power_tolerance"]), p
        else:
            assert p["power_expected"] is None and p["power_avg"] in (None, 0, 0.0), p
    assert summary["averages_ok"]


def test_scenario_mode_ble_parses_and_validates() -> None:
    s = parse({"name": "b", "mode": "ble", "ble": {"speed": 4},
               "riders": {"count": 6, "kits": {"strap+power": 1, "trainer": 2}}, "load": {"seconds": 30}})
    assert s.mode == "ble"
    config = s.ble_config("http://127.0.0.1:1")
    assert (config.riders, config.speed, config.seconds, config.kits) == (6, 4.0, 30.0, {"strap+power": 1.0, "trainer": 2.0})
    assert parse({"name": "p"}).mode == "protocol"
    with pytest.raises(ScenarioError, match=r"^mode: must be 'protocol' or 'ble'"):
        parse({"name": "x", "mode": "radio"})
    with pytest.raises(ScenarioError, match=r"^riders\.kits\.phone: unknown or repeated BLE sensor kind"):
        parse({"name": "x", "mode": "ble", "riders": {"kits": {"phone": 1}}})
    with pytest.raises(ScenarioError, match=r"^faults: not supported in mode 'ble'"):
        parse({"name": "x", "mode": "ble", "faults": {"dup_rate": 0.1}})
    with pytest.raises(ScenarioError, match=r"^ble: only with mode = 'ble'"):
        parse({"name": "x", "ble": {"speed": 2}})
    with pytest.raises(ScenarioError, match=r"^ble\.speed: must be a number"):
        parse({"name": "x", "mode": "ble", "ble": {"speed": 0}})


def test_pulseline_swarm_runs_a_ble_scenario(edge: Any, tmp_path: Path, unique_id: str) -> None:
    """``pulseline swarm FILE`` with ``mode = "ble"``: the command path, report.json, exit 0."""
    path = tmp_path / "tiny-ble.toml"
    path.write_text(
        f'name = "tiny-ble"\nmode = "ble"\n[ble]\nspeed = 10\n[sessions]\ncount = 1\nprefix = "tb-{unique_id}"\n'
        '[riders]\ncount = 2\nkits = { "strap+power" = 1, trainer = 1 }\n[load]\nseconds = 20\n'
        "[run]\ndrain_timeout_s = 30\n"
    )
    emitted: list[dict[str, Any]] = []
    args = argparse.Namespace(scenario=str(path), url=edge.url, out=str(tmp_path / "out"), report=None)
    status = swarm_command(args, lambda *_: None, lambda summary, _report: emitted.append(summary))
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert status == 0, report
    assert report == emitted[0]
    assert report["mode"] == "ble" and report["lost"] == 0 and report["duplicated"] == 0
    assert report["emitted"] == report["acknowledged"] > 0
