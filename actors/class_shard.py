"""What a class shard knows of its class: the shard ids, and the class-wide ranks of its riders.

A big class is owned by several class shards (``cluster/class_shards.py``): shard ``i`` of
class ``spin`` is the session ``spin~i`` (``~`` is not allowed in session ids). A shard
holds only its own riders, so when it hands an ended class's rides to the history sink it
ranks them among the whole class: ``class_ranks`` reads the other shards' last checkpoints
(read only: no epoch is taken, nobody is fenced) and ranks every rider with samples by
work, ties by shard then join order — the history's rule (``history.rides.class_ranks``)
over the class instead of the shard. A shard whose checkpoint cannot be read is left out
(logged); the ranks are then those of the shards that could be read.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
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


async def class_shard_count(client: AsyncRedis, prefix: str, class_id: str, default: int) -> int:
    """How many shards the class has now (its meta's ``shards``: a growing class adds shards)."""
    shards = await client.hget(f"{key_base(prefix, 'session', class_id)}:meta", "shards")
    return default if shards is None else int(shards)


async def class_ranks(own_id: str, shards: int, own: Sequence[Mapping[str, Any]], *, redis_url: str, prefix: str,
                      client: AsyncRedis) -> tuple[dict[str, int], int]:
    """(rank of each of this shard's riders with samples among the whole class, how many
    riders of the class have samples). ``own``: this shard's participant summaries, in slot
    order (its snapshot's, fresher than its checkpoint)."""
    mine = class_of(own_id)
    if mine is None:
        raise ValueError(f"{own_id!r} is not a class shard's id")
    class_id, index = mine
    riding: list[tuple[float, int, int, str]] = []  # (-energy, shard, slot, rider)
    for shard in range(shards):
        if shard == index:
            riders = [(str(p["participant"]), float(p.get("energy_kj") or 0.0), int(p.get("samples") or 0)) for p in own]
        else:
            riders = await _checkpointed(shard_id(class_id, shard), redis_url=redis_url, prefix=prefix, client=client)
        riding.extend((-energy, shard, slot, rider) for slot, (rider, energy, samples) in enumerate(riders) if samples)
    riding.sort()
    ranks = {rider: rank for rank, (_, shard, _, rider) in enumerate(riding, start=1) if shard == index}
    return ranks, len(riding)


async def _checkpointed(session_id: str, *, redis_url: str, prefix: str,
                        client: AsyncRedis) -> list[tuple[str, float, int]]:
    store = CheckpointStore(redis_url, prefix=prefix, kind="session", ident=session_id, client=client)
    try:
        data = await store.read()
    except Exception as exc:  # the ranks of the shards that could be read; logged
        log.warning("class shard %s: its checkpoint could not be read for the class ranks: %r", session_id, exc)
        return []
    if data is None:
        return []
    participants, energy, samples = SessionState.checkpoint_scores(data)
    return list(zip(participants, energy.tolist(), samples.tolist(), strict=True))
