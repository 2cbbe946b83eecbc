"""Leaderboard specs, periods, value types and validation against a spec. No Ray, no Redis.

Split out of ``leaderboards/shard.py`` (which re-exports everything here): a board's
``LeaderboardSpec`` and its periods (``period_key`` / ``next_reset``), the value types that
cross process boundaries (``Record``, ``SortKey``, ``Entry``, ``Page``, ``Located``,
``Around``, ``MemoryReport``), the merges of per-shard answers (``merge_top``,
``merge_around``) and the spec-dependent checks of writes (``check_write``,
``batch_periods``).
"""

from __future__ import annotations

import enum
import heapq
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import date, datetime, timedelta
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import numpy.typing as npt

from leaderboards.writes import (
    CLASS_TAG,
    Problem,
    QueryError,
    SpecError,
    Tags,
    Write,
    WriteBatch,
    WriteError,
    normal_tags,
    real,
    user_bytes,
)

_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


# -- spec and periods --------------------------------------------------------------------


class Operator(enum.StrEnum):
    """How a user's records make their entry (Nakama's best / incr / set).

    ``best``: the best record; ``sum``: the exactly rounded sum of every source's record,
    achieved at the latest of them; ``latest``: the record with the latest ``achieved_at``
    (then the greatest source).
    """

    BEST = "best"
    SUM = "sum"
    LATEST = "latest"


class SortOrder(enum.StrEnum):
    DESC = "desc"
    ASC = "asc"


class Period(enum.StrEnum):
    """Reset schedule; resets happen at local midnight in ``spec.timezone``."""

    ALLTIME = "alltime"
    CLASS = "class"
    DAILY = "daily"
    WEEKLY = "weekly"
    MONTHLY = "monthly"


def _enum(kind: type[enum.StrEnum], value: object) -> Any:
    try:
        return kind(value)  # type: ignore[arg-type]  # anything else is refused just below
    except ValueError:
        allowed = ", ".join(m.value for m in kind)
        raise SpecError(Problem.BAD_ENUM, f"{kind.__name__} must be one of {allowed}") from None


@dataclass(frozen=True)
class LeaderboardSpec:
    """What a board ranks and how; immutable and validated on construction.

    ``cohort_keys`` are tag names whose values get their own index (one per value), so that
    ranks within a cohort are O(log N) too. Combined cohorts are a derived tag written by the
    producer (e.g. ``"age_gender": "30-39/f"``).
    """

    name: str
    metric: str
    operator: Operator = Operator.BEST
    order: SortOrder = SortOrder.DESC
    period: Period = Period.ALLTIME
    timezone: str = "UTC"
    cohort_keys: tuple[str, ...] = ()
    shard_count: int = 1

    def __post_init__(self) -> None:
        for attr in ("name", "metric"):
            if not isinstance(getattr(self, attr), str) or not _NAME.fullmatch(getattr(self, attr)):
                raise SpecError(Problem.BAD_NAME, f"{attr} must match {_NAME.pattern}")
        object.__setattr__(self, "operator", _enum(Operator, self.operator))
        object.__setattr__(self, "order", _enum(SortOrder, self.order))
        object.__setattr__(self, "period", _enum(Period, self.period))
        object.__setattr__(self, "cohort_keys", tuple(self.cohort_keys))
        self._check_timezone()
        self._check_cohorts()
        if isinstance(self.shard_count, bool) or not isinstance(self.shard_count, int):
            raise SpecError(Problem.BAD_SHARDING, "shard_count must be an int")
        if not 1 <= self.shard_count <= 4096:
            raise SpecError(Problem.BAD_SHARDING, "shard_count must be in 1..4096")

    def _check_timezone(self) -> None:
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError, TypeError):
            raise SpecError(Problem.BAD_TIMEZONE, f"unknown time zone {self.timezone!r}") from None

    def _check_cohorts(self) -> None:
        keys = self.cohort_keys
        if len(set(keys)) != len(keys) or not all(isinstance(k, str) and k for k in keys):
            raise SpecError(Problem.BAD_COHORT_KEYS, "cohort_keys must be distinct non-empty str")
        if CLASS_TAG in keys and self.period is Period.CLASS:
            raise SpecError(Problem.BAD_COHORT_KEYS, f"{CLASS_TAG!r} is the period of class boards")

    @property
    def descending(self) -> bool:
        return self.order is SortOrder.DESC

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "cohort_keys": list(self.cohort_keys)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LeaderboardSpec:
        return cls(**{**data, "cohort_keys": tuple(data.get("cohort_keys", ()))})


def period_key(spec: LeaderboardSpec, t_s: float, class_id: str | None = None) -> str:
    """The period containing time ``t_s`` (epoch seconds), in the spec's time zone.

    ``"all"`` | ``class_id`` | ``"2026-11-21"`` | ``"2026-W47"`` (ISO week, Monday start) |
    ``"2026-11"``. Per-class boards need ``class_id`` (``QueryError`` otherwise).
    """
    if spec.period is Period.ALLTIME:
        return "all"
    if spec.period is Period.CLASS:
        if not class_id:
            raise QueryError(Problem.PERIOD_REQUIRED, "per-class boards need a class id")
        return class_id
    local = datetime.fromtimestamp(t_s, spec.zone)
    if spec.period is Period.DAILY:
        return local.date().isoformat()
    if spec.period is Period.WEEKLY:
        year, week, _ = local.isocalendar()
        return f"{year}-W{week:02d}"
    return f"{local.year}-{local.month:02d}"


def next_reset(spec: LeaderboardSpec, t_s: float) -> float | None:
    """Epoch seconds of the first reset after ``t_s``; None for all-time and class boards."""
    if spec.period in (Period.ALLTIME, Period.CLASS):
        return None
    today = datetime.fromtimestamp(t_s, spec.zone).date()
    if spec.period is Period.DAILY:
        start = today + timedelta(days=1)
    elif spec.period is Period.WEEKLY:
        start = today + timedelta(days=7 - today.weekday())
    else:
        start = date(today.year + today.month // 12, today.month % 12 + 1, 1)
    return datetime(start.year, start.month, start.day, tzinfo=spec.zone).timestamp()


# -- value types -------------------------------------------------------------------------

class Record(NamedTuple):
    """A stored write, as drained for resharding (``period`` is where it was filed)."""

    user: str
    source: str
    score: float
    achieved_at: float
    tags: dict[str, str]
    period: str


class SortKey(NamedTuple):
    """The sort key of an entry; also the keyset pagination cursor."""

    score: float
    achieved_at: float
    user: str


class Entry(NamedTuple):
    user: str
    score: float
    achieved_at: float
    tags: dict[str, str]

    @property
    def key(self) -> SortKey:
        return SortKey(self.score, self.achieved_at, self.user)


@dataclass(frozen=True)
class Page:
    """A keyset page from one shard.

    ``next_after`` is the key of the last entry (None when the page is short, i.e. the shard is
    exhausted). ``as_of`` is the shard's entry version when pagination started: pass it back
    unchanged with every following page.
    """

    entries: list[Entry]
    next_after: SortKey | None
    as_of: int


class Located(NamedTuple):
    """Columnar answer of ``locate_many``: per user, position (-1 if absent) and entry key."""

    positions: npt.NDArray[np.int64]
    scores: npt.NDArray[np.float64]
    achieved_at: npt.NDArray[np.float64]
    tags: list[Tags]


@dataclass(frozen=True)
class Around:
    """Entries ranked just above and below a key, and the entry itself if it is in the shard."""

    above: list[Entry]
    entry: Entry | None
    below: list[Entry]


class Rec(NamedTuple):
    score: float
    achieved_at: float
    tags: Tags


@dataclass(frozen=True)
class MemoryReport:
    """Bytes held by a shard: numpy arrays exactly, Python objects by ``sys.getsizeof``."""

    entries: int
    records: int
    array_bytes: int
    python_bytes: int

    @property
    def per_entry(self) -> float:
        return (self.array_bytes + self.python_bytes) / max(self.entries, 1)


def _order_tuple(key: SortKey, descending: bool) -> tuple[float, float, str]:
    return (-key.score if descending else key.score, key.achieved_at, key.user)


def merge_top(
    per_shard: Iterable[Sequence[Entry]], n: int, order: SortOrder = SortOrder.DESC
) -> list[Entry]:
    """k-way merge of per-shard lists (each sorted best first) into the best ``n`` entries."""
    descending = SortOrder(order) is SortOrder.DESC
    merged = heapq.merge(*per_shard, key=lambda e: _order_tuple(e.key, descending))
    return [e for _, e in zip(range(n), merged, strict=False)]


def merge_around(parts: Iterable[Around], k: int, order: SortOrder = SortOrder.DESC) -> Around:
    """Combine every shard's ``around_key`` into the global k above / k below."""
    parts = list(parts)
    above = merge_top([p.above for p in parts], sys.maxsize, order)[-k:] if k else []
    below = merge_top([p.below for p in parts], k, order)
    entry = next((p.entry for p in parts if p.entry is not None), None)
    return Around(above, entry, below)


# -- validation against a spec ----------------------------------------------------------


def checked_write(spec: LeaderboardSpec, write: Write) -> tuple[str, Rec]:
    user_bytes(write.user, WriteError)
    if not isinstance(write.source, str) or not write.source:
        raise WriteError(Problem.BAD_SOURCE, "source must be a non-empty str")
    score = real(write.score, "score", WriteError)
    achieved_at = real(write.achieved_at, "achieved_at", WriteError)
    tags = normal_tags(write.tags)
    class_id = dict(tags).get(CLASS_TAG) if tags else None
    if spec.period is Period.CLASS and not class_id:
        raise WriteError(Problem.MISSING_CLASS, f"per-class boards need a {CLASS_TAG!r} tag")
    period = period_key(spec, achieved_at, class_id)
    return period, Rec(score + 0.0, achieved_at + 0.0, tags)


def check_write(spec: LeaderboardSpec, write: Write | tuple[Any, ...]) -> Write:
    """Validate one write against a board (everything but its shard); raise ``WriteError``.

    Routers call it on a whole batch before fanning it out, so that a bad write in one shard's
    part cannot leave the other shards' parts applied.
    """
    checked = Write(*write)
    checked_write(spec, checked)
    return checked


def batch_periods(spec: LeaderboardSpec, batch: WriteBatch) -> list[tuple[str, npt.NDArray[np.int64] | None]]:
    """File every write of a batch in its period: ``[(period, positions)]``, where positions
    None means the whole batch (the common case, found without a per-write step: periods are
    contiguous spans of time, so a batch whose first and last times share a period lies in
    it). Raises ``WriteError(MISSING_CLASS)`` for a per-class board's write without a class.
    """
    n = len(batch)
    if n == 0:
        return []
    if spec.period is Period.ALLTIME:
        return [("all", None)]
    if spec.period is Period.CLASS:
        keys = []
        for tags in batch.tags or [()] * n:
            class_id = dict(tags).get(CLASS_TAG) if tags else None
            if not class_id:
                raise WriteError(Problem.MISSING_CLASS, f"per-class boards need a {CLASS_TAG!r} tag")
            keys.append(class_id)
    else:
        first = period_key(spec, float(batch.achieved_at.min()))
        if first == period_key(spec, float(batch.achieved_at.max())):
            return [(first, None)]
        keys = [period_key(spec, t) for t in batch.achieved_at.tolist()]
    groups: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    if len(groups) == 1:
        return [(keys[0], None)]
    return [(key, np.array(positions, np.int64)) for key, positions in groups.items()]
