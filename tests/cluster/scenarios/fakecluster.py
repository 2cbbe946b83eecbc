"""A Ray head with Ray's fake multi-node autoscaler (v1), started and stopped by pid.

Never ``ray stop`` (it kills every Ray on the host) and never ``AutoscalingCluster`` (it
runs ``ray stop --force`` and needs a yaml the 2.60 wheel lacks). The head runs as
``ray start --head --block`` in the background with explicit ports and its own temp dir;
``stop()`` terminates that process, then every leftover process whose command line names
that temp dir (the fake workers the autoscaler spawned), by pid.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from cluster.redis_server import free_port

CONFIG = Path(__file__).resolve().parents[3] / "cluster" / "configs" / "fake-multinode.yaml"


def _ray_binary() -> str:
    return str(Path(sys.executable).with_name("ray"))


def _pids_under(marker: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline:
            pids.append(int(entry.name))
    return pids


class FakeCluster:
    def __init__(self, *, idle_timeout_minutes: float = 0.1, max_workers: int = 4, slots_per_node: int = 2) -> None:
        self.port = free_port()
        self.temp_dir = tempfile.mkdtemp(prefix="plf", dir="/tmp")  # short: unix socket paths
        self.idle_timeout_minutes = idle_timeout_minutes
        self.max_workers = max_workers
        self.slots_per_node = slots_per_node
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _config(self) -> str:
        config: dict[str, Any] = yaml.safe_load(CONFIG.read_text())
        config["provider"]["gcs_address"] = self.address
        config["idle_timeout_minutes"] = self.idle_timeout_minutes
        config["max_workers"] = self.max_workers
        worker = config["available_node_types"]["ray.worker.sessions"]
        worker["max_workers"] = self.max_workers
        worker["resources"]["session_slot"] = self.slots_per_node
        path = Path(self.temp_dir) / "autoscaler.json"
        path.write_text(json.dumps(config))
        return str(path)

    def start(self, timeout_s: float = 120.0) -> FakeCluster:
        env = dict(
            os.environ, RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1", RAY_USAGE_STATS_ENABLED="0",
            RAY_AUTH_MODE="disabled",  # a private loopback test cluster; drivers here carry no token
        )
        env.pop("RAY_ADDRESS", None)
        cmd = [
            _ray_binary(), "start", "--head", "--block", f"--port={self.port}",
            "--node-ip-address=127.0.0.1", "--num-cpus=1", "--resources={\"session_slot\": 0}",
            f"--temp-dir={self.temp_dir}", f"--autoscaling-config={self._config()}",
            "--include-dashboard=false", f"--ray-client-server-port={free_port()}",
            "--min-worker-port=0", "--max-worker-port=0",
            f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}",
        ]
        log = open(Path(self.temp_dir) / "head.log", "wb")
        self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        self._wait_for_gcs(timeout_s)
        return self

    def _wait_for_gcs(self, timeout_s: float) -> None:
        """Until ``ray start`` says the head is up (its raylet registered, not just the GCS
        port open: a driver connecting before that fails with "No node info found")."""
        log = Path(self.temp_dir) / "head.log"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray head exited: see {log}")
            if "Ray runtime started" in log.read_text(errors="replace"):
                return
            time.sleep(0.2)
        raise RuntimeError(f"ray head did not come up: see {log}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = _pids_under(self.temp_dir)
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            if pids:
                time.sleep(2.0)
