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

Redis key owned here: ``{prefix}:session:{{id}}:meta`` (hash: created_at, board_size,
title; ``{id}`` is the session's Redis Cluster hash tag, ``actors.checkpoint.key_base``) —
a session exists iff this key exists.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import ray
from ray.exceptions import ActorDiedError
from redis.typing import EncodableT, FieldT

from actors.checkpoint import key_base
from actors.redis_url import AsyncRedis
from actors.session_actor import SessionActor, actor_name

log = logging.getLogger(__name__)


REFRESH_ATTEMPTS = 3


class _Method:
    def __init__(self, handle: SessionHandle, name: str) -> None:
        self.handle = handle
        self.name = name

    async def remote(self, **kwargs: Any) -> Any:
        return await self.handle.call(self.name, **kwargs)


class SessionHandle:
    """A session actor's handle that refreshes itself when the actor died for good."""

    def __init__(self, directory: SessionDirectory, session_id: str, actor: Any) -> None:
        self.directory = directory
        self.session_id = session_id
        self.actor = actor

    def __getattr__(self, name: str) -> _Method:
        if name.startswith("_"):
            raise AttributeError(name)
        return _Method(self, name)

    async def call(self, method: str, **kwargs: Any) -> Any:
        for attempt in range(REFRESH_ATTEMPTS):
            try:
                return await getattr(self.actor, method).remote(**kwargs)
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
    ) -> None:
        self.redis = redis_client
        self.prefix = prefix
        self.namespace = namespace
        self.actor_settings = actor_settings
        self.resources = resources if resources is not None else {"session_slot": 1}
        # SPREAD: sessions go to the least-loaded node that has a free slot, so losing a
        # node loses as few sessions as possible (Ray's default packs nodes up to 50% first).
        self.scheduling_strategy = scheduling_strategy
        self._handles: dict[str, SessionHandle] = {}
        self._known: set[str] = set()

    def meta_key(self, session_id: str) -> str:
        return f"{key_base(self.prefix, 'session', session_id)}:meta"

    async def create(self, session_id: str, **meta: Any) -> bool:
        """Record a session; False if it already existed (creation is idempotent)."""
        fields: dict[FieldT, EncodableT] = {"created_at": time.time()}
        fields.update((k, v) for k, v in meta.items() if v is not None)
        created = await self.redis.hsetnx(self.meta_key(session_id), "created_at", fields["created_at"])
        if created:
            await self.redis.hset(self.meta_key(session_id), mapping=fields)
        self._known.add(session_id)
        return bool(created)

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

    async def handle(self, session_id: str, *, overrides: dict[str, Any] | None = None) -> SessionHandle:
        """The session's actor, created if it does not exist. ``overrides`` (e.g. the class's
        ``board_size``) reach a new actor's settings only: an existing or restored actor
        keeps what its checkpoint says."""
        handle = self._handles.get(session_id)
        if handle is None:
            actor = await asyncio.to_thread(self._get_or_create, session_id, overrides or {})
            handle = self._handles[session_id] = SessionHandle(self, session_id, actor)
        return handle

    def _get_or_create(self, session_id: str, overrides: dict[str, Any] | None = None) -> Any:
        return SessionActor.options(  # type: ignore[attr-defined]
            name=actor_name(session_id),
            namespace=self.namespace,
            get_if_exists=True,
            lifetime="detached",
            resources=self.resources,
            scheduling_strategy=self.scheduling_strategy,
        ).remote(session_id, {**self.actor_settings, **(overrides or {})})

    def forget(self, session_id: str) -> None:
        self._handles.pop(session_id, None)

    def forget_session(self, session_id: str) -> None:
        """Drop everything cached about a purged session: its handle and that it exists."""
        self._handles.pop(session_id, None)
        self._known.discard(session_id)

    def kill(self, session_id: str) -> None:
        """Passivate: stop the actor for good (its state stays in Redis)."""
        self._handles.pop(session_id, None)
        try:
            actor = ray.get_actor(actor_name(session_id), namespace=self.namespace)
        except ValueError:
            return
        ray.kill(actor, no_restart=True)


def _text(raw: bytes | str) -> str:
    """A reply field as text: redis-py types replies ``bytes | str`` (bytes for these clients)."""
    return raw if isinstance(raw, str) else raw.decode()
