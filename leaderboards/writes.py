"""What every leaderboard layer shares: the write types, validation, shard hashing (and the
errors of ``leaderboards/errors.py``, re-exported).

``leaderboards/shard.py`` (the shard logic), ``leaderboards/shard_actor.py`` (its Ray shell)
and ``leaderboards/router.py`` (the router) all take writes in one of two shapes:

* ``Write`` rows, one NamedTuple per write — convenient, and what HTTP integrations send;
* a ``WriteBatch``: the same writes as columns (a list of user ids, numpy arrays of scores and
  times). A batch is validated in one vectorised pass, split per shard by ``shards_of``, sent
  to a shard actor as a few arrays, and logged by the shard as those arrays, so nothing on the
  write path costs Python work per write beyond a dict lookup of the user id. ``Write`` rows
  are turned into a batch on arrival (``WriteBatch.of``).

Shard hashing: ``shard_of(user, count)`` = FNV-1a 64 of the UTF-8 user id, mixed by the
splitmix64 finaliser, modulo ``count``. ``shards_of`` computes the same numbers for a whole
batch with numpy (a column of bytes per step). The function is part of the stored format: a
shard holds exactly the users that hash to it, so it must never change for existing boards.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from leaderboards.errors import LeaderboardError, Problem, QueryError, SpecError, WriteError

__all__ = [
    "CLASS_TAG",
    "MAX_USER_ID_BYTES",
    "LeaderboardError",
    "Problem",
    "QueryError",
    "SpecError",
    "Tags",
    "Write",
    "WriteBatch",
    "WriteError",
    "shard_of",
    "shards_of",
]

CLASS_TAG = "class_id"
"""Tag naming the class of a write; required on per-class boards, where it is the period."""
MAX_USER_ID_BYTES = 128

Tags = tuple[tuple[str, str], ...]


# -- one write ---------------------------------------------------------------------------


class Write(NamedTuple):
    """One result: ``user`` scored ``score`` at ``achieved_at`` (epoch s) from ``source``."""

    user: str
    source: str
    score: float
    achieved_at: float
    tags: Mapping[str, str] | None = None


def real(value: object, what: str, error: type[LeaderboardError]) -> float:
    """``value`` as a finite float; bools, strings and non-finite numbers are refused."""
    if type(value) is float and math.isfinite(value):
        return value
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise error(Problem.BAD_NUMBER, f"{what} must be a real number")
    try:
        number = float(value)
    except OverflowError:
        raise error(Problem.BAD_NUMBER, f"{what} must be finite") from None
    if not math.isfinite(number):
        raise error(Problem.BAD_NUMBER, f"{what} must be finite")
    return number


def reals(values: Sequence[float] | npt.NDArray[Any], what: str, error: type[LeaderboardError]) -> npt.NDArray[np.float64]:
    """Finite float64 column of ``values`` (an array of real dtype or a sequence of numbers);
    one vectorised pass, with a one-by-one pass only to name what was wrong."""
    if isinstance(values, np.ndarray):
        if values.ndim != 1 or values.dtype.kind not in "fiu":
            raise error(Problem.BAD_NUMBER, f"{what} must be a 1-d array of real numbers")
        column = values.astype(np.float64, copy=False)
    elif set(map(type, values)) <= {float, int}:
        try:
            column = np.array(values, dtype=np.float64)
        except OverflowError:
            raise error(Problem.BAD_NUMBER, f"{what} must be finite") from None
    else:
        column = np.array([real(v, what, error) for v in values], dtype=np.float64)
    if not np.isfinite(column).all():
        raise error(Problem.BAD_NUMBER, f"{what} must be finite")
    return column


def user_bytes(user: object, error: type[LeaderboardError]) -> bytes:
    if not isinstance(user, str) or not user or "\x00" in user:
        raise error(Problem.BAD_USER, "user must be a non-empty str without NUL")
    try:
        encoded = user.encode("utf-8")
    except UnicodeEncodeError:
        raise error(Problem.BAD_USER, "user must be valid unicode") from None
    if len(encoded) > MAX_USER_ID_BYTES:
        raise error(Problem.BAD_USER, f"user ids are limited to {MAX_USER_ID_BYTES} bytes")
    return encoded


def check_users(users: Sequence[object], error: type[LeaderboardError]) -> None:
    """``user_bytes`` for a whole column: a few passes in C, then one by one only on failure."""
    if not users:
        return
    ok = set(map(type, users)) == {str} and min(map(len, users)) > 0  # type: ignore[arg-type]
    if ok:
        joined = "".join(users)  # type: ignore[arg-type]
        ok = "\x00" not in joined and max(map(len, users)) * 4 <= MAX_USER_ID_BYTES  # type: ignore[arg-type]
        if ok:
            try:
                joined.encode("utf-8")
            except UnicodeEncodeError:
                ok = False
    if not ok:
        for user in users:
            user_bytes(user, error)


def normal_tags(tags: Mapping[str, str] | None) -> Tags:
    """Tags as a sorted tuple of ``(key, value)`` str pairs; ``BAD_TAGS`` otherwise."""
    if tags is None:
        return ()
    if not isinstance(tags, Mapping):
        raise WriteError(Problem.BAD_TAGS, "tags must map str to str")
    items = tuple(sorted(tags.items()))
    for key, value in items:
        if type(key) is not str or type(value) is not str:
            raise WriteError(Problem.BAD_TAGS, "tags must map str to str")
    return items


# -- shard hashing -----------------------------------------------------------------------

_MASK = (1 << 64) - 1
_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
_MIX1, _MIX2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def shard_of(user: str, shard_count: int) -> int:
    """Stable shard of a user id (identical across processes, versions and ``shards_of``)."""
    h = _FNV_OFFSET
    for byte in user.encode("utf-8"):
        h = ((h ^ byte) * _FNV_PRIME) & _MASK
    h ^= h >> 30
    h = (h * _MIX1) & _MASK
    h ^= h >> 27
    h = (h * _MIX2) & _MASK
    h ^= h >> 31
    return h % shard_count


def shards_of(users: Sequence[str], shard_count: int) -> npt.NDArray[np.int64]:
    """``shard_of`` of every user, vectorised: one numpy step per byte of the longest id."""
    n = len(users)
    if shard_count == 1 or n == 0:
        return np.zeros(n, np.int64)
    encoded = [u.encode("utf-8") for u in users]
    lengths = np.fromiter(map(len, encoded), np.int64, n)
    width = int(lengths.max())
    if width == 0:
        raise WriteError(Problem.BAD_USER, "user must be a non-empty str without NUL")
    raw = np.array(encoded, dtype=f"S{width}").view(np.uint8).reshape(n, width)
    h = np.full(n, _FNV_OFFSET, np.uint64)
    prime = np.uint64(_FNV_PRIME)
    for j in range(width):
        stepped = (h ^ raw[:, j]) * prime
        if j < int(lengths.min()):
            h = stepped
        else:
            h = np.where(lengths > j, stepped, h)
    h ^= h >> np.uint64(30)
    h *= np.uint64(_MIX1)
    h ^= h >> np.uint64(27)
    h *= np.uint64(_MIX2)
    h ^= h >> np.uint64(31)
    return (h % np.uint64(shard_count)).astype(np.int64)


# -- a batch of writes as columns --------------------------------------------------------


@dataclass(frozen=True, eq=False)
class WriteBatch:
    """``len(users)`` writes as columns; build with ``columns`` or ``of`` (both validate).

    ``sources`` has one str per write (a one-source batch repeats one str object, which costs
    nothing to pickle). ``tags`` is None when no write carries tags, else one normalised
    ``Tags`` per write. Everything that does not depend on a board's spec is checked here;
    ``leaderboards.shard.batch_periods`` checks the rest (class tags) and files each write in
    its period.
    """

    users: list[str]
    sources: list[str]
    scores: npt.NDArray[np.float64]
    achieved_at: npt.NDArray[np.float64]
    tags: list[Tags] | None = None

    def __len__(self) -> int:
        return len(self.users)

    @classmethod
    def columns(
        cls,
        users: Sequence[str],
        scores: Sequence[float] | npt.NDArray[Any],
        achieved_at: Sequence[float] | npt.NDArray[Any],
        *,
        source: str | Sequence[str],
        tags: Mapping[str, str] | Sequence[Mapping[str, str] | None] | None = None,
    ) -> WriteBatch:
        """A validated batch: ``source`` and ``tags`` are one value for every write or one
        per write. ``WriteError`` names the first problem found; nothing is half-built."""
        users = list(users)
        n = len(users)
        check_users(users, WriteError)
        score_column = reals(scores, "score", WriteError)
        at_column = reals(achieved_at, "achieved_at", WriteError)
        if score_column.shape[0] != n or at_column.shape[0] != n:
            raise WriteError(Problem.BAD_WRITE, "users, scores and achieved_at must have one value per write")
        sources = cls._sources(source, n)
        return cls(users, sources, score_column + 0.0, at_column + 0.0, cls._tag_column(tags, n))

    @classmethod
    def of(cls, writes: Iterable[Write | Sequence[Any]]) -> WriteBatch:
        """A validated batch from ``Write`` rows (or tuples of 4 or 5 fields)."""
        try:
            rows = [w if type(w) is Write else Write(*w) for w in writes]
        except TypeError:
            raise WriteError(
                Problem.BAD_WRITE, "a write is (user, source, score, achieved_at[, tags])"
            ) from None
        tags = [w.tags for w in rows]
        return cls.columns(
            [w.user for w in rows],
            [w.score for w in rows],
            [w.achieved_at for w in rows],
            source=[w.source for w in rows],
            tags=None if all(t is None for t in tags) else tags,
        )

    @staticmethod
    def _sources(source: str | Sequence[str], n: int) -> list[str]:
        if isinstance(source, str):
            if not source:
                raise WriteError(Problem.BAD_SOURCE, "source must be a non-empty str")
            return [source] * n
        sources = list(source)
        if len(sources) != n:
            raise WriteError(Problem.BAD_WRITE, "give one source, or one per write")
        if n and not (set(map(type, sources)) == {str} and min(map(len, sources)) > 0):
            raise WriteError(Problem.BAD_SOURCE, "source must be a non-empty str")
        return sources

    @staticmethod
    def _tag_column(tags: Mapping[str, str] | Sequence[Mapping[str, str] | None] | None, n: int) -> list[Tags] | None:
        if tags is None:
            return None
        if isinstance(tags, Mapping):
            return [normal_tags(tags)] * n
        if isinstance(tags, str | bytes) or not isinstance(tags, Sequence):
            raise WriteError(Problem.BAD_TAGS, "tags must map str to str")
        if len(tags) != n:
            raise WriteError(Problem.BAD_WRITE, "give one tag set, or one per write")
        seen: dict[int, Tags] = {}  # the same dict object repeated is normalised once
        column = []
        for t in tags:
            found = seen.get(id(t))
            if found is None:
                found = seen[id(t)] = normal_tags(t)
            column.append(found)
        return column

    def validated(self) -> WriteBatch:
        """Check a batch that arrived from elsewhere (unpickled, unpacked) like ``columns``."""
        checked = WriteBatch.columns(self.users, self.scores, self.achieved_at, source=self.sources)
        if self.tags is None:
            return checked
        if not isinstance(self.tags, list) or len(self.tags) != len(self.users):
            raise WriteError(Problem.BAD_WRITE, "give one tag set per write")
        try:  # each distinct tag set is checked once (a batch repeats a few of them)
            normal = {t: normal_tags(dict(t)) for t in set(self.tags)}
        except (TypeError, ValueError):
            raise WriteError(Problem.BAD_TAGS, "tags must map str to str") from None
        return WriteBatch(checked.users, checked.sources, checked.scores, checked.achieved_at, [normal[t] for t in self.tags])

    def take(self, index: npt.NDArray[np.int64]) -> WriteBatch:
        """The writes at ``index``, in that order."""
        positions = index.tolist()
        users, sources = self.users, self.sources
        return WriteBatch(
            [users[i] for i in positions],
            [sources[i] for i in positions],
            self.scores[index],
            self.achieved_at[index],
            None if self.tags is None else [self.tags[i] for i in positions],
        )

    def rows(self) -> list[Write]:
        tags = self.tags or [()] * len(self)
        return [
            Write(u, s, v, t, dict(g) if g else None)
            for u, s, v, t, g in zip(
                self.users, self.sources, self.scores.tolist(), self.achieved_at.tolist(), tags, strict=True
            )
        ]

    def pack(self) -> dict[str, Any]:
        """A msgpack-able form (the write-ahead log's); ``unpack`` reverses it."""
        one_source = len(set(self.sources)) == 1
        return {
            "u": self.users,
            "s": self.sources[0] if one_source and self.sources else self.sources,
            "v": self.scores.astype("<f8").tobytes(),
            "t": self.achieved_at.astype("<f8").tobytes(),
            "g": None if self.tags is None else [[list(kv) for kv in t] for t in self.tags],
        }

    @classmethod
    def unpack(cls, body: Mapping[str, Any]) -> WriteBatch:
        users = list(body["u"])
        source = body["s"]
        tags = body["g"]
        return cls(
            users,
            [source] * len(users) if isinstance(source, str) else list(source),
            np.frombuffer(body["v"], "<f8").astype(np.float64),
            np.frombuffer(body["t"], "<f8").astype(np.float64),
            None if tags is None else [tuple((k, v) for k, v in t) for t in tags],
        )
