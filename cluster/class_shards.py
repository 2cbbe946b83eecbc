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

**Growing while the class runs.** A class whose meta has ``shard_riders`` (created with
``class_shard_growth`` on: ``cluster.directory``) records each rider's shard instead of
hashing: ``{p}:session:{{id}}:shard_of`` (participant -> shard) and
``{p}:session:{{id}}:shard_loads`` (shard -> riders placed there), under the class's hash
tag. ``ASSIGN`` (one Lua script, atomic: every edge gets the same answer) places a new rider
on the least-loaded shard, or, when every shard has ``shard_riders`` riders and the class has
fewer than ``max_shards``, on a new shard ``N`` (the meta's ``shards`` becomes ``N+1`` in the
same script). A recorded rider never moves: its device cursors, seq de-duplication, columns
and checkpoint stay on its shard, so growing moves nothing and loses nothing, and ranks stay
exact (the merge counts every shard). An edge learns a new shard from the script's answer or
by re-reading ``shards`` (before every fanned-out control call, and at least every
``REFRESH_S`` on the data path); the first to learn starts it and makes it follow the class's
phase and plan (``follow``, from shard 0's ``class_clock``; idempotent, phases only move
forward).
"""

from __future__ import annotations

import asyncio
import math
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from actors.class_shard import SHARD_MARK, class_of, shard_id
from actors.session import Phase
from storage.checkpoint import key_base
from storage.redis_url import AsyncRedis

PHASE_ORDER = [p.value for p in Phase]
REFRESH_S = 1.0  # a growing class's shard count is re-read at least this often on the data path
_NOT_PLACED = {"member": False, "leave": False}  # what a call about a rider no shard holds answers

# KEYS: the class's meta, shard_of, shard_loads; ARGV: participants. Returns {shards, shard of each}.
ASSIGN = """
local n = tonumber(redis.call('HGET', KEYS[1], 'shards') or '0')
if n < 1 then return redis.error_reply('not a class over class shards') end
local per = tonumber(redis.call('HGET', KEYS[1], 'shard_riders') or '0')
local most = tonumber(redis.call('HGET', KEYS[1], 'max_shards') or tostring(n))
local grew = false
local loads = {}
for i = 0, n - 1 do loads[i] = tonumber(redis.call('HGET', KEYS[3], tostring(i)) or '0') end
local out = {0}
for k, p in ipairs(ARGV) do
  local s = redis.call('HGET', KEYS[2], p)
  if s then
    s = tonumber(s)
  else
    s = 0
    for i = 1, n - 1 do if loads[i] < loads[s] then s = i end end
    if per > 0 and loads[s] >= per and n < most then
      s = n
      n = n + 1
      loads[s] = 0
      grew = true
    end
    loads[s] = loads[s] + 1
    redis.call('HSET', KEYS[2], p, s)
    redis.call('HSET', KEYS[3], tostring(s), loads[s])
  end
  out[k + 1] = s
end
if grew then redis.call('HSET', KEYS[1], 'shards', n) end
out[1] = n
return out
"""
_SUMMED = ("checkpoints_written", "state_bytes", "publish_failures", "metrics_errors", "version", "epoch")

__all__ = ["SHARD_MARK", "Method", "ShardedHandle", "class_of", "merge_snapshots", "placement_keys", "shard_count",
           "shard_id", "shard_of"]


def shard_count(expected_riders: int | None, riders_per_shard: int, max_shards: int) -> int:
    """How many shards a class of ``expected_riders`` gets (1: not sharded; 0 per shard: never)."""
    if not expected_riders or riders_per_shard <= 0 or expected_riders <= riders_per_shard:
        return 1
    return max(1, min(max_shards, math.ceil(expected_riders / riders_per_shard)))


def shard_of(participant: str, shards: int) -> int:
    """The shard that owns ``participant`` (stable across processes and restarts)."""
    return zlib.crc32(participant.encode()) % shards


def placement_keys(prefix: str, class_id: str) -> tuple[str, str]:
    """A growing class's ``shard_of`` and ``shard_loads`` hashes (see the module docstring)."""
    base = key_base(prefix, "session", class_id)
    return f"{base}:shard_of", f"{base}:shard_loads"


class _Directory(Protocol):
    redis: AsyncRedis
    prefix: str

    def meta_key(self, session_id: str) -> str: ...

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
    """The control handle of a sharded class (see the module docstring). ``recorded``: the
    class records its riders' shards and may grow (else riders are hashed over a fixed N)."""

    def __init__(self, directory: _Directory, class_id: str, shards: int, overrides: dict[str, Any],
                 *, recorded: bool = False) -> None:
        self.directory = directory
        self.session_id = class_id
        self.shards = shards
        self.overrides = overrides
        self.recorded = recorded
        self.host: str | None = None  # (never on a dense host)
        self.answered = False  # every shard answered a call (the edge's longer first-call bound until then)
        self.owner: dict[str, int] = {}  # participant -> shard, as recorded (never changes once known)
        self._growing = asyncio.Lock()

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

    # -- where riders are ----------------------------------------------------------------------
    async def place(self, participants: Sequence[str], *, assign: bool = True) -> dict[str, int]:
        """The shard of each participant: hashed (a fixed class), or as recorded in Redis; with
        ``assign``, a participant not placed yet is placed now (``ASSIGN``: the class may grow,
        and this handle then starts and brings up the new shards before it answers). Without
        it, a participant never placed is left out."""
        unknown = [p for p in dict.fromkeys(participants) if p not in self.owner]
        if unknown and not self.recorded:
            self.owner.update((p, shard_of(p, self.shards)) for p in unknown)
        elif unknown and assign:
            reply = await self.directory.redis.eval(  # type: ignore[misc]
                ASSIGN, 3, self.directory.meta_key(self.session_id), *placement_keys(self.directory.prefix,
                                                                                     self.session_id), *unknown)
            await self._grown(int(reply[0]))
            self.owner.update(zip(unknown, (int(s) for s in reply[1:]), strict=True))
        elif unknown:
            shard_of_key = placement_keys(self.directory.prefix, self.session_id)[0]
            found = await self.directory.redis.hmget(shard_of_key, unknown)
            placed = {p: int(s) for p, s in zip(unknown, found, strict=True) if s is not None}
            if placed:
                await self._grown(max(placed.values()) + 1)
            self.owner.update(placed)
        return {p: self.owner[p] for p in participants if p in self.owner}

    async def refresh(self) -> int:
        """Re-read the class's shard count (a growing class); returns it."""
        if self.recorded:
            shards = await self.directory.redis.hget(self.directory.meta_key(self.session_id), "shards")
            await self._grown(int(shards or self.shards))
        return self.shards

    async def _grown(self, shards: int) -> None:
        """The class has ``shards`` shards: start the ones this handle did not know and make
        them follow the class's phase and plan (shard 0's), before anyone here uses them."""
        if shards <= self.shards:
            return
        async with self._growing:
            old = self.shards
            if shards <= old:
                return
            lead = await self._call_shard(0, "class_clock", {})
            await asyncio.gather(*(self._call_shard(i, "follow", lead) for i in range(old, shards)))
            self.shards = shards

    # -- calls ---------------------------------------------------------------------------------
    async def call(self, method: str, **kwargs: Any) -> Any:
        if method in ("endpoint", "tick_wire", "tick"):
            raise TypeError(f"{method}: a sharded class's data path goes to its shards (api/class_ticks.py)")
        if method == "join_many":
            return await self._join_many(kwargs["riders"])
        participant = kwargs.get("participant")
        if isinstance(participant, str):
            placed = await self.place([participant], assign=method not in _NOT_PLACED)
            if participant not in placed:
                return _NOT_PLACED[method]
            handle = await self.shard(placed[participant])
            return await getattr(handle, method).remote(**kwargs)
        await self.refresh()  # (a shard added by another edge gets the call too)
        results = await asyncio.gather(*(self._call_shard(i, method, kwargs) for i in range(self.shards)))
        self.answered = True
        return _MERGERS.get(method, _first)(self.session_id, results)

    async def _join_many(self, riders: Sequence[tuple[str, Any]]) -> list[int]:
        """Each rider's join on its shard: one ``join_many`` per shard, the slots in order."""
        placed = await self.place([p for p, _ in riders])
        by_shard: dict[int, list[int]] = {}
        for k, (participant, _) in enumerate(riders):
            by_shard.setdefault(placed[participant], []).append(k)
        answers = await asyncio.gather(*(self._call_shard(shard, "join_many", {"riders": [riders[k] for k in ks]})
                                         for shard, ks in by_shard.items()))
        slots = [0] * len(riders)
        for ks, got in zip(by_shard.values(), answers, strict=True):
            for k, slot in zip(ks, got, strict=True):
                slots[k] = slot
        return slots

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
