"""The chaos soak, short: ``scripts/chaos.py`` runs ``pulseline up --edges 2`` and a swarm on
both edges for a minute while it SIGKILLs, one after the other, a session actor, the embedded
redis-server and the second edge. Every kill is followed by a recovery (Ray restarts the
actor, the supervisor restarts redis-server and the edge) and the class ends exact.

The 30-minute run of the same script is in docs/cluster.md ("Chaos soak").
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
VICTIMS = ["session-actor", "redis-server", "edge"]


@pytest.mark.timeout(420)
def test_a_minute_of_chaos_loses_nothing_and_everything_recovers(tmp_path: Path) -> None:
    report = tmp_path / "chaos.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "chaos.py"), "--minutes", "1", "--every-s", "12",
         "--rounds", "3", "--victims", ",".join(VICTIMS), "--sessions", "2", "--devices", "8",
         "--sample-s", "5", "--report", str(report)],
        cwd=ROOT, capture_output=True, text=True, timeout=400,
    )
    assert report.exists(), done.stderr[-3000:]
    result = json.loads(report.read_text())
    accounting = result["accounting"]
    assert accounting["lost"] == 0 and accounting["duplicated"] == 0, accounting
    assert accounting["drained"] and accounting["verified"] is True, accounting
    assert accounting["sent"] > 0 and accounting["acknowledged"] == accounting["applied"] == accounting["sent"]
    kills = result["kills"]
    assert [k["victim"] for k in kills] == VICTIMS, kills
    for kill in kills:  # each process was there to kill and its recovery was seen
        assert "skipped" not in kill and kill["pid"] > 0 and kill["recovered_s"] is not None, kill
    assert result["memory"] and all(m["rss_mib"] > 0 for m in result["memory"])
    assert done.returncode == 0, done.stderr[-3000:]
