"""The supervisor of the embedded stack: ``pulseline up`` restarts what dies.

``Supervisor`` watches ``Supervised`` processes (the embedded redis-server, the extra
``pulseline edge`` processes of ``up --edges N``) from one thread. When one exits without
being asked to, it is started again after a back-off: ``restart_backoff_min_s`` doubling
per consecutive failure up to ``restart_backoff_max_s``, with ±20 % jitter; a process that
stayed up ``STABLE_S`` resets its back-off. A process that is alive but answers nothing —
its event loop hung, or stopped by a signal — is found by a liveness probe, as a Kubernetes
liveness probe would find it (``Liveness``: an edge's ``GET /livez``, redis-server's
``PING``, every ``liveness_period_s``): after ``liveness_failures`` unanswered probes in a
row it is killed (SIGKILL) and so restarted like any process that died. Redis comes back on the same port and data
directory, so its AOF restores every acknowledged write (see docs/cluster.md,
"Durability") and the edges' and actors' clients reconnect on their own; an edge comes back
on its port. An external Redis (``REDIS_URL``) is never restarted: it is only watched, and
reported as reachable or not (the edges answer ``/readyz`` 503 meanwhile).

What it sees is visible three ways:

* logs (``cluster.supervisor``, WARNING): every exit, every restart and its delay;
* metrics in the process's registry (the first edge's ``/metrics``):
  ``pulseline_supervised_up{process}``, ``pulseline_supervised_restarts_total{process}``;
* a state file, ``<data dir>/supervisor.json``, rewritten on every change and every
  ``HEARTBEAT_S``: what ``pulseline status`` prints. Each process: ``state`` (``running``,
  ``backoff``, ``starting``, ``stopped``), ``pid``, ``restarts``, ``last_exit``
  (code, or -signal), ``last_exit_at``, ``next_start_in_s``, ``unanswered`` (probes in a
  row), ``hung_kills``; ``external`` entries have ``reachable``.
"""

from __future__ import annotations

import enum
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

from cluster.redis_server import ping_reply
from storage.redis_url import parse

from prometheus_client import Counter, Gauge

log = logging.getLogger(__name__)

STABLE_S = 30.0  # up this long: the next failure starts the back-off from the minimum again
HEARTBEAT_S = 2.0
POLL_S = 0.2
JITTER = 0.2

SUPERVISED_UP = Gauge("pulseline_supervised_up", "1 while a supervised process runs", ["process"])
SUPERVISED_RESTARTS = Counter("pulseline_supervised_restarts_total", "restarts by the supervisor", ["process"])
SUPERVISED_HUNG = Counter("pulseline_supervised_hung_kills_total",
                          "processes killed by the supervisor for not answering its liveness probe", ["process"])


class Supervised(Protocol):
    """A process the supervisor may (re)start and watch."""

    @property
    def pid(self) -> int | None: ...

    def start(self) -> object: ...

    def exit_code(self) -> int | None:
        """None while it runs (or before its first start), its exit status once it exited."""
        ...

    def stop(self) -> None: ...

    def kill(self) -> None:
        """SIGKILL (for a process that answers nothing); the supervisor then restarts it."""
        ...

    def answers(self, timeout_s: float) -> bool | None:
        """Whether it answered a liveness request within ``timeout_s`` (None: it cannot be
        probed). Any answer counts, an error one too: the probe asks "does it run", not
        "is it ready"."""
        ...


@dataclass(frozen=True)
class Liveness:
    """The liveness probe (``Settings.liveness_*``)."""

    period_s: float = 5.0
    timeout_s: float = 5.0
    failures: int = 3  # unanswered probes in a row before the kill; 0 = no probe
    # A process that has not answered once since it started is given this long (an edge
    # attaching to Ray on a busy box takes tens of seconds) before its misses count.
    start_grace_s: float = 120.0


class ChildState(enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    BACKOFF = "backoff"
    STOPPED = "stopped"


@dataclass
class Child:
    name: str
    process: Supervised
    state: ChildState = ChildState.STOPPED
    restarts: int = 0
    failures: int = 0  # consecutive, for the back-off
    started_at: float = 0.0
    next_start_at: float = 0.0
    last_exit: int | None = None
    last_exit_at: float | None = None
    last_error: str | None = None
    unanswered: int = 0  # liveness probes in a row without an answer
    answered_pid: int | None = None  # the pid that last answered one
    hung_kills: int = 0

    def as_dict(self, now: float) -> dict[str, Any]:
        return {
            "state": self.state.value, "pid": self.process.pid if self.state is ChildState.RUNNING else None,
            "restarts": self.restarts, "last_exit": self.last_exit, "last_exit_at": self.last_exit_at,
            "last_error": self.last_error, "unanswered": self.unanswered, "hung_kills": self.hung_kills,
            "next_start_in_s": round(max(0.0, self.next_start_at - now), 2) if self.state is ChildState.BACKOFF else None,
        }


@dataclass
class ExternalRedis:
    """A Redis the stack attached to: watched (TCP connect + PING), never restarted."""

    url: str
    reachable: bool | None = None
    since: float = field(default_factory=time.time)

    def probe(self, timeout_s: float = 1.0) -> bool:
        """Reachable when one of the URL's addresses answers (the server, a cluster seed or
        a sentinel: ``storage.redis_url``); a cluster's redis-py client finds the rest."""
        return any(_answers(address, timeout_s) for address in parse(self.url).addresses)


def _answers(address: tuple[str, int], timeout_s: float) -> bool:
    return ping_reply(address, timeout_s).startswith((b"+PONG", b"-NOAUTH"))  # answering is reachable


class Supervisor:
    def __init__(
        self,
        *,
        backoff_min_s: float,
        backoff_max_s: float,
        state_file: Path | None = None,
        external: ExternalRedis | None = None,
        liveness: Liveness | None = None,
        info: dict[str, Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.info = info or {}  # static facts for the state file (the stack's Ray address, ports)
        self.children: list[Child] = []
        self.backoff_min_s = backoff_min_s
        self.backoff_max_s = backoff_max_s
        self.state_file = state_file
        self.external = external
        self.liveness = liveness or Liveness(failures=0)
        self.clock = clock
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._prober: threading.Thread | None = None
        self._written_at = 0.0

    def watch(self, name: str, process: Supervised) -> Child:
        """Watch a process that was already started (its first start is the caller's)."""
        child = Child(name, process, state=ChildState.RUNNING, started_at=self.clock())
        SUPERVISED_UP.labels(name).set(1)
        with self._lock:
            self.children.append(child)
        self._write_state(force=True)
        return child

    def start(self) -> Supervisor:
        self._thread = threading.Thread(target=self._loop, name="supervisor", daemon=True)
        self._thread.start()
        if self.liveness.failures > 0:  # its own thread: a probe waits up to its time-out
            self._prober = threading.Thread(target=self._probe_loop, name="supervisor-probe", daemon=True)
            self._prober.start()
        return self

    def stop(self) -> None:
        """Stop watching (the caller then stops the processes in its own order)."""
        self._stop.set()
        for thread in (self._thread, self._prober):
            if thread is not None:
                thread.join(15)
        for child in self.children:
            child.state = ChildState.STOPPED
        self._write_state(force=True)

    def snapshot(self) -> dict[str, Any]:
        now = self.clock()
        with self._lock:
            state: dict[str, Any] = {
                **self.info, "pid": os.getpid(), "updated_at": time.time(),
                "processes": {c.name: c.as_dict(now) for c in self.children},
            }
        if self.external is not None:
            state["external"] = {"redis": {"url": _redacted(self.external.url), "reachable": self.external.reachable,
                                           "since": self.external.since}}
        return state

    # -- the loop ------------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.wait(POLL_S):
            try:
                self.tick()
            except Exception:  # the loop never dies: log and go on
                log.exception("supervisor tick failed")

    def tick(self) -> None:
        """One pass: notice exits, start what is due, probe an external Redis."""
        changed = False
        for child in list(self.children):
            if self._stop.is_set():
                return
            changed |= self._step(child)
        if self.external is not None:
            changed |= self._probe_external()
        self._write_state(force=changed)

    def _step(self, child: Child) -> bool:
        now = self.clock()
        if child.state is ChildState.RUNNING:
            code = child.process.exit_code()
            if code is None:
                if child.failures and now - child.started_at > STABLE_S:
                    child.failures = 0
                return False
            self._exited(child, code, now)
            return True
        if child.state is ChildState.BACKOFF and now >= child.next_start_at:
            self._restart(child)
            return True
        return False

    # -- the liveness probe ---------------------------------------------------------------------
    def _probe_loop(self) -> None:
        while not self._stop.wait(self.liveness.period_s):
            for child in list(self.children):
                if self._stop.is_set():
                    return
                try:
                    if self.probe(child):
                        self._write_state(force=True)
                except Exception:
                    log.exception("supervisor: probing %s failed", child.name)

    def probe(self, child: Child) -> bool:
        """One liveness probe of ``child``; True if it was killed for not answering."""
        pid = child.process.pid
        if child.state is not ChildState.RUNNING or pid is None:
            return False
        answered = child.process.answers(self.liveness.timeout_s)
        if answered is None or child.process.exit_code() is not None or child.process.pid != pid:
            return False  # not probed, or it exited meanwhile (the loop restarts it)
        if answered:
            child.unanswered, child.answered_pid = 0, pid
            return False
        if child.answered_pid != pid and self.clock() - child.started_at < self.liveness.start_grace_s:
            return False  # still starting
        child.unanswered += 1
        if child.unanswered < self.liveness.failures:
            return False
        log.warning("supervisor: %s (pid %s) answered none of %d liveness probes in a row (%s); killing it to restart it",
                    child.name, pid, child.unanswered, "stopped" if _stopped(pid) else "hung")
        child.unanswered = 0
        child.hung_kills += 1
        SUPERVISED_HUNG.labels(child.name).inc()
        child.process.kill()
        return True

    def _exited(self, child: Child, code: int, now: float) -> None:
        delay = self._delay(child.failures)
        child.failures += 1
        child.state, child.last_exit, child.last_exit_at = ChildState.BACKOFF, code, time.time()
        child.next_start_at = now + delay
        SUPERVISED_UP.labels(child.name).set(0)
        log.warning("supervisor: %s exited (%s); restarting in %.1f s", child.name, _describe_exit(code), delay)

    def _restart(self, child: Child) -> None:
        child.state = ChildState.STARTING
        try:
            child.process.start()
        except Exception as exc:
            delay = self._delay(child.failures)
            child.failures += 1
            child.state, child.next_start_at = ChildState.BACKOFF, self.clock() + delay
            child.last_error = f"{type(exc).__name__}: {exc}"[:300]
            log.warning("supervisor: %s did not start (%s); next attempt in %.1f s", child.name, child.last_error, delay)
            return
        child.state, child.started_at, child.last_error, child.unanswered = ChildState.RUNNING, self.clock(), None, 0
        child.restarts += 1
        SUPERVISED_UP.labels(child.name).set(1)
        SUPERVISED_RESTARTS.labels(child.name).inc()
        log.warning("supervisor: %s restarted, pid %s (restart %d)", child.name, child.process.pid, child.restarts)

    def _delay(self, failures: int) -> float:
        base = min(self.backoff_max_s, self.backoff_min_s * 2 ** min(failures, 30))
        return base * (1 + JITTER * (2 * random.random() - 1))

    def _probe_external(self) -> bool:
        assert self.external is not None
        reachable = self.external.probe()
        if reachable == self.external.reachable:
            return False
        self.external.reachable, self.external.since = reachable, time.time()
        if reachable:
            log.warning("supervisor: external Redis %s is reachable", _redacted(self.external.url))
        else:
            log.warning("supervisor: external Redis %s is unreachable (not restarted: not ours); edges report not-ready",
                        _redacted(self.external.url))
        return True

    def _write_state(self, *, force: bool) -> None:
        if self.state_file is None:
            return
        now = self.clock()
        if not force and now - self._written_at < HEARTBEAT_S:
            return
        self._written_at = now
        tmp = self.state_file.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(self.snapshot(), indent=2))
            tmp.replace(self.state_file)
        except OSError:
            log.exception("supervisor: cannot write %s", self.state_file)


def _describe_exit(code: int) -> str:
    return f"signal {-code}" if code < 0 else f"exit code {code}"


def _redacted(url: str) -> str:
    parsed = urlparse(url)
    if parsed.password:
        return url.replace(f":{parsed.password}@", ":***@")
    return url


def read_state(data_dir: Path) -> dict[str, Any] | None:
    """The state file of the supervisor that runs on ``data_dir``, if one runs (for status)."""
    path = data_dir / "supervisor.json"
    try:
        state: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    state["alive"] = _pid_alive(int(state.get("pid", 0)))
    for process in state.get("processes", {}).values():
        if process.get("state") == ChildState.RUNNING.value and _stopped(int(process.get("pid") or 0)):
            process["state"] = "paused"  # alive but stopped (SIGSTOP, a debugger): it answers nothing
    return state


def _stopped(pid: int) -> bool:
    """True if ``pid`` is stopped by a signal or a tracer (Linux ``/proc``; False elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return False
    return bool(fields) and fields[0] in (b"T", b"t")


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def format_state(state: dict[str, Any]) -> str:
    lines = [f"supervisor pid {state.get('pid')}{'' if state.get('alive') else ' (not running)'}"]
    for name, p in state.get("processes", {}).items():
        extra = f", last exit {p['last_exit']}" if p.get("last_exit") is not None else ""
        if p.get("next_start_in_s") is not None:
            extra += f", next start in {p['next_start_in_s']} s"
        if p.get("hung_kills"):
            extra += f", killed {p['hung_kills']}x for not answering"
        if p.get("unanswered"):
            extra += f", {p['unanswered']} probes unanswered"
        lines.append(f"  {name:<12} {p['state']:<8} pid {p.get('pid') or '-'}  restarts {p['restarts']}{extra}")
    ext = state.get("external", {}).get("redis")
    if ext:
        lines.append(f"  redis (external {ext['url']}) {'reachable' if ext['reachable'] else 'UNREACHABLE'}")
    return "\n".join(lines)
