"""The Ray shell around ``LeaderboardShard``: one detached, restartable actor per (board, shard).

Owns: one ``LeaderboardShard`` (all the logic; see ``actors/leaderboard.py``) and its Redis
state. Named ``lb:{board}:{shard}`` (generation 0) or ``lb:{board}:g{gen}:{shard}`` after a
reshard, in the pulseline namespace; created on demand by ``cluster.leaderboards``.

Durability: a write-ahead log plus snapshots, both fenced by the epoch of
``actors.checkpoint.CheckpointStore(kind="lbshard")``.

* Every write batch is applied in memory, then appended (msgpack of its columns) to the Redis list
  ``{p}:lbshard:{board}:{gen}:{shard}:log`` by a Lua script that refuses the append if a newer
  instance took the epoch. Only then does ``write`` return: an acknowledged write is durable.
* When the log holds more writes than ``max(snapshot_min_writes, records / 2)``, a background
  task writes ``to_checkpoint()`` to ``...:ckpt`` and trims the log entries it covers, in one
  fenced Lua script. So snapshot cost is amortised O(1) per write and a restore replays at most
  about half a shard's worth of writes.
* ``__init__`` takes a new epoch (fencing off any older instance), loads the snapshot and
  replays the log. Replaying is safe because writes are idempotent per ``(user, source)`` and a
  replayed suffix of the history ends in the same state.

Why not snapshots alone (like sessions): a session's devices keep every unacknowledged sample
and resend it, so a session may checkpoint every 0.25 s and acknowledge late. Leaderboard
writers (sessions, integrations over HTTP) expect an acknowledged write to stick, and a
snapshot of a shard costs O(records) — far too much per batch. Why not an incremental log
alone: the log would grow without bound and a restore would replay all history.

Every method is keyword-only and safe to retry (``max_task_retries=-1``): writes are
idempotent, reads have no effect. Writes to a frozen shard (being resharded) raise
``WriteError(Problem.MOVED)``; the router re-reads the board and retries.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import msgpack
import numpy as np
import ray
import redis

from actors.checkpoint import CheckpointStore
from actors.errors import StaleInstance
from actors.leaderboard import (
    Around,
    LeaderboardShard,
    LeaderboardSpec,
    Located,
    Page,
    Problem,
    Record,
    SortKey,
    Write,
    WriteBatch,
    WriteError,
    memory_per_entry,
)

log = logging.getLogger(__name__)

NAMESPACE = "pulseline"
_SNAPSHOT_FORMAT = 1

_FENCED_PUSH = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current ~= tonumber(ARGV[1]) then return current end
redis.call('RPUSH', KEYS[2], ARGV[2])
return -1
"""

_FENCED_SNAPSHOT = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current ~= tonumber(ARGV[1]) then return current end
redis.call('SET', KEYS[2], ARGV[2])
redis.call('SET', KEYS[3], ARGV[1])
redis.call('LTRIM', KEYS[4], tonumber(ARGV[3]), -1)
return -1
"""


def actor_name(board: str, shard: int, generation: int = 0) -> str:
    """Ray name of a shard actor; generation 0 keeps the short ``lb:{board}:{shard}``."""
    return f"lb:{board}:{shard}" if generation == 0 else f"lb:{board}:g{generation}:{shard}"


def store_ident(board: str, shard: int, generation: int = 0) -> str:
    """The ``{id}`` of the shard's ``{prefix}:lbshard:{id}:*`` Redis keys."""
    return f"{board}:{generation}:{shard}"


def shard_keys(prefix: str, board: str, shard: int, generation: int = 0) -> list[str]:
    """Every Redis key a shard owns (for cleanup after a reshard)."""
    base = f"{prefix}:lbshard:{store_ident(board, shard, generation)}"
    return [f"{base}:{suffix}" for suffix in ("epoch", "ckpt", "ckpt_epoch", "log")]


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class LeaderboardShardActor:
    """One shard of one board; see the module docstring for what survives a restart."""

    def __init__(
        self, board: str, shard: int, generation: int, spec: dict[str, Any], settings: dict[str, Any]
    ) -> None:
        logging.basicConfig(level=logging.INFO)
        self.board, self.shard_index, self.generation = board, shard, generation
        self.min_snapshot_writes = int(settings.get("lb_snapshot_min_writes", 50_000))
        self.store = CheckpointStore(
            settings["redis_url"],
            prefix=settings.get("prefix", "pl"),
            kind="lbshard",
            ident=store_ident(board, shard, generation),
        )
        self.log_key = f"{self.store.ckpt_key.rsplit(':', 1)[0]}:log"
        self.frozen_for: int | None = None
        self.fenced = False
        self.snapshots_written = 0
        self._export: list[Record] | None = None
        self._lock: asyncio.Lock | None = None
        self._snapshot_task: asyncio.Task[None] | None = None
        started = time.perf_counter()
        data = self.store.acquire()
        self.shard = self._restore_snapshot(data, spec)
        self.log_entries, self.log_writes = self._replay_log()
        log.info(
            "lb shard %s/%s gen %s up: epoch %s, snapshot=%s, replayed %s log entries in %.2f s",
            board, shard, generation, self.store.epoch, data is not None, self.log_entries,
            time.perf_counter() - started,
        )

    # -- restore ------------------------------------------------------------------------

    def _restore_snapshot(self, data: bytes | None, spec: dict[str, Any]) -> LeaderboardShard:
        if data is None:
            return LeaderboardShard(LeaderboardSpec.from_dict(spec), shard_index=self.shard_index)
        wrapper = msgpack.unpackb(data, raw=False)
        self.frozen_for = wrapper.get("frozen_for")
        return LeaderboardShard.from_checkpoint(wrapper["shard"])

    def _replay_log(self) -> tuple[int, int]:
        with redis.Redis.from_url(self.store.redis_url) as client:
            entries: list[bytes] = client.lrange(self.log_key, 0, -1)  # type: ignore[assignment]
        writes = 0
        for raw in entries:
            writes += self._apply_entry(msgpack.unpackb(raw, raw=False))
        return len(entries), writes

    def _apply_entry(self, entry: list[Any]) -> int:
        kind, body = entry
        if kind == "c":
            batch = WriteBatch.unpack(body)
            self.shard.write_batch(batch)
            return len(batch)
        if kind == "w":  # row-shaped log entries, written before columnar batches
            self.shard.write_many(Write(*w) for w in body)
        elif kind == "r":
            self.shard.load_records(Record(*r) for r in body)
        elif kind == "f":
            self.frozen_for = int(body)
        return len(body) if isinstance(body, list) else 1

    # -- durability ---------------------------------------------------------------------

    def _check_live(self) -> None:
        if self.fenced:
            raise StaleInstance(self.store.epoch, None)
        if self._lock is None:
            self._lock = asyncio.Lock()

    async def _append(self, kind: str, body: Any, count: int) -> None:
        payload = msgpack.packb([kind, body], use_bin_type=True)
        client = self.store._client()
        result = await client.eval(  # type: ignore[misc]
            _FENCED_PUSH, 2, self.store.epoch_key, self.log_key, self.store.epoch, payload
        )
        if int(result) != -1:
            self.fenced = True
            raise StaleInstance(self.store.epoch, int(result))
        self.log_entries += 1
        self.log_writes += count
        if self.log_writes > max(self.min_snapshot_writes, self._records() // 2):
            self._start_snapshot()

    def _records(self) -> int:
        return sum(self.shard.size(period=p) for p in self.shard.periods())

    def _start_snapshot(self) -> None:
        if self._snapshot_task is None or self._snapshot_task.done():
            self._snapshot_task = asyncio.get_running_loop().create_task(self._snapshot_quietly())

    async def _snapshot_quietly(self) -> None:
        try:
            await self._snapshot()
        except StaleInstance:
            log.error("lb shard %s/%s epoch %s fenced off", self.board, self.shard_index, self.store.epoch)
        except Exception:  # a background snapshot never kills the actor; the log stays valid
            log.exception("lb shard %s/%s snapshot failed", self.board, self.shard_index)

    async def _snapshot(self) -> None:
        assert self._lock is not None
        async with self._lock:
            covered = self.log_entries  # every entry in the list was applied before this point
            data = msgpack.packb(
                {"v": _SNAPSHOT_FORMAT, "frozen_for": self.frozen_for, "shard": self.shard.to_checkpoint()},
                use_bin_type=True,
            )
            result = await self.store._client().eval(  # type: ignore[misc]
                _FENCED_SNAPSHOT, 4, self.store.epoch_key, self.store.ckpt_key,
                self.store.ckpt_epoch_key, self.log_key, self.store.epoch, data, covered,
            )
            if int(result) != -1:
                self.fenced = True
                raise StaleInstance(self.store.epoch, int(result))
            self.log_entries -= covered  # 0: appends take the same lock
            self.log_writes = 0
            self.snapshots_written += 1

    # -- writes -------------------------------------------------------------------------

    async def write(
        self, *, batch: WriteBatch | None = None, writes: Sequence[Write | tuple[Any, ...]] = ()
    ) -> dict[str, int]:
        """Apply a batch (validated whole first) and make it durable before returning.

        ``batch`` (columns) is what the router sends; ``writes`` (rows) is for other callers.
        The log entry is the batch's columns (``WriteBatch.pack``)."""
        self._check_live()
        assert self._lock is not None
        if batch is None:
            batch = WriteBatch.of(writes)
        async with self._lock:
            if self.frozen_for is not None:
                raise WriteError(Problem.MOVED, f"board resharded to generation {self.frozen_for}")
            changed = self.shard.write_batch(batch)
            await self._append("c", batch.pack(), len(batch))
        return {"changed": changed, "epoch": self.store.epoch}

    async def load(self, *, records: list[Record] | list[tuple[Any, ...]]) -> int:
        """Load drained records into their periods (resharding); idempotent and durable."""
        self._check_live()
        assert self._lock is not None
        batch = [Record(*r) for r in records]
        async with self._lock:
            changed = self.shard.load_records(batch)
            await self._append("r", [list(r) for r in batch], len(batch))
        return changed

    async def freeze(self, *, moved_to: int) -> int:
        """Refuse every later write (durably); return the number of records to export."""
        self._check_live()
        assert self._lock is not None
        async with self._lock:
            if self.frozen_for != moved_to:
                self.frozen_for = moved_to
                await self._append("f", moved_to, 0)
        self._export = None
        return sum(1 for _ in self.shard.iter_records())

    async def export(self, *, start: int, limit: int) -> list[Record]:
        """Records ``start .. start+limit`` of a frozen shard, in a stable order."""
        if self.frozen_for is None:
            raise WriteError(Problem.MOVED, "export needs a frozen shard")
        if self._export is None:
            self._export = list(self.shard.iter_records())
        return self._export[start : start + limit]

    async def checkpoint(self) -> int:
        """Snapshot now and trim the log; return the snapshots written by this instance."""
        self._check_live()
        await self._snapshot()
        return self.snapshots_written

    # -- reads --------------------------------------------------------------------------

    async def locate(
        self, *, users: list[str], period: str | None = None, cohort: Mapping[str, str] | None = None
    ) -> Located:
        """Each user's entry key and how many entries of this shard beat it (-1: absent)."""
        return self.shard.locate_many(users, period=period, cohort=cohort)

    async def locate_one(
        self, *, user: str, period: str | None = None, cohort: Mapping[str, str] | None = None
    ) -> tuple[int, float, float, tuple[tuple[str, str], ...]] | None:
        """``locate`` of one user as plain Python ``(position, score, achieved_at, tags)``
        (None: absent): the cheapest answer to serialise, for single-rank queries."""
        got = self.shard.locate_many([user], period=period, cohort=cohort)
        position = int(got.positions[0])
        if position < 0:
            return None
        return position, float(got.scores[0]), float(got.achieved_at[0]), got.tags[0]

    async def count_better_one(
        self,
        *,
        score: float,
        achieved_at: float,
        user: str,
        period: str | None = None,
        cohort: Mapping[str, str] | None = None,
    ) -> int:
        """``count_better`` of one key, as an int."""
        return self.shard.count_better(score, achieved_at, user, period=period, cohort=cohort)

    async def count_better(
        self,
        *,
        scores: Sequence[float] | np.ndarray,
        achieved_at: Sequence[float] | np.ndarray,
        users: Sequence[str],
        period: str | None = None,
        cohort: Mapping[str, str] | None = None,
    ) -> np.ndarray:
        return self.shard.count_better_many(scores, achieved_at, users, period=period, cohort=cohort)

    async def top(
        self,
        *,
        n: int,
        after: SortKey | None = None,
        as_of: int | None = None,
        period: str | None = None,
        cohort: Mapping[str, str] | None = None,
    ) -> Page:
        return self.shard.top(n, after=after, as_of=as_of, period=period, cohort=cohort)

    async def around_key(
        self,
        *,
        key: SortKey,
        k: int,
        period: str | None = None,
        cohort: Mapping[str, str] | None = None,
    ) -> tuple[Around, int]:
        """Entries around ``key`` and how many entries of this shard beat it."""
        around = self.shard.around_key(key, k, period=period, cohort=cohort)
        better = self.shard.count_better(*key, period=period, cohort=cohort)
        return around, better

    async def size(self, *, period: str | None = None, cohort: Mapping[str, str] | None = None) -> int:
        return self.shard.size(period=period, cohort=cohort)

    async def memory(self) -> dict[str, Any]:
        report = memory_per_entry(self.shard)
        return {
            "entries": report.entries,
            "records": report.records,
            "array_bytes": report.array_bytes,
            "python_bytes": report.python_bytes,
            "per_entry": report.per_entry,
            "rss_bytes": _rss_bytes(),
        }

    async def info(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "epoch": self.store.epoch,
            "board": self.board,
            "shard": self.shard_index,
            "generation": self.generation,
            "frozen_for": self.frozen_for,
            "log_entries": self.log_entries,
            "log_writes": self.log_writes,
            "snapshots_written": self.snapshots_written,
            "fenced": self.fenced,
        }


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0
