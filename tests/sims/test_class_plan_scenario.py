"""The class-plan scenario (``sims/scenarios/class-plan.toml``) against the real edge: the
classes are created with a start 20 s ahead and a plan, and move lobby -> live -> ended by
themselves while the riders ride the plan; every segment and cue reaches the boards, and
the class ends exact."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sims.report import summary_text
from sims.scenario import load
from sims.swarm import Swarm

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SCENARIO = Path(__file__).parents[2] / "sims" / "scenarios" / "class-plan.toml"


def test_classes_follow_their_plan_by_themselves_and_end_exact(edge: Any, run: Any, unique_id: str) -> None:
    scenario = load(SCENARIO)
    config = scenario.swarm_config(edge.url, session_prefix=f"plan-{unique_id}")
    result = run(Swarm(config).run(), timeout=240)
    assert result["drained"] and result["lost"] == 0 and result["duplicated"] == 0, summary_text(result)
    assert result["acknowledged"] == result["applied"] == result["sent"] - result["rejected"]
    assert result["phase_failures"] == 0
    cues = [s["cue"] for s in scenario.class_plan["segments"]]  # type: ignore[index]
    for sid, seen in result["plan"]["classes"].items():
        assert seen["phases_seen"] == ["lobby", "live", "ended"], (sid, seen)
        assert seen["segments_seen"] == 5 and seen["cues_seen"] == cues, (sid, seen)
        assert seen["final_phase"] == "ended"
    targets = result["plan"]["power_target_rider_boards"]
    assert targets.get("in", 0) > 0 and sum(targets.values()) > 0, targets
