"""``pulseline up`` as a user runs it: starts everything, persists, stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Up:
    def __init__(self, data_dir: Path, env: dict[str, str] | None = None) -> None:
        self.port = _free_port()
        self.log = data_dir.parent / f"up-{self.port}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "launch.cli", "up", "--port", str(self.port), "--data-dir", str(data_dir)],
            stdout=subprocess.DEVNULL, stderr=open(self.log, "w"),
            env={**{k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "RAY_ADDRESS")}, **(env or {})},
        )
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.3)
        raise AssertionError("pulseline up did not serve: " + self.log.read_text())

    def stderr(self) -> str:
        return self.log.read_text()

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)


def ops(data_dir: Path) -> dict[str, str]:
    """An operator token signed with the data dir's development secret (docs/security.md)."""
    from api.auth import dev_token
    from cluster.settings import Settings

    return {"Authorization": f"Bearer {dev_token(Settings(data_dir=data_dir), kind='operator')}"}


def test_up_persists_across_a_full_restart_and_stops_what_it_started(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = Up(data)
    created = httpx.post(f"{first.url}/v1/sessions", json={"id": "persisted"}, timeout=30, headers=ops(data))
    assert created.status_code == 201
    assert httpx.post(f"{first.url}/v1/sessions/persisted/participants", json={"participant": "ann"}, timeout=30, headers=ops(data)).status_code == 201
    redis_pid = int(re.search(r"redis-server pid (\d+)", first.stderr()).group(1))  # type: ignore[union-attr]
    assert psutil.pid_exists(redis_pid)
    assert first.terminate() == 0
    assert "stopped" in first.stderr()
    assert not psutil.pid_exists(redis_pid) or psutil.Process(redis_pid).status() == psutil.STATUS_ZOMBIE

    second = Up(data)  # same data dir: Redis replays its AOF, the actor restores its checkpoint
    try:
        snap = httpx.get(f"{second.url}/v1/sessions/persisted", timeout=30, headers=ops(data)).json()
        assert [p["participant"] for p in snap["participants"]] == ["ann"]
    finally:
        assert second.terminate() == 0


def test_up_attaches_to_an_existing_redis_and_leaves_it_running(tmp_path: Path, redis_server: Any) -> None:
    up = Up(tmp_path / "data", env={"REDIS_URL": redis_server.url})
    auth = ops(tmp_path / "data")
    try:
        assert "attached to Redis" in up.stderr()
        assert "embedded redis-server" not in up.stderr()
        assert httpx.post(f"{up.url}/v1/sessions", json={"id": f"att-{up.port}"}, timeout=30, headers=auth).status_code == 201
    finally:
        assert up.terminate() == 0
    assert redis_server._ping()  # what it did not start, it did not stop
