"""The Redis records of sessions beyond their checkpoint: an index to list them, their phase,
their retention once ended, and purging.

Redis keys owned here (prefix ``pl`` by default):

==============================  ======  ==================================================
key                             type    meaning
==============================  ======  ==================================================
``{p}:sessions``                zset    every session, all scores 0, member
                                        ``"{created_at:017.6f}|{id}"``: lexical order is
                                        creation order, so ``ZRANGEBYLEX`` pages by a
                                        keyset cursor that neither skips nor repeats
``{p}:session:{{id}}:meta``     hash    (``cluster.directory``) plus ``phase``, written
                                        here on every phase change made through the edge
``{p}:session:{{id}}:joined``   set     the riders announced as joined (``rider.joined``,
                                        ``history.events``): a rider is in it from its
                                        first join, by HTTP or by its device's first
                                        samples, until it leaves over HTTP
``{p}:session:{{id}}:shards_ended``  set  a sharded class's shards that have ended
                                        (``actors.class_shard.note_ended``)
==============================  ======  ==================================================

A session's own keys are ``session_keys(prefix, id)``: its meta hash, its checkpoint, the
checkpoint's epoch, the instance epoch and its per-second recording (``storage.checkpoint``,
``actors.recording``), its seat book (``cluster.admission``) and, for a growing class over
class shards, where its riders were placed (``cluster.class_shards.placement_keys``), all under one Redis
Cluster hash tag (``{id}``), so the pipelines and the ``DEL`` below stay on one slot. The
index is one key of its own; a listing reads the metas of many sessions with a
non-transactional pipeline, which a cluster client splits per node. When a class ends
(``record_phase(..., "ended")``) they get a TTL of ``retention_s``: checkpoint writes keep
it (``SET ... KEEPTTL``), so late data merged after the end does not extend it; when it
runs out, the session is gone (``GET`` 404) and drops out of the index lazily. A session
created before the index existed is not listed; everything else works for it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from collections.abc import Sequence
from typing import Any

from actors.class_shard import shards_ended_key
from cluster.admission import admission_keys
from cluster.class_shards import placement_keys
from storage.checkpoint import key_base
from storage.redis_url import AsyncRedis

log = logging.getLogger(__name__)

PHASES = ("lobby", "live", "cooldown", "ended", "scheduled")
MAX_SCAN = 1000  # index entries read per listing request, whatever the filter


def session_keys(prefix: str, session_id: str) -> list[str]:
    base = key_base(prefix, "session", session_id)
    return [f"{base}:meta", f"{base}:ckpt", f"{base}:ckpt_epoch", f"{base}:epoch", f"{base}:rec",
            *admission_keys(prefix, session_id), *placement_keys(prefix, session_id), f"{base}:joined",
            shards_ended_key(prefix, session_id)]


def _member(created_at: float, session_id: str) -> str:
    return f"{created_at:017.6f}|{session_id}"


def _text(raw: bytes | str) -> str:
    return raw if isinstance(raw, str) else raw.decode()


@dataclass
class Page:
    sessions: list[dict[str, Any]]
    cursor: str | None  # pass as ``after`` for the next page; None at the end


_SET_PHASE = """
local previous = redis.call('HGET', KEYS[1], 'phase')
redis.call('HSET', KEYS[1], 'phase', ARGV[1])
return previous
"""


# A rider's first join: 1 if it was not in the joined set. A set made after the class ended
# takes the meta's TTL (the class's retention), as the checkpoint's KEEPTTL keeps it.
_FIRST_JOIN = """
local added = {}
for i, rider in ipairs(ARGV) do
  if redis.call('SADD', KEYS[1], rider) == 1 then added[#added + 1] = rider end
end
if #added > 0 and redis.call('PTTL', KEYS[1]) == -1 then
  local ttl = redis.call('PTTL', KEYS[2])
  if ttl > 0 then redis.call('PEXPIRE', KEYS[1], ttl) end
end
return added
"""


class SessionRecords:
    def __init__(self, redis: AsyncRedis, *, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix
        self.index_key = f"{prefix}:sessions"

    def meta_key(self, session_id: str) -> str:
        return session_keys(self.prefix, session_id)[0]

    async def indexed(self, session_id: str) -> None:
        """Add a session (its meta must exist) to the index; idempotent."""
        created = await self.redis.hget(self.meta_key(session_id), "created_at")
        if created is not None:
            await self.redis.zadd(self.index_key, {_member(float(_text(created)), session_id): 0})

    async def record_phase(self, session_id: str, phase: str, *, retention_s: float) -> bool:
        """Note the phase in the meta hash; an ended class starts its retention clock. True
        when the phase changed (atomic: of several edges noting it, one gets True)."""
        previous = await self.redis.eval(_SET_PHASE, 1, self.meta_key(session_id), phase)  # type: ignore[misc]
        changed = previous is None or (previous.decode() if isinstance(previous, bytes) else previous) != phase
        if phase == "ended" and retention_s > 0:
            ttl = max(1, int(retention_s))
            async with self.redis.pipeline(transaction=False) as pipe:
                for key in session_keys(self.prefix, session_id):
                    pipe.expire(key, ttl)
                await pipe.execute()
        return changed

    def joined_key(self, session_id: str) -> str:
        return f"{key_base(self.prefix, 'session', session_id)}:joined"

    async def first_join(self, session_id: str, rider: str) -> bool:
        """Note that ``rider`` is in the class; True the first time (atomic: of several
        edges or calls noting it, one gets True) and again after ``forget_join``."""
        return bool(await self.first_joins(session_id, [rider]))

    async def first_joins(self, session_id: str, riders: Sequence[str]) -> list[str]:
        """``first_join`` for many riders in one round trip: those noted for the first time."""
        if not riders:
            return []
        keys = (self.joined_key(session_id), self.meta_key(session_id))
        added = await self.redis.eval(_FIRST_JOIN, 2, *keys, *riders)  # type: ignore[misc]
        return [_text(r) for r in added or ()]

    async def forget_join(self, session_id: str, rider: str) -> None:
        """The rider left: its next join is a first join again."""
        await self.forget_joins(session_id, [rider])

    async def forget_joins(self, session_id: str, riders: Sequence[str]) -> None:
        if riders:
            await self.redis.srem(self.joined_key(session_id), *riders)  # type: ignore[misc]

    async def page(self, *, phase: str | None, limit: int, after: str | None) -> Page:
        """Sessions in creation order after the cursor, optionally only those in ``phase``."""
        start = f"({after}" if after else "-"
        found: list[dict[str, Any]] = []
        scanned = 0
        cursor: str | None = after
        while len(found) < limit and scanned < MAX_SCAN:
            batch = [_text(m) for m in await self.redis.zrangebylex(self.index_key, start, "+", 0, limit)]
            if not batch:
                return Page(found, None)
            metas = await self._metas([m.split("|", 1)[1] for m in batch])
            for member, meta in zip(batch, metas, strict=True):
                scanned += 1
                cursor = member
                if meta is None:  # expired or purged: forget it
                    await self.redis.zrem(self.index_key, member)
                elif phase is None or meta.get("phase", "lobby") == phase:
                    found.append(meta)
                    if len(found) == limit:
                        break
            start = f"({cursor}"
        more = await self.redis.zrangebylex(self.index_key, start, "+", 0, 1) if cursor else []
        return Page(found, cursor if more else None)

    async def newest(self, *, limit: int) -> list[dict[str, Any]]:
        """The ``limit`` most recently created sessions, newest first (whatever their phase)."""
        members = [_text(m) for m in await self.redis.zrevrangebylex(self.index_key, "+", "-", 0, limit)]
        metas = await self._metas([m.split("|", 1)[1] for m in members])
        gone = [member for member, meta in zip(members, metas, strict=True) if meta is None]
        if gone:  # expired or purged: forget them (as ``page`` does)
            await self.redis.zrem(self.index_key, *gone)
        return [meta for meta in metas if meta is not None]

    async def _metas(self, session_ids: list[str]) -> list[dict[str, Any] | None]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for sid in session_ids:
                pipe.hgetall(self.meta_key(sid))
            for sid in session_ids:
                pipe.ttl(self.meta_key(sid))
            replies = await pipe.execute()
        n = len(session_ids)
        result: list[dict[str, Any] | None] = []
        for sid, raw, ttl in zip(session_ids, replies[:n], replies[n:], strict=True):
            if not raw:
                result.append(None)
                continue
            meta: dict[str, Any] = {_text(k): _text(v) for k, v in raw.items()}
            for name, kind in (("created_at", float), ("expected_riders", int)):  # as the API's schema says
                if name in meta:
                    try:
                        meta[name] = kind(meta[name])
                    except ValueError:
                        pass
            meta["id"] = sid
            meta.setdefault("phase", "lobby")
            meta["expires_in_s"] = ttl if isinstance(ttl, int) and ttl >= 0 else None
            result.append(meta)
        return result

    async def purge(self, session_id: str) -> int:
        """Delete the session's keys and its index entry; returns the keys deleted."""
        created = await self.redis.hget(self.meta_key(session_id), "created_at")
        deleted = int(await self.redis.delete(*session_keys(self.prefix, session_id)))
        if created is not None:
            await self.redis.zrem(self.index_key, _member(float(_text(created)), session_id))
        log.info("session %s purged (%d keys)", session_id, deleted)
        return deleted
