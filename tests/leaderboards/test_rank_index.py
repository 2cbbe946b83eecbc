"""RankIndex against a brute-force sorted model, plus its edge cases."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from leaderboards.rank_index import RankIndex

SCORES = st.sampled_from([0.0, -0.0, 1.0, 2.5, -3.0, 7.0, 1e300, -1e300, 5e-324])
TIMES = st.sampled_from([0.0, 1.0, 2.0, 1.7e9, -5.0])
TIES = st.sampled_from([b"a", b"ab", b"b", b"zz", b"abc"])

Model = dict[int, tuple[float, float, bytes]]


def _sort_key(descending: bool, score: float, at: float, tie: bytes, user: int) -> tuple:
    return (-score if descending else score, at, tie, user)


def _model_order(model: Model, descending: bool, tie_mode: bool) -> list[int]:
    def key(u: int) -> tuple:
        s, a, t = model[u]
        return _sort_key(descending, s, a, t if tie_mode else b"", u)

    return sorted(model, key=key)


def _check_against_model(index: RankIndex, model: Model, descending: bool, tie_mode: bool) -> None:
    order = _model_order(model, descending, tie_mode)
    assert len(index) == len(model)
    entries = index.top(len(model) + 3)
    assert entries.users.tolist() == order
    assert entries.scores.tolist() == [model[u][0] for u in order]
    assert entries.achieved_at.tolist() == [model[u][1] for u in order]
    assert index.rank_of(order).tolist() == list(range(len(order)))
    for offset in range(len(order) + 1):
        assert index.top(2, offset).users.tolist() == order[offset : offset + 2]
    chunks = [c.users.tolist() for c in index.iter_entries(chunk=3)]
    assert sum(chunks, []) == order


operation = st.one_of(
    st.tuples(
        st.just("upsert"),
        st.lists(st.tuples(st.integers(0, 12), SCORES, TIMES, TIES), min_size=1, max_size=6),
    ),
    st.tuples(st.just("remove"), st.lists(st.integers(0, 14), max_size=4)),
)


@settings(max_examples=120, deadline=None)
@given(
    ops=st.lists(operation, max_size=12),
    descending=st.booleans(),
    tie_mode=st.booleans(),
    threshold=st.sampled_from([1, 3, 1000]),
    queries=st.lists(st.tuples(SCORES, TIMES, TIES, st.integers(0, 14)), max_size=8),
)
def test_index_matches_brute_force(ops, descending, tie_mode, threshold, queries) -> None:
    index = RankIndex(descending=descending, tie_width=8 if tie_mode else 0, merge_threshold=threshold)
    model: Model = {}
    for kind, payload in ops:
        if kind == "upsert":
            users, scores, times, ties = (list(x) for x in zip(*payload, strict=True))
            index.upsert_many(users, scores, times, ties if tie_mode else None)
            for u, s, a, t in payload:
                model[u] = (s + 0.0, a, t)
        else:
            index.remove_many(payload)
            for u in payload:
                model.pop(u, None)
        _check_against_model(index, model, descending, tie_mode)
    if not queries:
        return
    qs, qa, qt, qu = (list(x) for x in zip(*queries, strict=True))
    got = index.count_better(qs, qa, users=qu, ties=qt if tie_mode else None)
    for (s, a, t, u), count in zip(queries, got.tolist(), strict=True):
        mine = _sort_key(descending, s + 0.0, a, t if tie_mode else b"", u)
        others = [
            _sort_key(descending, ms, ma, mt if tie_mode else b"", mu)
            for mu, (ms, ma, mt) in model.items()
            if not (tie_mode and mt == t and ms == s and ma == a)
        ]
        assert count == sum(1 for o in others if o < mine)


def test_keyset_after_excludes_cursor_and_equal_ties() -> None:
    index = RankIndex(tie_width=4)
    index.upsert_many([0, 1, 2, 3], [5.0, 5.0, 5.0, 4.0], [1.0, 1.0, 1.0, 1.0], [b"c", b"a", b"b", b"a"])
    assert index.top(4).users.tolist() == [1, 2, 0, 3]
    assert index.after(5.0, 1.0, 10, tie=b"a").users.tolist() == [2, 0, 3]
    assert index.after(5.0, 1.0, 1, tie=b"b").users.tolist() == [0]
    numeric = RankIndex()
    numeric.upsert_many([4, 2, 9], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0])
    assert numeric.after(1.0, 0.0, 5, user=2).users.tolist() == [4, 9]


def test_around_clamps_at_both_ends() -> None:
    index = RankIndex()
    index.upsert_many(range(10), np.arange(10.0), np.zeros(10))
    assert index.around(9, 2).users.tolist() == [9, 8, 7]
    assert index.around(5, 2).users.tolist() == [7, 6, 5, 4, 3]
    assert index.around(0, 3).users.tolist() == [3, 2, 1, 0]
    assert len(index.around(42, 3)) == 0


def test_update_back_to_a_tombstoned_key_resurrects_it() -> None:
    index = RankIndex(merge_threshold=100)
    index.upsert_many([0, 1], [1.0, 2.0], [0.0, 0.0])
    index.compact()
    index.upsert_many([0], [3.0], [0.0])
    index.upsert_many([0], [1.0], [0.0])
    assert index.buffered == 0
    assert index.top(5).users.tolist() == [1, 0]
    assert index.get(0) == (1.0, 0.0)


def test_widen_keeps_order_and_accepts_longer_ties() -> None:
    index = RankIndex(tie_width=2, merge_threshold=2)
    index.upsert_many([0, 1, 2], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [b"bb", b"b", b"a"])
    index.widen(6)
    index.upsert_many([3], [1.0], [0.0], [b"bbbbbb"])
    assert index.top(10).users.tolist() == [2, 1, 0, 3]
    assert index.count_better([1.0], [0.0], ties=[b"bbb"]).tolist() == [3]


def test_rejects_contract_violations() -> None:
    index = RankIndex(tie_width=2)
    with pytest.raises(ValueError, match="finite"):
        index.upsert_many([0], [float("nan")], [0.0], [b"a"])
    with pytest.raises(ValueError, match="at most 2 bytes"):
        index.upsert_many([0], [1.0], [0.0], [b"abc"])
    with pytest.raises(ValueError, match="user indexes"):
        index.upsert_many([-1], [1.0], [0.0], [b"a"])
    assert len(index) == 0


def test_large_batches_merge_and_stay_exact() -> None:
    rng = np.random.default_rng(7)
    n = 50_000
    index = RankIndex(merge_threshold=4096)
    scores = rng.integers(0, 100, n).astype(float)
    times = rng.integers(0, 10, n).astype(float)
    for start in range(0, n, 5000):
        sl = slice(start, start + 5000)
        index.upsert_many(np.arange(n)[sl], scores[sl], times[sl])
    changed = rng.choice(n, 3000, replace=False)
    scores[changed] = rng.integers(0, 100, 3000)
    index.upsert_many(changed, scores[changed], times[changed])
    index.remove_many(np.arange(0, n, 10))
    alive = np.ones(n, dtype=bool)
    alive[::10] = False
    order = np.lexsort((np.arange(n)[alive], times[alive], -scores[alive]))
    expected = np.arange(n)[alive][order]
    assert index.top(len(expected)).users.tolist() == expected.tolist()
    probe = rng.choice(expected, 500)
    ranks = np.empty(n, dtype=np.int64)
    ranks[expected] = np.arange(expected.shape[0])
    assert index.rank_of(probe).tolist() == ranks[probe].tolist()
    assert index.top(7, 20_000).users.tolist() == expected[20_000:20_007].tolist()
    assert index.nbytes > 0


@settings(max_examples=60, deadline=None)
@given(
    entries=st.lists(st.tuples(SCORES, TIMES, TIES), min_size=0, max_size=40),
    queries=st.lists(st.tuples(SCORES, TIMES, TIES), min_size=1, max_size=10),
    descending=st.booleans(),
    tie_mode=st.booleans(),
)
def test_single_key_paths_agree_with_the_vectorised_ones(
    entries: list[tuple[float, float, bytes]], queries: list[tuple[float, float, bytes]], descending: bool, tie_mode: bool
) -> None:
    index = RankIndex(descending=descending, tie_width=8 if tie_mode else 0, merge_threshold=7)
    for user, (score, at, tie) in enumerate(entries):  # one at a time: buffers, merges, tombstones
        index.upsert_many([user], [score], [at], [tie] if tie_mode else None)
    index.remove_many([u for u in range(0, len(entries), 5)])
    for user in range(len(entries) + 2):
        assert index.rank_one(user) == int(index.rank_of([user])[0])
        got, many = index.get(user), index.entries_of([user])
        assert got == (None if len(many) == 0 else (float(many.scores[0]), float(many.achieved_at[0])))
        if got is not None:  # -0.0 is stored as 0.0, and comes back as such on both paths
            assert str(got[0]) == str(float(many.scores[0]))
    for score, at, tie in queries:
        if tie_mode:
            assert index.count_better_one(score, at, tie) == int(index.count_better([score], [at], ties=[tie])[0])
        else:
            for user in (0, 3, 10**6):
                assert index.count_better_one(score, at, user=user) == int(index.count_better([score], [at], users=[user])[0])
