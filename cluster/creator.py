"""Class actors are created by a small creator actor, not by the edge's own Ray driver.

Ray keeps state in the process that creates an actor (the creation task's spec, owner-side
bookkeeping) for as long as that process lives: ~67 KiB per actor here, even after the actor
was killed (``docs/benchmarks.md``, "Memory over 200 classes"). An edge serves classes for
weeks, so creating every class's actor itself made its memory grow with every class it ever
started. Instead the edge asks a ``Creator`` actor (``num_cpus=0``, one process per edge) to
create the named, detached actor, then only looks it up by name (``ray.get_actor``), which
leaves ~15-19 KiB behind. The creator keeps the rest, and is replaced by a fresh one every
``recycle_every`` creations (the old one is killed once its last call has returned); the
actors it created are detached, so they outlive it.

A creation costs one actor call (~1-2 ms) on top of the lookup, once per class start: the
control plane, never the data path. A creator that died (its node went away) is replaced and
the creation tried once more.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError

log = logging.getLogger(__name__)

RECYCLE_EVERY = 200  # creations per creator process: ~13 MiB of Ray's per-actor state at most
IDLE_S = 60.0  # a creator with nothing to create for this long exits (~150 MiB RSS, ~0.008 idle cores)


@ray.remote(num_cpus=0, max_restarts=0)
class Creator:
    """Creates named detached actors on an edge's behalf (and keeps Ray's state of them)."""

    def create(self, kind: str, options: dict[str, Any], args: tuple[Any, ...]) -> None:
        # Imported here: the creator process needs the actor classes, the edge's import does not.
        from actors.session_actor import SessionActor
        from actors.session_host import SessionHost

        actor_class = {"session": SessionActor, "host": SessionHost}[kind]
        # (a named actor is registered with the GCS before ``remote`` returns)
        actor_class.options(**options).remote(*args)  # type: ignore[attr-defined]


class ActorMaker:
    """The edge's side: ``get_or_create`` a named detached actor through a recycled creator.
    Thread-safe (the directory calls it from worker threads)."""

    def __init__(self, namespace: str, *, recycle_every: int = RECYCLE_EVERY, idle_s: float = IDLE_S) -> None:
        self.namespace = namespace
        self.recycle_every = recycle_every
        self.idle_s = idle_s
        self._idle_timer: threading.Timer | None = None
        self._lock = threading.Lock()
        self._creator: Any = None
        self._made = 0  # creations asked of the current creator
        self._busy: dict[Any, int] = {}  # creator -> calls in flight
        self._retired: list[Any] = []  # replaced creators, killed once idle
        self.creators_started = 0

    def get_or_create(self, kind: str, options: dict[str, Any], args: tuple[Any, ...], *, timeout_s: float) -> Any:
        """The handle of the actor ``options["name"]``, created (with ``args``) if missing."""
        name = options["name"]
        try:
            return ray.get_actor(name, namespace=self.namespace)
        except ValueError:
            pass  # not there (never created, or passivated): create it
        for attempt in (1, 2):
            creator = self._take()
            try:
                ray.get(creator.create.remote(kind, options, args), timeout=timeout_s)
                break
            except RayActorError:
                self._drop(creator)
                if attempt == 2:
                    raise
                log.warning("actor creator died; starting another to create %s", name)
            except GetTimeoutError:
                self._drop(creator)  # stuck (or still starting after the time-out): not used again
                raise
            finally:
                self._release(creator)
        return ray.get_actor(name, namespace=self.namespace)

    def close(self) -> None:
        """Kill every creator (the actors they created live on)."""
        with self._lock:
            if self._idle_timer is not None:
                self._idle_timer.cancel()
            creators = [c for c in (self._creator, *self._retired) if c is not None]
            self._creator, self._retired, self._busy = None, [], {}
        for creator in creators:
            _kill(creator)

    # -- creators -------------------------------------------------------------------------
    def _take(self) -> Any:
        with self._lock:
            if self._creator is None or self._made >= self.recycle_every:
                if self._creator is not None:
                    self._retired.append(self._creator)
                self._creator = Creator.remote()  # type: ignore[attr-defined]
                self._made = 0
                self.creators_started += 1
            creator = self._creator
            self._made += 1
            self._busy[creator] = self._busy.get(creator, 0) + 1
            return creator

    def _release(self, creator: Any) -> None:
        idle = []
        with self._lock:
            left = self._busy.get(creator, 1) - 1
            if left > 0:
                self._busy[creator] = left
            else:
                self._busy.pop(creator, None)
            for old in list(self._retired):
                if old not in self._busy:
                    self._retired.remove(old)
                    idle.append(old)
            if not self._busy and self._creator is not None:  # nothing in flight: retire it if it stays so
                if self._idle_timer is not None:
                    self._idle_timer.cancel()
                self._idle_timer = threading.Timer(self.idle_s, self._retire_idle, args=(self._creator,))
                self._idle_timer.daemon = True
                self._idle_timer.start()
        for old in idle:
            _kill(old)

    def _retire_idle(self, creator: Any) -> None:
        """The idle timer: ``creator`` had nothing to do for ``idle_s``; the next creation starts another."""
        with self._lock:
            if self._creator is not creator or self._busy:
                return  # replaced, or busy again (a newer timer runs when that call returns)
            self._creator = None
            self._made = 0
        _kill(creator)

    def _drop(self, creator: Any) -> None:
        """``creator`` is not to be used again (it died or hangs): retire it."""
        with self._lock:
            if self._creator is creator:
                self._creator = None
                self._retired.append(creator)


def _kill(creator: Any) -> None:
    try:
        ray.kill(creator, no_restart=True)
    except Exception:  # already gone
        log.debug("creator already gone", exc_info=True)
