"""The admission-storm scenario (``sims/scenarios/admission-storm.toml``), short, against
an edge of its own with a low admission rate: a storm of joiners into one class is queued
and admitted in arrival order, every joiner gets in, the riders already in class keep
riding, and the accounting is exact."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sims.report import summary_text
from sims.scenario import load
from sims.swarm import Swarm

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SCENARIO = Path(__file__).parents[2] / "sims" / "scenarios" / "admission-storm.toml"


def test_a_join_storm_is_admitted_in_order_and_nothing_is_lost(own_edge: Any, run: Any, unique_id: str) -> None:
    # an admission rate well under the storm's arrival rate even on a loaded box (at 20/s a
    # slow CI box's swarm joined barely faster than it, and few joiners ever queued)
    server, _ = own_edge(admit_rate_per_s=6.0, admit_burst=3)
    config = load(SCENARIO).swarm_config(server.url, session_prefix=f"storm-{unique_id}", devices=150,
                                         seconds=35.0, join_window_s=3.0, storm_at_s=3.0, in_class=0.2)
    result = run(Swarm(config).run(), timeout=240)
    print(json.dumps(result["admission"]))
    assert result["drained"] and result["lost"] == 0 and result["duplicated"] == 0, summary_text(result)
    assert result["acknowledged"] == result["applied"] == result["sent"] - result["rejected"]
    admission = result["admission"]
    assert admission["joiners"] > 80 and admission["not_admitted"] == 0, admission
    assert admission["queued"] > admission["joiners"] // 2 and admission["max_position"] > 20, admission
    # in order (joiners one round admits together are welcomed in one tick, in any order)
    assert admission["order_inversions"] <= 2, admission
    assert admission["in_class_latency_ms"]["samples"] > 0, admission
