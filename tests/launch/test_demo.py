"""``pulseline demo`` as a newcomer runs it (the README's first command, shortened with
``--once``): the stack starts, the links to open are printed before the class runs, the
simulated class follows its class plan by itself (lobby -> live -> ended) and ends exact."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_demo_prints_its_links_first_and_runs_a_planned_class_to_its_end(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "RAY_ADDRESS")}
    done = subprocess.run(
        [sys.executable, "-m", "launch.cli", "demo", "--once", "--seconds", "20", "--sessions", "1", "--devices", "6",
         "--port", str(_free_port()), "--data-dir", str(tmp_path / "data")],
        capture_output=True, text=True, timeout=270, env=env, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    err = done.stderr
    assert "Traceback" not in err, err[-3000:]
    links = err.index("the live class:")
    assert links < err.index("the class runs for 20 s, follows its plan")  # the links come before the class
    assert "/view#token=" in err[links:links + 600]  # a view credential in the fragment, never an operator token
    report = json.loads(done.stdout)
    assert report["lost"] == 0 and report["duplicated"] == 0 and report["drained"]
    assert report["acknowledged"] == report["applied"] == report["sent"] - report["rejected"] > 0
    (seen,) = report["plan"]["classes"].values()
    assert seen["phases_seen"][-2:] == ["live", "ended"] and seen["segments_seen"] == 5, seen
