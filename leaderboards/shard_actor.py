"""The Ray shell around ``LeaderboardShard``: one detached, restartable actor per (board, shard).

Owns: one ``LeaderboardShard`` (all the logic; see ``leaderboards/shard.py``) and its Redis
state. Named ``lb:{board}:{shard}`` (generation 0) or ``lb:{board}:g{gen}:{shard}`` after a
reshard, in the pulseline namespace; created on demand by ``leaderboards.router``.

Durability: a write-ahead log plus snapshots, both fenced by the epoch of
``storage.checkpoint.CheckpointStore(kind="lbshard")``.

* Every write batch is applied in memory, then appended (msgpack of its columns) to the Redis list
  ``{p}:lbshard:{{board:gen:shard}}:log`` (one Redis Cluster hash tag for every key of a
  shard, so the fenced scripts stay on one slot) by a Lua script that refuses the append if a newer
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
import gc
import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import msgpack
import numpy as np
import ray
from ray.exceptions import RayError

from storage.checkpoint import CheckpointStore, key_base
from storage.errors import StaleInstance
from leaderboards.peers import PeerMessage, PeerReplica, PeerSnapshot
from leaderboards.shard import (
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


class _FullCollections:
    """Counts the cyclic GC's full (generation 2) collections of this process and their
    pauses: a shard answers no query while one runs, so they show up in p99 latency."""

    def __init__(self) -> None:
        self.count, self.total_ms, self.max_ms, self._started = 0, 0.0, 0.0, 0.0
        gc.callbacks.append(self)

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._started = time.perf_counter()
            return
        pause_ms = (time.perf_counter() - self._started) * 1e3
        self.count += 1
        self.total_ms += pause_ms
        self.max_ms = max(self.max_ms, pause_ms)

    def report(self) -> dict[str, float]:
        return {"count": self.count, "total_ms": round(self.total_ms, 3), "max_ms": round(self.max_ms, 3)}


def actor_name(board: str, shard: int, generation: int = 0) -> str:
    """Ray name of a shard actor; generation 0 keeps the short ``lb:{board}:{shard}``."""
    return f"lb:{board}:{shard}" if generation == 0 else f"lb:{board}:g{generation}:{shard}"


def store_ident(board: str, shard: int, generation: int = 0) -> str:
    """The ``{id}`` of the shard's ``{prefix}:lbshard:{id}:*`` Redis keys."""
    return f"{board}:{generation}:{shard}"


def shard_keys(prefix: str, board: str, shard: int, generation: int = 0) -> list[str]:
    """Every Redis key a shard owns (for cleanup after a reshard)."""
    base = key_base(prefix, "lbshard", store_ident(board, shard, generation))
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
        count = self.shard.spec.shard_count
        self.replica = PeerReplica(shard, count, descending=self.shard.spec.descending) if count > 1 else None
        self.shard.track_changes()  # peers re-read this shard whole: the replay needs no messages
        self.seq = 0
        self.peer_interval_s = float(settings.get("lb_peer_interval_s", 0.25))
        self._peer_handles: dict[int, Any] = {}
        self._last_sent: dict[int, float] = {}
        self._peer_task: asyncio.Task[None] | None = None
        self.full_collections = _FullCollections()
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
        with self.store.sync_client() as client:
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
        elif kind == "d":
            self.shard.drop_period(str(body))
        return len(body) if isinstance(body, list) else 1

    # -- durability ---------------------------------------------------------------------

    def _check_live(self) -> None:
        if self.fenced:
            raise StaleInstance(self.store.epoch, None)
        if self._lock is None:
            self._lock = asyncio.Lock()
        self._ensure_peers()

    # -- peers (see leaderboards/peers.py) ----------------------------------------------------

    def _ensure_peers(self) -> None:
        if self.replica is not None and self._peer_task is None:
            self._peer_task = asyncio.get_running_loop().create_task(self._peer_loop())

    async def _peer_loop(self) -> None:
        """Heartbeats to every peer, handles found by name, unsynced peers re-read whole."""
        assert self.replica is not None
        peers = [p for p in range(self.shard.spec.shard_count) if p != self.shard_index]
        fetching: dict[int, asyncio.Task[None]] = {}
        while not self.fenced:
            try:
                for p in peers:
                    if p not in self._peer_handles:
                        await self._find_peer(p)
                now = time.time()
                for p in peers:
                    if now - self._last_sent.get(p, 0.0) >= self.peer_interval_s:
                        self._send(p, [])
                for p in self.replica.unsynced():
                    if p in self._peer_handles and (p not in fetching or fetching[p].done()):
                        fetching[p] = asyncio.get_running_loop().create_task(self._resync(p))
            except Exception:  # the loop outlives any one failure; the next turn retries
                log.exception("lb shard %s/%s peer loop", self.board, self.shard_index)
            await asyncio.sleep(self.peer_interval_s)

    async def _find_peer(self, peer: int) -> None:
        name = actor_name(self.board, peer, self.generation)
        namespace = ray.get_runtime_context().namespace
        try:
            self._peer_handles[peer] = await asyncio.to_thread(ray.get_actor, name, namespace=namespace)
        except ValueError:
            pass  # not created yet: the router creates every shard of a board

    def _send(self, peer: int, changes: list[Any]) -> None:
        handle = self._peer_handles.get(peer)
        if handle is None:
            return  # the peer misses this seq, sees the gap and re-reads this shard whole
        message = PeerMessage(self.shard_index, self.store.epoch, self.seq, time.time(), changes)
        handle.peer_receive.remote(message=message)  # fire and forget: order is checked there
        self._last_sent[peer] = time.time()

    def _publish(self) -> None:
        """Send the main-index changes of the last operation to every peer."""
        changes = self.shard.take_changes()
        if self.replica is None or not changes:
            return
        self.seq += 1
        for peer in range(self.shard.spec.shard_count):
            if peer != self.shard_index:
                self._send(peer, changes)

    async def _resync(self, peer: int) -> None:
        assert self.replica is not None
        try:
            snapshot = await self._peer_handles[peer].peer_snapshot.remote()
        except RayError as exc:
            log.info("lb shard %s/%s: snapshot of peer %s failed: %s", self.board, self.shard_index, peer, exc)
            await asyncio.sleep(0.5)
            return
        self.replica.load(snapshot)

    async def peer_receive(self, *, message: PeerMessage) -> bool:
        """A peer's changes or heartbeat (fire and forget from the peer's ``_send``)."""
        self._ensure_peers()
        return self.replica.receive(message) if self.replica is not None else False

    async def peer_snapshot(self) -> PeerSnapshot:
        """Every main-index entry of this shard, and the seq that it reflects."""
        self._ensure_peers()
        return PeerSnapshot(self.shard_index, self.store.epoch, self.seq, time.time(), self.shard.main_entries())

    async def _append(self, kind: str, body: Any, count: int) -> None:
        payload = msgpack.packb([kind, body], use_bin_type=True)
        result = await self.store.fenced_eval(
            _FENCED_PUSH, (self.store.epoch_key, self.log_key), (self.store.epoch, payload)
        )
        if result != -1:
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
            result = await self.store.fenced_eval(
                _FENCED_SNAPSHOT,
                (self.store.epoch_key, self.store.ckpt_key, self.store.ckpt_epoch_key, self.log_key),
                (self.store.epoch, data, covered),
            )
            if result != -1:
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
            self._publish()
        return {"changed": changed, "epoch": self.store.epoch}

    async def load(self, *, records: list[Record] | list[tuple[Any, ...]]) -> int:
        """Load drained records into their periods (resharding); idempotent and durable."""
        self._check_live()
        assert self._lock is not None
        batch = [Record(*r) for r in records]
        async with self._lock:
            changed = self.shard.load_records(batch)
            await self._append("r", [list(r) for r in batch], len(batch))
            self._publish()
        return changed

    async def drop_period(self, *, period: str) -> int:
        """Forget a period (retention), durably; return the records dropped."""
        self._check_live()
        assert self._lock is not None
        async with self._lock:
            if self.frozen_for is not None:
                raise WriteError(Problem.MOVED, f"board resharded to generation {self.frozen_for}")
            dropped = self.shard.drop_period(period)
            await self._append("d", period, 0)
            self._publish()
        return dropped

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
        return self.shard.locate_one(user, period=period, cohort=cohort)

    async def locate_fast(
        self, *, user: str, period: str, max_stale_s: float
    ) -> tuple[int, float, float, tuple[tuple[str, str], ...], float | None] | None:
        """``locate_one`` plus the peers' count from the replica: ``(position among the whole
        board, score, achieved_at, tags, age_s)`` when the replica is at most ``max_stale_s``
        old; else ``age_s`` is None and the position is this shard's only. None: absent."""
        self._ensure_peers()
        got = await self.locate_one(user=user, period=period)
        if got is None:
            return None
        position, score, achieved_at, tags = got
        age = self.replica.age_s() if self.replica is not None else 0.0
        if age is None or age > max_stale_s:
            return position, score, achieved_at, tags, None
        if self.replica is not None:
            position += self.replica.count_better(period, score, achieved_at, user.encode("utf-8"))
        return position, score, achieved_at, tags, age

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
            "replica_bytes": 0 if self.replica is None else self.replica.nbytes(),
            "rss_bytes": _rss_bytes(),
        }

    async def info(self) -> dict[str, Any]:
        self._ensure_peers()
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
            "seq": self.seq,
            "periods": self.shard.periods(),
            "gc_full_collections": self.full_collections.report(),
            "replica": None if self.replica is None else self.replica.status(),
        }


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0
