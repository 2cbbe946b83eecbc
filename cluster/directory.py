"""Session id -> its named actor, with cached handles and on-demand creation.

``SessionDirectory.handle(sid)`` returns the cached handle or gets-or-creates the
detached actor named ``session:{sid}`` in the pulseline namespace, off the event loop.
``forget(sid)`` drops a handle that turned out dead so the next call re-resolves it.

The handle is a ``SessionHandle``: ``await handle.method.remote(**kwargs)`` calls the actor
and, if the actor is gone for good (``ActorDiedError``: it was passivated, possibly by
another edge), re-resolves the name — which recreates the actor from its checkpoint —
and calls again (at most ``REFRESH_ATTEMPTS`` times). Every session actor method is
idempotent, so the repeat is safe. Node loss does not need this: Ray restarts the actor
(``max_restarts=-1``) elsewhere and retries the call (``max_task_retries=-1``).

Placement, chosen per class when it is created (``create``): a class runs either in its own
``SessionActor`` process (*dedicated*, the default) or as one of many small classes in a
``SessionHost`` process (*dense*, ``actors/session_host.py``): a class whose expected size
(``expected_riders``) is at most ``dense_max_riders`` goes dense, or any class created with
``placement="dense"``; a class of unknown size goes where ``default_placement`` says. A
dense class's host is the actor ``host:{prefix}.{n}`` with ``n = crc32(id) % dense_hosts``,
recorded in the session's meta (field ``host``) so every edge finds the same one whatever
its own settings; its handle adds ``session=`` (and the class's settings from its meta) to
every call, so callers cannot tell the two apart.

A class expected bigger than ``class_shard_riders`` is owned by several class-shard actors
(``cluster/class_shards.py``, field ``shards`` of its meta); its handle fans control calls
out to them. With ``class_shard_growth`` such a class (``"sharded"``), or every dedicated
class (``"all"``, starting with one shard), also records the riders per shard and the most
shards it may get (fields ``shard_riders``, ``max_shards``) and grows while it runs.

Redis key owned here: ``{prefix}:session:{{id}}:meta`` (hash: created_at, board_size,
title, host, expected_riders, shards, shard_riders, max_shards; ``{id}`` is the session's
Redis Cluster hash tag, ``storage.checkpoint.key_base``) — a session exists iff this key exists.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
import zlib
from typing import Any

import ray
from ray.exceptions import ActorDiedError
from redis.typing import EncodableT, FieldT

from storage.checkpoint import key_base
from storage.redis_url import AsyncRedis
from actors.session_actor import actor_name
from actors.session_host import host_name
from cluster.creator import ActorMaker
from cluster.class_shards import Method, ShardedHandle, class_of, shard_count

log = logging.getLogger(__name__)


REFRESH_ATTEMPTS = 3


class Placement(str, enum.Enum):
    DEDICATED = "dedicated"  # one actor process for the class
    DENSE = "dense"  # one of many small classes in a shared host process


class SessionHandle:
    """A session actor's handle that refreshes itself when the actor died for good."""

    def __init__(self, directory: SessionDirectory, session_id: str, actor: Any,
                 host: str | None = None, overrides: dict[str, Any] | None = None) -> None:
        self.directory = directory
        self.session_id = session_id
        self.actor = actor
        self.host = host  # dense: the host's number (every call then names the class)
        self.extra: dict[str, Any] = {} if host is None else {"session": session_id, "overrides": overrides or {}}
        # True once a call has returned: a new actor's process has started (callers bound
        # the first call by the start time-out, later ones by the call time-out).
        self.answered = False

    @property
    def hosted(self) -> bool:
        return self.host is not None

    def __getattr__(self, name: str) -> Method:
        if name.startswith("_"):
            raise AttributeError(name)
        return Method(self, name)

    async def call(self, method: str, **kwargs: Any) -> Any:
        for attempt in range(REFRESH_ATTEMPTS):
            try:
                result = await getattr(self.actor, method).remote(**self.extra, **kwargs)
                self.answered = True
                return result
            except ActorDiedError:
                if attempt == REFRESH_ATTEMPTS - 1:
                    raise
                log.info("session %s: actor gone for good; re-resolving (%s)", self.session_id, method)
                self.directory.forget(self.session_id)
                await asyncio.sleep(0.1 * attempt)  # a just-killed name can take a moment to free
                self.actor = (await self.directory.handle(self.session_id)).actor
        raise AssertionError("unreachable")


class SessionDirectory:
    def __init__(
        self,
        redis_client: AsyncRedis,
        *,
        prefix: str,
        namespace: str,
        actor_settings: dict[str, Any],
        resources: dict[str, float] | None = None,
        scheduling_strategy: str = "SPREAD",
        dense_hosts: int = 4,
        dense_max_riders: int = 0,
        default_placement: str = "dedicated",
        class_shard_riders: int = 0,
        max_class_shards: int = 64,
        creation_timeout_s: float = 25.0,
        class_shard_growth: str = "off",
    ) -> None:
        self.redis = redis_client
        self.prefix = prefix
        self.namespace = namespace
        self.actor_settings = actor_settings
        self.resources = resources if resources is not None else {"session_slot": 1}
        # SPREAD: sessions go to the least-loaded node that has a free slot, so losing a
        # node loses as few sessions as possible (Ray's default packs nodes up to 50% first).
        self.scheduling_strategy = scheduling_strategy
        self.dense_hosts = max(1, dense_hosts)
        self.dense_max_riders = dense_max_riders  # 0: only classes created with placement="dense"
        self.default_placement = Placement(default_placement)  # a class of unknown size
        # a dedicated class expected bigger than this runs as class shards (0: never; cluster/class_shards.py)
        self.class_shard_riders = class_shard_riders
        self.max_class_shards = max_class_shards
        self.class_shard_growth = class_shard_growth if class_shard_riders > 0 else "off"  # off / sharded / all
        self._handles: dict[str, SessionHandle | ShardedHandle] = {}
        self._known: set[str] = set()
        # actors are created by a creator actor, so Ray's per-actor state stays out of the edge
        self.maker = ActorMaker(namespace)
        self.creation_timeout_s = creation_timeout_s  # a creation (the creator's start included)

    def meta_key(self, session_id: str) -> str:
        return f"{key_base(self.prefix, 'session', session_id)}:meta"

    def placement_for(self, expected_riders: int | None, placement: Placement | str | None = None) -> Placement:
        """Dense for a class asked to be, or expected to stay small; dedicated otherwise."""
        if placement is not None:
            return Placement(placement)
        if expected_riders is None:
            return self.default_placement
        if 0 < self.dense_max_riders and expected_riders <= self.dense_max_riders:
            return Placement.DENSE
        return Placement.DEDICATED

    def host_for(self, session_id: str) -> str:
        return f"{self.prefix}.{zlib.crc32(session_id.encode()) % self.dense_hosts}"

    async def create(self, session_id: str, *, expected_riders: int | None = None,
                     placement: Placement | str | None = None, **meta: Any) -> bool:
        """Record a session and where it runs; False if it already existed (creation is
        idempotent, and an existing class keeps its placement)."""
        fields: dict[FieldT, EncodableT] = {"created_at": time.time()}
        fields.update((k, v) for k, v in meta.items() if v is not None)
        if expected_riders is not None:
            fields["expected_riders"] = expected_riders
        if self.placement_for(expected_riders, placement) is Placement.DENSE:
            fields["host"] = self.host_for(session_id)
        else:
            fields.update(self._shard_fields(expected_riders, grows=not meta.get("replay_of")))
        created = await self.redis.hsetnx(self.meta_key(session_id), "created_at", fields["created_at"])
        if created:
            await self.redis.hset(self.meta_key(session_id), mapping=fields)
        self._known.add(session_id)
        return bool(created)

    def _shard_fields(self, expected_riders: int | None, *, grows: bool) -> dict[FieldT, EncodableT]:
        """The meta fields of a dedicated class over class shards (none: one actor)."""
        shards = shard_count(expected_riders, self.class_shard_riders, self.max_class_shards)
        growth = self.class_shard_growth if grows else "off"
        if shards <= 1 and growth != "all":
            return {}
        if growth == "off":
            return {"shards": shards}
        return {"shards": shards, "shard_riders": self.class_shard_riders, "max_shards": self.max_class_shards}

    async def exists(self, session_id: str) -> bool:
        if session_id in self._known:
            return True
        if await self.redis.exists(self.meta_key(session_id)):
            self._known.add(session_id)
            return True
        return False

    async def meta(self, session_id: str) -> dict[str, str]:
        raw = await self.redis.hgetall(self.meta_key(session_id))
        return {_text(k): _text(v) for k, v in raw.items()}

    async def handle(self, session_id: str, *,
                     overrides: dict[str, Any] | None = None) -> SessionHandle | ShardedHandle:
        """The session's actor, created if it does not exist. ``overrides`` (e.g. the class's
        ``board_size``) reach a new actor's settings only: an existing or restored actor
        keeps what its checkpoint says. A sharded class gets a ``ShardedHandle`` (its shards
        created now); a shard id (``cluster.class_shards``) the shard's own actor."""
        handle = self._handles.get(session_id)
        if handle is None:
            host, board_size, shards, per_shard = await self.redis.hmget(
                self.meta_key(session_id), ["host", "board_size", "shards", "shard_riders"])
            owner = class_of(session_id)
            if owner is not None:
                overrides = {**await self._shard_settings(owner[0]), **(overrides or {})}
            if shards is not None:
                sharded = {"board_size": int(board_size)} if board_size is not None else {}
                sharded.update(overrides or {})
                handle = await ShardedHandle(self, session_id, int(shards), sharded,
                                             recorded=per_shard is not None).start()
            elif host is not None:
                hosted = {"board_size": int(board_size)} if board_size is not None else {}
                hosted.update(overrides or {})
                actor = await asyncio.to_thread(self._get_or_create_host, _text(host))
                handle = SessionHandle(self, session_id, actor, host=_text(host), overrides=hosted)
            else:
                actor = await asyncio.to_thread(self._get_or_create, session_id, overrides or {})
                handle = SessionHandle(self, session_id, actor)
            handle = self._handles.setdefault(session_id, handle)
        return handle

    def cached(self, session_id: str) -> SessionHandle | ShardedHandle | None:
        """The session's handle if this edge already resolved it (no Redis, no Ray)."""
        return self._handles.get(session_id)

    async def _shard_settings(self, class_id: str) -> dict[str, Any]:
        """What a class shard's actor is created with besides the edge's actor settings."""
        board_size, shards = await self.redis.hmget(self.meta_key(class_id), ["board_size", "shards"])
        return {"board_parts": True, "class_id": class_id, "class_shards": int(shards or 0),
                **({"board_size": int(board_size)} if board_size is not None else {})}

    async def shards_of(self, session_id: str) -> int:
        """How many class shards own the class now (0: it is not a class over class shards
        but has its own actor or a dense host). Read from Redis: a class may grow."""
        shards = await self.redis.hget(self.meta_key(session_id), "shards")
        return 0 if shards is None else max(1, int(shards))

    async def host_of(self, session_id: str) -> str | None:
        """The dense host of the class (None: it has its own actor)."""
        handle = self._handles.get(session_id)
        if handle is not None:
            return handle.host
        host = await self.redis.hget(self.meta_key(session_id), "host")
        return None if host is None else _text(host)

    def _get_or_create_host(self, host: str) -> Any:
        return self._named("host", host_name(host), host, dict(self.actor_settings))

    def _get_or_create(self, session_id: str, overrides: dict[str, Any] | None = None) -> Any:
        return self._named("session", actor_name(session_id), session_id, {**self.actor_settings, **(overrides or {})})

    def _named(self, kind: str, name: str, *args: Any) -> Any:
        """The detached actor ``name``, created with ``args`` (by the creator actor,
        ``cluster.creator``) if it does not exist yet. Blocking: called off the event loop."""
        return self.maker.get_or_create(kind, self._options(name), args, timeout_s=self.creation_timeout_s)

    def close(self) -> None:
        """Stop this edge's creator actors (the class actors they created live on)."""
        self.maker.close()

    def _options(self, name: str) -> dict[str, Any]:
        return {
            "name": name, "namespace": self.namespace, "get_if_exists": True, "lifetime": "detached",
            "resources": self.resources, "scheduling_strategy": self.scheduling_strategy,
        }

    def forget(self, session_id: str) -> None:
        self._handles.pop(session_id, None)

    def forget_session(self, session_id: str) -> None:
        """Drop everything cached about a purged session: its handle and that it exists."""
        self._handles.pop(session_id, None)
        self._known.discard(session_id)

    def kill(self, session_id: str) -> None:
        """Passivate a dedicated class: stop its actor for good (its state stays in Redis).
        A dense class is passivated by its host (``release``, ``cluster.placement.passivate``);
        a sharded class's shards are each killed by their shard id."""
        handle = self._handles.pop(session_id, None)
        if isinstance(handle, ShardedHandle):
            for shard in handle.shard_ids():
                self.kill(shard)
            return
        try:
            actor = ray.get_actor(actor_name(session_id), namespace=self.namespace)
        except ValueError:
            return
        ray.kill(actor, no_restart=True)


def _text(raw: bytes | str) -> str:
    """A reply field as text: redis-py types replies ``bytes | str`` (bytes for these clients)."""
    return raw if isinstance(raw, str) else raw.decode()
