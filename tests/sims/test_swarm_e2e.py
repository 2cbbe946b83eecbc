"""Scenario swarms against the real edge (uvicorn + Ray + Redis): exact with every fault on,
and a deliberately skipped seq is reported lost."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sims.report import merge_reports, summary_text, write_report
from sims.scenario import parse
from sims.swarm import Rider, Swarm

FAULTY = {
    "name": "e2e-faults",
    "seed": 11,
    "sessions": {"count": 2},
    "riders": {"count": 12, "kits": {"phone": 1, "strap+trainer": 1}},
    "load": {"seconds": 12, "board_hz": 10, "participant_boards": True,
             "surges": [{"at_s": 8, "duration_s": 2, "multiplier": 4}]},
    "faults": {
        "dup_rate": 0.08, "reorder_rate": 0.08, "bad_rate": 0.02, "bad_ts_rate": 0.02,
        "sensor_dropout_rate": 0.03, "sensor_dropout_s": [2, 4],
        "link_dropout_rate": 0.03, "link_dropout_s": [1, 3],
        "clock_skew_s": 3.0, "clock_drift_ppm": 100,
        "reconnect_storms": [{"at_s": 5, "fraction": 0.5}],
        "late_sync": {"fraction": 0.25, "hours_ago": 2, "ride_s": 300, "upload_at_s": 3, "window_s": 3},
    },
    "run": {"drain_timeout_s": 45},
}


@pytest.mark.parametrize("board_protocol", ["1.1", "1"])
def test_every_fault_at_once_still_ends_exact(edge: Any, run: Any, unique_id: str, tmp_path: Path, board_protocol: str) -> None:
    """Riders watch their own boards on their device socket (v1.1, acks inside the boards)
    or on a second socket (v1): both stay exact under every fault."""
    config = parse(FAULTY).swarm_config(edge.url, session_prefix=f"sf-{unique_id}", board_protocol=board_protocol)
    swarm = Swarm(config)
    result = run(swarm.run(), timeout=240)  # (its drain alone may take 45 s; CI boxes run at load 20+)
    assert result["drained"], summary_text(result)
    assert result["lost"] == 0 and result["duplicated"] == 0, summary_text(result)
    assert result["rejected_unexpected"] == 0 and result["participants_mismatched"] == 0, [
        r for r in swarm.report()["participants"] if r.get("rejected_unexpected") or r.get("rejections_unreported")
    ]  # evaluated only on failure: the participants involved
    assert result["energy_max_abs_error_kj"] < 1e-6
    assert result["acknowledged"] == result["applied"] == result["sent"] - result["rejected"]
    assert set(result["rejected_by_reason"]) == {"out_of_range", "bad_timestamp"}
    injected = result["faults_injected"]
    for fault in ("duplicated_frames", "reordered_samples", "bad_values", "bad_timestamps", "sensor_dropouts",
                  "link_dropouts", "storm_disconnects", "late_sync_samples"):
        assert injected.get(fault, 0) > 0, (fault, injected)
    assert injected["late_sync_samples"] == 3 * 300
    assert result["rejected"] == injected["bad_values"] + injected["bad_timestamps"]
    # a rejection notice is only ever lost with the connection that carried it
    assert result["rejections_unreported"] <= injected["link_dropouts"] + injected["storm_disconnects"]
    assert result["reconnects"] >= injected["link_dropouts"] + injected["storm_disconnects"] - 2
    assert result["latency_ms"]["samples"] > 0 and result["late_session_ids"]
    boards = result["participant_boards"]
    assert boards["viewers"] == 12 and boards["with_own_row"] > 0
    if board_protocol == "1.1":  # acks rode in the boards: far fewer ack frames than boards
        assert result["server_frames"].get("board", 0) >= boards["boards"] > 0
        assert result["server_frames"].get("ack", 0) < boards["boards"]

    report = swarm.report()
    assert len(report["participants"]) == 15 and report["timeline"]
    paths = write_report(report, tmp_path / "report")
    assert [p.name for p in paths] == ["report.json", "latency.png", "throughput.png", "accounting.png"]
    assert all(p.stat().st_size > 1000 for p in paths)
    assert json.loads(paths[0].read_text())["lost"] == 0
    twice = merge_reports([report, report])
    assert twice["sent"] == 2 * report["sent"]
    assert twice["latency_ms"]["samples"] == 2 * report["latency_ms"]["samples"]
    assert twice["swarm_gc"]["collections"] == [2 * n for n in report["swarm_gc"]["collections"]]


class SkippingSwarm(Swarm):
    """A broken device: seq 3 of the first rider is dropped from its buffer, never sent."""

    async def _send(self, rider: Rider, rows: list[list[Any]]) -> bool:
        if rider is self.riders[0] and rows[0][0] == 3:
            rider.stream.unacked.pop(3, None)
            return True
        return await super()._send(rider, rows)


def test_a_skipped_seq_is_reported_lost(edge: Any, run: Any, unique_id: str) -> None:
    config = parse({"name": "skip", "sessions": {"count": 1}, "riders": {"count": 3},
                    "load": {"seconds": 6}, "run": {"drain_timeout_s": 2}}).swarm_config(
        edge.url, session_prefix=f"skip-{unique_id}")
    result = run(SkippingSwarm(config).run())
    assert result["lost_detail"]["missing_on_server"] == 1
    assert result["lost"] >= 1 and not result["drained"]
    assert result["duplicated"] == 0 and result["participants_mismatched"] == 1
