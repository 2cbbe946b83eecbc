"""A sorted rank index over ``(score, achieved_at, tie)`` keys, built like a tiny LSM tree.

The index answers "how many entries beat this key" in O(log N) and does so for whole numpy
batches at once. It holds at most one entry per *user*, a dense non-negative integer below
``MAX_USERS`` that the owner (a leaderboard shard) maps from its string user ids.

Order ("better" first):

1. better score: higher for ``descending=True`` boards, lower otherwise;
2. then earlier ``achieved_at``;
3. then the *tie* bytes ascending (the shard passes the UTF-8 user id, zero padded, so ties
   resolve by user id ascending); with ``tie_width=0`` the user index itself is the tie.

Layout. Every entry is one fixed-width byte string (numpy ``S<width>``) whose ``memcmp`` order
is the order above: ``score (8) | achieved_at (8) | tie (tie_width) | user (4)``, where both
floats are mapped to big-endian unsigned integers that sort like the floats. The live set is

    live = (main - tombstones) + delta

``main`` is a big immutable sorted array, ``delta`` a small sorted array of recent inserts and
``tombstones`` the keys of ``main`` that were removed or replaced. When ``delta`` plus
``tombstones`` outgrow ``merge_threshold`` they are merged into a fresh ``main`` in O(N).
The number of live keys strictly below a key ``q`` is therefore

    searchsorted(main, q) - searchsorted(tombstones, q) + searchsorted(delta, q)

which numpy evaluates for a sorted batch of queries in one call per array.

Contract: every method is synchronous, not thread-safe, and takes finite floats; methods raise
``ValueError`` on contract violations (NaN, negative or too large user indexes, ties wider
than ``tie_width``). Nothing here knows about periods, cohorts or string ids.
"""

from __future__ import annotations

import bisect
import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["MAX_USERS", "IndexEntries", "RankIndex"]

MAX_USERS = 2**32 - 1
"""User indexes must be below this; ``MAX_USERS`` itself is reserved for cursor keys."""

_SIGN = np.uint64(1 << 63)
_MASK64 = (1 << 64) - 1
_HEAD = 16
_USER_WIDTH = 4
_MIN_MERGE_THRESHOLD = 65_536
_MAX_MERGE_THRESHOLD = 1_048_576
_AFTER_ALL_USERS = MAX_USERS

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
KeyArray = npt.NDArray[np.bytes_]


@dataclass(frozen=True)
class IndexEntries:
    """Entries in rank order (best first): parallel arrays of equal length."""

    users: IntArray
    scores: FloatArray
    achieved_at: FloatArray

    def __len__(self) -> int:
        return int(self.users.shape[0])


def _ordered_u64(values: npt.ArrayLike) -> npt.NDArray[np.uint64]:
    """Map float64 to uint64 such that unsigned order equals float order (-0.0 == 0.0)."""
    bits = (np.asarray(values, dtype=np.float64) + 0.0).view(np.uint64)
    negative = (bits & _SIGN) != 0
    return np.where(negative, ~bits, bits | _SIGN)


def _ordered_one(value: float) -> int:
    """``_ordered_u64`` of one float, in plain Python (single-key queries)."""
    bits: int = struct.unpack(">Q", struct.pack(">d", value + 0.0))[0]
    return bits ^ _MASK64 if bits >> 63 else bits | (1 << 63)


def _float_from_ordered_one(ordered: int) -> float:
    bits = ordered & ~(1 << 63) if ordered >> 63 else ordered ^ _MASK64
    return float(struct.unpack(">d", struct.pack(">Q", bits))[0])


def _float_from_ordered(ordered: npt.NDArray[np.uint64]) -> FloatArray:
    negative = (ordered & _SIGN) == 0
    return np.where(negative, ~ordered, ordered & ~_SIGN).view(np.float64)


def _be_bytes(values: npt.NDArray[np.generic], dtype: str, width: int) -> npt.NDArray[np.uint8]:
    return np.ascontiguousarray(values.astype(dtype)).view(np.uint8).reshape(-1, width)


def _column(raw: npt.NDArray[np.uint8], start: int, stop: int, dtype: str) -> np.ndarray:
    return np.ascontiguousarray(raw[:, start:stop]).view(dtype).ravel()


def _search(sorted_keys: KeyArray, queries: KeyArray, side: str = "left") -> IntArray:
    if sorted_keys.shape[0] == 0:
        return np.zeros(queries.shape[0], dtype=np.int64)
    found = np.searchsorted(sorted_keys, queries, side=side)  # type: ignore[call-overload]
    return found.astype(np.int64)


def _members(sorted_keys: KeyArray, queries: KeyArray) -> npt.NDArray[np.bool_]:
    """Which ``queries`` occur in ``sorted_keys``."""
    if sorted_keys.shape[0] == 0:
        return np.zeros(queries.shape[0], dtype=bool)
    pos = np.searchsorted(sorted_keys, queries)
    found = pos < sorted_keys.shape[0]
    found[found] = sorted_keys[pos[found]] == queries[found]
    return found


def _union(a: KeyArray, b: KeyArray) -> KeyArray:
    """Sorted union of two sorted, disjoint key arrays."""
    if b.shape[0] == 0:
        return a
    if a.shape[0] == 0:
        return np.sort(b)
    merged = np.concatenate([a, b])
    merged.sort(kind="stable")
    return merged


def _difference(a: KeyArray, b: KeyArray) -> KeyArray:
    """``a`` without ``b``; both sorted, ``b`` a subset of ``a``."""
    if b.shape[0] == 0:
        return a
    return np.delete(a, np.searchsorted(a, b))


def _last_per_user(users: IntArray) -> IntArray:
    """Positions of the last occurrence of each distinct user, ordered by user."""
    reversed_first = np.unique(users[::-1], return_index=True)[1]
    return users.shape[0] - 1 - reversed_first


class RankIndex:
    """Rank index holding at most one ``(score, achieved_at, tie)`` key per user index.

    ``descending`` picks whether higher scores rank first. ``tie_width`` is the byte width of
    the tie component (0: ties resolve by user index). ``merge_threshold`` bounds the size of
    the write buffers; ``None`` adapts it: ``64 * sqrt(len)`` clamped to 64k..1M keys (a merge
    is O(len), buffer upkeep O(buffered) per batch: about sqrt(len * batch) balances them
    for batches of ~16k).
    """

    def __init__(
        self,
        *,
        descending: bool = True,
        tie_width: int = 0,
        merge_threshold: int | None = None,
    ) -> None:
        if tie_width < 0 or merge_threshold is not None and merge_threshold < 1:
            raise ValueError("tie_width must be >= 0 and merge_threshold >= 1")
        self.descending = descending
        self._tie_width = tie_width
        self._fixed_threshold = merge_threshold
        self._dtype = np.dtype(f"S{_HEAD + tie_width + _USER_WIDTH}")
        self._main: KeyArray = np.empty(0, self._dtype)
        self._delta: KeyArray = np.empty(0, self._dtype)
        self._tombs: KeyArray = np.empty(0, self._dtype)
        self._key_of: KeyArray = np.empty(0, self._dtype)
        self._present = np.zeros(0, dtype=bool)
        self._size = 0

    # -- size and memory -------------------------------------------------------------------

    def __len__(self) -> int:
        return self._size

    def __contains__(self, user: int) -> bool:
        return 0 <= user < self._present.shape[0] and bool(self._present[user])

    @property
    def tie_width(self) -> int:
        return self._tie_width

    @property
    def nbytes(self) -> int:
        """Bytes held by the index's arrays (keys, buffers and per-user slots)."""
        arrays = (self._main, self._delta, self._tombs, self._key_of, self._present)
        return sum(int(a.nbytes) for a in arrays)

    @property
    def merge_threshold(self) -> int:
        if self._fixed_threshold is not None:
            return self._fixed_threshold
        adaptive = int(64 * math.sqrt(self._size))
        return min(_MAX_MERGE_THRESHOLD, max(_MIN_MERGE_THRESHOLD, adaptive))

    @property
    def buffered(self) -> int:
        """Keys waiting in the delta and tombstone buffers."""
        return int(self._delta.shape[0] + self._tombs.shape[0])

    # -- key codec -------------------------------------------------------------------------

    def _keys(
        self,
        scores: npt.ArrayLike,
        achieved_at: npt.ArrayLike,
        users: npt.ArrayLike,
        ties: npt.ArrayLike | None,
    ) -> KeyArray:
        s = np.atleast_1d(np.asarray(scores, dtype=np.float64))
        t = np.atleast_1d(np.asarray(achieved_at, dtype=np.float64))
        u = np.atleast_1d(np.asarray(users, dtype=np.int64))
        if not (s.shape == t.shape == u.shape):
            raise ValueError("scores, achieved_at and users must have the same length")
        if not (np.isfinite(s).all() and np.isfinite(t).all()):
            raise ValueError("scores and achieved_at must be finite")
        if u.size and (u.min() < 0 or u.max() > MAX_USERS):
            raise ValueError("user indexes must be in [0, MAX_USERS)")
        raw = np.zeros((s.shape[0], self._dtype.itemsize), dtype=np.uint8)
        raw[:, 0:8] = _be_bytes(_ordered_u64(-s if self.descending else s), ">u8", 8)
        raw[:, 8:16] = _be_bytes(_ordered_u64(t), ">u8", 8)
        raw[:, _HEAD + self._tie_width :] = _be_bytes(u, ">u4", _USER_WIDTH)
        if self._tie_width:
            raw[:, _HEAD : _HEAD + self._tie_width] = self._tie_bytes(ties, s.shape[0])
        return raw.view(self._dtype).ravel()

    def _tie_bytes(self, ties: npt.ArrayLike | None, n: int) -> npt.NDArray[np.uint8]:
        if ties is None:
            raise ValueError("ties are required when tie_width > 0")
        arr = np.atleast_1d(np.asarray(ties, dtype=np.bytes_))
        if arr.shape[0] != n or arr.dtype.itemsize > self._tie_width:
            raise ValueError(f"ties must be {n} byte strings of at most {self._tie_width} bytes")
        return arr.astype(f"S{self._tie_width}").view(np.uint8).reshape(n, self._tie_width)

    def _decode(self, keys: KeyArray) -> IndexEntries:
        raw = keys.view(np.uint8).reshape(-1, self._dtype.itemsize)
        scores = _float_from_ordered(_column(raw, 0, 8, ">u8").astype(np.uint64))
        achieved = _float_from_ordered(_column(raw, 8, 16, ">u8").astype(np.uint64))
        width = self._dtype.itemsize
        users = _column(raw, width - _USER_WIDTH, width, ">u4").astype(np.int64)
        return IndexEntries(users, (-scores if self.descending else scores) + 0.0, achieved)  # never -0.0

    # -- writes ----------------------------------------------------------------------------

    def upsert_many(
        self,
        users: npt.ArrayLike,
        scores: npt.ArrayLike,
        achieved_at: npt.ArrayLike,
        ties: npt.ArrayLike | None = None,
    ) -> IntArray:
        """Set each user's key (the last occurrence wins); return the users whose key changed."""
        u = np.atleast_1d(np.asarray(users, dtype=np.int64))
        keys = self._keys(scores, achieved_at, u, ties)
        last = _last_per_user(u)
        u, keys = u[last], keys[last]
        self._reserve(int(u.max()) + 1 if u.size else 0)
        present = self._present[u]
        changed = ~present | (self._key_of[u] != keys)
        u, keys, present = u[changed], keys[changed], present[changed]
        if self._size == 0 and self.buffered == 0:
            self._main = np.sort(keys)
        else:
            self._discard(self._key_of[u[present]])
            self._insert(keys)
        self._key_of[u] = keys
        self._present[u] = True
        self._size += int((~present).sum())
        self._maybe_merge()
        return u

    def remove_many(self, users: npt.ArrayLike) -> int:
        """Remove the users' keys (absent users are ignored); return how many were removed."""
        u = np.unique(np.atleast_1d(np.asarray(users, dtype=np.int64)))
        u = u[(u >= 0) & (u < self._present.shape[0])]
        u = u[self._present[u]]
        self._discard(self._key_of[u])
        self._present[u] = False
        self._size -= int(u.shape[0])
        self._maybe_merge()
        return int(u.shape[0])

    def remove(self, user: int) -> bool:
        """Remove one user's key; return whether it was present."""
        return self.remove_many([user]) == 1

    def compact(self) -> None:
        """Merge the write buffers into ``main`` (O(N)); queries never require it."""
        main = _difference(self._main, self._tombs)
        self._main = _union(main, self._delta)
        self._delta = np.empty(0, self._dtype)
        self._tombs = np.empty(0, self._dtype)

    def widen(self, tie_width: int) -> None:
        """Re-encode every key with a wider tie (zero padded, so the order is unchanged)."""
        if tie_width < self._tie_width or self._tie_width == 0:
            raise ValueError("can only widen a non-zero tie width")
        self.compact()
        extra = tie_width - self._tie_width
        self._tie_width = tie_width
        self._dtype = np.dtype(f"S{self._dtype.itemsize + extra}")
        self._main = self._pad(self._main, extra)
        self._key_of = self._pad(self._key_of, extra)
        self._delta = np.empty(0, self._dtype)
        self._tombs = np.empty(0, self._dtype)

    def _pad(self, keys: KeyArray, extra: int) -> KeyArray:
        raw = keys.view(np.uint8).reshape(keys.shape[0], keys.dtype.itemsize)
        split = raw.shape[1] - _USER_WIDTH
        zeros = np.zeros((raw.shape[0], extra), dtype=np.uint8)
        padded = np.concatenate([raw[:, :split], zeros, raw[:, split:]], axis=1)
        return np.ascontiguousarray(padded).view(self._dtype).ravel()

    def _reserve(self, n_users: int) -> None:
        if n_users <= self._present.shape[0]:
            return
        capacity = max(n_users, 2 * self._present.shape[0], 1024)
        key_of = np.zeros(capacity, self._dtype)
        key_of[: self._key_of.shape[0]] = self._key_of
        present = np.zeros(capacity, dtype=bool)
        present[: self._present.shape[0]] = self._present
        self._key_of, self._present = key_of, present

    def _discard(self, keys: KeyArray) -> None:
        keys = np.sort(keys)
        in_delta = _members(self._delta, keys)
        self._delta = _difference(self._delta, keys[in_delta])
        self._tombs = _union(self._tombs, keys[~in_delta])

    def _insert(self, keys: KeyArray) -> None:
        keys = np.sort(keys)
        resurrected = _members(self._tombs, keys)
        self._tombs = _difference(self._tombs, keys[resurrected])
        self._delta = _union(self._delta, keys[~resurrected])

    def _maybe_merge(self) -> None:
        if self.buffered > self.merge_threshold:
            self.compact()

    # -- reads -----------------------------------------------------------------------------

    def _count_below(self, queries: KeyArray, side: str = "left") -> IntArray:
        order = np.argsort(queries, kind="stable")
        q = queries[order]
        counts = _search(self._main, q, side) - _search(self._tombs, q, side)
        counts += _search(self._delta, q, side)
        out = np.empty_like(counts)
        out[order] = counts
        return out

    def count_better(
        self,
        scores: npt.ArrayLike,
        achieved_at: npt.ArrayLike,
        users: npt.ArrayLike | None = None,
        ties: npt.ArrayLike | None = None,
    ) -> IntArray:
        """How many live entries strictly beat each query key (vectorised).

        With ``tie_width == 0`` pass ``users`` (the tie); otherwise pass ``ties`` and the
        user's own entry (same tie) never counts. A user's rank is ``1 + count_better``.
        """
        n = np.atleast_1d(np.asarray(scores)).shape[0]
        u = np.zeros(n, dtype=np.int64) if users is None or self._tie_width else users
        return self._count_below(self._keys(scores, achieved_at, u, ties))

    def rank_of(self, users: npt.ArrayLike) -> IntArray:
        """0-based rank of each user's own key; -1 for users without a key."""
        u = np.atleast_1d(np.asarray(users, dtype=np.int64))
        known = (u >= 0) & (u < self._present.shape[0])
        known[known] = self._present[u[known]]
        ranks = np.full(u.shape[0], -1, dtype=np.int64)
        if known.any():
            ranks[known] = self._count_below(self._key_of[u[known]])
        return ranks

    def entries_of(self, users: npt.ArrayLike) -> IndexEntries:
        """The keys of users that are present (vectorised ``get``), in the order given."""
        u = np.atleast_1d(np.asarray(users, dtype=np.int64))
        u = u[(u >= 0) & (u < self._present.shape[0])]
        return self._decode(self._key_of[u[self._present[u]]])

    def user_indexes(self) -> IntArray:
        """Every user index holding a key, ascending."""
        return np.flatnonzero(self._present).astype(np.int64)

    def get(self, user: int) -> tuple[float, float] | None:
        """``(score, achieved_at)`` of a user, or None (plain Python: no arrays built)."""
        if user not in self:
            return None
        raw = self._key_of[user : user + 1].tobytes()  # full width: bytes(np.bytes_) drops NULs
        ordered_score, ordered_at = struct.unpack(">QQ", raw[:_HEAD])
        score = _float_from_ordered_one(ordered_score)
        return (-score if self.descending else score) + 0.0, _float_from_ordered_one(ordered_at)

    # -- one key, in plain Python (a single rank costs microseconds, not array set-ups) ------

    def _key_one(self, score: float, achieved_at: float, tie: bytes, user: int) -> np.ndarray:
        if len(tie) > self._tie_width:
            raise ValueError(f"ties must be at most {self._tie_width} bytes")
        if not (math.isfinite(score) and math.isfinite(achieved_at)):
            raise ValueError("scores and achieved_at must be finite")
        head = struct.pack(">QQ", _ordered_one(-score if self.descending else score), _ordered_one(achieved_at))
        key = head + tie.ljust(self._tie_width, b"\0") + user.to_bytes(_USER_WIDTH, "big")
        return np.array(key, self._dtype)

    def _count_below_one(self, key: np.ndarray) -> int:
        below = int(np.searchsorted(self._main, key))
        if self._tombs.shape[0]:
            below -= int(np.searchsorted(self._tombs, key))
        if self._delta.shape[0]:
            below += int(np.searchsorted(self._delta, key))
        return below

    def count_better_one(self, score: float, achieved_at: float, tie: bytes = b"", user: int = 0) -> int:
        """``count_better`` of one key: ``tie`` with ``tie_width > 0``, else ``user``."""
        return self._count_below_one(self._key_one(score, achieved_at, tie, 0 if self._tie_width else user))

    def rank_one(self, user: int) -> int:
        """``rank_of`` of one user (-1: no key)."""
        if user not in self:
            return -1
        return self._count_below_one(self._key_of[user : user + 1].reshape(()))

    def top(self, n: int, offset: int = 0) -> IndexEntries:
        """Entries at ranks ``offset .. offset + n - 1`` (0-based), best first."""
        if n <= 0 or offset >= self._size:
            return self._decode(np.empty(0, self._dtype))
        if offset <= 0:
            return self._decode(self._keys_after(None, n))
        start = self._select(offset)
        rest = self._keys_after(start, n - 1)
        return self._decode(np.concatenate([np.array([start], self._dtype), rest]))

    def after(
        self,
        score: float,
        achieved_at: float,
        n: int,
        *,
        user: int = _AFTER_ALL_USERS,
        tie: bytes = b"",
    ) -> IndexEntries:
        """Keyset page: up to ``n`` entries ranked strictly after the key ``(score, at, tie)``.

        With ``tie_width > 0`` every entry whose tie equals ``tie`` at that score and time is
        excluded (it *is* the cursor); with ``tie_width == 0`` pass the cursor's ``user``.
        """
        ties = [tie] if self._tie_width else None
        cursor = self._keys([score], [achieved_at], [user], ties)[0]
        return self._decode(self._keys_after(cursor, n))

    def around(self, user: int, k: int) -> IndexEntries:
        """The user's entry with up to ``k`` entries above and ``k`` below it."""
        rank = int(self.rank_of([user])[0])
        if rank < 0:
            return self._decode(np.empty(0, self._dtype))
        offset = max(0, rank - k)
        return self.top(rank - offset + k + 1, offset)

    def export(self) -> tuple[IndexEntries, KeyArray]:
        """Every entry in rank order and its tie bytes (numpy ``S<tie_width>``), decoded from
        the keys with numpy alone (no per-entry Python)."""
        keys = self._keys_after(None, self._size)
        raw = keys.view(np.uint8).reshape(-1, self._dtype.itemsize)
        ties = np.ascontiguousarray(raw[:, _HEAD : _HEAD + self._tie_width]).view(f"S{max(self._tie_width, 1)}").ravel()
        return self._decode(keys), ties if self._tie_width else np.zeros(keys.shape[0], "S1")

    def iter_entries(self, chunk: int = 65_536) -> Iterator[IndexEntries]:
        """All entries in rank order, ``chunk`` at a time (do not write while iterating)."""
        cursor: bytes | None = None
        while True:
            keys = self._keys_after(cursor, chunk)
            if keys.shape[0] == 0:
                return
            yield self._decode(keys)
            cursor = keys[-1]

    def _keys_after(self, cursor: bytes | None, n: int) -> KeyArray:
        """Up to ``n`` live keys strictly greater than ``cursor`` (all keys if None)."""
        if n <= 0:
            return np.empty(0, self._dtype)
        main_live, exhausted = self._main_live_after(cursor, n)
        delta_start = 0 if cursor is None else self._position(self._delta, cursor)
        delta_stop = self._delta.shape[0]
        if not exhausted:
            delta_stop = int(np.searchsorted(self._delta, main_live[-1:], side="right")[0])
        delta = self._delta[delta_start : min(delta_stop, delta_start + n)]
        return _union(main_live, delta)[:n]

    def _position(self, keys: KeyArray, cursor: bytes) -> int:
        return int(np.searchsorted(keys, np.array([cursor], self._dtype), side="right")[0])

    def _main_live_after(self, cursor: bytes | None, n: int) -> tuple[KeyArray, bool]:
        """First ``n`` non-tombstoned main keys after ``cursor``; and whether main ran out."""
        pos = 0 if cursor is None else self._position(self._main, cursor)
        found: list[KeyArray] = []
        count, step = 0, max(2 * n, 256)
        while count < n and pos < self._main.shape[0]:
            chunk = self._main[pos : pos + step]
            live = chunk[~_members(self._tombs, chunk)]
            found.append(live)
            count += live.shape[0]
            pos += step
        keys = np.concatenate(found) if found else np.empty(0, self._dtype)
        return keys[:n], count < n

    def _select(self, rank: int) -> bytes:
        """The live key at 0-based ``rank`` (``0 <= rank < len``), in O(log^2 N)."""
        main = self._main
        i = bisect.bisect_right(range(main.shape[0]), rank, key=self._live_upto)
        base = self._live_upto(i - 1) if i > 0 else 0
        low = main[i - 1 : i] if i > 0 else None
        lo = 0 if low is None else int(np.searchsorted(self._delta, low, side="right")[0])
        hi = self._delta.shape[0]
        candidates = self._delta[lo:]
        if i < main.shape[0]:
            hi = int(np.searchsorted(self._delta, main[i : i + 1], side="left")[0])
            candidates = self._delta[lo:hi]
            if not _members(self._tombs, main[i : i + 1])[0]:
                candidates = np.concatenate([candidates, main[i : i + 1]])
        return bytes(candidates[rank - base])

    def _live_upto(self, i: int) -> int:
        """Number of live keys ``<= main[i]``."""
        key = self._main[i : i + 1]
        dead = _search(self._tombs, key, "right")[0]
        newer = _search(self._delta, key, "right")[0]
        return int(i + 1 - dead + newer)
