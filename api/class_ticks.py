"""``ClassShardTicks``: the edge's tick channel, splitting a sharded class's ticks over its shards.

It wraps the edge's channel (``api/session_stream.py``: the stream, or Ray). A class that is
not sharded passes straight through. For a sharded class (``cluster/class_shards.py``) one
pump tick becomes one tick per shard, sent at once over each shard's own stream:

* samples and rejected seqs go to the shard of their device's participant (hashed, or as
  recorded for a growing class: ``ShardedHandle.place``, which places a participant seen for
  the first time; the device -> shard map is cached: a rider never moves), as numpy masks
  over the tick's columns;
* a growing class's shard count is re-read at least every ``REFRESH_S`` (and learnt at once
  from a placement): a new shard is ticked from then on, and the board is merged again once
  its first part is in;
* a device whose durable seq is wanted goes to its shard, or to every shard while the
  channel has not seen its participant yet (the others answer 0; the highest wins);
* every shard is asked every tick, so a board made newer by another edge's samples comes
  back too; a shard sends its part only when its version is newer than the one this edge
  holds, and then only the rows changed since that version (``actors/board_part.py``);
  a change against a version this edge no longer holds (a restarted shard, whose versions
  start again from its checkpoint) is dropped and the whole part asked for.

The pump gets one ``TickResult``: the merged board (``api/class_board.py``) whenever any
part changed (or the pump does not hold the latest), the durable seqs of every shard, the
sums of applied and duplicates; ``epoch`` and ``version`` are the sums of the shards' (an
epoch sum grows when any shard restarts, so the pump resyncs its devices, as for one actor).
A tick that fails on any shard fails as a whole: the pump resyncs and the next tick
re-resolves every shard; nothing was acknowledged that a checkpoint does not hold.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from actors.wire import SampleColumns, TickRequest, TickResult
from api.class_board import PartGap, ShardPart, merge_board
from api.session_stream import TickChannel
from cluster.class_shards import REFRESH_S, ShardedHandle, shard_id
from cluster.directory import SessionDirectory


PLAIN_CACHE = 4096
SHARDED_CACHE = 256


@dataclass(slots=True)
class _Class:
    """What the channel keeps of one sharded class."""

    handle: ShardedHandle
    shards: int
    board_size: int
    parts: list[ShardPart | None]
    epochs: list[int]
    device_shard: dict[str, int] = field(default_factory=dict)
    board: dict[str, Any] | None = None  # the last merged board
    refreshed: float = field(default_factory=time.monotonic)  # when the shard count was last re-read

    async def place(self, request: TickRequest) -> None:
        """Every device of the tick has its shard (placing new riders); new shards are ticked."""
        new = [(d, p) for d, p in request.devices if d not in self.device_shard]
        if new:
            placed = await self.handle.place([p for _, p in new])
            self.device_shard.update((d, placed[p]) for d, p in new)
        if self.handle.recorded and time.monotonic() - self.refreshed >= REFRESH_S:
            self.refreshed = time.monotonic()
            await self.handle.refresh()
        if self.handle.shards > self.shards:
            grown = self.handle.shards - self.shards
            self.parts.extend([None] * grown)
            self.epochs.extend([0] * grown)
            self.shards = self.handle.shards


class ClassShardTicks:
    def __init__(self, inner: TickChannel, directory: SessionDirectory, *, board_size: int = 10) -> None:
        self.inner = inner
        self.directory = directory
        self.board_size = board_size
        # the sharded classes this edge ticks, least recently ticked first (bounded: an evicted
        # class that ticks again re-reads its meta and takes whole parts once)
        self.classes: OrderedDict[str, _Class] = OrderedDict()
        self.plain: set[str] = set()  # classes known not to be sharded (bounded: PLAIN_CACHE)

    async def _class(self, session_id: str) -> _Class | None:
        if session_id in self.plain:
            return None
        sharded = self.classes.get(session_id)
        if sharded is not None:
            self.classes.move_to_end(session_id)
        else:
            shards = await self.directory.shards_of(session_id)
            if not shards:
                if len(self.plain) >= PLAIN_CACHE:
                    self.plain.clear()  # (classes come and go: relearnt with one Redis read each)
                self.plain.add(session_id)
                return None
            meta = await self.directory.meta(session_id)
            size = int(meta.get("board_size") or self.board_size)
            handle = await self.directory.handle(session_id)
            assert isinstance(handle, ShardedHandle)  # (its meta names its shards)
            shards = handle.shards
            sharded = self.classes[session_id] = _Class(handle, shards, size, [None] * shards, [0] * shards)
            while len(self.classes) > SHARDED_CACHE:
                self.classes.popitem(last=False)
        return sharded

    async def tick(self, request: TickRequest) -> TickResult:
        sharded = await self._class(request.session)
        if sharded is None:
            return await self.inner.tick(request)
        await sharded.place(request)
        requests = self._split(request, sharded)
        outcomes = await asyncio.gather(*(self.inner.tick(r) for r in requests), return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        return self._merge(request, sharded, [o for o in outcomes if isinstance(o, TickResult)])

    def _split(self, request: TickRequest, sharded: _Class) -> list[TickRequest]:
        known = [-1 if part is None else part.version for part in sharded.parts]
        return split_tick(request, sharded.shards, sharded.device_shard, known)

    def _merge(self, request: TickRequest, sharded: _Class, results: list[TickResult]) -> TickResult:
        changed = False
        for i, result in enumerate(results):
            if result.epoch != sharded.epochs[i]:
                sharded.parts[i] = None  # a new instance: its versions are not the old one's
            sharded.epochs[i] = result.epoch
            if result.board is not None:
                try:
                    sharded.parts[i] = ShardPart.decode(result.board, sharded.parts[i])
                    changed = True
                except PartGap:
                    sharded.parts[i] = None  # the next tick asks for the whole part
        parts = sharded.parts
        version = sum(r.version for r in results)
        board = None
        if all(p is not None for p in parts) and (changed or sharded.board is None
                                                  or request.known_version != sharded.board["version"]):
            board = merge_board(request.session, [p for p in parts if p is not None], sharded.board_size, version)
            sharded.board = board
        durable: dict[str, int] = {}
        for result in results:
            for device, seq in result.durable.items():
                if seq >= durable.get(device, 0):
                    durable[device] = seq
        periods = [r.class_period_s for r in results if r.class_period_s is not None]
        return TickResult(session=request.session, epoch=sum(sharded.epochs), version=version, board=board,
                          durable=durable, applied=sum(r.applied for r in results),
                          duplicates=sum(r.duplicates for r in results), id=request.id,
                          class_period_s=min(periods) if periods else None,
                          beat_s=next((r.beat_s for r in results if r.beat_s is not None), None),
                          edges=max((r.edges for r in results), default=1))

    def forget(self, session_id: str) -> None:
        self.plain.discard(session_id)
        sharded = self.classes.pop(session_id, None)
        if sharded is None:
            self.inner.forget(session_id)
            return
        for i in range(sharded.shards):
            self.inner.forget(shard_id(session_id, i))

    async def close(self) -> None:
        await self.inner.close()


def split_tick(request: TickRequest, shards: int, owner: dict[str, int], known: list[int]) -> list[TickRequest]:
    """One tick per shard (named by shard id): each device's samples and rejected seqs to the
    shard of its participant (``owner``: device -> shard, holding every device of the tick),
    wanted devices to their shard (to every shard while unknown); ``known``: the board
    version this edge holds of each shard."""
    of_device = np.fromiter((owner[d] for d, _ in request.devices), np.int32, len(request.devices))
    of_sample = of_device[request.samples.device]
    of_rejected = of_device[request.rejected_device]
    requests = []
    for i in range(shards):
        mine = np.flatnonzero(of_device == i)
        renumber = np.full(len(request.devices), -1, np.int32)
        renumber[mine] = np.arange(len(mine), dtype=np.int32)
        take = of_sample == i
        drop = of_rejected == i
        requests.append(TickRequest(
            session=shard_id(request.session, i),
            devices=tuple(request.devices[j] for j in mine),
            samples=SampleColumns(renumber[request.samples.device[take]], request.samples.seq[take],
                                  request.samples.values[take]),
            rejected_device=renumber[request.rejected_device[drop]], rejected_seq=request.rejected_seq[drop],
            want_durable=tuple(d for d in request.want_durable if owner.get(d, i) == i),
            known_version=known[i], period_s=request.period_s, edge=request.edge,
        ))
    return requests
