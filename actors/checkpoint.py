"""Checkpoints in Redis, fenced by an epoch so a stale instance can never overwrite newer state.

Redis keys (all under the configurable ``prefix``, default ``pl``):

==============================  ======  ==================================================
key                             type    meaning
==============================  ======  ==================================================
``{p}:{kind}:{id}:epoch``       string  integer; INCR'd by every instance that starts
``{p}:{kind}:{id}:ckpt``        string  the latest checkpoint (msgpack bytes)
``{p}:{kind}:{id}:ckpt_epoch``  string  epoch of the instance that wrote ``ckpt``
==============================  ======  ==================================================

``kind`` is ``session`` or ``lbshard``. A write succeeds only while the writer's epoch
is still the current one (compare-and-set in a Lua script, atomic in Redis); a refused
write raises ``StaleInstance``. Writes keep a key's TTL (``KEEPTTL``, Redis >= 6): an ended
session's retention (``cluster.session_records``) is not reset by late data.
"""

from __future__ import annotations

import redis
import redis.asyncio as aioredis

from actors.errors import StaleInstance

_FENCED_SET = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current ~= tonumber(ARGV[1]) then return current end
redis.call('SET', KEYS[2], ARGV[2], 'KEEPTTL')
redis.call('SET', KEYS[3], ARGV[1], 'KEEPTTL')
return -1
"""


class CheckpointStore:
    """Epoch acquisition (sync, for actor constructors) and fenced writes (async)."""

    def __init__(self, redis_url: str, *, prefix: str, kind: str, ident: str) -> None:
        base = f"{prefix}:{kind}:{ident}"
        self.epoch_key = f"{base}:epoch"
        self.ckpt_key = f"{base}:ckpt"
        self.ckpt_epoch_key = f"{base}:ckpt_epoch"
        self.redis_url = redis_url
        self.epoch = 0
        self._aio: aioredis.Redis | None = None

    def acquire(self) -> bytes | None:
        """Take a new epoch (fencing off every older instance) and read the last checkpoint."""
        with redis.Redis.from_url(self.redis_url) as client:
            self.epoch = int(client.incr(self.epoch_key))
            data = client.get(self.ckpt_key)
        return _checkpoint_bytes(data)

    def _client(self) -> aioredis.Redis:
        if self._aio is None:
            self._aio = aioredis.Redis.from_url(self.redis_url)
        return self._aio

    async def write(self, data: bytes) -> None:
        result = await self._client().eval(  # type: ignore[misc]
            _FENCED_SET, 3, self.epoch_key, self.ckpt_key, self.ckpt_epoch_key, self.epoch, data
        )
        if int(result) != -1:
            raise StaleInstance(self.epoch, int(result))

    async def read(self) -> bytes | None:
        return _checkpoint_bytes(await self._client().get(self.ckpt_key))

    async def close(self) -> None:
        if self._aio is not None:
            await self._aio.aclose()
            self._aio = None


def _checkpoint_bytes(data: object) -> bytes | None:
    """A checkpoint as read back: redis-py types replies ``bytes | str``, but these clients
    never decode responses, so it is bytes (or None when none was written)."""
    if data is None or isinstance(data, bytes):
        return data
    raise TypeError(f"a checkpoint read returned {type(data).__name__}, not bytes")
