"""Peer replicas: every shard keeps a copy of the other shards' rank keys, for one-call ranks.

An exact global rank needs the user's key from its owner shard and then a count from every
other shard: two rounds of Ray calls. To answer in one, each shard also holds a *replica* of
the main (non-cohort) index of every period of every other shard of its board, fed by the
owners, and counts the entries of its peers that beat a key locally. Such an answer is exact
as of the moment each peer last reported (``age_s``); callers state how old an answer they
accept, and fall back to the two-round exact path otherwise.

Protocol, per ordered pair (owner, replica):

* the owner numbers its messages ``seq`` = 1, 2, ... within its ``epoch`` (the fenced epoch of
  its Redis state, new after every restart) and sends each one as ``PeerMessage``. A message
  carries the owner's entry changes since the previous one (``upsert`` of users' keys,
  ``remove`` of users, ``drop`` of a period) and its send time. Heartbeats are messages with
  no changes and the same ``seq`` as the previous one; they only refresh the send time;
* Ray runs one caller's calls to one actor in submission order, so a replica sees the
  messages of a live owner in order. A replica applies a message iff it continues the
  sequence it holds (same epoch, ``seq`` = held + 1, or = held for a heartbeat). Anything
  else — a new epoch, a gap from a lost call — makes the peer *unsynced*;
* an unsynced peer is re-read whole: the replica asks the owner for a ``PeerSnapshot``
  (every entry of every period, and the epoch and seq it reflects) and keeps the messages
  that arrive meanwhile, then applies those newer than the snapshot.

Replica user index: ``peer_uid * shard_count + peer`` (unique across peers; below
``MAX_USERS`` for boards up to 2**32 / shard_count users per shard).

Memory: one more key and one more per-user slot per entry of every other shard, about
2 x (24 + tie width) bytes; measured and reported by ``memory()``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from leaderboards.rank_index import RankIndex

__all__ = ["Change", "PeerMessage", "PeerReplica", "PeerSnapshot"]

Change = tuple[Any, ...]
"""``("upsert", period, uids, scores, achieved_at, ties)`` | ``("remove", period, uids)`` |
``("drop", period)``; ``uids`` int64, ``scores``/``achieved_at`` float64 arrays, ``ties`` an
array of UTF-8 user ids (numpy ``S``)."""


@dataclass(frozen=True)
class PeerMessage:
    """Changes of one owner shard, in order; ``changes == []`` is a heartbeat."""

    peer: int
    epoch: int
    seq: int
    sent_at: float
    changes: list[Change] = field(default_factory=list)


@dataclass(frozen=True)
class PeerSnapshot:
    """Every main-index entry of an owner, per period, as of ``(epoch, seq)``."""

    peer: int
    epoch: int
    seq: int
    sent_at: float
    periods: dict[str, tuple[npt.NDArray[np.int64], npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.bytes_]]]


_GAP_TIMEOUT_S = 2.0
_MAX_AHEAD = 256
_MAX_PENDING = 1024


@dataclass
class _Peer:
    epoch: int = -1
    seq: int = -1
    sent_at: float = 0.0
    synced: bool = False
    pending: list[PeerMessage] = field(default_factory=list)  # while unsynced
    ahead: dict[int, PeerMessage] = field(default_factory=dict)  # arrived before their turn
    gap_since: float | None = None


class PeerReplica:
    """The keys of every other shard of a board (one ``RankIndex`` per period).

    Not thread-safe; the shard actor calls it from its event loop only.
    """

    def __init__(self, shard_index: int, shard_count: int, *, descending: bool) -> None:
        self.shard_index, self.shard_count, self.descending = shard_index, shard_count, descending
        self._peers = {p: _Peer() for p in range(shard_count) if p != shard_index}
        self._indexes: dict[str, RankIndex] = {}
        self._tie_width = 16
        self.resyncs = 0

    # -- feeding ----------------------------------------------------------------------------

    def unsynced(self) -> list[int]:
        """Peers whose entries this replica does not hold (they need a snapshot)."""
        return [p for p, state in self._peers.items() if not state.synced]

    def receive(self, message: PeerMessage, now: float | None = None) -> bool:
        """Take an owner's message; False when it cannot be applied in order (the peer is
        then unsynced, and its later messages wait for the snapshot).

        Messages that arrive early (Ray does not promise order for async actors) wait in
        ``ahead`` for the missing ones; a gap that lasts ``_GAP_TIMEOUT_S`` (a lost call)
        unsyncs the peer. A heartbeat refreshes the view's time only when nothing is missing.
        """
        state = self._peers[message.peer]
        if state.synced and message.epoch < state.epoch:
            return True  # a straggler from an instance that has since been replaced
        if not state.synced:
            state.pending.append(message)
            del state.pending[:-_MAX_PENDING]  # bounded: a longer wait ends in another snapshot
            return False
        if message.epoch != state.epoch:  # the owner restarted
            self._unsync(state, message)
            return False
        if message.changes and message.seq > state.seq:
            state.ahead[message.seq] = message
        while state.seq + 1 in state.ahead:
            ready = state.ahead.pop(state.seq + 1)
            self._apply(message.peer, ready.changes)
            state.seq, state.sent_at = ready.seq, max(state.sent_at, ready.sent_at)
        if not message.changes and message.seq == state.seq:
            state.sent_at = max(state.sent_at, message.sent_at)
        missing = bool(state.ahead) or message.seq > state.seq
        if not missing:
            state.gap_since = None
            return True
        now = time.monotonic() if now is None else now
        if state.gap_since is None:
            state.gap_since = now
        elif now - state.gap_since > _GAP_TIMEOUT_S or len(state.ahead) > _MAX_AHEAD:
            self._unsync(state, message)
            return False
        return True

    @staticmethod
    def _unsync(state: _Peer, message: PeerMessage) -> None:
        state.synced = False
        state.pending = sorted([*state.ahead.values(), message], key=lambda m: (m.epoch, m.seq))
        state.ahead, state.gap_since = {}, None

    def load(self, snapshot: PeerSnapshot) -> bool:
        """Replace a peer's entries by a snapshot, then take the messages that arrived
        meanwhile; False if they do not follow it (the peer is unsynced again)."""
        state = self._peers[snapshot.peer]
        for index in self._indexes.values():
            index.remove_many(self._peer_uids(index, snapshot.peer))
        for period, (uids, scores, times, ties) in snapshot.periods.items():
            self._apply(snapshot.peer, [("upsert", period, uids, scores, times, ties)])
        state.epoch, state.seq, state.sent_at, state.synced = snapshot.epoch, snapshot.seq, snapshot.sent_at, True
        state.ahead, state.gap_since = {}, None
        self.resyncs += 1
        pending, state.pending = sorted(state.pending, key=lambda m: (m.epoch, m.seq)), []
        for message in pending:
            if (message.epoch, message.seq) < (snapshot.epoch, snapshot.seq):
                continue  # older than the snapshot, which holds its changes
            if (message.epoch, message.seq) == (snapshot.epoch, snapshot.seq) and message.changes:
                continue
            if not self.receive(message):
                return False
        return True

    def _peer_uids(self, index: RankIndex, peer: int) -> npt.NDArray[np.int64]:
        users = index.user_indexes()
        return users[users % self.shard_count == peer]

    def _widen(self, width: int) -> None:
        self._tie_width = -(-width // 8) * 8
        for index in self._indexes.values():
            index.widen(self._tie_width)

    def _apply(self, peer: int, changes: Iterable[Change]) -> None:
        for change in changes:
            kind, period = change[0], change[1]
            if kind == "drop":
                index = self._indexes.get(period)
                if index is not None:
                    index.remove_many(self._peer_uids(index, peer))
                    if not len(index):
                        del self._indexes[period]
                continue
            uids = np.asarray(change[2], np.int64) * self.shard_count + peer
            index = self._indexes.get(period)
            if kind == "remove":
                if index is not None:
                    index.remove_many(uids)
                continue
            _, _, _, scores, times, ties = change
            ties = np.asarray(ties, dtype=np.bytes_)
            if ties.dtype.itemsize > self._tie_width:
                self._widen(ties.dtype.itemsize)
            if index is None:
                index = self._indexes[period] = RankIndex(descending=self.descending, tie_width=self._tie_width)
            index.upsert_many(uids, scores, times, ties)

    # -- reading ----------------------------------------------------------------------------

    def age_s(self, now: float | None = None) -> float | None:
        """How old the oldest peer's view is (None: some peer is unsynced)."""
        if any(not s.synced for s in self._peers.values()):
            return None
        if not self._peers:
            return 0.0
        now = time.time() if now is None else now
        return max(0.0, now - min(s.sent_at for s in self._peers.values()))

    def count_better(self, period: str, score: float, achieved_at: float, tie: bytes) -> int:
        """Entries of every peer that beat the key (the caller checks ``age_s`` first)."""
        index = self._indexes.get(period)
        if index is None or not len(index):
            return 0
        if len(tie) > self._tie_width:  # a longer id than any peer's: once, O(N)
            self._widen(len(tie))
        return index.count_better_one(score, achieved_at, tie)

    def size(self, period: str) -> int:
        index = self._indexes.get(period)
        return 0 if index is None else len(index)

    def nbytes(self) -> int:
        return sum(index.nbytes for index in self._indexes.values())

    def status(self) -> dict[str, Any]:
        return {
            "peers": {str(p): {"epoch": s.epoch, "seq": s.seq, "synced": s.synced} for p, s in self._peers.items()},
            "age_s": self.age_s(),
            "resyncs": self.resyncs,
            "entries": sum(len(i) for i in self._indexes.values()),
        }

