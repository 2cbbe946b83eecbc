"""Big classes: one class owned by several class-shard actors.

A class created with more ``expected_riders`` than ``class_shard_riders`` (default 1,000)
runs as ``N = ceil(expected / class_shard_riders)`` class shards (at most
``max_class_shards``), recorded in its meta (field ``shards``) when it is created, so every
edge splits it the same way. Shard ``i`` of class ``spin`` is an ordinary dedicated
``SessionActor`` named after the shard id ``spin~i`` (``~`` is not allowed in session ids,
so a shard id never names a class): its own ``SessionCell``, Redis keys, epoch and fencing,
restart from its own checkpoint. Its settings say ``board_parts``, so its ticks return a
board part (``actors/board_part.py``) that the edge merges (``api/class_board.py``).

Riders are partitioned by a stable hash of the participant id (``shard_of``: crc32 mod N);
a device goes with its participant. The data path splits each tick by that hash
(``api/class_ticks.py``). The control plane is ``ShardedHandle``, the handle the directory
returns for a sharded class: it looks like any session handle (``await
handle.method.remote(**kwargs)``), and

* a call naming a ``participant`` (join, leave) goes to that rider's shard;
* every other call (phase changes, flush, snapshot, the end of the class, any control call
  added later) is one action fanned out to every shard at once; a phase change is
  idempotent per shard, so a call that failed part-way is simply repeated;
* ``snapshot`` merges the shards' snapshots into one class snapshot (``merge_snapshots``).

A shard's results go to the class's leaderboards from each shard (each rider once, as its
shard holds it), under the shard's id.
"""

from __future__ import annotations

import asyncio
import math
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from actors.class_shard import SHARD_MARK, class_of, shard_id
from actors.session import Phase

PHASE_ORDER = [p.value for p in Phase]
_SUMMED = ("checkpoints_written", "state_bytes", "publish_failures", "metrics_errors", "version", "epoch")

__all__ = ["SHARD_MARK", "Method", "ShardedHandle", "class_of", "merge_snapshots", "shard_count", "shard_id", "shard_of"]


def shard_count(expected_riders: int | None, riders_per_shard: int, max_shards: int) -> int:
    """How many shards a class of ``expected_riders`` gets (1: not sharded; 0 per shard: never)."""
    if not expected_riders or riders_per_shard <= 0 or expected_riders <= riders_per_shard:
        return 1
    return max(1, min(max_shards, math.ceil(expected_riders / riders_per_shard)))


def shard_of(participant: str, shards: int) -> int:
    """The shard that owns ``participant`` (stable across processes and restarts)."""
    return zlib.crc32(participant.encode()) % shards


class _Directory(Protocol):
    async def handle(self, session_id: str, *, overrides: dict[str, Any] | None = None) -> Any: ...

    def forget(self, session_id: str) -> None: ...


class _Calls(Protocol):
    async def call(self, method: str, **kwargs: Any) -> Any: ...


class Method:
    """``handle.method.remote(**kwargs)`` on a session handle (``SessionHandle``,
    ``ShardedHandle``): the calling convention of a Ray actor handle."""

    def __init__(self, handle: _Calls, name: str) -> None:
        self.handle = handle
        self.name = name

    async def remote(self, **kwargs: Any) -> Any:
        return await self.handle.call(self.name, **kwargs)


class ShardedHandle:
    """The control handle of a sharded class (see the module docstring)."""

    def __init__(self, directory: _Directory, class_id: str, shards: int, overrides: dict[str, Any]) -> None:
        self.directory = directory
        self.session_id = class_id
        self.shards = shards
        self.overrides = overrides
        self.host: str | None = None  # (never on a dense host)
        self.answered = False  # every shard answered a call (the edge's longer first-call bound until then)

    @property
    def hosted(self) -> bool:
        return False

    def shard_ids(self) -> list[str]:
        return [shard_id(self.session_id, i) for i in range(self.shards)]

    async def start(self) -> ShardedHandle:
        """Get or create every shard's actor now."""
        await asyncio.gather(*(self.shard(i) for i in range(self.shards)))
        return self

    async def shard(self, index: int) -> Any:
        return await self.directory.handle(shard_id(self.session_id, index), overrides=self.overrides)

    def __getattr__(self, name: str) -> Method:
        if name.startswith("_"):
            raise AttributeError(name)
        return Method(self, name)

    async def call(self, method: str, **kwargs: Any) -> Any:
        if method in ("endpoint", "tick_wire", "tick"):
            raise TypeError(f"{method}: a sharded class's data path goes to its shards (api/class_ticks.py)")
        participant = kwargs.get("participant")
        if isinstance(participant, str):
            handle = await self.shard(shard_of(participant, self.shards))
            return await getattr(handle, method).remote(**kwargs)
        results = await asyncio.gather(*(self._call_shard(i, method, kwargs) for i in range(self.shards)))
        self.answered = True
        return _MERGERS.get(method, _first)(self.session_id, results)

    async def _call_shard(self, index: int, method: str, kwargs: Mapping[str, Any]) -> Any:
        handle = await self.shard(index)
        return await getattr(handle, method).remote(**kwargs)


def _first(class_id: str, results: Sequence[Any]) -> Any:
    return results[0]


def _phase(class_id: str, results: Sequence[Any]) -> Any:
    """The class's phase: the least advanced of its shards' (all equal once a call succeeded)."""
    return min(results, key=PHASE_ORDER.index)


def _durable(class_id: str, results: Sequence[dict[str, int]]) -> dict[str, int]:
    merged: dict[str, int] = {}
    for durable in results:
        merged.update(durable)  # (a device lives in one shard)
    return merged


def _info(class_id: str, results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return {"session": class_id, "shards": list(results)}


def merge_snapshots(class_id: str, snapshots: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One class snapshot from its shards' (riders concatenated shard by shard; counts
    summed; ``version`` and ``epoch`` are sums, so they grow when any shard's does)."""
    first = snapshots[0]
    merged = {k: v for k, v in first.items()}
    merged["session"] = class_id
    merged["phase"] = _phase(class_id, [s["phase"] for s in snapshots])
    merged["participants"] = [p for s in snapshots for p in s.get("participants", [])]
    merged["devices"] = _durable(class_id, [s.get("devices", {}) for s in snapshots])
    merged["durable"] = _durable(class_id, [s.get("durable", {}) for s in snapshots])
    for key in ("totals", "presence"):
        if key in first:
            merged[key] = _sum_counts([s.get(key, {}) for s in snapshots])
    for key in _SUMMED:
        if key in first:
            merged[key] = sum(s.get(key, 0) for s in snapshots)
    merged["shards"] = [{"session": s["session"], "epoch": s.get("epoch"), "version": s.get("version"),
                         "phase": s.get("phase"), "participants": len(s.get("participants", []))}
                        for s in snapshots]
    return merged


def _sum_counts(counts: Sequence[Mapping[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for one in counts:
        for key, value in one.items():
            total[key] = total.get(key, 0) + value
    return total


_MERGERS: dict[str, Callable[[str, Sequence[Any]], Any]] = {
    "set_phase": _phase, "flush": _durable, "snapshot": merge_snapshots, "info": _info,
}
