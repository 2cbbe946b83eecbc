"""The on-demand scenario (``sims/scenarios/on-demand.toml``), short, against the real edge:
a class airs and ends, its on-demand class is made from its recording, riders ride it and
their boards rank them against the recorded riders; both swarms end exact."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sims.replay import ReplaySwarm
from sims.report import summary_text
from sims.scenario import load

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SCENARIO = Path(__file__).parents[2] / "sims" / "scenarios" / "on-demand.toml"


def test_a_class_is_ridden_on_demand_against_its_recording(edge: Any, run: Any, unique_id: str) -> None:
    scenario = load(SCENARIO)
    assert scenario.on_demand == {"riders": 12, "seconds": 30.0}
    config = scenario.swarm_config(edge.url, session_prefix=f"od-{unique_id}", devices=16, seconds=15.0)
    result = run(ReplaySwarm(config, riders=6, seconds=12.0).run(), timeout=240)
    assert result["drained"] and result["lost"] == 0 and result["duplicated"] == 0, summary_text(result)
    replay = result["replay"]
    aired = replay["aired"]
    assert aired["drained"] and aired["lost"] == 0 and aired["duplicated"] == 0, replay
    (od, seen), = replay["classes"].items()
    assert od == f"od-{unique_id}-0:od"
    assert seen["recorded_by_server"] == seen["recorded_on_boards"] >= 8, replay  # riders with power
    assert replay["riders_ranked"] == 6 and replay["rider_boards_ranked"] > 6, replay
