"""Commands that explain themselves (issue 17): one clear line and exit 2, before anything
is started — a busy port, a data dir another stack holds, a token that no edge would take."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import jwt
import pytest

from launch.cli import _lock_data_dir


def pulseline(*args: str, cwd: Path | None = None, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULSELINE_") and k not in ("REDIS_URL", "RAY_ADDRESS")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    return subprocess.run([sys.executable, "-m", "launch.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=env)


def test_a_busy_port_is_one_line_and_nothing_starts(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = pulseline("up", "--port", str(port), "--data-dir", str(tmp_path / "data"))
    assert done.returncode == 2
    assert f"port {port} on 127.0.0.1 is not available" in done.stderr and "--port" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "data" / "redis").exists()


def test_a_second_stack_on_the_same_data_dir_is_refused(tmp_path: Path) -> None:
    held, problem = _lock_data_dir(tmp_path)
    assert problem is None and held is not None
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        done = pulseline("up", "--port", str(port), "--data-dir", str(tmp_path))
        assert done.returncode == 2
        assert f"is in use by another pulseline stack (pid {os.getpid()})" in done.stderr and "Traceback" not in done.stderr
        assert not (tmp_path / "redis").exists()  # no second redis-server on the same AOF
    finally:
        held.close()
    again, problem = _lock_data_dir(tmp_path)  # released with its holder
    assert problem is None
    again.close()


@pytest.mark.parametrize(("args", "says"), [
    (["--kind", "device"], "--kind device needs --session and --participant and --device"),
    (["--kind", "hub", "--hub", "h"], "--kind hub needs --device"),
    (["--kind", "viewer"], "--kind viewer needs --session"),
    (["--kind", "viewer", "--session", "a", "--session", "b"], "exactly one --session"),
])
def test_token_names_the_missing_flags(tmp_path: Path, args: list[str], says: str) -> None:
    done = pulseline("token", *args, "--data-dir", str(tmp_path))
    assert done.returncode == 2 and says in done.stderr and "claim" not in done.stderr


def test_token_outside_the_stack_says_where_it_looked_and_creates_nothing(tmp_path: Path) -> None:
    done = pulseline("token", "--kind", "operator", cwd=tmp_path)
    assert done.returncode == 2
    assert f"no development secret at {tmp_path.resolve() / '.pulseline' / 'dev-secret'}" in done.stderr
    assert not (tmp_path / ".pulseline").exists()


def test_token_with_the_stacks_data_dir_is_signed_with_its_secret(tmp_path: Path) -> None:
    (tmp_path / "dev-secret").write_text("s" * 48)
    done = pulseline("token", "--kind", "viewer", "--session", "spin", "--data-dir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    claims = jwt.decode(done.stdout.strip(), "s" * 48, algorithms=["HS256"], audience="pulseline")
    assert claims["kind"] == "viewer" and claims["sessions"] == ["spin"] and claims["sub"] == "viewer:spin"


def test_status_with_a_wrong_ray_address_is_one_line_not_minutes_of_retries(tmp_path: Path) -> None:
    """(ray.init would retry for minutes: the subprocess time-out is what fails a hang.)"""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    env_address = f"127.0.0.1:{port}"
    done = subprocess.run([sys.executable, "-m", "launch.cli", "status", "--data-dir", str(tmp_path)], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "RAY_ADDRESS": env_address,
                                                      "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert done.returncode == 2, done.stderr
    assert f"cannot attach to Ray at {env_address}: nothing answers there" in done.stderr and "Traceback" not in done.stderr
