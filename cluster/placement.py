"""Where sessions live: session slots per node, which node hosts which session, passivation.

Placement is Ray's job: every session actor asks for ``num_cpus=0`` and one
``session_slot`` (``cluster.directory``), nodes declare how many slots they have, so each
node hosts at most that many sessions and a session beyond every node's capacity becomes
resource demand that Ray's autoscaler answers with a new node. This module only *reads*
that placement back from the GCS (no dashboard needed) and *ends* actors:

* ``read_placement(namespace)`` — a ``Placement``: every alive node with its slots
  (total / used / free, from the GCS resource tables) and the sessions it hosts (a dense
  host's classes too, as its ``hosted`` call says: ``dense_classes``), plus the
  sessions still waiting for a slot (``PENDING_CREATION`` / ``RESTARTING``: after a node
  loss, or while the autoscaler adds a node).
* ``passivate(directory, session_id)`` — virtual-actor passivation: checkpoint, then
  ``ray.kill(no_restart=True)`` (every shard's actor for a class over class shards). The state stays in Redis; the next call through any
  edge's directory gets-or-creates the actor again, which restores its checkpoint. Idle
  nodes then lose their last session and Ray's autoscaler removes them.
* ``Passivator`` — a loop on each edge that passivates the sessions that are ``ended``
  and have had no device, viewer or pending sample on this edge for ``idle_s``.

All functions here that talk to Ray are blocking; call them via ``asyncio.to_thread``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import ray

from actors.session_actor import actor_name
from actors.session_host import host_name
from cluster.class_shards import shard_id
from cluster.directory import SessionDirectory

log = logging.getLogger(__name__)

SLOT = "session_slot"
SESSION_PREFIX = actor_name("")
HOST_PREFIX = host_name("")
HOSTED_TIMEOUT_S = 2.0  # how long the placement waits for a dense host to list its classes
WAITING_STATES = frozenset({"DEPENDENCIES_UNREADY", "PENDING_CREATION", "RESTARTING"})


@dataclass(frozen=True)
class SessionActorInfo:
    """One session actor as the GCS records it."""

    session_id: str
    state: str  # ALIVE, PENDING_CREATION, RESTARTING, DEPENDENCIES_UNREADY (DEAD ones are left out)
    node_id: str | None
    pid: int
    restarts: int


@dataclass(frozen=True)
class NodeSlots:
    node_id: str
    address: str
    slots_total: float
    slots_free: float
    sessions: tuple[str, ...]  # its classes: their own actors' and its dense hosts' (below)
    resources: dict[str, float] = field(default_factory=dict)
    hosts: dict[str, tuple[str, ...]] = field(default_factory=dict)  # its dense hosts and their classes

    @property
    def slots_used(self) -> float:
        return self.slots_total - self.slots_free

    def as_dict(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "address": self.address,
            "slots_total": self.slots_total,
            "slots_used": self.slots_used,
            "slots_free": self.slots_free,
            "sessions": list(self.sessions),
            "cpus": self.resources.get("CPU", 0.0),
            "dense_hosts": {host: list(classes) for host, classes in self.hosts.items()},
        }


@dataclass(frozen=True)
class Placement:
    nodes: tuple[NodeSlots, ...]
    waiting: tuple[SessionActorInfo, ...]

    @property
    def slots_total(self) -> float:
        return sum(n.slots_total for n in self.nodes)

    @property
    def slots_used(self) -> float:
        return sum(n.slots_used for n in self.nodes)

    def node_of(self, session_id: str) -> str | None:
        """The node hosting ``session_id`` now, or None (passive, or waiting for a slot)."""
        for node in self.nodes:
            if session_id in node.sessions:
                return node.node_id
        return None

    def session_nodes(self) -> dict[str, str]:
        return {sid: node.node_id for node in self.nodes for sid in node.sessions}


def session_actors(namespace: str, prefix: str = SESSION_PREFIX) -> list[SessionActorInfo]:
    """Every non-dead session actor of ``namespace`` (or, with ``prefix``, every actor named
    so: ``HOST_PREFIX``, the dense hosts), read from the GCS actor table."""
    from ray._private.state import state  # the GCS tables; ray.util.state needs the dashboard
    # protobuf builds its message classes at import time and Ray ships no stubs for them
    from ray.core.generated.gcs_pb2 import ActorTableData  # type: ignore[attr-defined]

    accessor = state._connect_and_get_accessor()
    found = []
    for raw in accessor.get_actor_table(None, None):
        entry = ActorTableData.FromString(raw)
        if entry.ray_namespace != namespace or not entry.name.startswith(prefix):
            continue
        status = ActorTableData.ActorState.Name(entry.state)
        if status == "DEAD":
            continue
        node = entry.address.node_id.hex() if entry.address.node_id and status == "ALIVE" else None
        found.append(
            SessionActorInfo(entry.name[len(prefix):], status, node, entry.pid, entry.num_restarts)
        )
    return found


def dense_classes(namespace: str, *, timeout_s: float = HOSTED_TIMEOUT_S) -> dict[str, tuple[str, tuple[str, ...]]]:
    """The classes each alive dense host holds in memory now: ``{host: (node, classes)}``
    (one ``hosted`` call per host, all at once; a host that does not answer in time is
    listed with none)."""
    hosts = [h for h in session_actors(namespace, HOST_PREFIX) if h.node_id is not None]
    refs: list[Any] = []
    for host in list(hosts):
        try:
            refs.append(ray.get_actor(host_name(host.session_id), namespace=namespace).hosted.remote())
        except ValueError:  # (gone since the table was read)
            hosts.remove(host)
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s) if refs else ([], [])
    answered = set(ready)
    found: dict[str, tuple[str, tuple[str, ...]]] = {}
    for host, ref in zip(hosts, refs, strict=True):
        classes: tuple[str, ...] = ()
        if ref in answered:
            try:
                classes = tuple(ray.get(ref))
            except Exception:  # noqa: BLE001 - a host restarting: listed, with none for now
                log.info("dense host %s did not say its classes", host.session_id)
        found[host.session_id] = (str(host.node_id), classes)
    return found


def read_placement(namespace: str) -> Placement:
    """Alive nodes with their session slots and sessions; sessions waiting for a slot."""
    from ray._private.state import state

    actors = session_actors(namespace)
    by_node: dict[str, list[str]] = {}
    for actor in actors:
        if actor.node_id is not None:
            by_node.setdefault(actor.node_id, []).append(actor.session_id)
    hosts_by_node: dict[str, dict[str, tuple[str, ...]]] = {}
    for host, (node_id, classes) in dense_classes(namespace).items():
        hosts_by_node.setdefault(node_id, {})[host] = classes
        by_node.setdefault(node_id, []).extend(classes)
    available = state.available_resources_per_node()
    nodes = []
    for info in ray.nodes():
        if not info.get("Alive"):
            continue
        node_id = info["NodeID"]
        total = {k: float(v) for k, v in info.get("Resources", {}).items() if not k.startswith("node:")}
        nodes.append(
            NodeSlots(
                node_id=node_id,
                address=str(info.get("NodeManagerAddress", "")),
                slots_total=total.get(SLOT, 0.0),
                slots_free=float(available.get(node_id, {}).get(SLOT, 0.0)),
                sessions=tuple(sorted(by_node.get(node_id, []))),
                resources=total,
                hosts=hosts_by_node.get(node_id, {}),
            )
        )
    waiting = tuple(a for a in actors if a.state in WAITING_STATES)
    return Placement(tuple(sorted(nodes, key=lambda n: n.node_id)), waiting)


def is_active(session_id: str, namespace: str) -> bool:
    """True if the session's actor exists now (alive, starting or restarting)."""
    try:
        ray.get_actor(actor_name(session_id), namespace=namespace)
    except ValueError:
        return False
    return True


def held_slots(session_id: str, shards: int, namespace: str) -> int:
    """The session slots a class's actors hold now: 1 if its actor exists (0 if not), or, for
    a class over ``shards`` class shards (0: it is not), how many of its shard actors exist."""
    if not shards:
        return int(is_active(session_id, namespace))
    return sum(is_active(shard_id(session_id, i), namespace) for i in range(shards))


async def passivate(directory: SessionDirectory, session_id: str, *, flush_timeout_s: float = 5.0) -> bool:
    """Checkpoint the session, then end its actor for good; False if it was not active.

    Safe to call from any edge, any number of times. Samples that arrive afterwards
    recreate the actor from its checkpoint (on whichever node has a free slot); devices
    then get a fresh ``welcome`` because the epoch changed.
    """
    shards = await directory.shards_of(session_id)
    if shards:  # a big class: every shard checkpoints, then every shard's actor ends
        return await _passivate_shards(directory, session_id, shards, flush_timeout_s)
    host = await directory.host_of(session_id)
    if host is not None:  # dense: the host drops this class only (after a checkpoint)
        handle = await directory.handle(session_id)
        released = bool(await asyncio.wait_for(handle.release.remote(), flush_timeout_s))
        directory.forget(session_id)
        if released:
            log.info("session %s passivated on host %s", session_id, host)
        return released
    if not await asyncio.to_thread(is_active, session_id, directory.namespace):
        directory.forget(session_id)
        return False
    try:
        handle = await directory.handle(session_id)
        await asyncio.wait_for(handle.flush.remote(), flush_timeout_s)
    except Exception:  # noqa: BLE001 - the last checkpoint is still there; nothing acked is lost
        log.warning("session %s: flush before passivation failed; passivating anyway", session_id, exc_info=True)
    await asyncio.to_thread(directory.kill, session_id)
    log.info("session %s passivated", session_id)
    return True


async def _passivate_shards(directory: SessionDirectory, session_id: str, shards: int, flush_timeout_s: float) -> bool:
    names = [shard_id(session_id, i) for i in range(shards)]
    alive = await asyncio.to_thread(lambda: [n for n in names if is_active(n, directory.namespace)])
    if not alive:
        directory.forget(session_id)
        return False
    try:
        handle = await directory.handle(session_id)
        await asyncio.wait_for(handle.flush.remote(), flush_timeout_s)  # (every shard at once)
    except Exception:  # noqa: BLE001 - the last checkpoints are still there; nothing acked is lost
        log.warning("class %s: flush before passivation failed; passivating anyway", session_id, exc_info=True)
    directory.forget(session_id)
    for name in alive:
        await asyncio.to_thread(directory.kill, name)
    log.info("class %s passivated (%d shards)", session_id, len(alive))
    return True


class Passivator:
    """Passivates sessions that ended and sit idle on this edge; a loop that never dies.

    ``candidates()`` yields ``(session_id, phase, idle)`` for the sessions this edge
    serves (the edge's pumps). A session is passivated once it has been ``ended`` and idle
    for ``idle_s``; it is not passivated again until it has been active in between.
    ``on_passivated(session_id)`` (the edge releasing the session's pump) runs after each.
    """

    def __init__(
        self,
        directory: SessionDirectory,
        candidates: Callable[[], Iterable[tuple[str, str | None, bool]]],
        *,
        idle_s: float = 60.0,
        interval_s: float = 5.0,
        on_passivated: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self.on_passivated = on_passivated
        self.directory = directory
        self.candidates = candidates
        self.idle_s = idle_s
        self.interval_s = interval_s
        self.passivated: set[str] = set()
        self._idle_since: dict[str, float] = {}

    def due(self, now: float) -> list[str]:
        """Sessions to passivate now (updates the idle clocks)."""
        seen, due = set(), []
        for sid, phase, idle in self.candidates():
            seen.add(sid)
            if phase != "ended" or not idle:
                self._idle_since.pop(sid, None)
                self.passivated.discard(sid)
                continue
            since = self._idle_since.setdefault(sid, now)
            if sid not in self.passivated and now - since >= self.idle_s:
                due.append(sid)
        for sid in set(self._idle_since) - seen:
            del self._idle_since[sid]
        return due

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                for sid in self.due(time.monotonic()):
                    await passivate(self.directory, sid)
                    self.passivated.add(sid)
                    if self.on_passivated is not None:
                        await self.on_passivated(sid)
            except asyncio.CancelledError:
                raise
            except Exception:  # a control loop never dies
                log.exception("passivation round failed")
