"""Multi-node behaviour on this machine, each scenario in its own process with its own Ray
(a process holds one Ray connection; the test process already has one).

* node loss on a ``ray.cluster_utils.Cluster`` (head + 3 workers) mid-class;
* Ray's fake multi-node autoscaler: scale up on session demand, down after passivation,
  pre-scaling ahead of a scheduled class;
* two ``pulseline edge`` processes serving one session.

Timings are printed by the scenarios (and recorded in docs/cluster.md), not asserted here.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.scenarios.harness import RESULT_PREFIX

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def run_scenario(module: str, *args: str, timeout_s: float = 300.0) -> dict[str, Any]:
    """Run ``python -m tests.cluster.scenarios.<module>`` in its own process group and
    return its result; on timeout the whole group is killed (by its id)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.Popen(
        [sys.executable, "-m", f"tests.cluster.scenarios.{module}", *args],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(20)
                break
            except subprocess.TimeoutExpired:
                continue
        pytest.fail(f"scenario {module} timed out after {timeout_s:g} s")
    lines = [line for line in out.splitlines() if line.startswith(RESULT_PREFIX)]
    assert proc.returncode == 0 and lines, f"scenario {module} failed ({proc.returncode}):\n{err[-4000:]}"
    return json.loads(lines[-1][len(RESULT_PREFIX):])  # type: ignore[no-any-return]


def _exact(result: dict[str, Any]) -> None:
    assert result["drained"], result
    assert result["lost"] == 0 and result["duplicated"] == 0, result
    assert result["applied"] == result["sent"] - result["rejected"] and result["unacknowledged"] == 0, result


@pytest.mark.timeout(360)
def test_node_loss_mid_class_moves_sessions_and_loses_nothing() -> None:
    result = run_scenario("node_loss")
    before = result["nodes_before"]
    assert len(before) == 3 and all(len(s) == 2 for s in before.values()), before  # spread: 2 per node
    assert result["affected"], result
    assert result["victim"] not in result["nodes_after"]
    moved = {s for sessions in result["nodes_after"].values() for s in sessions}
    assert set(result["affected"]) <= moved  # back, elsewhere
    assert set(result["recovery_s"]) == set(result["affected"])
    assert result["unaffected_still_on_their_nodes"]
    _exact(result)


@pytest.mark.timeout(420)
def test_autoscaler_follows_sessions_and_prescales_scheduled_classes() -> None:
    result = run_scenario("autoscale", timeout_s=380)
    assert result["initial_nodes"] == 0
    up = result["scale_up"]
    assert up["nodes"] == 3  # 5 sessions, 2 slots per node
    assert sorted(len(s) for s in up["sessions_per_node"].values()) == [1, 2, 2]
    assert "5 sessions" in result["status_cli"] and "ray.worker.sessions" in result["status_cli"]
    down = result["scale_down"]
    assert down["passivated"] == [True] * 5 and down["nodes_left"] == 0
    pre = result["prescale"]
    assert pre["slots"] == 2
    assert pre["capacity_ready_at_start"] and pre["nodes_at_start"] >= 1
    assert pre["session_on_prescaled_node"]
    assert pre["requested_bundles_after_release"] == 0 and pre["classes_after_release"] == 0


@pytest.mark.timeout(300)
def test_two_edges_one_session_exact_totals_one_board() -> None:
    result = run_scenario("two_edges")
    assert sorted(result["devices_per_edge"].values()) == [5, 5]
    assert result["participants"] == 10 and result["samples_per_participant_exact"]
    _exact(result)
    boards = result["boards"]
    assert boards["common_versions"] > 0 and boards["mismatched_versions"] == []
    assert boards["last_version"][0] == boards["last_version"][1] and boards["last_rows_equal"]
