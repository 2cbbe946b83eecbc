"""Every leaderboard error: ``LeaderboardError`` is the root (``problem`` says why).

The shard logic raises ``SpecError``, ``WriteError`` and ``QueryError`` (they cross Ray
calls: ``__reduce__``); the router (``leaderboards/router.py``) adds its ``LeaderboardsError``
family (unknown board, conflict, bad cursor, unavailable), raised on the caller's side only.
The edge maps both to HTTP statuses in one place (``api/errors.py``).
"""

from __future__ import annotations

import enum

__all__ = ["LeaderboardError", "Problem", "QueryError", "SpecError", "WriteError"]


class Problem(enum.Enum):
    """Why a leaderboard call was refused."""

    BAD_NAME = "bad_name"
    BAD_ENUM = "bad_enum"
    BAD_TIMEZONE = "bad_timezone"
    BAD_COHORT_KEYS = "bad_cohort_keys"
    BAD_SHARDING = "bad_sharding"
    BAD_USER = "bad_user"
    BAD_SOURCE = "bad_source"
    BAD_NUMBER = "bad_number"
    BAD_TAGS = "bad_tags"
    BAD_WRITE = "bad_write"
    MISSING_CLASS = "missing_class"
    WRONG_SHARD = "wrong_shard"
    PERIOD_REQUIRED = "period_required"
    COHORT_NOT_INDEXED = "cohort_not_indexed"
    BAD_CHECKPOINT = "bad_checkpoint"
    MOVED = "moved"


class LeaderboardError(Exception):
    """Root of every leaderboard error; ``problem`` says why, ``str()`` says it for humans."""

    def __init__(self, problem: Problem, message: str) -> None:
        super().__init__(message)
        self.problem = problem

    def __reduce__(self) -> tuple[type, tuple[Problem, str]]:  # crosses process boundaries (Ray)
        return (type(self), (self.problem, str(self)))


class SpecError(LeaderboardError):
    """The ``LeaderboardSpec`` (or shard configuration) is invalid."""


class WriteError(LeaderboardError):
    """A write was rejected; no write of its batch was applied."""


class QueryError(LeaderboardError):
    """A query names no period where one is required, or a cohort the spec does not index."""
