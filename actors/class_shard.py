"""What a class shard knows of its class: the shard ids, the class-wide ranks of its riders,
and who publishes the class's result.

A big class is owned by several class shards (``cluster/class_shards.py``): shard ``i`` of
class ``spin`` is the session ``spin~i`` (``~`` is not allowed in session ids). A shard
holds only its own riders, so when it hands an ended class's rides to the history sink it
ranks them among the whole class: ``class_standing`` reads the other shards' last
checkpoints (read only: no epoch is taken, nobody is fenced) and ranks every rider with
samples by work, ties by shard then join order — the history's rule
(``history.rides.class_ranks``) over the class instead of the shard. A shard whose
checkpoint cannot be read is left out (logged); the ranks are then those of the shards that
could be read.

One ``class.result`` per class (not one per shard): each shard, once its final checkpoint
is written, notes itself in the class's ``{p}:session:{class}:shards_ended`` set
(``note_ended``); the shard whose note completes the set reads every other shard's final
checkpoint and hands the sink the whole class's result, the others none. After that (late
data) a shard whose rides changed hands the revised result of the whole class.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from actors.session import SessionState
from storage.checkpoint import CheckpointStore, key_base
from storage.redis_url import AsyncRedis

log = logging.getLogger(__name__)

SHARD_MARK = "~"


def shard_id(class_id: str, index: int) -> str:
    return f"{class_id}{SHARD_MARK}{index}"


def class_of(session_id: str) -> tuple[str, int] | None:
    """``(class id, shard index)`` of a shard id; None for a class's own id."""
    owner, mark, index = session_id.rpartition(SHARD_MARK)
    if not mark or not owner or not index.isdigit():
        return None
    return owner, int(index)


@dataclass(frozen=True, slots=True)
class ClassStanding:
    """Where a shard's riders stand in the whole class, and the class's result."""

    ranks: dict[str, int]  # this shard's riders with samples -> their rank in the class
    riders: int  # riders of the class with samples
    result: list[dict[str, Any]]  # every rider of the class with samples, best first (CLASS_RESULT_FIELDS)


CLASS_RESULT_FIELDS = ("energy_kj", "samples", "distance_m", "power_avg", "hr_avg")

# Note a shard as ended (its final checkpoint is written); returns {added, shards ended}.
# The set takes the class meta's TTL (its retention) as the class's other keys have it.
_ENDED = """
local added = redis.call('SADD', KEYS[1], ARGV[1])
if redis.call('PTTL', KEYS[1]) == -1 then
  local ttl = redis.call('PTTL', KEYS[2])
  if ttl > 0 then redis.call('PEXPIRE', KEYS[1], ttl) end
end
return {added, redis.call('SCARD', KEYS[1])}
"""


async def class_shard_count(client: AsyncRedis, prefix: str, class_id: str, default: int) -> int:
    """How many shards the class has now (its meta's ``shards``: a growing class adds shards)."""
    shards = await client.hget(f"{key_base(prefix, 'session', class_id)}:meta", "shards")
    return default if shards is None else int(shards)


def shards_ended_key(prefix: str, class_id: str) -> str:
    return f"{key_base(prefix, 'session', class_id)}:shards_ended"


async def note_ended(own_id: str, shards: int, *, prefix: str, client: AsyncRedis) -> tuple[bool, bool]:
    """Note that this shard of an ended class has written its final checkpoint: (every shard
    of the class has, this call was the one that completed the class). The shard that
    completes it publishes the class's result, read from every shard's final checkpoint;
    afterwards (late data) each shard whose riders change publishes the revised one."""
    class_id, index = _owner(own_id)
    keys = (shards_ended_key(prefix, class_id), f"{key_base(prefix, 'session', class_id)}:meta")
    added, ended = await client.eval(_ENDED, 2, *keys, str(index))  # type: ignore[misc]
    return int(ended) >= shards, bool(int(added)) and int(ended) >= shards


def _owner(own_id: str) -> tuple[str, int]:
    mine = class_of(own_id)
    if mine is None:
        raise ValueError(f"{own_id!r} is not a class shard's id")
    return mine


async def class_standing(own_id: str, shards: int, own: Sequence[Mapping[str, Any]], *, redis_url: str, prefix: str,
                         client: AsyncRedis) -> ClassStanding:
    """This shard's riders' ranks in the whole class and the class's result. ``own``: this
    shard's participant summaries, in slot order (its snapshot's, fresher than its
    checkpoint); the other shards' riders come from their last checkpoints."""
    class_id, index = _owner(own_id)
    riding: list[tuple[float, int, int, dict[str, Any]]] = []  # (-energy, shard, slot, rider's result)
    for shard in range(shards):
        if shard == index:
            riders: Sequence[Mapping[str, Any]] = own
        else:
            riders = await _checkpointed(shard_id(class_id, shard), redis_url=redis_url, prefix=prefix, client=client)
        riding.extend((-float(p.get("energy_kj") or 0.0), shard, slot, _result(p))
                      for slot, p in enumerate(riders) if p.get("samples"))
    riding.sort(key=lambda r: r[:3])
    result = [{"rider": row["rider"], "rank": rank, **{k: v for k, v in row.items() if k != "rider"}}
              for rank, (_, _, _, row) in enumerate(riding, start=1)]
    ranks = {row["rider"]: rank for rank, (_, shard, _, row) in enumerate(riding, start=1) if shard == index}
    return ClassStanding(ranks, len(riding), result)


def _result(rider: Mapping[str, Any]) -> dict[str, Any]:
    return {"rider": str(rider["participant"]), **{k: rider.get(k) for k in CLASS_RESULT_FIELDS}}


async def _checkpointed(session_id: str, *, redis_url: str, prefix: str, client: AsyncRedis) -> list[dict[str, Any]]:
    store = CheckpointStore(redis_url, prefix=prefix, kind="session", ident=session_id, client=client)
    try:
        data = await store.read()
    except Exception as exc:  # the ranks of the shards that could be read; logged
        log.warning("class shard %s: its checkpoint could not be read for the class ranks: %r", session_id, exc)
        return []
    return [] if data is None else SessionState.checkpoint_results(data)
