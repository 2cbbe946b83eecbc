"""Leaderboards: boards of results across classes, split into shards, each one Ray actor.

Modules, by job (docs/leaderboards.md has the whole model):

* ``spec`` — ``LeaderboardSpec``, periods, value types, merging of shard answers;
* ``writes`` — ``Write`` and the columnar ``WriteBatch``, validation, shard hashing;
* ``errors`` — ``LeaderboardError`` (the root) and ``Problem``;
* ``rank_index`` — ``RankIndex``, the sorted index that counts who beats a key;
* ``records`` — a shard's records per period, as columns;
* ``peers`` — each shard's replica of the other shards' rank keys;
* ``shard`` — ``LeaderboardShard``: one shard's plain state (no Ray, no Redis);
* ``shard_actor`` — ``LeaderboardShardActor``: its thin Ray shell, checkpoints and log in Redis;
* ``router`` — ``Leaderboards``: the client API that routes writes and merges queries;
* ``results`` — a class's results published to its boards (the session actors' results sink).

The names below are the public API; import them from ``leaderboards``.
"""

from __future__ import annotations

from leaderboards.errors import LeaderboardError, Problem, QueryError, SpecError, WriteError
from leaderboards.results import publish_from_session, publish_session_results, session_writes
from leaderboards.router import (
    AroundAnswer,
    BadCursor,
    Board,
    BoardConflict,
    BoardUnavailable,
    Leaderboards,
    LeaderboardsError,
    RankedEntry,
    TopPage,
    UnknownBoard,
    WriteResult,
)
from leaderboards.shard import LeaderboardShard
from leaderboards.shard_actor import LeaderboardShardActor
from leaderboards.spec import Entry, LeaderboardSpec, Operator, Period, Record, SortOrder
from leaderboards.writes import CLASS_TAG, Write, WriteBatch, shard_of, shards_of

__all__ = [
    "CLASS_TAG",
    "AroundAnswer",
    "BadCursor",
    "Board",
    "BoardConflict",
    "BoardUnavailable",
    "Entry",
    "LeaderboardError",
    "LeaderboardShard",
    "LeaderboardShardActor",
    "LeaderboardSpec",
    "Leaderboards",
    "LeaderboardsError",
    "Operator",
    "Period",
    "Problem",
    "QueryError",
    "RankedEntry",
    "Record",
    "SortOrder",
    "SpecError",
    "TopPage",
    "UnknownBoard",
    "Write",
    "WriteBatch",
    "WriteError",
    "WriteResult",
    "publish_from_session",
    "publish_session_results",
    "session_writes",
    "shard_of",
    "shards_of",
]
