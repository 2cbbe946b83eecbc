"""Session id -> its named actor, with cached handles and on-demand creation.

``SessionDirectory.handle(sid)`` returns the cached handle or gets-or-creates the
detached actor named ``session:{sid}`` in the pulseline namespace, off the event loop.
``forget(sid)`` drops a handle that turned out dead so the next call re-resolves it.

Redis key owned here: ``{prefix}:session:{id}:meta`` (hash: created_at, board_size,
title) — a session exists iff this key exists.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import ray
import redis.asyncio as aioredis

from actors.session_actor import SessionActor, actor_name


class SessionDirectory:
    def __init__(
        self,
        redis_client: aioredis.Redis,
        *,
        prefix: str,
        namespace: str,
        actor_settings: dict[str, Any],
        resources: dict[str, float] | None = None,
    ) -> None:
        self.redis = redis_client
        self.prefix = prefix
        self.namespace = namespace
        self.actor_settings = actor_settings
        self.resources = resources if resources is not None else {"session_slot": 1}
        self._handles: dict[str, Any] = {}
        self._known: set[str] = set()

    def meta_key(self, session_id: str) -> str:
        return f"{self.prefix}:session:{session_id}:meta"

    async def create(self, session_id: str, **meta: Any) -> bool:
        """Record a session; False if it already existed (creation is idempotent)."""
        fields = {"created_at": time.time(), **{k: v for k, v in meta.items() if v is not None}}
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
        return {k.decode(): v.decode() for k, v in raw.items()}

    async def handle(self, session_id: str) -> Any:
        handle = self._handles.get(session_id)
        if handle is None:
            handle = await asyncio.to_thread(self._get_or_create, session_id)
            self._handles[session_id] = handle
        return handle

    def _get_or_create(self, session_id: str) -> Any:
        return SessionActor.options(  # type: ignore[attr-defined]
            name=actor_name(session_id),
            namespace=self.namespace,
            get_if_exists=True,
            lifetime="detached",
            resources=self.resources,
        ).remote(session_id, self.actor_settings)

    def forget(self, session_id: str) -> None:
        self._handles.pop(session_id, None)

    def kill(self, session_id: str) -> None:
        """Passivate: stop the actor for good (its state stays in Redis)."""
        handle = self._handles.pop(session_id, None)
        if handle is None:
            try:
                handle = ray.get_actor(actor_name(session_id), namespace=self.namespace)
            except ValueError:
                return
        ray.kill(handle, no_restart=True)
