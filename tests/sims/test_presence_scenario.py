"""The presence scenario (``sims/scenarios/presence.toml``) against the real edge: phones
that lose their connection for 7-20 s show ``reconnecting`` on the class board, keep
their seat and totals, and the class still ends exact."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sims.report import summary_text
from sims.scenario import load
from sims.swarm import Swarm

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SCENARIO = Path(__file__).parents[2] / "sims" / "scenarios" / "presence.toml"


def test_dropped_riders_are_reconnecting_not_gone_and_nothing_is_lost(edge: Any, run: Any, unique_id: str) -> None:
    # 30 s of the scenario's 50 (CI time): still ~12 dropouts of 7-20 s over 40 riders
    config = load(SCENARIO).swarm_config(edge.url, session_prefix=f"presence-{unique_id}", seconds=30.0)
    result = run(Swarm(config).run(), timeout=240)
    assert result["drained"] and result["lost"] == 0 and result["duplicated"] == 0, summary_text(result)
    assert result["acknowledged"] == result["applied"] == result["sent"] - result["rejected"]
    assert result["faults_injected"].get("link_dropouts", 0) > 0
    presence = result["presence"]
    assert presence["seen_reconnecting"] >= 1, presence  # a dropout of 7+ s is longer than the 5 s quiet
    final = presence["final"]
    assert final.get("left", 0) == 0 and final["active"] + final["reconnecting"] == result["riders"], presence
