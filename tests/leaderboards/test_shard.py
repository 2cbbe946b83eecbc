"""LeaderboardShard and friends, checked against brute-force sorts with an injected clock."""

from __future__ import annotations

import math
import pickle
import random
from datetime import datetime
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from leaderboards.shard import (
    CLASS_TAG,
    Entry,
    LeaderboardError,
    LeaderboardShard,
    LeaderboardSpec,
    Operator,
    Problem,
    QueryError,
    Record,
    SortKey,
    SpecError,
    Write,
    WriteBatch,
    WriteError,
    memory_per_entry,
    merge_around,
    merge_top,
    next_reset,
    period_key,
    shard_of,
)
from storage.errors import CheckpointError

BERLIN = ZoneInfo("Europe/Berlin")


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def berlin(*args: int) -> float:
    return datetime(*args, tzinfo=BERLIN).timestamp()


def order_key(descending: bool, score: float, at: float, user: str) -> tuple[float, float, str]:
    return (-score if descending else score, at, user)


def make_shards(spec: LeaderboardSpec, clock: Clock) -> list[LeaderboardShard]:
    return [LeaderboardShard(spec, shard_index=i, now=clock) for i in range(spec.shard_count)]


def route(shards: list[LeaderboardShard], writes: list[Write]) -> None:
    count = len(shards)
    for i, shard in enumerate(shards):
        shard.write_many([w for w in writes if shard_of(w.user, count) == i])


def global_top(shards: list[LeaderboardShard], **query: object) -> list[Entry]:
    lists = [s.top(10**9, **query).entries for s in shards]  # type: ignore[arg-type]
    return merge_top(lists, 10**9, shards[0].spec.order)


def global_rank(shards: list[LeaderboardShard], key: SortKey, **query: object) -> int:
    return 1 + sum(s.count_better(*key, **query) for s in shards)  # type: ignore[arg-type]


# -- specs and periods -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"timezone": "Mars/Olympus"}, Problem.BAD_TIMEZONE),
        ({"operator": "max"}, Problem.BAD_ENUM),
        ({"order": "up"}, Problem.BAD_ENUM),
        ({"period": "hourly"}, Problem.BAD_ENUM),
        ({"shard_count": 0}, Problem.BAD_SHARDING),
        ({"shard_count": True}, Problem.BAD_SHARDING),
        ({"name": "has space"}, Problem.BAD_NAME),
        ({"cohort_keys": ("age", "age")}, Problem.BAD_COHORT_KEYS),
        ({"cohort_keys": ("",)}, Problem.BAD_COHORT_KEYS),
        ({"period": "class", "cohort_keys": (CLASS_TAG,)}, Problem.BAD_COHORT_KEYS),
    ],
)
def test_bad_specs_raise_spec_errors(kwargs: dict[str, object], problem: Problem) -> None:
    base: dict[str, object] = {"name": "kcal-week", "metric": "kcal"}
    with pytest.raises(SpecError) as info:
        LeaderboardSpec(**{**base, **kwargs})  # type: ignore[arg-type]
    assert info.value.problem is problem
    assert isinstance(info.value, LeaderboardError)


def test_spec_coerces_strings_and_round_trips() -> None:
    spec = LeaderboardSpec("b", "kcal", operator="sum", order="asc", period="weekly")  # type: ignore[arg-type]
    assert spec.operator is Operator.SUM and not spec.descending
    assert LeaderboardSpec.from_dict(spec.to_dict()) == spec


def test_period_keys_in_the_board_time_zone() -> None:
    weekly = LeaderboardSpec("w", "kcal", period="weekly", timezone="Europe/Berlin")  # type: ignore[arg-type]
    assert period_key(weekly, berlin(2026, 11, 22, 23, 59)) == "2026-W47"
    assert period_key(weekly, berlin(2026, 11, 23, 0, 0)) == "2026-W48"
    # 23:30 UTC on Sunday is already Monday in Berlin.
    assert period_key(weekly, datetime(2026, 11, 22, 23, 30, tzinfo=ZoneInfo("UTC")).timestamp()) == "2026-W48"
    assert next_reset(weekly, berlin(2026, 11, 21, 12, 0)) == berlin(2026, 11, 23, 0, 0)
    daily = LeaderboardSpec("d", "kcal", period="daily", timezone="Europe/Berlin")  # type: ignore[arg-type]
    assert period_key(daily, berlin(2026, 3, 29, 3, 0)) == "2026-03-29"
    dst_day = next_reset(daily, berlin(2026, 3, 29, 1, 0)) - berlin(2026, 3, 29, 0, 0)  # type: ignore[operator]
    assert dst_day == 23 * 3600
    monthly = LeaderboardSpec("m", "kcal", period="monthly", timezone="Europe/Berlin")  # type: ignore[arg-type]
    assert period_key(monthly, berlin(2026, 12, 31, 23, 0)) == "2026-12"
    assert next_reset(monthly, berlin(2026, 12, 31, 23, 0)) == berlin(2027, 1, 1, 0, 0)
    assert period_key(LeaderboardSpec("a", "kcal"), 0.0) == "all"
    per_class = LeaderboardSpec("c", "kcal", period="class")  # type: ignore[arg-type]
    assert period_key(per_class, 0.0, "spin-42") == "spin-42"
    with pytest.raises(QueryError):
        period_key(per_class, 0.0)
    assert next_reset(per_class, 0.0) is None


def test_weekly_board_resets_monday_midnight_and_keeps_past_weeks() -> None:
    spec = LeaderboardSpec("w", "kcal", operator="sum", period="weekly", timezone="Europe/Berlin")  # type: ignore[arg-type]
    clock = Clock(berlin(2026, 11, 22, 23, 0))
    shard = LeaderboardShard(spec, now=clock)
    shard.write_many([("ann", "s1", 300, berlin(2026, 11, 22, 22, 0)), ("bob", "s1", 200, clock.t)])
    assert [e.user for e in shard.top(10).entries] == ["ann", "bob"]
    clock.t = berlin(2026, 11, 23, 0, 0)
    assert shard.current_period() == "2026-W48"
    assert shard.top(10).entries == [] and shard.entry("ann") is None
    shard.write_many([("bob", "s2", 50, clock.t)])
    assert [(e.user, e.score) for e in shard.top(10).entries] == [("bob", 50.0)]
    past = shard.top(10, period="2026-W47").entries
    assert [(e.user, e.score) for e in past] == [("ann", 300.0), ("bob", 200.0)]
    assert shard.periods() == ["2026-W47", "2026-W48"]
    # A late result is filed under the week it was achieved in, not the current one.
    shard.write_many([("bob", "s3", 150, berlin(2026, 11, 20, 9, 0))])
    assert shard.entry("bob", period="2026-W47").score == 350.0  # type: ignore[union-attr]
    assert shard.drop_period("2026-W47") == 3 and shard.periods() == ["2026-W48"]


def test_per_class_boards_file_writes_by_class_tag() -> None:
    spec = LeaderboardSpec("c", "kcal", period="class")  # type: ignore[arg-type]
    shard = LeaderboardShard(spec, now=Clock(0.0))
    shard.write_many([("ann", "dev1", 10, 1.0, {CLASS_TAG: "spin-1"}), ("bob", "dev2", 20, 1.0, {CLASS_TAG: "spin-2"})])
    assert [e.user for e in shard.top(5, period="spin-1").entries] == ["ann"]
    with pytest.raises(QueryError) as info:
        shard.top(5)
    assert info.value.problem is Problem.PERIOD_REQUIRED
    with pytest.raises(WriteError) as werr:
        shard.write_many([("ann", "dev1", 10, 1.0)])
    assert werr.value.problem is Problem.MISSING_CLASS


# -- operators, idempotency, ties ---------------------------------------------------------


def test_best_keeps_best_source_and_corrections_replace_their_source() -> None:
    shard = LeaderboardShard(LeaderboardSpec("b", "watts"), now=Clock(0.0))
    shard.write_many([("ann", "c1", 250, 10.0), ("ann", "c2", 300, 20.0), ("ann", "c2", 300, 20.0)])
    assert shard.entry("ann") == Entry("ann", 300.0, 20.0, {})
    shard.write_many([("ann", "c2", 200, 21.0)])  # c2 corrected downwards
    assert shard.entry("ann") == Entry("ann", 250.0, 10.0, {})
    asc = LeaderboardShard(LeaderboardSpec("t", "secs", order="asc"), now=Clock(0.0))  # type: ignore[arg-type]
    asc.write_many([("ann", "r1", 61.5, 1.0), ("ann", "r2", 59.9, 2.0), ("bob", "r1", 60.0, 1.0)])
    assert [(e.user, e.score) for e in asc.top(5).entries] == [("ann", 59.9), ("bob", 60.0)]


def test_sum_counts_each_source_once_with_its_latest_value() -> None:
    spec = LeaderboardSpec("s", "kcal", operator="sum")  # type: ignore[arg-type]
    shard = LeaderboardShard(spec, now=Clock(0.0))
    assert shard.write_many([("ann", "class-1", 100, 10.0), ("ann", "class-2", 50, 20.0)]) == 1
    assert shard.write_many([("ann", "class-1", 100, 10.0)]) == 0  # retried write
    assert shard.entry("ann").score == 150.0  # type: ignore[union-attr]
    shard.write_many([("ann", "class-1", 120, 30.0)])  # running total of class-1 grew
    assert shard.entry("ann") == Entry("ann", 170.0, 30.0, {})
    assert shard.write_many([("ann", "class-1", 999, 5.0)]) == 0  # stale, older than stored
    assert shard.entry("ann").score == 170.0  # type: ignore[union-attr]
    shard.write_many([(f"u{i}", "s", 0.1, 1.0) for i in range(3)] + [("ann", "class-3", 0.1, 31.0)])
    assert len(list(shard.iter_records())) == 6


def test_latest_takes_the_latest_achieved_record() -> None:
    spec = LeaderboardSpec("l", "ftp", operator="latest")  # type: ignore[arg-type]
    shard = LeaderboardShard(spec, now=Clock(0.0))
    shard.write_many([("ann", "test-a", 250, 10.0), ("ann", "test-b", 230, 20.0)])
    assert shard.entry("ann") == Entry("ann", 230.0, 20.0, {})
    shard.write_many([("ann", "test-a", 260, 15.0)])
    assert shard.entry("ann").score == 230.0  # type: ignore[union-attr]


def test_ties_break_by_earlier_time_then_user_id() -> None:
    shard = LeaderboardShard(LeaderboardSpec("b", "kcal"), now=Clock(0.0))
    shard.write_many([("carol", "s", 10, 5.0), ("bob", "s", 10, 5.0), ("dave", "s", 10, 4.0), ("al", "s", 9, 1.0)])
    assert [e.user for e in shard.top(10).entries] == ["dave", "bob", "carol", "al"]
    assert shard.count_better(10, 5.0, "bz") == 2  # dave, bob
    assert shard.count_better(10, 5.0, "bob") == 1  # the user's own entry never counts
    assert shard.rank_in_shard("carol") == 2


def test_invalid_batches_apply_nothing() -> None:
    spec = LeaderboardSpec("b", "kcal", shard_count=2)
    mine = next(u for u in (f"user{i}" for i in range(50)) if shard_of(u, 2) == 0)
    other = next(u for u in (f"user{i}" for i in range(50)) if shard_of(u, 2) == 1)
    shard = LeaderboardShard(spec, shard_index=0, now=Clock(0.0))
    bad = [
        (Write(other, "s", 1, 0.0), Problem.WRONG_SHARD),
        (Write(mine, "s", math.nan, 0.0), Problem.BAD_NUMBER),
        (Write(mine, "s", True, 0.0), Problem.BAD_NUMBER),
        (Write(mine, "", 1, 0.0), Problem.BAD_SOURCE),
        (Write(mine, "s", 1, 0.0, {"age": 30}), Problem.BAD_TAGS),  # type: ignore[dict-item]
        (Write("x" * 200, "s", 1, 0.0), Problem.BAD_USER),
        (Write("a\x00b", "s", 1, 0.0), Problem.BAD_USER),
    ]
    for write, problem in bad:
        with pytest.raises(WriteError) as info:
            shard.write_many([Write(mine, "ok", 5, 0.0), write])
        assert info.value.problem is problem
    assert list(shard.iter_records()) == [] and shard.size() == 0


# -- cohorts -----------------------------------------------------------------------------


def test_cohort_indexes_follow_the_latest_tags() -> None:
    spec = LeaderboardSpec("b", "kcal", operator="sum", cohort_keys=("age", "gender"))  # type: ignore[arg-type]
    shard = LeaderboardShard(spec, now=Clock(0.0))
    shard.write_many([
        ("ann", "s1", 30, 1.0, {"age": "30-39", "gender": "f"}),
        ("bob", "s1", 20, 1.0, {"age": "30-39"}),
        ("cat", "s1", 40, 1.0, {"age": "40-49", "gender": "f"}),
    ])
    thirties = {"age": "30-39"}
    assert [e.user for e in shard.top(5, cohort=thirties).entries] == ["ann", "bob"]
    assert shard.count_better(25, 1.0, "zed", cohort=thirties) == 1
    assert shard.rank_in_shard("bob", cohort=thirties) == 1
    shard.write_many([("bob", "s2", 100, 2.0, {"age": "40-49"})])  # bob had a birthday
    assert [e.user for e in shard.top(5, cohort=thirties).entries] == ["ann"]
    assert [e.user for e in shard.top(5, cohort={"age": "40-49"}).entries] == ["bob", "cat"]
    assert [e.user for e in shard.top(5, cohort={"gender": "f"}).entries] == ["cat", "ann"]
    assert shard.top(5, cohort={"age": "90-99"}).entries == []
    for bad in ({"city": "x"}, {"age": "30-39", "gender": "f"}):
        with pytest.raises(QueryError) as info:
            shard.top(5, cohort=bad)
        assert info.value.problem is Problem.COHORT_NOT_INDEXED
    assert shard.forget_user("cat") == 1
    assert [e.user for e in shard.top(5, cohort={"gender": "f"}).entries] == ["ann"]


# -- exact ranks against brute force ------------------------------------------------------

USERS = st.sampled_from(["a", "b", "ab", "ba", "é", "z" * 20, "u1", "u2", "u10", "Zed"])
write_strategy = st.builds(
    Write,
    user=USERS,
    source=st.sampled_from(["s1", "s2", "s3"]),
    score=st.sampled_from([0, 1, 2, 2.5, -1, 100]),
    achieved_at=st.sampled_from([0.0, 1.0, 2.0, 3.0]),
    tags=st.sampled_from([None, {"age": "young"}, {"age": "old"}]),
)


def brute_force(spec: LeaderboardSpec, writes: list[Write]) -> dict[str, tuple[float, float, str | None]]:
    """Reference semantics written independently of the shard."""
    per_source: dict[tuple[str, str], Write] = {}
    for w in writes:
        old = per_source.get((w.user, w.source))
        if old is None or w.achieved_at >= old.achieved_at:
            per_source[(w.user, w.source)] = w
    result: dict[str, tuple[float, float, str | None]] = {}
    for user in {u for u, _ in per_source}:
        recs = [w for (u, _), w in per_source.items() if u == user]
        latest = max(recs, key=lambda w: (w.achieved_at, w.source))
        age = (latest.tags or {}).get("age")
        if spec.operator is Operator.SUM:
            result[user] = (math.fsum(w.score for w in recs), max(w.achieved_at for w in recs), age)
        elif spec.operator is Operator.LATEST:
            result[user] = (latest.score, latest.achieved_at, age)
        else:
            sign = -1 if spec.descending else 1
            best = min(recs, key=lambda w: (sign * w.score, w.achieved_at, w.source))
            result[user] = (best.score, best.achieved_at, age)
    return result


@settings(max_examples=80, deadline=None)
@given(
    writes=st.lists(write_strategy, max_size=40),
    operator=st.sampled_from(list(Operator)),
    order=st.sampled_from(["desc", "asc"]),
    shard_count=st.integers(1, 4),
    probes=st.lists(st.tuples(st.sampled_from([0, 1, 2, 101]), st.sampled_from([0.0, 2.0]), USERS), max_size=5),
)
def test_ranks_match_brute_force_across_shards(writes, operator, order, shard_count, probes) -> None:
    spec = LeaderboardSpec("b", "m", operator=operator, order=order, cohort_keys=("age",), shard_count=shard_count)
    shards = make_shards(spec, Clock(0.0))
    for start in range(0, len(writes), 7):
        route(shards, writes[start : start + 7])
    expected = brute_force(spec, writes)
    desc = spec.descending
    ordered = sorted(expected, key=lambda u: order_key(desc, expected[u][0], expected[u][1], u))
    assert [(e.user, e.score, e.achieved_at) for e in global_top(shards)] == [
        (u, expected[u][0], expected[u][1]) for u in ordered
    ]
    for position, user in enumerate(ordered, start=1):
        assert global_rank(shards, SortKey(expected[user][0], expected[user][1], user)) == position
    for age in ("young", "old"):
        members = [u for u in ordered if expected[u][2] == age]
        assert [e.user for e in global_top(shards, cohort={"age": age})] == members
        for position, user in enumerate(members, start=1):
            key = SortKey(expected[user][0], expected[user][1], user)
            assert global_rank(shards, key, cohort={"age": age}) == position
    for score, at, user in probes:
        mine = order_key(desc, score, at, user)
        better = sum(1 for u in ordered if u != user and order_key(desc, *expected[u][:2], u) < mine)
        assert global_rank(shards, SortKey(score, at, user)) == 1 + better
        young = [u for u in ordered if expected[u][2] == "young"]
        better = sum(1 for u in young if u != user and order_key(desc, *expected[u][:2], u) < mine)
        assert global_rank(shards, SortKey(score, at, user), cohort={"age": "young"}) == 1 + better
    if ordered:
        user = ordered[len(ordered) // 2]
        key = SortKey(expected[user][0], expected[user][1], user)
        around = merge_around([s.around_key(key, 2) for s in shards], 2, spec.order)
        i = ordered.index(user)
        assert [e.user for e in around.above] == ordered[max(0, i - 2) : i]
        assert around.entry is not None and around.entry.user == user
        assert [e.user for e in around.below] == ordered[i + 1 : i + 3]


# -- pagination --------------------------------------------------------------------------


def test_pagination_while_scores_change_skips_and_repeats_nothing() -> None:
    rng = random.Random(5)
    spec = LeaderboardSpec("b", "m", operator="latest", shard_count=3)  # type: ignore[arg-type]
    clock = Clock(0.0)
    shards = make_shards(spec, clock)
    users = [f"user-{i:03d}" for i in range(300)]
    route(shards, [Write(u, "s", rng.randint(0, 30), 1.0) for u in users])
    as_of = [s.top(0).as_of for s in shards]
    seen: list[str] = []
    changed: set[str] = set()
    cursor: SortKey | None = None
    t = 2.0
    while True:
        pages = [s.top(17, after=cursor, as_of=v) for s, v in zip(shards, as_of, strict=True)]
        page = merge_top([p.entries for p in pages], 17, spec.order)
        seen.extend(e.user for e in page)
        if len(page) < 17:
            break
        cursor = page[-1].key
        moved = rng.sample(users, 6)  # scores change between pages, up and down
        changed.update(moved)
        t += 1.0
        route(shards, [Write(u, "s", rng.randint(0, 30), t) for u in moved] + [Write(f"new-{t}", "s", 15, t)])
    assert len(seen) == len(set(seen)), "a user appeared twice"
    assert set(users) - changed <= set(seen), "an unchanged user was skipped"
    assert not any(u.startswith("new-") for u in seen)


def test_single_shard_keyset_pages_cover_the_board_exactly_once() -> None:
    shard = LeaderboardShard(LeaderboardSpec("b", "m"), now=Clock(0.0))
    shard.write_many([(f"u{i:04d}", "s", i % 7, float(i % 3)) for i in range(1000)])
    expected = [e.user for e in shard.top(2000).entries]
    got, cursor = [], None
    while True:
        page = shard.top(33, after=cursor)
        got.extend(e.user for e in page.entries)
        if page.next_after is None:
            break
        cursor = page.next_after
    assert got == expected and len(got) == 1000


# -- checkpoints and resharding ----------------------------------------------------------


def test_checkpoint_round_trip_keeps_entries_versions_and_long_ids() -> None:
    spec = LeaderboardSpec("b", "kcal", operator="sum", period="daily", cohort_keys=("age",))  # type: ignore[arg-type]
    clock = Clock(berlin(2026, 11, 21, 12, 0))
    shard = LeaderboardShard(spec, now=clock)
    long_id = "participant-" + "x" * 60
    shard.write_many([(long_id, "c1", 5, clock.t, {"age": "a"}), ("bob", "c1", 7, clock.t - 86400)])
    shard.write_many([(f"u{i}", f"c{i % 3}", i, clock.t - i, {"age": "b"}) for i in range(50)])
    page = shard.top(10)
    restored = LeaderboardShard.from_checkpoint(shard.to_checkpoint(), now=clock)
    assert restored.spec == spec and restored.periods() == shard.periods()
    assert sorted(restored.iter_records()) == sorted(shard.iter_records())
    for period in shard.periods():
        assert restored.top(100, period=period) == shard.top(100, period=period)
        assert restored.top(100, period=period, cohort={"age": "b"}) == shard.top(100, period=period, cohort={"age": "b"})
    shard.write_many([("u3", "c9", 1000, clock.t)])
    restored.write_many([("u3", "c9", 1000, clock.t)])
    assert restored.top(10, after=page.next_after, as_of=page.as_of) == shard.top(10, after=page.next_after, as_of=page.as_of)
    assert restored.count_better(6, clock.t, long_id) == shard.count_better(6, clock.t, long_id)
    with pytest.raises(CheckpointError) as info:  # the storage package's checkpoint error
        LeaderboardShard.from_checkpoint(b"\x93garbage")
    assert isinstance(info.value, LeaderboardError)
    assert info.value.problem is Problem.BAD_CHECKPOINT  # type: ignore[attr-defined]


def test_errors_share_the_actors_root_and_survive_pickling() -> None:
    error = WriteError(Problem.WRONG_SHARD, "user 'x' belongs to another shard")
    clone = pickle.loads(pickle.dumps(error))
    assert isinstance(clone, WriteError) and isinstance(clone, LeaderboardError)
    assert clone.problem is Problem.WRONG_SHARD and str(clone) == str(error)


def test_resharding_two_to_five_preserves_every_entry_and_rank() -> None:
    rng = random.Random(11)
    spec = LeaderboardSpec("b", "kcal", operator="sum", period="weekly", cohort_keys=("age",), shard_count=2)  # type: ignore[arg-type]
    clock = Clock(berlin(2026, 11, 25, 12, 0))
    old = make_shards(spec, clock)
    writes = [
        Write(f"user{rng.randint(0, 400)}", f"class{rng.randint(0, 5)}", rng.randint(0, 50),
              clock.t - rng.randint(0, 14) * 86400.0, {"age": rng.choice(["y", "o"])})
        for _ in range(2000)
    ]
    route(old, writes)
    periods = sorted({p for s in old for p in s.periods()})
    cohorts = (None, {"age": "y"})
    before = {(p, i): global_top(old, period=p, cohort=cohorts[i]) for p in periods for i in (0, 1)}
    records = [r for s in old for r in s.drain_entries()]
    assert all(s.periods() == [] for s in old)
    wide = LeaderboardSpec.from_dict({**spec.to_dict(), "shard_count": 5})
    new = make_shards(wide, clock)
    for i, shard in enumerate(new):
        shard.load_records([r for r in records if shard_of(r.user, 5) == i])
    assert sorted(r for s in new for r in s.iter_records()) == sorted(records)
    assert all(isinstance(r, Record) for r in records)
    for (period, i), entries in before.items():
        cohort = cohorts[i]
        assert global_top(new, period=period, cohort=cohort) == entries
        for rank, e in enumerate(entries[:40], start=1):
            assert global_rank(new, e.key, period=period, cohort=cohort) == rank


def test_memory_report_counts_arrays_and_objects() -> None:
    shard = LeaderboardShard(LeaderboardSpec("b", "kcal"), now=Clock(0.0))
    shard.write_many([(f"u{i}", "s", i, 0.0, {"age": "x"}) for i in range(2000)])
    report = memory_per_entry(shard)
    assert report.entries == report.records == 2000
    assert report.array_bytes >= 2000 * 36  # one 36-byte key per entry at least
    assert 100 < report.per_entry < 2000


def test_shard_of_is_stable_and_merge_top_merges_by_sort_key() -> None:
    assert [shard_of(u, 7) for u in ("ann", "bob", "carol")] == [shard_of(u, 7) for u in ("ann", "bob", "carol")]
    assert shard_of("ann", 1) == 0
    counts = [0] * 4
    for i in range(4000):
        counts[shard_of(f"user-{i}", 4)] += 1
    assert min(counts) > 900
    a = [Entry("x", 5.0, 1.0, {}), Entry("z", 3.0, 0.0, {})]
    b = [Entry("y", 5.0, 1.0, {}), Entry("w", 4.0, 9.0, {})]
    assert [e.user for e in merge_top([a, b], 3)] == ["x", "y", "w"]


def test_public_surface_is_curated() -> None:
    import leaderboards.rank_index
    import leaderboards.shard

    for module in (leaderboards.shard, leaderboards.rank_index):
        assert sorted(module.__all__) == sorted(set(module.__all__))
        assert all(hasattr(module, name) for name in module.__all__)
    assert "LeaderboardShard" in leaderboards.shard.__all__ and "RankIndex" in leaderboards.rank_index.__all__


# -- columnar batches --------------------------------------------------------------------

_ROWS = st.lists(
    st.tuples(
        st.sampled_from(["ann", "bob", "cy", "dee", "é-long-user-id-" + "x" * 30]),
        st.sampled_from(["s1", "s2", "s3"]),
        st.sampled_from([0.0, 1.0, 2.5, -3.0, 7.0]),
        st.sampled_from([1.0, 2.0, 3.0]),
        st.sampled_from([None, {"age": "a"}, {"age": "b"}]),
    ),
    min_size=0,
    max_size=25,
)


@settings(max_examples=120, deadline=None)
@given(
    rounds=st.lists(_ROWS, min_size=1, max_size=4),
    operator=st.sampled_from(["best", "sum", "latest"]),
    distinct=st.booleans(),
)
def test_a_batch_of_columns_ends_where_the_same_writes_one_by_one_end(
    rounds: list[list[tuple]], operator: str, distinct: bool
) -> None:
    """Distinct users take the vectorised path (numpy over the record columns); a user named
    twice sends the batch one by one. Both must end where sequential single writes end."""
    spec = LeaderboardSpec("b", "kcal", operator=operator, cohort_keys=("age",))  # type: ignore[arg-type]
    batched, sequential = LeaderboardShard(spec, now=Clock(0.0)), LeaderboardShard(spec, now=Clock(0.0))
    for rows in rounds:  # several batches: records from earlier batches meet new sources
        if distinct:
            rows = list({row[0]: row for row in rows}.values())
        users, sources, scores, times, tags = (list(c) for c in zip(*rows, strict=True)) if rows else ([], [], [], [], [])
        batched.write_batch(WriteBatch.columns(users, scores, times, source=sources, tags=tags))
        for row in rows:
            sequential.write_many([row])
    assert sorted(batched.iter_records()) == sorted(sequential.iter_records())
    assert batched.top(50).entries == sequential.top(50).entries
    for value in ("a", "b"):
        assert batched.top(50, cohort={"age": value}).entries == sequential.top(50, cohort={"age": value}).entries


def test_column_batches_refuse_bad_columns_and_apply_nothing() -> None:
    shard = LeaderboardShard(LeaderboardSpec("b", "kcal"), now=Clock(0.0))
    bad = [
        (dict(users=["a"], scores=[1.0, 2.0], achieved_at=[1.0], source="s"), Problem.BAD_WRITE),
        (dict(users=["a"], scores=["1"], achieved_at=[1.0], source="s"), Problem.BAD_NUMBER),
        (dict(users=["a"], scores=[True], achieved_at=[1.0], source="s"), Problem.BAD_NUMBER),
        (dict(users=["a"], scores=[10**400], achieved_at=[1.0], source="s"), Problem.BAD_NUMBER),
        (dict(users=["a"], scores=[1.0], achieved_at=[math.inf], source="s"), Problem.BAD_NUMBER),
        (dict(users=["a"], scores=[1.0], achieved_at=[1.0], source=""), Problem.BAD_SOURCE),
        (dict(users=["a"], scores=[1.0], achieved_at=[1.0], source=["s", "t"]), Problem.BAD_WRITE),
        (dict(users=["a"], scores=[1.0], achieved_at=[1.0], source="s", tags="age"), Problem.BAD_TAGS),
        (dict(users=["a"], scores=[1.0], achieved_at=[1.0], source="s", tags=[{"age": 3}]), Problem.BAD_TAGS),
        (dict(users=["ok", ""], scores=[1.0, 1.0], achieved_at=[1.0, 1.0], source="s"), Problem.BAD_USER),
        (dict(users=["ok", "x" * 129], scores=[1.0, 1.0], achieved_at=[1.0, 1.0], source="s"), Problem.BAD_USER),
        (dict(users=["ok", "\ud800"], scores=[1.0, 1.0], achieved_at=[1.0, 1.0], source="s"), Problem.BAD_USER),
    ]
    for kwargs, problem in bad:
        with pytest.raises(WriteError) as info:
            shard.write_batch(WriteBatch.columns(**kwargs))  # type: ignore[arg-type]
        assert info.value.problem is problem, kwargs
    assert shard.write_batch(WriteBatch.columns(np.array(["a"]).tolist(), np.array([5]), np.array([1.0]), source="s")) == 1
    assert [r.user for r in shard.iter_records()] == ["a"]


def test_a_batch_from_afar_is_checked_again_tags_included() -> None:
    shard = LeaderboardShard(LeaderboardSpec("b", "kcal", cohort_keys=("age",)), now=Clock(0.0))
    ones = np.array([1.0])
    for tags in ([(("age", 3),)], [(("age",),)], [[["age", "x"]]], [(("age", "x"),), (("age", "y"),)]):
        with pytest.raises(WriteError) as info:  # as if unpickled: built without columns()
            shard.write_batch(WriteBatch(["a"], ["s"], ones, ones, tags))  # type: ignore[arg-type]
        assert info.value.problem in (Problem.BAD_TAGS, Problem.BAD_WRITE), tags
    assert shard.write_batch(WriteBatch(["a"], ["s"], ones, ones, [(("age", "x"),)])) == 1
    assert shard.top(1, cohort={"age": "x"}).entries[0].user == "a"
