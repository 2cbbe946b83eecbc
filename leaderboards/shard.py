"""Leaderboard logic: one shard of one board. No Ray, no Redis.

This module re-exports what callers need from its neighbours: ``leaderboards/writes.py`` (errors,
``Write``, ``WriteBatch``, shard hashing), ``leaderboards/spec.py`` (``LeaderboardSpec``, periods,
value types, merges, checks against a spec) and ``leaderboards/records.py`` (the record columns).

A board is split into ``spec.shard_count`` shards by ``shard_of(user)``; each shard is a
``LeaderboardShard`` that the Ray actor shell wraps. The shard owns, for every period of its
board, the raw records of its users and rank indexes over their entries (see
``leaderboards/rank_index.py``), so that cross-shard questions reduce to per-shard O(log N) answers:

* global rank of a key  = 1 + sum over shards of ``count_better(key)``;
* global top / a page    = ``merge_top`` of every shard's ``top(n, after=cursor)``;
* around a user          = ``merge_around`` of every shard's ``around_key(key, k)``.

Order (one rule everywhere, "better" first): better score (higher for ``desc`` boards, lower
for ``asc``), then earlier ``achieved_at``, then user id ascending (code point order, which is
also UTF-8 byte order). A ``SortKey(score, achieved_at, user)`` is exactly that key.

Writes are idempotent per ``(user, source)``: each source holds one record, replaced by a
write with the same or a later ``achieved_at`` and ignored if older. A user's entry is derived
from their records (see ``Operator``); its tags (cohort values) are those of the user's most
recent record (latest ``achieved_at``, then greatest source). Records of a write land in the
period of their ``achieved_at``; queries default to the period that contains ``now()``.

What survives a restart: everything in ``to_checkpoint()`` — spec, records, entry versions
(so that pagination cursors stay valid). Indexes are rebuilt on ``from_checkpoint``.

Errors: every exception is a ``LeaderboardError`` (``leaderboards/errors.py``) carrying a
``Problem``; ``SpecError`` for bad specs, ``WriteError`` for rejected writes (a batch is
validated before anything is applied), ``QueryError`` for unanswerable queries and
``LeaderboardCheckpointError`` (also a ``storage.errors.CheckpointError``) for bad checkpoints.
"""

from __future__ import annotations

import contextlib
import gc
import math
import sys
import time
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import msgpack
import numpy as np
import numpy.typing as npt

from storage.errors import CheckpointError
from leaderboards.writes import (
    CLASS_TAG,
    MAX_USER_ID_BYTES,
    LeaderboardError,
    Problem,
    QueryError,
    SpecError,
    Tags,
    Write,
    WriteBatch,
    WriteError,
    real,
    reals,
    shard_of,
    shards_of,
    user_bytes,
)
from leaderboards.rank_index import RankIndex
from leaderboards.peers import Change
from leaderboards.records import (
    Board,
    CohortOf,
    Names,
    Records,
    aggregate,
    latest_record,
)
from leaderboards.spec import (
    Around,
    Entry,
    Located,
    LeaderboardSpec,
    MemoryReport,
    Operator,
    Page,
    Period,
    Rec,
    Record,
    SortKey,
    SortOrder,
    batch_periods,
    check_write,
    checked_write,
    merge_around,
    merge_top,
    next_reset,
    period_key,
)

__all__ = [
    "CLASS_TAG",
    "MAX_USER_ID_BYTES",
    "Around",
    "Entry",
    "LeaderboardCheckpointError",
    "LeaderboardError",
    "LeaderboardShard",
    "LeaderboardSpec",
    "Located",
    "MemoryReport",
    "Operator",
    "Page",
    "Period",
    "Problem",
    "QueryError",
    "Record",
    "SortKey",
    "SortOrder",
    "SpecError",
    "Write",
    "WriteBatch",
    "WriteError",
    "batch_periods",
    "check_write",
    "memory_per_entry",
    "merge_around",
    "merge_top",
    "next_reset",
    "period_key",
    "shard_of",
    "shards_of",
]

_CHECKPOINT_VERSION = 1
_MIN_TIE_WIDTH = 16
_SCAN_CHUNK = 256


# -- errors ------------------------------------------------------------------------------


class LeaderboardCheckpointError(LeaderboardError, CheckpointError):
    """A leaderboard checkpoint could not be decoded (also a ``storage.errors.CheckpointError``)."""


# -- the shard ---------------------------------------------------------------------------

_Prepared = tuple[str, str, str, Rec]  # period, user, source, record


class LeaderboardShard:
    """One shard of one board: records, entries and rank indexes for every period.

    ``write_many`` / ``load_records`` are idempotent per ``(user, source)`` and safe to retry.
    Past periods stay queryable until ``drop_period``; ``period=None`` in a query means the
    period containing ``now()`` (per-class boards always need an explicit period). Counts and
    ranks are shard-local; see the module docstring for combining shards. Not thread-safe.
    """

    def __init__(
        self,
        spec: LeaderboardSpec,
        *,
        shard_index: int = 0,
        now: Callable[[], float] = time.time,
    ) -> None:
        if not 0 <= shard_index < spec.shard_count:
            last = spec.shard_count - 1
            raise SpecError(Problem.BAD_SHARDING, f"shard_index must be in 0..{last}")
        self._spec = spec
        self._shard_index = shard_index
        self._now = now
        self._user_ids: dict[str, int] = {}
        self._names = Names()
        self._boards: dict[str, Board] = {}
        self._sources: list[str] = []
        self._source_ids: dict[str, int] = {}
        self._tag_table: list[Tags] = []
        self._tag_ids: dict[Tags, int] = {}
        self._cohort_table: list[Tags] = []
        self._cohort_ids: dict[Tags, int] = {}
        self._cohorts_of_tags: dict[Tags, tuple[Tags, int]] = {}
        self._tie_width = _MIN_TIE_WIDTH
        self._changes: list[Change] | None = None

    @property
    def spec(self) -> LeaderboardSpec:
        return self._spec

    @property
    def shard_index(self) -> int:
        return self._shard_index

    def track_changes(self) -> None:
        """Record every change of a main index from now on, for ``take_changes``."""
        self._changes = []

    def take_changes(self) -> list[Change]:
        """Main-index changes since the last call (see ``leaderboards/peers.py``), oldest first."""
        changes, self._changes = self._changes or [], [] if self._changes is not None else None
        return changes

    def main_entries(self) -> dict[str, tuple[Any, Any, Any, Any]]:
        """Every main-index entry per period as ``(uids, scores, achieved_at, ties)``."""
        out = {}
        for period, board in self._boards.items():
            entries, ties = board.main.export()  # ties are the keys' UTF-8 user ids
            if len(entries):
                out[period] = (entries.users, entries.scores, entries.achieved_at, ties)
        return out

    def periods(self) -> list[str]:
        """Every period holding records, sorted."""
        return sorted(self._boards)

    def current_period(self) -> str:
        return period_key(self._spec, self._now())

    def size(self, *, period: str | None = None, cohort: Mapping[str, str] | None = None) -> int:
        index = self._index(period, cohort)
        return 0 if index is None else len(index)

    # -- writes ------------------------------------------------------------------------

    def write_many(self, writes: Iterable[Write | tuple[Any, ...]] | WriteBatch) -> int:
        """Apply a batch of writes; return how many entries changed (rank key or cohort).

        The whole batch is validated first: on ``WriteError`` nothing was applied.
        """
        if isinstance(writes, WriteBatch):
            return self.write_batch(writes)
        return self._write_checked(WriteBatch.of(writes))  # rows were just validated: once is enough

    def write_batch(self, batch: WriteBatch) -> int:
        """``write_many`` for a columnar batch (validated again here: it may come from afar).

        Vectorised: a batch of distinct users is applied with numpy over the record columns
        (new users, new sources and updates alike); a batch naming a user twice takes the
        one-by-one path, which applies writes in batch order. Both paths give the same result.
        """
        return self._write_checked(batch.validated())

    def _write_checked(self, batch: WriteBatch) -> int:
        groups = batch_periods(self._spec, batch)
        if self._spec.shard_count > 1 and len(batch):
            wrong = np.flatnonzero(shards_of(batch.users, self._spec.shard_count) != self._shard_index)
            if wrong.size:
                user = batch.users[int(wrong[0])]
                raise WriteError(Problem.WRONG_SHARD, f"user {user!r} belongs to another shard")
        uids = np.array(self._user_ids_of(batch.users), np.int64)
        distinct = {s: self._source_id(s) for s in dict.fromkeys(batch.sources)}
        if len(distinct) == 1:
            sids = np.full(len(batch), next(iter(distinct.values())), np.int32)
        else:
            sids = np.array([distinct[s] for s in batch.sources], np.int32)
        if batch.tags is None:
            tids = np.full(len(batch), self._tag_id(()), np.int32)
        else:
            tids = np.array([self._tag_id(t) for t in batch.tags], np.int32)
        changed = 0
        for period, positions in groups:
            at = slice(None) if positions is None else positions
            columns = (uids[at], sids[at], batch.scores[at], batch.achieved_at[at], tids[at])
            changed += self._apply_columns(period, *columns)
        return changed

    def _apply_columns(
        self,
        period: str,
        uids: npt.NDArray[np.int64],
        sids: npt.NDArray[np.int32],
        scores: npt.NDArray[np.float64],
        times: npt.NDArray[np.float64],
        tids: npt.NDArray[np.int32],
    ) -> int:
        board = self._boards.get(period) or self._new_board(period)
        if np.unique(uids).shape[0] == uids.shape[0]:
            touched = board.records.put_many(uids, sids, scores, times, tids)
        else:  # a user twice in one batch: apply in order, one by one
            put = board.records.put
            touched = np.array([
                u for u, s, v, t, g in zip(uids.tolist(), sids.tolist(), scores.tolist(), times.tolist(), tids.tolist(), strict=True)
                if put(u, s, v, t, g)
            ], np.int64)
        return self._refresh(period, touched)

    def load_records(self, records: Iterable[Record]) -> int:
        """Apply drained records (e.g. when resharding) into their recorded periods."""
        prepared = []
        for r in records:
            write = Write(r.user, r.source, r.score, r.achieved_at, r.tags)
            _, user, source, rec = self._prepare(write)
            prepared.append((r.period, user, source, rec))
        return self._apply(prepared)

    def _prepare(self, write: Write) -> _Prepared:
        period, rec = checked_write(self._spec, write)
        if shard_of(write.user, self._spec.shard_count) != self._shard_index:
            raise WriteError(Problem.WRONG_SHARD, f"user {write.user!r} belongs to another shard")
        return period, write.user, write.source, rec

    def _apply(self, prepared: Iterable[_Prepared]) -> int:
        touched: dict[str, set[int]] = {}
        for period, user, source, rec in prepared:
            uid = self._user_id(user)
            if self._put(period, uid, source, rec):
                touched.setdefault(period, set()).add(uid)
        return sum(self._refresh(period, users) for period, users in touched.items())

    def _user_ids_of(self, users: list[str]) -> list[int]:
        get = self._user_ids.get
        ids = [get(u, -1) for u in users]
        if -1 in ids:
            ids = [self._user_id(u) if i < 0 else i for u, i in zip(users, ids, strict=True)]
        return ids

    def _user_id(self, user: str) -> int:
        uid = self._user_ids.get(user)
        if uid is None:
            uid = self._user_ids[user] = len(self._names)
            self._names.append(user)
        return uid

    def _put(self, period: str, uid: int, source: str, rec: Rec) -> bool:
        board = self._boards.get(period) or self._new_board(period)
        sid, tid = self._source_id(source), self._tag_id(rec.tags)
        return board.records.put(uid, sid, rec.score, rec.achieved_at, tid)

    def _source_id(self, source: str) -> int:
        sid = self._source_ids.get(source)
        if sid is None:
            sid = self._source_ids[source] = len(self._sources)
            self._sources.append(source)
        return sid

    def _tag_id(self, tags: Tags) -> int:
        tid = self._tag_ids.get(tags)
        if tid is None:
            tid = self._tag_ids[tags] = len(self._tag_table)
            self._tag_table.append(tags)
        return tid

    def _new_board(self, period: str) -> Board:
        records = Records(self._sources, self._tag_table)
        board = self._boards[period] = Board(self._new_index(), records, CohortOf(self._cohort_table))
        return board

    def _new_index(self) -> RankIndex:
        return RankIndex(descending=self._spec.descending, tie_width=self._tie_width)

    def _fit_ties(self, ties: Sequence[bytes]) -> None:
        longest = max((len(t) for t in ties), default=0)
        if longest <= self._tie_width:
            return
        self._tie_width = -(-longest // 8) * 8
        for board in self._boards.values():
            for index in board.indexes():
                index.widen(self._tie_width)

    def _refresh(self, period: str, uids: Iterable[int]) -> int:
        """Re-derive the entries of ``uids`` from their records and re-index them."""
        board = self._boards[period]
        given = uids if isinstance(uids, np.ndarray) else np.fromiter(uids, np.int64)
        users = np.unique(given.astype(np.int64, copy=False))
        if users.shape[0] == 0:
            return 0
        scores, times, tag_ids, several = board.records.single_entries(users)
        if several.shape[0]:  # users with records from several sources
            scores[several], times[several], tag_ids[several] = self._aggregate_many(board.records, users[several])
        ties = [n.encode("utf-8") for n in self._names.pick(users)]
        self._fit_ties(ties)
        changed = board.main.upsert_many(users, scores, times, ties)
        if self._changes is not None:
            self._changes.append(("upsert", period, users, scores, times, np.array(ties, dtype=np.bytes_)))
        if self._spec.cohort_keys:
            moved = self._refresh_cohorts(board, users, tag_ids, (scores, times, ties))
            changed = np.union1d(changed, moved)
        board.bump(changed)
        return int(changed.shape[0])

    def _aggregate_many(
        self, records: Records, uids: npt.NDArray[np.int64]
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.int32]]:
        """``aggregate`` for many users at once: entry score, time and tag id of each.

        Same rules: ``latest`` is the record with the latest time, then the greatest source
        name; ``best`` the best score, then the earliest time, then the smallest source name;
        ``sum`` the exactly rounded ``math.fsum`` of the scores at the latest time. The tags
        are always the latest record's."""
        positions, rows = records.chains(uids)
        src = np.frombuffer(records.src, np.int32)[rows]
        score = np.frombuffer(records.score, np.float64)[rows]
        at = np.frombuffer(records.at, np.float64)[rows]
        tag = np.frombuffer(records.tag, np.int32)[rows]
        involved = np.unique(src)  # source names order ties: rank only the sources at hand
        by_name = sorted(range(involved.shape[0]), key=lambda k: self._sources[int(involved[k])])
        name_rank = np.empty(involved.shape[0], np.int64)
        name_rank[by_name] = np.arange(involved.shape[0])
        rank = name_rank[np.searchsorted(involved, src)]
        n = uids.shape[0]
        order = np.lexsort((rank, at, positions))  # per user: oldest .. latest record
        starts = np.searchsorted(positions[order], np.arange(n))
        ends = np.append(starts[1:], order.shape[0])
        latest = order[ends - 1]
        out_tag = tag[latest]
        if self._spec.operator is Operator.LATEST:
            return score[latest], at[latest], out_tag
        if self._spec.operator is Operator.SUM:
            grouped = score[order]
            totals = np.array([math.fsum(grouped[a:b]) for a, b in zip(starts.tolist(), ends.tolist(), strict=True)])
            return totals, at[latest], out_tag
        sign = -1.0 if self._spec.descending else 1.0
        best = np.lexsort((rank, at, sign * score, positions))
        first = best[np.searchsorted(positions[best], np.arange(n))]
        return score[first], at[first], out_tag

    def _entry_of(self, records: Records, uid: int) -> Rec:
        row = records.first[uid]
        if records.nxt[row] < 0:  # one record: the common case, no dict built
            return Rec(records.score[row], records.at[row], self._tag_table[records.tag[row]])
        return aggregate(self._spec, records[uid])

    def _refresh_cohorts(
        self,
        board: Board,
        users: npt.NDArray[np.int64],
        tag_ids: npt.NDArray[np.int32],
        keys: tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], Sequence[bytes]],
    ) -> npt.NDArray[np.int64]:
        """Move users between cohort indexes after their entries changed; return the users
        whose cohort entry changed (grouped by cohort value sets, not user by user)."""
        distinct_tags, tag_pos = np.unique(tag_ids, return_inverse=True)
        cids_of_tags = np.array([self._cohort_values(self._tag_table[int(t)])[1] for t in distinct_tags], np.int64)
        new = cids_of_tags[tag_pos.reshape(-1)]
        old = board.cohort_of.get_many(users)
        shifted = new != old
        moved = [users[shifted]]
        pairs = np.unique(np.stack([old[shifted], new[shifted]]), axis=1) if shifted.any() else np.zeros((2, 0), np.int64)
        for old_cid, new_cid in pairs.T.tolist():
            kept = set(self._cohort_table[new_cid]) if new_cid >= 0 else set()
            gone = [kv for kv in (self._cohort_table[old_cid] if old_cid >= 0 else ()) if kv not in kept]
            leavers = users[shifted & (old == old_cid) & (new == new_cid)]
            for kv in gone:
                board.cohorts[kv].remove_many(leavers)
                if not len(board.cohorts[kv]):
                    del board.cohorts[kv]
        board.cohort_of.set_many(users[shifted], new[shifted])
        scores, times, ties = keys
        for cid in np.unique(new).tolist():
            if cid < 0:
                continue
            positions = np.flatnonzero(new == cid)
            for kv in self._cohort_table[cid]:
                index = board.cohorts.setdefault(kv, self._new_index())
                changed = index.upsert_many(users[positions], scores[positions], times[positions], [ties[i] for i in positions.tolist()])
                moved.append(changed)
        return np.unique(np.concatenate(moved)) if moved else np.zeros(0, np.int64)

    def _cohort_values(self, tags: Tags) -> tuple[Tags, int]:
        """The ``(key, value)`` pairs of ``tags`` that the spec indexes, and their id
        (memoised per tag set)."""
        found = self._cohorts_of_tags.get(tags)
        if found is None:
            values = dict(tags)
            pairs = tuple((k, values[k]) for k in self._spec.cohort_keys if k in values)
            cid = self._cohort_ids.get(pairs)
            if cid is None:
                cid = self._cohort_ids[pairs] = len(self._cohort_table)
                self._cohort_table.append(pairs)
            found = self._cohorts_of_tags[tags] = (pairs, cid)
        return found

    def forget_user(self, user: str) -> int:
        """Erase a user's records and entries from every period; return periods affected."""
        uid = self._user_ids.get(user)
        if uid is None:
            return 0
        affected = 0
        for period, board in self._boards.items():
            if not board.records.pop(uid):
                continue
            for index in board.indexes():
                index.remove(uid)
            board.cohorts = {kv: i for kv, i in board.cohorts.items() if len(i)}
            board.cohort_of.set(uid, -1)
            board.bump([uid])
            affected += 1
            if self._changes is not None:
                self._changes.append(("remove", period, np.array([uid], np.int64)))
        return affected

    def drop_period(self, period: str) -> int:
        """Forget a whole period (retention); return how many records were dropped."""
        board = self._boards.pop(period, None)
        if board is not None and self._changes is not None:
            self._changes.append(("drop", period))
        return 0 if board is None else int(board.records.live_rows().sum())

    # -- reads -------------------------------------------------------------------------

    def _board(self, period: str | None) -> Board | None:
        return self._boards.get(self.current_period() if period is None else period)

    def _index(self, period: str | None, cohort: Mapping[str, str] | None) -> RankIndex | None:
        if cohort and (len(cohort) != 1 or next(iter(cohort)) not in self._spec.cohort_keys):
            raise QueryError(
                Problem.COHORT_NOT_INDEXED,
                f"filter on exactly one of the indexed cohort keys {self._spec.cohort_keys}",
            )
        board = self._board(period)
        if board is None or not cohort:
            return None if board is None else board.main
        return board.cohorts.get(next(iter(cohort.items())))

    def _query_ties(self, users: Iterable[str]) -> list[bytes]:
        ties = [user_bytes(u, QueryError) for u in users]
        self._fit_ties(ties)
        return ties

    def count_better(
        self,
        score: float,
        achieved_at: float,
        user: str,
        *,
        period: str | None = None,
        cohort: Mapping[str, str] | None = None,
    ) -> int:
        """How many entries of this shard beat the key ``(score, achieved_at, user)``.

        The named user's own entry never counts, whatever its key, so this also answers "what
        would my rank be with this score". Global rank = 1 + the sum over all shards.
        """
        s, t = real(score, "score", QueryError), real(achieved_at, "achieved_at", QueryError)
        tie = self._query_ties([user])[0]
        index = self._index(period, cohort)
        if index is None or not len(index):
            return 0
        count = index.count_better_one(s, t, tie)
        uid = self._user_ids.get(user)
        own = -1 if uid is None else index.rank_one(uid)
        return count - (0 <= own < count)  # the user's own entry never counts

    def locate_one(
        self, user: str, *, period: str | None = None, cohort: Mapping[str, str] | None = None
    ) -> tuple[int, float, float, Tags] | None:
        """``locate_many`` of one user as ``(position, score, achieved_at, tags)``; None if
        absent. Plain Python over the index (microseconds; no arrays built)."""
        index, board = self._index(period, cohort), self._board(period)
        uid = self._user_ids.get(user) if isinstance(user, str) else None
        if index is None or board is None or uid is None:
            return None
        position = index.rank_one(uid)
        key = index.get(uid)
        if position < 0 or key is None:
            return None
        return position, key[0], key[1], self._entry_of(board.records, uid).tags

    def count_better_many(
        self,
        scores: Sequence[float] | npt.NDArray[np.float64],
        achieved_at: Sequence[float] | npt.NDArray[np.float64],
        users: Sequence[str],
        *,
        period: str | None = None,
        cohort: Mapping[str, str] | None = None,
    ) -> npt.NDArray[np.int64]:
        """Vectorised ``count_better`` for parallel sequences of keys."""
        s = reals(scores, "score", QueryError)
        t = reals(achieved_at, "achieved_at", QueryError)
        ties = self._query_ties(users)
        index = self._index(period, cohort)
        if index is None or not len(index):
            return np.zeros(len(ties), dtype=np.int64)
        counts = index.count_better(s, t, ties=ties)
        own = index.rank_of([self._user_ids.get(u, -1) for u in users])
        # The user's own entry beats the key iff it ranks below the key's count.
        counts -= (own >= 0) & (own < counts)
        return counts

    def entry(self, user: str, *, period: str | None = None) -> Entry | None:
        """The user's entry in a period, or None."""
        board = self._board(period)
        uid = self._user_ids.get(user)
        if board is None or uid is None or uid not in board.records:
            return None
        agg = aggregate(self._spec, board.records[uid])
        return Entry(user, agg.score, agg.achieved_at, dict(agg.tags))

    def locate_many(
        self,
        users: Sequence[str],
        *,
        period: str | None = None,
        cohort: Mapping[str, str] | None = None,
    ) -> Located:
        """Each user's entry key and 0-based position in this shard (-1: not there).

        Vectorised (one ``rank_of`` and one key decode for the batch) and columnar, so that
        batches cross process boundaries as a few arrays; tags are the shard's interned tuples.
        """
        n = len(users)
        located = Located(np.full(n, -1, np.int64), np.zeros(n), np.zeros(n), [()] * n)
        index, board = self._index(period, cohort), self._board(period)
        if index is None or board is None:
            return located
        uids = np.array([self._user_ids.get(u, -1) if isinstance(u, str) else -1 for u in users], np.int64)
        positions = index.rank_of(uids)
        present = positions >= 0
        keys = index.entries_of(uids[present])
        located.positions[:] = positions
        located.scores[present] = keys.scores
        located.achieved_at[present] = keys.achieved_at
        for i, uid in zip(np.flatnonzero(present).tolist(), uids[present].tolist(), strict=True):
            located.tags[i] = self._entry_of(board.records, uid).tags
        return located

    def rank_in_shard(
        self, user: str, *, period: str | None = None, cohort: Mapping[str, str] | None = None
    ) -> int | None:
        """0-based position of the user within this shard (None if absent); O(log N)."""
        index = self._index(period, cohort)
        uid = self._user_ids.get(user)
        if index is None or uid is None or uid not in index:
            return None
        return int(index.rank_of([uid])[0])

    def top(
        self,
        n: int,
        *,
        after: SortKey | None = None,
        as_of: int | None = None,
        period: str | None = None,
        cohort: Mapping[str, str] | None = None,
    ) -> Page:
        """Keyset page: the best ``n`` entries ranked strictly after ``after``.

        Entries changed after version ``as_of`` (default: now, returned in the page) are
        skipped, so paging with the returned ``as_of`` shows each user at most once and every
        user whose entry did not change exactly once.
        """
        board = self._board(period)
        index = self._index(period, cohort)
        as_of = (board.version if board else 0) if as_of is None else as_of
        if board is None or index is None or n <= 0:
            return Page([], None, as_of)
        entries: list[Entry] = []
        cursor = after
        while len(entries) < n:
            chunk = self._scan(index, cursor, max(n, _SCAN_CHUNK))
            if not len(chunk):
                break
            keep = board.version_of(chunk.users) <= as_of
            wanted = chunk.users[keep][: n - len(entries)]
            entries.extend(self._entries(board, wanted, chunk))
            cursor = SortKey(chunk.scores[-1], chunk.achieved_at[-1], self._names[chunk.users[-1]])
        return Page(entries, entries[-1].key if len(entries) == n else None, as_of)

    def _scan(self, index: RankIndex, cursor: SortKey | None, n: int) -> Any:
        if cursor is None:
            return index.top(n)
        tie = self._query_ties([cursor.user])[0]
        score = real(cursor.score, "cursor score", QueryError)
        at = real(cursor.achieved_at, "cursor achieved_at", QueryError)
        return index.after(score, at, n, tie=tie)

    def _entries(self, board: Board, users: npt.NDArray[np.int64], chunk: Any) -> list[Entry]:
        position = {u: i for i, u in enumerate(chunk.users.tolist())}
        out = []
        for uid in users.tolist():
            i = position[uid]
            tags = dict(latest_record(board.records[uid]).tags)
            score, at = float(chunk.scores[i]), float(chunk.achieved_at[i])
            out.append(Entry(self._names[uid], score, at, tags))
        return out

    def around(
        self,
        user: str,
        k: int,
        *,
        period: str | None = None,
        cohort: Mapping[str, str] | None = None,
    ) -> Around:
        """The user's entry and up to ``k`` entries above and below it within this shard."""
        index = self._index(period, cohort)
        uid = self._user_ids.get(user)
        if index is None or uid is None or uid not in index:
            return Around([], None, [])
        score, at = index.get(uid) or (0.0, 0.0)
        return self.around_key(SortKey(score, at, user), k, period=period, cohort=cohort)

    def around_key(
        self,
        key: SortKey,
        k: int,
        *,
        period: str | None = None,
        cohort: Mapping[str, str] | None = None,
    ) -> Around:
        """Up to ``k`` entries ranked just above and just below ``key`` (and its own entry).

        Ask every shard with the user's key and combine with ``merge_around``.
        """
        board = self._board(period)
        index = self._index(period, cohort)
        if board is None or index is None:
            return Around([], None, [])
        better = self.count_better(*key, period=period, cohort=cohort)
        n_above = min(k, better)
        above = index.top(n_above, better - n_above)
        below = self._scan(index, key, k)
        own = self._own_entry(board, index, key)
        return Around(
            self._entries(board, above.users, above), own, self._entries(board, below.users, below)
        )

    def _own_entry(self, board: Board, index: RankIndex, key: SortKey) -> Entry | None:
        uid = self._user_ids.get(key.user)
        if uid is None or index.get(uid) != (key.score, key.achieved_at):
            return None
        return Entry(key.user, key.score, key.achieved_at, dict(latest_record(board.records[uid]).tags))

    # -- resharding and checkpoints ----------------------------------------------------

    def iter_records(self) -> Iterator[Record]:
        """Every stored record (one per user, source and period); do not write meanwhile."""
        for period, board in self._boards.items():
            for uid, records in board.records.items():
                for source, r in records.items():
                    user = self._names[uid]
                    yield Record(user, source, r.score, r.achieved_at, dict(r.tags), period)

    def drain_entries(self) -> list[Record]:
        """Remove and return every record, e.g. to ``load_records`` them into new shards."""
        records = list(self.iter_records())
        self._boards.clear()
        return records

    def to_checkpoint(self) -> bytes:
        """Everything that survives a restart, as compact msgpack (numpy columns as bytes)."""
        state = {
            "v": _CHECKPOINT_VERSION,
            "spec": self._spec.to_dict(),
            "shard": self._shard_index,
            "users": self._names.tolist(),
            "sources": self._sources,
            "tags": [[x for kv in t for x in kv] for t in self._tag_table],
            "boards": {p: self._board_columns(b) for p, b in self._boards.items()},
        }
        return msgpack.packb(state, use_bin_type=True)

    @staticmethod
    def _board_columns(board: Board) -> dict[str, Any]:
        r = board.records
        live = r.live_rows()

        def column(values: array[Any], dtype: type) -> bytes:
            return np.frombuffer(values, dtype)[live].tobytes() if len(values) else b""

        return {
            "user": column(r.owner, np.int32),
            "source": column(r.src, np.int32),
            "score": column(r.score, np.float64),
            "at": column(r.at, np.float64),
            "tags": column(r.tag, np.int32),
            "version": board.version,
            "user_version": board.user_version.tobytes(),
        }

    @classmethod
    def from_checkpoint(
        cls, data: bytes, *, now: Callable[[], float] = time.time
    ) -> LeaderboardShard:
        """Rebuild a shard (records, entries, versions, indexes) from ``to_checkpoint()``."""
        try:
            state = msgpack.unpackb(data, raw=False, strict_map_key=False)
            if state["v"] != _CHECKPOINT_VERSION:
                raise ValueError(f"unsupported checkpoint version {state['v']!r}")
            spec = LeaderboardSpec.from_dict(state["spec"])
            shard = cls(spec, shard_index=state["shard"], now=now)
            with _gc_paused():
                shard._restore(state)
        except LeaderboardError:
            raise
        except (ValueError, KeyError, TypeError, IndexError, msgpack.UnpackException) as exc:
            message = f"bad leaderboard checkpoint: {exc}"
            raise LeaderboardCheckpointError(Problem.BAD_CHECKPOINT, message) from exc
        return shard

    def _restore(self, state: Mapping[str, Any]) -> None:
        ids = list(state["users"])
        self._names = Names(ids)
        self._user_ids = {u: i for i, u in enumerate(ids)}
        self._sources.extend(state["sources"])
        self._source_ids.update((s, i) for i, s in enumerate(self._sources))
        for flat in state["tags"]:
            self._tag_id(tuple(zip(flat[::2], flat[1::2], strict=True)))
        for period, columns in state["boards"].items():
            board = self._new_board(period)
            users = self._load_columns(board.records, columns)
            if users.size:
                self._refresh(period, users)
            board.version = int(columns["version"])
            board.user_version = np.frombuffer(columns["user_version"], np.int64).copy()

    def _load_columns(self, records: Records, columns: Mapping[str, Any]) -> npt.NDArray[np.int32]:
        """Fill ``records`` from checkpoint columns (chains built with numpy); return users."""
        uid = np.frombuffer(columns["user"], np.int32)
        n = uid.shape[0]
        for name, key, dtype in (("src", "source", np.int32), ("tag", "tags", np.int32),
                                 ("score", "score", np.float64), ("at", "at", np.float64)):
            values = np.frombuffer(columns[key], dtype)
            if values.shape[0] != n:
                raise ValueError(f"column {key!r} has {values.shape[0]} rows, expected {n}")
            getattr(records, name).frombytes(values.tobytes())
        if n and (uid.min() < 0 or uid.max() >= len(self._names)):
            raise ValueError("record of an unknown user")
        order = np.argsort(uid, kind="stable")
        grouped = uid[order]
        same = grouped[1:] == grouped[:-1]
        nxt = np.full(n, -1, np.int32)
        nxt[order[1:][same]] = order[:-1][same]
        ends = np.flatnonzero(np.append(~same, True)) if n else np.zeros(0, np.int64)
        first = np.full(len(self._names), -1, np.int32)
        first[grouped[ends]] = order[ends]
        records.owner.frombytes(uid.tobytes())
        records.nxt.frombytes(nxt.tobytes())
        records.first.frombytes(first.tobytes())
        records.users = int(ends.shape[0])
        return grouped[ends]


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic GC while bulk-creating millions of acyclic dicts and tuples.

    Otherwise repeated full collections make a 1M-entry restore several times slower.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def memory_per_entry(shard: LeaderboardShard) -> MemoryReport:
    """Measure a shard: index arrays exactly, Python containers via ``sys.getsizeof``.

    Shared objects (interned tags, repeated source strings) count once. O(records); meant for
    benchmarks and capacity planning, not for a hot path.
    """
    seen: set[int] = set()

    def size(obj: object) -> int:
        if id(obj) in seen:
            return 0
        seen.add(id(obj))
        return sys.getsizeof(obj)

    python = size(shard._user_ids) + shard._names.nbytes + sum(size(n) for n in shard._names)
    python += size(shard._sources) + size(shard._source_ids) + sum(size(x) for x in shard._sources)
    python += size(shard._tag_table) + size(shard._tag_ids) + sum(size(t) for t in shard._tag_table)
    arrays = entries = records = 0
    for board in shard._boards.values():
        arrays += sum(i.nbytes for i in board.indexes()) + board.user_version.nbytes
        arrays += board.records.nbytes() + board.cohort_of.ids.buffer_info()[1] * 4
        entries += len(board.main)
        records += int(board.records.live_rows().sum())
    return MemoryReport(entries, records, arrays, python)
