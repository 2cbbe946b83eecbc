"""A shard's records per period, as columns: what ``LeaderboardShard`` keeps besides indexes.

Split out of ``leaderboards/shard.py``: ``Records`` (one row per ``(user, source)``, chained
per user, with vectorised ``put_many`` / ``find_many`` / ``chains``), ``Names`` (user ids by
index, out of the GC's sight), ``CohortOf`` (each user's cohort value set), ``Board`` (records
and indexes of one period) and ``aggregate`` (a user's entry from its records, one by one).
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from leaderboards.writes import Tags
from leaderboards.rank_index import RankIndex
from leaderboards.spec import LeaderboardSpec, Operator, Rec


# -- per-period board --------------------------------------------------------------------


def latest_record(records: Mapping[str, Rec]) -> Rec:
    source = max(records, key=lambda s: (records[s].achieved_at, s))
    return records[source]


def aggregate(spec: LeaderboardSpec, records: Mapping[str, Rec]) -> Rec:
    """The entry ``(score, achieved_at, tags)`` derived from a user's records."""
    if len(records) == 1:
        return next(iter(records.values()))
    latest = latest_record(records)
    if spec.operator is Operator.LATEST:
        return latest
    if spec.operator is Operator.SUM:
        total = math.fsum(r.score for r in records.values())
        return Rec(total, max(r.achieved_at for r in records.values()), latest.tags)
    sign = -1.0 if spec.descending else 1.0
    best = min(records.items(), key=lambda kv: (sign * kv[1].score, kv[1].achieved_at, kv[0]))
    return Rec(best[1].score, best[1].achieved_at, latest.tags)


class Records:
    """A board's raw records as columns: one row per ``(user, source)``, chained per user.

    ``first[uid]`` is the user's newest row (-1: none) and ``nxt[row]`` the user's next row;
    ``owner[row]`` is -1 once the row was forgotten. Sources and tag sets are ids into tables
    the shard shares across its boards. About 32 bytes per record and 4 per user (``array``
    columns), where dicts of ``Rec`` tuples cost about 490. Reads behave like the former
    ``dict[uid, dict[source, Rec]]``: ``records[uid]`` builds that small dict on demand.
    """

    def __init__(self, sources: list[str], tags: list[Tags]) -> None:
        self._sources, self._tags = sources, tags
        self.first = array("i")
        self.owner, self.nxt, self.src, self.tag = array("i"), array("i"), array("i"), array("i")
        self.score, self.at = array("d"), array("d")
        self.users = 0

    def __len__(self) -> int:
        return self.users

    def __contains__(self, uid: int) -> bool:
        return 0 <= uid < len(self.first) and self.first[uid] >= 0

    def find(self, uid: int, sid: int) -> int:
        row = self.first[uid] if uid < len(self.first) else -1
        while row >= 0 and self.src[row] != sid:
            row = self.nxt[row]
        return row

    def add(self, uid: int, sid: int, score: float, at: float, tid: int) -> None:
        if uid >= len(self.first):
            self.first.extend(array("i", [-1]) * (max(uid + 1, 2 * len(self.first)) - len(self.first)))
        head = self.first[uid]
        self.users += head < 0
        self.first[uid] = len(self.src)
        self.owner.append(uid)
        self.nxt.append(head)
        self.src.append(sid)
        self.tag.append(tid)
        self.score.append(score)
        self.at.append(at)

    def put(self, uid: int, sid: int, score: float, at: float, tid: int) -> bool:
        """Store one write in the ``(uid, sid)`` record; False if it changes nothing (older,
        or the same as stored)."""
        row = self.find(uid, sid)
        if row < 0:
            self.add(uid, sid, score, at, tid)
            return True
        old_at = self.at[row]
        if at < old_at or (at == old_at and self.score[row] == score and self.tag[row] == tid):
            return False
        self.score[row], self.at[row], self.tag[row] = score, at, tid
        return True

    def put_many(
        self,
        uids: npt.NDArray[np.int64],
        sids: npt.NDArray[np.int32],
        scores: npt.NDArray[np.float64],
        times: npt.NDArray[np.float64],
        tids: npt.NDArray[np.int32],
    ) -> npt.NDArray[np.int64]:
        """``put`` for distinct users, with numpy over the columns; return the users changed.

        Each write's record is found by walking every user's chain at once (one numpy step
        per record of the longest chain); found records are compared and updated as arrays,
        the rest appended in bulk (a new user's chain starts, an existing user's grows)."""
        known = uids < len(self.first)
        heads = np.full(uids.shape[0], -1, np.int64)
        if known.any():
            heads[known] = np.frombuffer(self.first, np.int32)[uids[known]]
        rows = self.find_many(heads, sids)
        held = rows >= 0
        r = rows[held]
        score_column, at_column = np.frombuffer(self.score, np.float64), np.frombuffer(self.at, np.float64)
        tag_column = np.frombuffer(self.tag, np.int32)
        new_at, new_score, new_tag = times[held], scores[held], tids[held]
        old_at = at_column[r]
        take = (new_at > old_at) | (
            (new_at == old_at) & ((score_column[r] != new_score) | (tag_column[r] != new_tag))
        )
        r = r[take]
        score_column[r], at_column[r], tag_column[r] = new_score[take], new_at[take], new_tag[take]
        del score_column, at_column, tag_column  # no buffer exported while the arrays grow
        new = ~held
        self._add_many(uids[new], heads[new], sids[new], scores[new], times[new], tids[new])
        return np.concatenate([uids[held][take], uids[new]])

    def find_many(self, heads: npt.NDArray[np.int64], sids: npt.NDArray[np.int32]) -> npt.NDArray[np.int64]:
        """Row of each ``(chain head, source)`` pair, -1 where the chain has no such source."""
        found = np.full(heads.shape[0], -1, np.int64)
        live = np.flatnonzero(heads >= 0)
        if live.shape[0] == 0:
            return found
        src, nxt = np.frombuffer(self.src, np.int32), np.frombuffer(self.nxt, np.int32)
        cursor = heads.copy()
        while live.shape[0]:
            r = cursor[live]
            hit = src[r] == sids[live]
            found[live[hit]] = r[hit]
            step = nxt[r]
            cursor[live] = step
            live = live[~hit & (step >= 0)]
        return found

    def chains(self, uids: npt.NDArray[np.int64]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """Every record of the given users: ``(position in uids, row)`` pairs, newest first."""
        nxt = np.frombuffer(self.nxt, np.int32)
        cursor = np.frombuffer(self.first, np.int32)[uids].astype(np.int64)
        live = np.flatnonzero(cursor >= 0)
        positions, rows = [], []
        while live.shape[0]:
            r = cursor[live]
            positions.append(live)
            rows.append(r)
            step = nxt[r]
            cursor[live] = step
            live = live[step >= 0]
        if not rows:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return np.concatenate(positions), np.concatenate(rows)

    def _add_many(
        self,
        uids: npt.NDArray[np.int64],
        heads: npt.NDArray[np.int64],
        sids: npt.NDArray[np.int32],
        scores: npt.NDArray[np.float64],
        times: npt.NDArray[np.float64],
        tids: npt.NDArray[np.int32],
    ) -> None:
        """``add`` for distinct users as column appends; ``heads`` are their chains (-1: none)."""
        n = uids.shape[0]
        if n == 0:
            return
        need = int(uids.max()) + 1
        if need > len(self.first):
            self.first.extend(array("i", [-1]) * (max(need, 2 * len(self.first)) - len(self.first)))
        start = len(self.src)
        np.frombuffer(self.first, np.int32)[uids] = np.arange(start, start + n, dtype=np.int32)
        self.owner.frombytes(uids.astype(np.int32).tobytes())
        self.nxt.frombytes(heads.astype(np.int32).tobytes())
        self.src.frombytes(sids.astype(np.int32).tobytes())
        self.tag.frombytes(tids.astype(np.int32).tobytes())
        self.score.frombytes(scores.astype(np.float64).tobytes())
        self.at.frombytes(times.astype(np.float64).tobytes())
        self.users += int((heads < 0).sum())

    def single_entries(
        self, uids: npt.NDArray[np.int64]
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.int32], npt.NDArray[np.int64]]:
        """Score, time and tag id of each user's newest record, and the positions of users
        with several records (whose entry must be aggregated)."""
        rows = np.frombuffer(self.first, np.int32)[uids]
        several = np.frombuffer(self.nxt, np.int32)[rows] >= 0
        return (
            np.frombuffer(self.score, np.float64)[rows],
            np.frombuffer(self.at, np.float64)[rows],
            np.frombuffer(self.tag, np.int32)[rows],
            np.flatnonzero(several),
        )

    def rows_of(self, uid: int) -> list[int]:
        rows, row = [], self.first[uid]
        while row >= 0:
            rows.append(row)
            row = self.nxt[row]
        return rows

    def __getitem__(self, uid: int) -> dict[str, Rec]:
        if uid not in self:
            raise KeyError(uid)
        return {
            self._sources[self.src[r]]: Rec(self.score[r], self.at[r], self._tags[self.tag[r]])
            for r in self.rows_of(uid)
        }

    def user_ids(self) -> Iterator[int]:
        return (uid for uid, row in enumerate(self.first) if row >= 0)

    def items(self) -> Iterator[tuple[int, dict[str, Rec]]]:
        return ((uid, self[uid]) for uid in self.user_ids())

    def pop(self, uid: int) -> int:
        """Forget a user's records; return how many there were."""
        if uid not in self:
            return 0
        rows = self.rows_of(uid)
        for row in rows:
            self.owner[row] = -1
        self.first[uid] = -1
        self.users -= 1
        return len(rows)

    def live_rows(self) -> npt.NDArray[np.bool_]:
        return np.frombuffer(self.owner, np.int32) >= 0 if len(self.owner) else np.zeros(0, bool)

    def nbytes(self) -> int:
        columns = (self.first, self.owner, self.nxt, self.src, self.tag, self.score, self.at)
        return sum(c.buffer_info()[1] * c.itemsize for c in columns)


class Names:
    """User ids by user index, in a numpy object array rather than a list.

    The cyclic GC traverses every item of a list at each full collection (~85 ms for 5M ids
    here: a p99 stall for every query of the shard); an object array is not tracked by the
    GC, and its str items need no tracking. Appends grow it by doubling.
    """

    def __init__(self, names: Sequence[str] = ()) -> None:
        self._ids = np.empty(max(16, len(names)), dtype=object)
        self._n = len(names)
        if self._n:
            self._ids[: self._n] = list(names)

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, uid: int) -> str:
        if not 0 <= uid < self._n:
            raise IndexError(uid)
        return self._ids[uid]  # type: ignore[no-any-return]

    def __iter__(self) -> Iterator[str]:
        return iter(self._ids[: self._n].tolist())

    def append(self, name: str) -> None:
        if self._n == self._ids.shape[0]:
            grown = np.empty(2 * self._n, dtype=object)
            grown[: self._n] = self._ids
            self._ids = grown
        self._ids[self._n] = name
        self._n += 1

    def pick(self, uids: npt.NDArray[np.int64]) -> list[str]:
        return self._ids[uids].tolist()  # type: ignore[no-any-return]

    def tolist(self) -> list[str]:
        return self._ids[: self._n].tolist()  # type: ignore[no-any-return]

    @property
    def nbytes(self) -> int:
        return int(self._ids.nbytes)


class CohortOf:
    """Per user, the id of their indexed cohort values (a shard-wide table); -1 is none."""

    def __init__(self, table: list[Tags]) -> None:
        self._table = table
        self.ids = array("i")

    def get(self, uid: int) -> Tags:
        cid = self.ids[uid] if uid < len(self.ids) else -1
        return () if cid < 0 else self._table[cid]

    def get_many(self, uids: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """Cohort id of each user (-1: none)."""
        out = np.full(uids.shape[0], -1, np.int64)
        known = uids < len(self.ids)
        if known.any():
            out[known] = np.frombuffer(self.ids, np.int32)[uids[known]]
        return out

    def set_many(self, uids: npt.NDArray[np.int64], cids: npt.NDArray[np.int64]) -> None:
        if uids.shape[0] == 0:
            return
        need = int(uids.max()) + 1
        if need > len(self.ids):
            self.ids.extend(array("i", [-1]) * (max(need, 2 * len(self.ids)) - len(self.ids)))
        np.frombuffer(self.ids, np.int32)[uids] = cids.astype(np.int32)

    def set(self, uid: int, cid: int) -> None:
        if uid >= len(self.ids):
            self.ids.extend(array("i", [-1]) * (max(uid + 1, 2 * len(self.ids)) - len(self.ids)))
        self.ids[uid] = cid


@dataclass
class Board:
    """Records and indexes of one period of one shard."""

    main: RankIndex
    records: Records
    cohort_of: CohortOf
    cohorts: dict[tuple[str, str], RankIndex] = field(default_factory=dict)
    version: int = 0
    user_version: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))

    def indexes(self) -> list[RankIndex]:
        return [self.main, *self.cohorts.values()]

    def bump(self, users: Iterable[int] | npt.NDArray[np.int64]) -> None:
        users = users.astype(np.int64, copy=False) if isinstance(users, np.ndarray) else np.fromiter(users, np.int64)
        if users.size == 0:
            return
        if users.max() >= self.user_version.shape[0]:
            grown = np.zeros(max(int(users.max()) + 1, 2 * self.user_version.shape[0]), np.int64)
            grown[: self.user_version.shape[0]] = self.user_version
            self.user_version = grown
        self.version += 1
        self.user_version[users] = self.version

    def version_of(self, users: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        known = users < self.user_version.shape[0]
        out = np.zeros(users.shape[0], np.int64)
        out[known] = self.user_version[users[known]]
        return out
