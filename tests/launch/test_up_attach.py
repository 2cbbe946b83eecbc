"""``pulseline up`` told to attach to a Ray it cannot use (``RAY_ADDRESS`` with nothing there,
or a GCS that never answers) refuses in one line and leaves nothing running: it used to
retry for minutes, or die with a traceback, and leave its embedded redis-server behind
(a next ``up`` on the same data dir would start a second one on the same append-only file)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _up(tmp_path: Path, ray_address: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "RAY_ADDRESS")}
    return subprocess.Popen(
        [sys.executable, "-m", "launch.cli", "up", "--port", str(_free_port()), "--data-dir", str(tmp_path / "data")],
        env={**env, "RAY_ADDRESS": ray_address}, cwd=tmp_path, stderr=subprocess.PIPE, text=True,
    )


def _redis_servers_in(tmp_path: Path) -> list[int]:
    """redis-server processes whose working directory is under ``tmp_path`` (the embedded one's is its data dir)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if "redis-server" in (entry / "cmdline").read_text() and \
                        str(tmp_path) in os.readlink(entry / "cwd"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.fixture
def no_leftovers(tmp_path: Path) -> Iterator[None]:
    yield
    left = _redis_servers_in(tmp_path)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, "an embedded redis-server outlived its pulseline up"


@pytest.fixture
def silent_gcs() -> Iterator[str]:
    """A TCP port that accepts connections and closes them: a GCS that never answers."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                server.accept()[0].close()
            except OSError:
                continue
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join(5)
    server.close()


def test_up_with_nothing_at_ray_address_refuses_at_once(tmp_path: Path, no_leftovers: None) -> None:
    up = _up(tmp_path, f"127.0.0.1:{_free_port()}")
    try:
        _, err = up.communicate(timeout=30)
    finally:
        up.kill()
    assert up.returncode == 2, err[-2000:]
    assert "pulseline: refusing to start: cannot attach to Ray at 127.0.0.1:" in err and "Traceback" not in err, err[-2000:]


def test_up_stopped_while_attaching_leaves_no_redis_server(tmp_path: Path, silent_gcs: str, no_leftovers: None) -> None:
    up = _up(tmp_path, silent_gcs)
    try:
        deadline = time.monotonic() + 30
        while not _redis_servers_in(tmp_path) and time.monotonic() < deadline:  # Redis first, then Ray
            time.sleep(0.2)
        assert _redis_servers_in(tmp_path), "the embedded redis-server never started"
        up.send_signal(signal.SIGTERM)
        up.communicate(timeout=120)  # (Ray's GCS client returns to Python after its 30 s wait)
    finally:
        up.kill()
