"""Checkpoints in Redis, fenced by an epoch so a stale instance can never overwrite newer state.

Redis keys (all under the configurable ``prefix``, default ``pl``; ``{id}`` in braces is a
Redis Cluster hash tag, so every key of one session or one leaderboard shard lives on one
slot and the fenced Lua scripts below never cross slots):

================================  ======  ================================================
key                               type    meaning
================================  ======  ================================================
``{p}:{kind}:{{id}}:epoch``       string  integer; INCR'd by every instance that starts
``{p}:{kind}:{{id}}:ckpt``        string  the latest checkpoint (msgpack bytes)
``{p}:{kind}:{{id}}:ckpt_epoch``  string  epoch of the instance that wrote ``ckpt``
``{p}:{kind}:{{id}}:{side}``      hash    optional (a store made with ``side=``): fields
                                          written with a checkpoint, in the same fenced
                                          script (sessions: ``rec``, the per-second
                                          recording's chunks, ``actors.recording``)
================================  ======  ================================================

``kind`` is ``session`` or ``lbshard``. A write succeeds only while the writer's epoch
is still the current one (compare-and-set in a Lua script, atomic in Redis); a refused
write raises ``StaleInstance``. Writes keep a key's TTL (``KEEPTTL``, Redis >= 6): an ended
session's retention (``cluster.session_records``) is not reset by late data.

The client comes from the Redis URL (``storage.redis_url``: one server, a cluster or a
Sentinel master). With ``wait_replicas=N`` in the URL a fenced write (and the epoch taken
at start) counts only once ``N`` replicas have it: Redis ``WAIT`` on the connection that
wrote, else ``NotReplicated`` — the write is then not durable yet and nothing is
acknowledged on it (the next checkpoint tries again).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from storage.errors import NotReplicated, StaleInstance
from storage.redis_url import AsyncRedis, RedisTarget, SyncRedis, Topology, connect, connect_sync, parse

_FENCED_SET = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current ~= tonumber(ARGV[1]) then return current end
redis.call('SET', KEYS[2], ARGV[2], 'KEEPTTL')
redis.call('SET', KEYS[3], ARGV[1], 'KEEPTTL')
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[4], ARGV[i], ARGV[i + 1]) end
return -1
"""


def key_base(prefix: str, kind: str, ident: str) -> str:
    """``{prefix}:{kind}:{{ident}}``: the start of every key of one session or shard, with
    ``ident`` as the cluster hash tag (so it must hold no brace)."""
    if "{" in ident or "}" in ident:
        raise ValueError(f"a Redis key id cannot hold braces: {ident!r}")
    return f"{prefix}:{kind}:{{{ident}}}"


class CheckpointStore:
    """Epoch acquisition (sync, for actor constructors) and fenced writes (async)."""

    def __init__(self, redis_url: str, *, prefix: str, kind: str, ident: str,
                 client: AsyncRedis | None = None, side: str | None = None) -> None:
        """``client``: an async client to share (a dense host's classes share one; made by
        ``client_for``); not closed by ``close``. Default: the store makes its own.
        ``side``: the name of a hash written with every checkpoint (``write(side=...)``) and
        read back by ``acquire`` into ``side_data``."""
        base = key_base(prefix, kind, ident)
        self.prefix = prefix
        self.epoch_key = f"{base}:epoch"
        self.ckpt_key = f"{base}:ckpt"
        self.ckpt_epoch_key = f"{base}:ckpt_epoch"
        self.side_key = f"{base}:{side}" if side else None
        self.side_data: dict[bytes, bytes] = {}
        self.redis_url = redis_url
        self.target: RedisTarget = parse(redis_url)
        self.epoch = 0
        self._aio: AsyncRedis | None = client
        self._owns_client = client is None

    def acquire(self) -> bytes | None:
        """Take a new epoch (fencing off every older instance) and read the last checkpoint."""
        with self.sync_client() as client:
            node = _node_client(client, self.epoch_key)
            with node.pipeline(transaction=False) as pipe:
                pipe.incr(self.epoch_key)
                if self.target.wait_replicas:
                    pipe.wait(self.target.wait_replicas, self.target.wait_timeout_ms)
                pipe.get(self.ckpt_key)
                if self.side_key:
                    pipe.hgetall(self.side_key)
                replies = pipe.execute()
        if self.side_key:
            self.side_data = replies.pop()
        if self.target.wait_replicas and int(replies[1]) < self.target.wait_replicas:
            raise NotReplicated(self.target.wait_replicas, int(replies[1]))
        self.epoch = int(replies[0])
        return _checkpoint_bytes(replies[-1])

    def sync_client(self) -> SyncRedis:
        """A new blocking client for this store's Redis (close it after use)."""
        return connect_sync(self.target)

    def _client(self) -> AsyncRedis:
        if self._aio is None:
            self._aio = client_for(self.target)
        return self._aio

    def client(self) -> AsyncRedis:
        """The async client this store writes with (for other reads of the same class,
        e.g. rider profiles: one connection pool per class, not two)."""
        return self._client()

    async def close(self) -> None:
        if self._aio is not None and self._owns_client:
            await self._aio.aclose()
        self._aio = None if self._owns_client else self._aio

    async def fenced_eval(self, script: str, keys: Sequence[str], args: Sequence[Any]) -> int:
        """Run a fencing script (it returns -1 when it wrote, else the current epoch); with
        ``wait_replicas`` it counts only once that many replicas acknowledged the write."""
        client = self._client()
        wanted = self.target.wait_replicas
        if not wanted:
            return int(await client.eval(script, len(keys), *keys, *args))  # type: ignore[misc]
        if isinstance(client, aioredis.RedisCluster):
            await client.initialize()  # the slot map (a no-op once known, a refresh after a failover)
        async with client.pipeline(transaction=False) as pipe:
            pipe.eval(script, len(keys), *keys, *args)
            if isinstance(client, aioredis.RedisCluster):  # WAIT on the node (and connection) that wrote
                pipe.execute_command("WAIT", wanted, self.target.wait_timeout_ms,
                                     target_nodes=client.get_node_from_key(keys[0]))
            else:
                pipe.wait(wanted, self.target.wait_timeout_ms)
            result, acked = await pipe.execute()
        if isinstance(acked, dict):  # a reply keyed by node (one node here)
            acked = min(acked.values())
        if int(result) == -1 and int(acked) < wanted:
            raise NotReplicated(wanted, int(acked))
        return int(result)

    async def write(self, data: bytes, *, side: Mapping[str, bytes] | None = None) -> None:
        """Write ``data`` (and the ``side`` hash fields, atomically with it) if this store's
        epoch is still the current one, else raise ``StaleInstance``."""
        keys = [self.epoch_key, self.ckpt_key, self.ckpt_epoch_key]
        args: list[Any] = [self.epoch, data]
        if side:
            if self.side_key is None:
                raise ValueError("this checkpoint store has no side hash")
            keys.append(self.side_key)
            for name, value in side.items():
                args += [name, value]
        result = await self.fenced_eval(_FENCED_SET, keys, args)
        if result != -1:
            raise StaleInstance(self.epoch, result)

    async def read(self) -> bytes | None:
        return _checkpoint_bytes(await self._client().get(self.ckpt_key))



def _node_client(client: SyncRedis, key: str) -> redis.Redis:
    """The plain client of the server that holds ``key`` (itself outside a cluster): a
    pipeline on it is one connection, which ``WAIT`` needs."""
    if isinstance(client, redis.RedisCluster):
        return client.get_redis_connection(client.get_node_from_key(key))
    return client


def _checkpoint_bytes(data: object) -> bytes | None:
    """A checkpoint as read back: redis-py types replies ``bytes | str``, but these clients
    never decode responses, so it is bytes (or None when none was written)."""
    if data is None or isinstance(data, bytes):
        return data
    raise TypeError(f"a checkpoint read returned {type(data).__name__}, not bytes")


def client_for(target: RedisTarget | str) -> AsyncRedis:
    """An async client for checkpoint stores of ``target`` (a URL or a parsed one)."""
    if isinstance(target, str):
        target = parse(target)
    # A cluster pipeline retried inside redis-py could send the WAIT on another
    # connection than the write (a false "replicated"): fail instead, the caller retries.
    options: dict[str, Any] = {}
    if target.topology is Topology.CLUSTER and target.wait_replicas:
        options["retry"] = Retry(NoBackoff(), 0)
    return connect(target, **options)
