"""The supervisor of ``pulseline up``: what dies is restarted with back-off, visibly, and
nothing acknowledged is lost.

The first test drives ``cluster.supervisor.Supervisor`` over real child processes (no
stack); the second runs ``pulseline up --edges 2`` as a user would, with a device streaming
into each edge, and SIGKILLs the embedded redis-server and then the second edge by pid.
"""

from __future__ import annotations

import asyncio
import json
import os
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

import redis

from launch.stack import EdgeProcess
from cluster.redis_server import EmbeddedRedis, free_port
from cluster.supervisor import ChildState, Liveness, Supervisor, read_state
from devices.client import DevTokens, DeviceStream, HubClient, stream_token_source
from tests.cluster.helpers import operator_headers

pytestmark = pytest.mark.integration


def _wait(predicate: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.timeout(60)
def test_a_killed_child_is_restarted_with_backoff_and_reported(tmp_path: Path) -> None:
    state_file = tmp_path / "supervisor.json"
    sleeper = EdgeProcess([sys.executable, "-c", "import time; time.sleep(600)"], dict(os.environ)).start()
    supervisor = Supervisor(backoff_min_s=0.3, backoff_max_s=5.0, state_file=state_file).start()
    try:
        child = supervisor.watch("sleeper", sleeper)
        first = sleeper.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        _wait(lambda: child.restarts == 1 and child.state is ChildState.RUNNING, 20, "the first restart")
        assert sleeper.pid != first and child.last_exit == -signal.SIGKILL
        second = sleeper.pid
        assert second is not None
        os.kill(second, signal.SIGKILL)  # a second failure in a row waits about twice as long
        _wait(lambda: child.state is ChildState.BACKOFF, 10, "the back-off")
        delay = supervisor.snapshot()["processes"]["sleeper"]["next_start_in_s"]
        assert 0.3 < delay <= 0.3 * 2 * 1.2 + 0.05
        _wait(lambda: child.restarts == 2 and child.state is ChildState.RUNNING, 20, "the second restart")
        # the state file is written by the supervisor's thread after the restart: wait for it
        state = _wait(lambda: (lambda st: st if st["processes"]["sleeper"]["restarts"] == 2 else None)(
            json.loads(state_file.read_text())), 10, "the second restart in the state file")
        assert state["processes"]["sleeper"]["pid"] == sleeper.pid
        assert read_state(tmp_path)["alive"] is True  # type: ignore[index]
    finally:
        supervisor.stop()
        sleeper.stop()
    assert json.loads(state_file.read_text())["processes"]["sleeper"]["state"] == "stopped"


# A server that answers HTTP (any path: 404 is an answer), or, with "hung", accepts TCP
# connections and never reads them: alive, listening, answering nothing.
_SERVER = """
import http.server, socket, sys, time
port, mode = int(sys.argv[1]), sys.argv[2]
if mode == "hung":
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port)); s.listen(64); time.sleep(600)
http.server.ThreadingHTTPServer.allow_reuse_address = True
http.server.ThreadingHTTPServer(("127.0.0.1", port), http.server.BaseHTTPRequestHandler).serve_forever()
"""

FAST_PROBE = Liveness(period_s=0.2, timeout_s=0.3, failures=3, start_grace_s=1.0)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("fault", ["SIGSTOP", "hung"])
def test_a_process_that_answers_no_liveness_probe_is_killed_and_restarted(tmp_path: Path, fault: str) -> None:
    port = free_port()
    mode = "hung" if fault == "hung" else "serve"
    server = EdgeProcess([sys.executable, "-c", _SERVER, str(port), mode], dict(os.environ),
                         livez=("127.0.0.1", port)).start()
    supervisor = Supervisor(backoff_min_s=0.2, backoff_max_s=1.0, liveness=FAST_PROBE).start()
    try:
        child = supervisor.watch("server", server)
        first = server.pid
        assert first is not None
        if fault == "SIGSTOP":
            _wait(lambda: child.answered_pid == first, 20, "a first answer")
            time.sleep(1.0)  # answering, it is left alone
            assert child.hung_kills == 0 and server.pid == first
            os.kill(first, signal.SIGSTOP)
        _wait(lambda: child.hung_kills == 1, 20, "the kill of the process that answers nothing")
        _wait(lambda: child.restarts == 1 and child.state is ChildState.RUNNING, 20, "the restart")
        assert server.pid != first and child.last_exit == -signal.SIGKILL
        assert not psutil.pid_exists(first) or psutil.Process(first).status() == psutil.STATUS_ZOMBIE
        if fault == "SIGSTOP":  # the new process answers, and is left alone
            second = server.pid
            _wait(lambda: child.answered_pid == second, 20, "the restarted process answering")
        assert supervisor.snapshot()["processes"]["server"]["hung_kills"] == 1
    finally:
        supervisor.stop()
        server.stop()


@pytest.mark.timeout(60)
def test_a_stopped_redis_server_is_killed_and_restarted_with_its_data(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "redis", appendfsync="always").start()
    supervisor = Supervisor(backoff_min_s=0.2, backoff_max_s=1.0, liveness=FAST_PROBE).start()
    try:
        child = supervisor.watch("redis-server", server)
        client = redis.Redis.from_url(server.url, socket_timeout=5)
        client.set("acked", "yes")
        first = server.pid
        assert first is not None
        _wait(lambda: child.answered_pid == first, 20, "a first PING answered")
        os.kill(first, signal.SIGSTOP)
        _wait(lambda: child.restarts == 1 and child.state is ChildState.RUNNING, 30, "the restart")
        assert child.hung_kills == 1 and server.pid != first
        assert client.get("acked") == b"yes"  # the AOF brought it back; the client reconnected
    finally:
        supervisor.stop()
        server.stop()


def _two_free_ports() -> int:
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = int(a.getsockname()[1])
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
                return port
    raise RuntimeError("no two adjacent free ports")


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _pid_of(data: Path, name: str) -> int | None:
    state = read_state(data)
    if state is None:
        return None
    process = state["processes"].get(name, {})
    return process.get("pid") if process.get("state") == "running" else None


def _restarts(data: Path, name: str) -> int:
    state = read_state(data)
    return int(state["processes"][name]["restarts"]) if state and name in state["processes"] else 0


class Rider:
    """One device streaming 10 samples/s into one edge through ``HubClient`` (reconnects,
    resends what was not acknowledged)."""

    def __init__(self, base_url: str, session: str, name: str) -> None:
        self.stream = DeviceStream(f"dev-{name}", name, session)
        tokens = DevTokens(base_url)
        self.client = HubClient(base_url.replace("http://", "ws://") + "/v1/devices", [self.stream],
                                token_provider=stream_token_source(tokens, [self.stream]), max_backoff_s=1.0)
        self.sending = True

    async def run(self) -> None:
        self.client.start()
        while self.sending:
            row = self.stream.new_sample(time.time(), 120.0, 200.0, 85.0, 8.0, float(self.stream.next_seq))
            await self.client.send_rows(self.stream, [row])
            await asyncio.sleep(0.1)

    async def drain(self, timeout_s: float) -> None:
        self.sending = False
        deadline = time.monotonic() + timeout_s
        while self.stream.acked < self.stream.next_seq - 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        await self.client.close()


@pytest.mark.timeout(480)
def test_up_restarts_a_killed_redis_and_a_killed_edge_and_loses_no_ack(tmp_path: Path) -> None:
    port = _two_free_ports()
    data = tmp_path / "data"
    log = tmp_path / "up.log"
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "RAY_ADDRESS")}
    env["PULSELINE_RESTART_BACKOFF_MIN_S"] = "0.2"
    proc = subprocess.Popen(
        [sys.executable, "-m", "launch.cli", "up", "--edges", "2", "--port", str(port), "--data-dir", str(data)],
        stdout=subprocess.DEVNULL, stderr=open(log, "w"), env=env,
    )
    first, second = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port + 1}"
    edge_name = f"edge-{port + 1}"
    try:
        _wait(lambda: proc.poll() is None and _ready(first) and _ready(second), 150, "both edges ready")
        ops = operator_headers(first)
        assert httpx.post(f"{first}/v1/sessions", json={"id": "sup"}, headers=ops, timeout=60).status_code == 201

        async def scenario() -> tuple[Rider, Rider]:
            one, two = Rider(first, "sup", "ann"), Rider(second, "sup", "bob")
            senders = [asyncio.create_task(one.run()), asyncio.create_task(two.run())]
            await asyncio.sleep(3)
            redis_pid = _pid_of(data, "redis-server")
            assert redis_pid is not None
            os.kill(redis_pid, signal.SIGKILL)
            await asyncio.to_thread(_wait, lambda: _restarts(data, "redis-server") == 1 and _pid_of(data, "redis-server"),
                                    60, "redis-server restarted")
            await asyncio.to_thread(_wait, lambda: _ready(first), 60, "the first edge ready again")
            await asyncio.sleep(2)
            edge_pid = _pid_of(data, edge_name)
            assert edge_pid is not None
            os.kill(edge_pid, signal.SIGKILL)
            await asyncio.to_thread(_wait, lambda: _restarts(data, edge_name) == 1 and _ready(second), 150,
                                    "the second edge restarted and ready")
            await asyncio.sleep(2)
            await asyncio.gather(one.drain(90), two.drain(90))
            await asyncio.gather(*senders)
            return one, two

        one, two = asyncio.run(asyncio.wait_for(scenario(), 330))
        for rider in (one, two):
            sent = rider.stream.next_seq - 1
            assert sent > 30 and rider.stream.acked == sent, (rider.stream.device, rider.stream.acked, sent)
        snap = httpx.get(f"{first}/v1/sessions/sup", headers=ops, timeout=60).json()
        applied = {p["participant"]: p["samples"] for p in snap["participants"]}
        assert applied == {"ann": one.stream.next_seq - 1, "bob": two.stream.next_seq - 1}  # lost 0, duplicated 0
        assert one.client.connects >= 1 and two.client.connects >= 2  # bob's edge died under him

        metrics = httpx.get(f"{first}/metrics", headers=ops, timeout=30).text
        assert 'pulseline_supervised_restarts_total{process="redis-server"} 1.0' in metrics
        assert f'pulseline_supervised_up{{process="{edge_name}"}} 1.0' in metrics
        status = subprocess.run([sys.executable, "-m", "launch.cli", "status", "--data-dir", str(data)],
                                capture_output=True, text=True, timeout=120, env=env)
        assert status.returncode == 0, status.stderr
        assert "redis-server" in status.stdout and "restarts 1" in status.stdout, status.stdout
        assert "session slots" in status.stdout  # the stack's own Ray, found through the state file
        text = log.read_text()
        assert "supervisor: redis-server exited (signal 9)" in text and f"supervisor: {edge_name} restarted" in text
        redis_pid = _pid_of(data, "redis-server")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    assert proc.returncode == 0, log.read_text()[-3000:]
    assert redis_pid is not None and (not psutil.pid_exists(redis_pid)
                                      or psutil.Process(redis_pid).status() == psutil.STATUS_ZOMBIE)
    assert read_state(data)["processes"]["redis-server"]["state"] == "stopped"  # type: ignore[index]


@pytest.mark.timeout(240)
def test_up_on_an_external_redis_reports_it_down_and_does_not_restart_it(tmp_path: Path) -> None:
    from cluster.redis_server import EmbeddedRedis

    redis = EmbeddedRedis(tmp_path / "external").start()  # this test's own "external" Redis
    port = _two_free_ports()
    data = tmp_path / "data"
    log = tmp_path / "up.log"
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "RAY_ADDRESS")}
    env["REDIS_URL"] = redis.url
    proc = subprocess.Popen([sys.executable, "-m", "launch.cli", "up", "--port", str(port), "--data-dir", str(data)],
                            stdout=subprocess.DEVNULL, stderr=open(log, "w"), env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: proc.poll() is None and _ready(url), 150, "the edge ready")
        ops = operator_headers(url)
        assert httpx.post(f"{url}/v1/sessions", json={"id": "ext"}, headers=ops, timeout=60).status_code == 201
        _wait(lambda: (read_state(data) or {}).get("external", {}).get("redis", {}).get("reachable") is True, 30,
              "the external Redis reported reachable")
        old_pid = redis.pid
        redis.kill()
        _wait(lambda: httpx.get(f"{url}/readyz", timeout=5).status_code == 503, 30, "not ready")
        _wait(lambda: read_state(data)["external"]["redis"]["reachable"] is False, 30,  # type: ignore[index]
              "the external Redis reported unreachable")
        time.sleep(2)  # the supervisor's back-off would have restarted an embedded one by now
        assert redis.exit_code() is not None and not redis._ping()
        assert "redis-server" not in read_state(data)["processes"]  # type: ignore[index]
        assert "external Redis" in log.read_text() and "unreachable" in log.read_text()
        redis.start()  # its operator brings it back: the stack reconnects on its own
        assert redis.pid != old_pid
        _wait(lambda: _ready(url), 60, "ready again")
        assert httpx.get(f"{url}/v1/sessions/ext", headers=ops, timeout=30).status_code == 200
        assert read_state(data)["external"]["redis"]["reachable"] is True  # type: ignore[index]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        redis.stop()
    assert proc.returncode == 0, log.read_text()[-3000:]


def test_status_of_a_stopped_stack_says_so_and_attaches_to_no_other(tmp_path: Path, monkeypatch: Any, capsys: Any) -> None:
    """`pulseline status --data-dir D` for a stack that is not running reports it stopped and
    exits 1; it used to attach to whatever Ray ran on the machine and print that as its own."""
    from launch.cli import main as cli_main

    for name in ("RAY_ADDRESS", "PULSELINE_RAY_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "supervisor.json").write_text(json.dumps({
        "pid": 2**22 + 1, "ray_address": "127.0.0.1:1", "edges": [], "processes": {
            "redis-server": {"state": "stopped", "pid": None, "restarts": 0}}}))
    assert cli_main(["status", "--data-dir", str(tmp_path)]) == 1
    out = capsys.readouterr()
    assert "not running" in out.out and "is not running (start it: pulseline up)" in out.err
    assert "session slots" not in out.out
