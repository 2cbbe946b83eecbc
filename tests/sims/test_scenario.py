"""Scenario files: every shipped one parses; a bad one fails with an error naming the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sims.scenario import ScenarioError, load, parse

SCENARIOS = sorted((Path(__file__).parents[2] / "sims" / "scenarios").glob("*.toml"))


def test_the_required_scenarios_ship() -> None:
    names = {p.stem for p in SCENARIOS}
    assert {"steady-class", "join-storm", "end-of-class-surge", "capacity-ramp", "late-sync-wave"} <= names


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.stem)
def test_shipped_scenarios_parse_into_swarm_configs(path: Path) -> None:
    scenario = load(path)
    config = scenario.swarm_config("http://127.0.0.1:1")
    assert scenario.name == path.stem
    assert config.devices == scenario.riders and config.sessions == scenario.sessions
    assert config.session_prefix.startswith(scenario.name)


def test_a_full_scenario_maps_every_field() -> None:
    s = parse({
        "name": "x", "seed": 3,
        "sessions": {"count": 4, "prefix": "pre"},
        "riders": {"count": 40, "kits": {"strap+trainer": 2, "phone": 1}},
        "connections": {"shape": "hubs", "hub_size": 10},
        "load": {"seconds": 30, "rate_hz": 2, "board_hz": 5, "participant_boards": True, "join_window_s": 10,
                 "surges": [{"at_s": 20, "duration_s": 5, "multiplier": 3}]},
        "faults": {"dup_rate": 0.1, "link_dropout_s": [1, 2], "reconnect_storms": [{"at_s": 10, "fraction": 0.25}],
                   "late_sync": {"fraction": 0.5, "hours_ago": 2, "ride_s": 600}},
        "run": {"drain_timeout_s": 10, "phases": False},
    })
    assert (s.sessions, s.session_prefix, s.riders, s.hub_size) == (4, "pre", 40, 10)
    assert s.kits == {"strap+trainer": 2.0, "phone": 1.0}
    assert (s.seconds, s.rate_hz, s.board_hz, s.participant_boards, s.join_window_s) == (30, 2, 5, True, 10)
    assert s.surges[0].multiplier == 3 and s.surges[0].covers(22) and not s.surges[0].covers(25)
    assert s.faults.dup_rate == 0.1 and s.faults.link_dropout_s == (1.0, 2.0)
    assert s.faults.reconnect_storms[0].fraction == 0.25
    assert s.faults.late_sync.ride_s == 600 and not s.phases


BAD: list[tuple[dict[str, Any], str]] = [
    ({}, "name"),
    ({"name": "has space"}, "name"),
    ({"name": "x", "riders": {"count": 0}}, "riders.count"),
    ({"name": "x", "riders": {"count": "many"}}, "riders.count"),
    ({"name": "x", "riders": {"kits": {"phone+toaster": 1}}}, "riders.kits.phone+toaster"),
    ({"name": "x", "riders": {"kits": {"phone": -1}}}, "riders.kits.phone"),
    ({"name": "x", "riders": {"cuont": 3}}, "riders.cuont"),
    ({"name": "x", "bogus": 1}, "bogus"),
    ({"name": "x", "connections": {"shape": "pigeons"}}, "connections.shape"),
    ({"name": "x", "connections": {"shape": "phones", "hub_size": 30}}, "connections.hub_size"),
    ({"name": "x", "connections": {"shape": "hubs", "hub_size": 300}}, "connections.hub_size"),
    ({"name": "x", "load": {"board_hz": 20}}, "load.board_hz"),
    ({"name": "x", "load": {"seconds": 10, "join_window_s": 11}}, "load.join_window_s"),
    ({"name": "x", "load": {"surges": [{"duration_s": 3}]}}, "load.surges[0].at_s"),
    ({"name": "x", "load": {"surges": {"at_s": 3}}}, "load.surges"),
    ({"name": "x", "faults": {"dup_rate": 2}}, "faults.dup_rate"),
    ({"name": "x", "faults": {"dup_rate": True}}, "faults.dup_rate"),
    ({"name": "x", "faults": {"sensor_dropout_s": [5, 1]}}, "faults.sensor_dropout_s"),
    ({"name": "x", "faults": {"reconnect_storms": [{"at_s": 1, "fraction": 3}]}}, "faults.reconnect_storms[0].fraction"),
    ({"name": "x", "faults": {"late_sync": {"hours_ago": 1, "ride_s": 7200}}}, "faults.late_sync.ride_s"),
    ({"name": "x", "faults": {"late_sync": {"hours_ago": 200}}}, "faults.late_sync.hours_ago"),
    ({"name": "x", "run": {"phases": "yes"}}, "run.phases"),
]


@pytest.mark.parametrize(("data", "field"), BAD, ids=[f for _, f in BAD])
def test_a_bad_scenario_names_the_field(data: dict[str, Any], field: str) -> None:
    with pytest.raises(ScenarioError) as info:
        parse(data)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")


def test_a_bad_file_names_the_file_and_the_field(tmp_path: Path) -> None:
    path = tmp_path / "typo.toml"
    path.write_text('name = "typo"\n[faults]\ndup_rate = 1.5\n')
    with pytest.raises(ScenarioError, match=r"typo\.toml: faults\.dup_rate: must be a number in \[0, 1\], got 1\.5"):
        load(path)


def test_a_syntax_error_is_a_scenario_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text('name = "broken"\n[load\nseconds = 3\n')
    with pytest.raises(ScenarioError) as info:
        load(path)
    assert info.value.field == "<syntax>" and "broken.toml" in str(info.value)


def test_json_scenarios_use_the_same_schema(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text('{"name": "j", "riders": {"count": 7}, "connections": {"shape": "hubs"}}')
    scenario = load(path)
    assert scenario.riders == 7 and scenario.hub_size == 30
