"""``pulseline up --edges 2``: two edge processes on one Ray + Redis, stopped together."""

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

import httpx
import pytest

from tests.cluster.helpers import operator_headers

pytestmark = pytest.mark.integration


def _two_free_ports() -> int:
    """A port P with P + 1 free too."""
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


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{url} did not serve: " + log.read_text())


async def _ride_through_a_freeze(urls: list[str], frozen_pid: int, data_dir: Path) -> dict[str, object]:
    from cluster.supervisor import read_state
    from devices.client import DevTokens, DeviceStream, HubClient, stream_token_source

    httpx.post(f"{urls[1]}/v1/sessions/both/phase", json={"phase": "live"}, headers=operator_headers(urls[1]),
               timeout=60).raise_for_status()
    stream = DeviceStream("freeze-bike", "freeze-rider", "both")
    tokens = DevTokens(urls)
    client = HubClient([f"{u.replace('http', 'ws')}/v1/devices" for u in urls], [stream], stall_s=2.0,
                       token_provider=stream_token_source(tokens, [stream]))
    client.start()
    try:
        await asyncio.wait_for(client.ready.wait(), 60)
        for k in range(12):
            if k == 4:
                os.kill(frozen_pid, signal.SIGSTOP)
                await asyncio.sleep(0.2)
                [paused] = [p for p in read_state(data_dir)["processes"].values() if p["pid"] == frozen_pid]
            await client.send_rows(stream, [stream.new_sample(time.time(), 120.0, 200.0, 85.0)])
            await asyncio.sleep(0.5)
        deadline = time.monotonic() + 60
        while stream.acked < 12 and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        return {"paused": paused["state"], "stalls": client.stalls, "url": client.url.removesuffix("/v1/devices").replace("ws", "http"),
                "acked": stream.acked, "sent": stream.next_seq - 1}
    finally:
        await client.close()
        await tokens.aclose()


@pytest.mark.timeout(240)
def test_up_with_two_edges_serves_one_session_from_both(tmp_path: Path) -> None:
    port = _two_free_ports()
    log = tmp_path / "up.log"
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "RAY_ADDRESS")}
    # the frozen edge is killed after 4 unanswered probes 2 s apart: after its rider has moved
    env.update(PULSELINE_LIVENESS_PERIOD_S="2", PULSELINE_LIVENESS_FAILURES="4")
    proc = subprocess.Popen(
        [sys.executable, "-m", "launch.cli", "up", "--edges", "2", "--port", str(port), "--data-dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=open(log, "w"), env=env,
    )
    first, second = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port + 1}"
    frozen = 0
    try:
        _wait_healthy(first, proc, log)
        _wait_healthy(second, proc, log)
        created = httpx.post(f"{first}/v1/sessions", json={"id": "both"}, headers=operator_headers(first), timeout=60)
        assert created.status_code == 201, created.text
        # a token minted by the second edge, a session created through the first
        snap = httpx.get(f"{second}/v1/sessions/both", headers=operator_headers(second), timeout=60)
        assert snap.status_code == 200 and snap.json()["session"] == "both"
        status = httpx.get(f"{second}/v1/cluster/status", headers=operator_headers(second), timeout=60).json()
        assert status["totals"]["sessions"] == 1 and status["nodes"][0]["sessions"] == ["both"]
        # the second edge freezes (SIGSTOP) under a rider: its client moves to the first edge
        # and every sample is acknowledged there
        state = json.loads((tmp_path / "supervisor.json").read_text())
        frozen = int(state["processes"][f"edge-{port + 1}"]["pid"])
        out = asyncio.run(_ride_through_a_freeze([second, first], frozen, tmp_path))
        assert out["paused"] == "paused", out  # `pulseline status` says so
        assert out["stalls"] >= 1 and out["url"] == first, out
        assert out["acked"] == out["sent"] == 12, out
        # the supervisor's liveness probe finds the frozen edge, kills it and starts another
        from cluster.supervisor import read_state

        def restarted() -> bool:
            edge = read_state(tmp_path)["processes"][f"edge-{port + 1}"]  # type: ignore[index]
            return bool(edge["hung_kills"] == 1 and edge["restarts"] == 1 and edge["state"] == "running")

        deadline = time.monotonic() + 120
        while not restarted() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert restarted(), read_state(tmp_path)
        _wait_healthy(second, proc, log)
        assert "answered none of 4 liveness probes in a row (stopped)" in log.read_text()
    finally:
        if frozen:
            try:
                os.kill(frozen, signal.SIGCONT)  # if the test failed before the kill
            except ProcessLookupError:
                pass
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    assert proc.returncode == 0, log.read_text()
    assert log.read_text().count("pulseline: stopped") == 2  # the extra edge (its second process) stopped too
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{second}/healthz", timeout=1)
