"""A class over class shards on Ray's multi-node test cluster: one node lost mid-class
(``tests/cluster/scenarios/shard_node_loss.py``, in its own process with its own Ray)."""

from __future__ import annotations

import pytest

from tests.cluster.test_multinode import run_scenario

pytestmark = pytest.mark.integration


@pytest.mark.timeout(420)
def test_a_class_spread_over_nodes_survives_one_nodes_loss() -> None:
    result = run_scenario("shard_node_loss", timeout_s=400)
    shards = {s for s in result["shards_before"]}
    assert shards == {"big~0", "big~1", "big~2"}, result
    assert len(set(result["shards_before"].values())) >= 2, result  # spread over nodes
    assert result["affected"] and result["victim"] not in result["shards_after"].values(), result
    assert set(result["affected"]) <= set(result["shards_after"]), result  # back, elsewhere
    assert "class" in result["recovery_s"], result
    assert result["participants"] == 30, result
    assert result["drained"] and result["lost"] == 0 and result["duplicated"] == 0, result
    assert result["applied"] == result["sent"] - result["rejected"] and result["unacknowledged"] == 0, result
