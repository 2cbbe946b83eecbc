"""The JavaScript client (``clients/js``) under Node's test runner against the real edge:
the codec's byte vectors, a rider's samples acknowledged across a dropped connection, a
rejected one reported, v1.1 boards, a viewer's boards, a refused token. Then the server's
own accounting for that rider: every sample applied exactly once. Skips, saying so, when
``node`` is not installed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.integration

CLIENT = Path(__file__).resolve().parents[2] / "clients" / "js"


def test_the_js_client_against_a_running_edge(edge: Any, tokens: Any, unique_id: str) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (apt-get install nodejs): the JS client's tests did not run")
    sid = f"js-{unique_id}"
    ops = tokens.headers()
    httpx.post(f"{edge.url}/v1/sessions", json={"id": sid}, headers=ops, timeout=60).raise_for_status()
    httpx.post(f"{edge.url}/v1/sessions/{sid}/phase", json={"phase": "live"}, headers=ops, timeout=60).raise_for_status()
    config = {
        "url": edge.url, "session": sid,
        "deviceToken": tokens("device", device="js-strap", participant="ann", sessions=[sid]),
        "viewerToken": tokens("viewer", sessions=[sid]),
    }
    done = subprocess.run(
        [node, "--experimental-websocket", "--test", "test/"], cwd=CLIENT, capture_output=True, text=True,
        timeout=240, env=dict(os.environ, PULSELINE_JS_TEST=json.dumps(config)),
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert "# fail 0" in done.stdout and "# skipped 0" in done.stdout, done.stdout[-3000:]

    snap = httpx.get(f"{edge.url}/v1/sessions/{sid}", headers=ops, timeout=60).json()
    [ann] = [p for p in snap["participants"] if p["participant"] == "ann"]
    assert ann["samples"] == 30 and ann["rejected"] == 1, ann  # each sample once, across the dropped connection
    assert snap["durable"]["js-strap"] == 31
