"""What one tick of a big class costs, one actor against class shards (no Ray, no network).

    .venv/bin/python scripts/bench_class_shards.py --riders 1000,3000,5000 --seconds 5

A class of ``--riders`` riders, each with one device at 1 Hz and its own board at 1 Hz
(protocol v1.1: one compact frame per rider per second), plus one ``view=all`` viewer at
10 Hz; a tick every 0.1 s carries the tenth of the riders whose sample is due. For each
size, the same ticks go

* to one ``SessionState`` (today's class actor): ``apply_tick`` + ``board()`` (every row),
  the result through the wire codec, and the edge's frames (the tenth of the riders due a
  board, and every row for the ``view=all`` viewer);
* to ``ceil(riders / --per-shard)`` shard states: the edge splits the tick
  (``api.class_ticks.split_tick``), each shard applies its part and builds its board part
  (``actors.board_part``: the rows changed since the version the edge holds), the parts go
  through the wire codec (``part_kib``: their bytes per tick, all shards), the edge decodes and merges
  them (``api.class_board``) and makes the same frames (``view=all``: page 0 of 500 rows).

Prints one JSON object: per size, milliseconds per tick (median and p99 over the run) of
each step; ``merge_ms_per_shard`` is the merge divided by the shards. All in one process,
one after the other: the shards' work would run in parallel in their own processes. The
numbers are CPU time of this process on whatever else the machine runs (say which). A
benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from actors.board_part import BoardParts
from actors.session import SessionState
from actors.wire import SampleColumns, TickRequest, TickResult, decode_message, encode_message
from api.class_board import ShardPart, merge_board
from api.class_ticks import split_tick
from api.viewer import CompactBoard, Paging, board_encoder
from cluster.class_shards import shard_of

TICK_S = 0.1


def _ticks(riders: int, seconds: int, seed: int = 15) -> list[TickRequest]:
    rng = np.random.default_rng(seed)
    per_tick = int(round(1 / TICK_S))
    ticks = []
    for second in range(seconds):
        for k in range(per_tick):
            mine = np.arange(k, riders, per_tick)
            ts = 1_000.0 + second + k * TICK_S
            values = np.column_stack([
                np.full(len(mine), ts), rng.normal(140, 15, len(mine)), rng.gamma(4, 55, len(mine)),
                rng.normal(88, 6, len(mine)), np.full(len(mine), np.nan), np.full(len(mine), np.nan),
            ])
            devices = tuple((f"d{i}", f"rider-{i}") for i in mine)
            samples = SampleColumns(np.arange(len(mine), dtype=np.int32), np.full(len(mine), second + 1, np.int64), values)
            ticks.append(TickRequest("big", devices=devices, samples=samples))
    return ticks


class Clock:
    """Milliseconds per step, per tick."""

    def __init__(self) -> None:
        self.spent: dict[str, list[float]] = {}

    def time(self, step: str, work: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        out = work()
        self.spent.setdefault(step, []).append((time.perf_counter() - start) * 1000.0)
        return out

    def add(self, step: str, ms: float) -> None:
        self.spent.setdefault(step, []).append(ms)

    def summary(self) -> dict[str, dict[str, float]]:
        return {step: {"p50": round(float(np.percentile(v, 50)), 3), "p99": round(float(np.percentile(v, 99)), 3)}
                for step, v in self.spent.items()}


def _frames(board: dict[str, Any], riders: list[str], everyone: Callable[[dict[str, Any]], Any]) -> int:
    size = sum(len(CompactBoard(rider)(board)) for rider in riders)
    return size + len(everyone(board))


def _wire(result: TickResult) -> TickResult:
    decoded = decode_message(encode_message(result))
    assert isinstance(decoded, TickResult)
    return decoded


def single(ticks: list[TickRequest], riders: int) -> dict[str, Any]:
    clock = Clock()
    state = SessionState("big")
    for i in range(riders):
        state.join(f"rider-{i}")
    everyone = board_encoder(None, everyone=True)
    for n, tick in enumerate(ticks):
        clock.time("actor_ms", lambda: state.apply_tick(tick))
        board = clock.time("actor_ms_board", state.board)
        result = clock.time("wire_ms", lambda: _wire(TickResult("big", 1, state.version, board, {})))
        due = [f"rider-{i}" for i in range(n % 10, riders, 10)]
        clock.time("edge_frames_ms", lambda: _frames(dict(result.board or {}), due, everyone))
    out = clock.summary()
    _total(clock, out, ("actor_ms", "actor_ms_board"), "actor_total_ms")
    return out


def sharded(ticks: list[TickRequest], riders: int, shards: int) -> dict[str, Any]:
    clock = Clock()
    states = [SessionState(f"big~{i}") for i in range(shards)]
    makers = [BoardParts() for _ in range(shards)]
    owner: dict[str, int] = {}
    parts: list[ShardPart | None] = [None] * shards
    everyone = board_encoder(None, everyone=True, paging=Paging(None, 500))
    for n, tick in enumerate(ticks):
        known = [-1 if p is None else p.version for p in parts]
        owner.update((d, shard_of(p, shards)) for d, p in tick.devices if d not in owner)  # (the edge: placed)
        requests = clock.time("edge_split_ms", lambda: split_tick(tick, shards, owner, known))
        results = []
        slowest = 0.0
        for state, maker, request in zip(states, makers, requests):
            start = time.perf_counter()
            state.apply_tick(request)
            part = maker.part(state, request.known_version)
            slowest = max(slowest, (time.perf_counter() - start) * 1000.0)
            results.append(TickResult(request.session, 1, state.version, part, {}))
        clock.add("shard_ms_slowest", slowest)
        decoded = clock.time("wire_ms", lambda: [_wire(r) for r in results])
        clock.add("part_kib", sum(len(encode_message(r)) for r in results) / 1024)

        def merge() -> dict[str, Any]:
            for i, r in enumerate(decoded):
                parts[i] = ShardPart.decode(r.board or {}, parts[i])
            return merge_board("big", [p for p in parts if p is not None], 10, n)

        board = clock.time("merge_ms", merge)
        due = [f"rider-{i}" for i in range(n % 10, riders, 10)]
        clock.time("edge_frames_ms", lambda: _frames(board, due, everyone))
    out = clock.summary()
    out["merge_ms_per_shard"] = {k: round(v / shards, 3) for k, v in out["merge_ms"].items()}
    out["shards"] = shards
    return out


def _total(clock: Clock, out: dict[str, Any], steps: tuple[str, ...], name: str) -> None:
    total = np.sum([clock.spent[s] for s in steps], axis=0)
    out[name] = {"p50": round(float(np.percentile(total, 50)), 3), "p99": round(float(np.percentile(total, 99)), 3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--riders", default="1000,3000,5000")
    p.add_argument("--per-shard", type=int, default=1000)
    p.add_argument("--seconds", type=int, default=5)
    a = p.parse_args()
    report: dict[str, Any] = {"tick_s": TICK_S, "seconds": a.seconds, "load_avg": os.getloadavg(), "sizes": {}}
    for riders in (int(r) for r in a.riders.split(",")):
        ticks = _ticks(riders, a.seconds)
        shards = max(1, math.ceil(riders / a.per_shard))
        report["sizes"][riders] = {"single": single(ticks, riders), "sharded": sharded(ticks, riders, shards)}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
