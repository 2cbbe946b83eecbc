"""Seats and admission for a class: a capacity, an admission rate, and a queue in arrival
order — kept in Redis, so every edge of a deployment agrees.

Redis keys owned here (all under the session's hash tag, ``storage.checkpoint.key_base``;
purged and expired with the session's other keys, ``cluster.session_records``):

==================================  ======  ===============================================
key                                 type    meaning
==================================  ======  ===============================================
``{p}:session:{{id}}:seats``        set     participants holding a seat
``{p}:session:{{id}}:queue``        zset    participants waiting, scored by their ticket
``{p}:session:{{id}}:queue_seen``   hash    participant -> when it last asked (server s)
``{p}:session:{{id}}:ticket``       string  the last ticket handed out (INCR)
``{p}:session:{{id}}:bucket``       hash    the admission rate's token bucket: tokens, ts
``{p}:session:{{id}}:leaving``      zset    seated participants whose devices all went,
                                            scored by when their seat frees (server s)
``{p}:session:{{id}}:meta``         hash    (``cluster.directory``) its ``capacity`` field
==================================  ======  ===============================================

``SeatBook.admit(session, participants)`` is one Lua script (atomic, one round trip for a
whole batch, Redis's own clock): for each participant in the order given, a seated one is
in; anyone else takes a ticket (once: asking again keeps the place) and is admitted when it
is within the *admission window* — fewer riders ahead of it than the free seats
(``capacity`` minus seats held; no capacity: unlimited) and than the tokens of the
class's bucket (``rate_per_s`` refilled, at most ``burst``; rate 0: unlimited) — else it
gets its position (1 = next). So riders go in ticket order, at most ``rate_per_s`` a
second, never beyond the capacity. A waiting rider that stops asking for ``stale_s``
(its connection went and did not come back) loses its place when it reaches the head.
``release`` gives a seat back (an explicit leave).

``leaving(session, participants, after_s)`` marks seated riders whose last device went (a
``bye``, or a socket that closed): each keeps its seat for ``after_s`` more seconds (the
grace, ``api.admission``), then gives it back. Any ``admit`` of the rider before then (it
came back: a ``hello`` from any edge) clears the mark; ``admit`` frees the seats whose time
is up before it counts the free ones, so the next rider in the queue goes in on the round
after the grace ends (nothing runs when nobody waits: a seat nobody asks for can wait).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from storage.checkpoint import key_base
from storage.redis_url import AsyncRedis

__all__ = ["AdmissionPolicy", "SeatBook", "admission_keys"]

_SUFFIXES = ("seats", "queue", "queue_seen", "ticket", "bucket", "leaving")

_ADMIT = """
local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1e6
local rate, burst, stale = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local cap = tonumber(redis.call('HGET', KEYS[7], 'capacity') or '0')
local due = redis.call('ZRANGEBYSCORE', KEYS[6], '-inf', now)  -- riders gone past their grace
for _, p in ipairs(due) do redis.call('SREM', KEYS[1], p) end
if #due > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', now) end
local heads = redis.call('ZRANGE', KEYS[2], 0, 49)
for _, p in ipairs(heads) do
  local seen = tonumber(redis.call('HGET', KEYS[3], p) or '0')
  if now - seen > stale then
    redis.call('ZREM', KEYS[2], p)
    redis.call('HDEL', KEYS[3], p)
  else
    break
  end
end
local tokens = 1e18
if rate > 0 then
  local b = redis.call('HMGET', KEYS[5], 'tokens', 'ts')
  tokens = burst
  if b[1] then tokens = math.min(burst, tonumber(b[1]) + math.max(0, now - tonumber(b[2])) * rate) end
end
local seated = redis.call('SCARD', KEYS[1])
local out = {}
for i = 4, #ARGV do
  local p = ARGV[i]
  if redis.call('SISMEMBER', KEYS[1], p) == 1 then
    redis.call('ZREM', KEYS[6], p)  -- (back before its seat freed: it keeps it)
    out[#out + 1] = 0
  else
    local rank = redis.call('ZRANK', KEYS[2], p)
    if not rank then
      redis.call('ZADD', KEYS[2], redis.call('INCR', KEYS[4]), p)
      rank = redis.call('ZCARD', KEYS[2]) - 1
    end
    local free = 1e18
    if cap > 0 then free = cap - seated end
    if rank < free and rank < math.floor(tokens) then
      redis.call('ZREM', KEYS[2], p)
      redis.call('HDEL', KEYS[3], p)
      redis.call('SADD', KEYS[1], p)
      redis.call('ZREM', KEYS[6], p)
      seated = seated + 1
      tokens = tokens - 1
      out[#out + 1] = 0
    else
      redis.call('HSET', KEYS[3], p, now)
      out[#out + 1] = rank + 1
    end
  end
end
if rate > 0 then redis.call('HSET', KEYS[5], 'tokens', tostring(tokens), 'ts', tostring(now)) end
local ttl = redis.call('PTTL', KEYS[7])
if ttl > 0 then  -- an ended class's retention (cluster.session_records) covers these keys too
  for k = 1, 6 do
    if redis.call('PTTL', KEYS[k]) == -1 then redis.call('PEXPIRE', KEYS[k], ttl) end
  end
end
return out
"""

# KEYS: seats, leaving, meta; ARGV: after_s, participants... -> how many were marked
_LEAVING = """
local time = redis.call('TIME')
local at = tonumber(time[1]) + tonumber(time[2]) / 1e6 + tonumber(ARGV[1])
local marked = 0
for i = 2, #ARGV do
  if redis.call('SISMEMBER', KEYS[1], ARGV[i]) == 1 then
    redis.call('ZADD', KEYS[2], at, ARGV[i])
    marked = marked + 1
  end
end
local ttl = redis.call('PTTL', KEYS[3])
if marked > 0 and ttl > 0 and redis.call('PTTL', KEYS[2]) == -1 then redis.call('PEXPIRE', KEYS[2], ttl) end
return marked
"""


def admission_keys(prefix: str, session_id: str) -> list[str]:
    """The session's admission keys (without its meta), for purging and retention."""
    base = key_base(prefix, "session", session_id)
    return [f"{base}:{suffix}" for suffix in _SUFFIXES]


@dataclass(frozen=True)
class AdmissionPolicy:
    rate_per_s: float = 200.0  # riders admitted per second per class (0: no limit)
    burst: int = 400  # admitted at once after a quiet spell
    stale_s: float = 15.0  # a waiting rider that stopped asking this long loses its place


class SeatBook:
    """The seats and queue of classes in Redis (see the module docstring)."""

    def __init__(self, redis: AsyncRedis, *, prefix: str, policy: AdmissionPolicy) -> None:
        self.redis = redis
        self.prefix = prefix
        self.policy = policy
        self._script = redis.register_script(_ADMIT)
        self._leaving = redis.register_script(_LEAVING)

    def _keys(self, session_id: str) -> list[str]:
        return [*admission_keys(self.prefix, session_id), f"{key_base(self.prefix, 'session', session_id)}:meta"]

    async def admit(self, session_id: str, participants: Sequence[str]) -> list[int]:
        """Per participant (in the order given: put earlier tickets first): 0 admitted (or
        already seated), else its place in the queue (1 = next)."""
        if not participants:
            return []
        policy = self.policy
        result = await self._script(keys=self._keys(session_id),
                                    args=[policy.rate_per_s, policy.burst, policy.stale_s, *participants])
        return [int(x) for x in result]

    async def leaving(self, session_id: str, participants: Sequence[str], after_s: float) -> int:
        """Seated ``participants`` give their seat back ``after_s`` from now unless they are
        admitted again before (see the module docstring); how many held a seat."""
        if not participants:
            return 0
        keys = admission_keys(self.prefix, session_id)
        meta = f"{key_base(self.prefix, 'session', session_id)}:meta"
        return int(await self._leaving(keys=[keys[0], keys[5], meta], args=[max(0.0, after_s), *participants]))

    async def seat(self, session_id: str, participants: Sequence[str]) -> int:
        """Give ``participants`` a seat each, without asking (riders already in a class that
        gets a capacity); how many did not hold one."""
        if not participants:
            return 0
        return int(await self.redis.sadd(admission_keys(self.prefix, session_id)[0], *participants))

    async def release(self, session_id: str, participant: str) -> bool:
        """Give a participant's seat back (it left); True if it held one."""
        keys = admission_keys(self.prefix, session_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.srem(keys[0], participant)
            pipe.zrem(keys[5], participant)
            held, _ = await pipe.execute()
        return bool(held)

    async def counts(self, session_id: str) -> dict[str, int]:
        """Seats held (``leaving`` of them given back when their grace ends) and riders queued."""
        keys = admission_keys(self.prefix, session_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.scard(keys[0])
            pipe.zcard(keys[1])
            pipe.zcard(keys[5])
            seated, waiting, leaving = await pipe.execute()
        return {"seated": int(seated), "waiting": int(waiting), "leaving": int(leaving)}
