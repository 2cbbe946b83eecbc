"""The columnar apply (``actors/columnar.py``) ends where the per-sample apply it replaced ends.

``tests/actors/reference_session.py`` is the per-sample ``SessionState`` as it was; random
ticks (repeats, reordering, gaps, rejected seqs, devices sharing a participant, timestamp
ties, absent metrics, a small pending cap) go to both, and after every tick the results,
cursors, summaries and boards must agree (sums to the last few bits: they are added per
tick, not per sample).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.session import DeviceBatch, SessionState
from actors.wire import TickRequest, decode_message, encode_message
from tests.actors import reference_session as reference

pytestmark = pytest.mark.timeout(120)

DEVICES = {"d0": "p0", "d1": "p0", "d2": "p1", "d3": "p2"}  # d0 and d1 ride for the same participant

metric = st.one_of(st.none(), st.sampled_from([0.0, 60.0, 120.5, 250.0]), st.floats(0, 400, allow_nan=False))
timestamp = st.one_of(st.sampled_from([0.0, 1.0, 2.0, 3.0, 10.0]), st.floats(0, 30, allow_nan=False))


@st.composite
def row(draw: Any) -> list[Any]:
    values = [draw(st.integers(1, 24)), draw(timestamp)] + [draw(metric) for _ in range(5)]
    cut = draw(st.sampled_from([2, 4, 7, 7, 7, 8]))  # short rows and rows with a newer field
    return (values + [1.0])[:cut]


@st.composite
def batch(draw: Any) -> DeviceBatch:
    device = draw(st.sampled_from(sorted(DEVICES)))
    rows = draw(st.lists(row(), max_size=8))
    rejected = draw(st.lists(st.integers(1, 24), max_size=3))
    return DeviceBatch(device, DEVICES[device], rows, rejected)


ticks = st.lists(st.lists(batch(), max_size=4), min_size=1, max_size=6)


@st.composite
def sparse_batch(draw: Any) -> DeviceBatch:
    """What a 1 Hz device sends in a 10 Hz tick: one row or none (the columnar fast paths)."""
    device = draw(st.sampled_from(sorted(DEVICES)))
    return DeviceBatch(device, DEVICES[device], draw(st.lists(row(), max_size=1)),
                       draw(st.lists(st.integers(1, 24), max_size=1)))


sparse_ticks = st.lists(st.lists(sparse_batch(), max_size=3, unique_by=lambda b: b.device), min_size=1, max_size=12)


def close(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(close(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def assert_same(new: SessionState, old: reference.SessionState) -> None:
    assert new.applied_seqs() == old.applied_seqs()
    assert new.version == old.version and new.totals == old.totals
    for device, cursor in new.devices.items():
        was = old.devices[device]
        assert (cursor.slot, cursor.contig) == (was.slot, was.contig)
        assert close(cursor.ts_contig, was.ts_contig)
        assert close(cursor.pending, was.pending)
    for participant in old.participants:  # (the reference predates profiles and metrics: its keys)
        want = old.summary(participant)
        got = new.summary(participant)
        assert got is not None and want is not None
        assert close({k: got[k] for k in want}, want), participant
    assert_same_board(new.board(), old.board())


def assert_same_board(new: dict[str, Any], old: dict[str, Any]) -> None:
    """Boards agree on everything but numpy's rounding, which can differ from Python's
    ``round`` in the last shown digit on (near-)ties."""
    assert new["cols"][: len(old["cols"])] == old["cols"]  # (the metric columns came later, at the end)
    assert {k: v for k, v in new.items() if k not in ("top", "rows", "cols")} == \
        {k: v for k, v in old.items() if k not in ("top", "rows", "cols")}
    for key in ("top", "rows"):
        assert len(new[key]) == len(old[key])
        for got, want in zip(new[key], old[key], strict=True):
            assert (got[0], got[1], got[9]) == (want[0], want[1], want[9])
            for a, b in zip(got[2:9], want[2:9], strict=True):
                assert (a is None) == (b is None) and (a is None or abs(a - b) <= 1.0001e-3), (got, want)


@settings(max_examples=300, deadline=None)
@given(ticks=ticks, max_gap_s=st.sampled_from([1.0, 5.0]), max_pending=st.sampled_from([2, 4096]))
def test_columnar_apply_equals_the_per_sample_apply(ticks: list[list[DeviceBatch]], max_gap_s: float,
                                                    max_pending: int) -> None:
    new = SessionState("s", max_gap_s=max_gap_s, max_pending_per_device=max_pending)
    old = reference.SessionState("s", max_gap_s=max_gap_s, max_pending_per_device=max_pending)
    for tick in ticks:
        got = new.apply(tick)
        want = old.apply([reference.DeviceBatch(b.device, b.participant, b.rows, b.rejected) for b in tick])
        assert (got.applied, got.duplicates, got.rejected) == (want.applied, want.duplicates, want.rejected)
        assert_same(new, old)
    restored = SessionState.from_checkpoint(new.to_checkpoint())
    assert restored.snapshot() == new.snapshot() and restored.board() == new.board()
    assert restored.devices == new.devices
    # the checkpoint layout did not change: the old code restores the new one's and vice versa
    assert reference.SessionState.from_checkpoint(new.to_checkpoint()).applied_seqs() == new.applied_seqs()
    assert SessionState.from_checkpoint(old.to_checkpoint()).devices == new.devices


@settings(max_examples=300, deadline=None)
@given(ticks=sparse_ticks, max_gap_s=st.sampled_from([1.0, 5.0]))
def test_sparse_ticks_apply_like_the_per_sample_apply(ticks: list[list[DeviceBatch]], max_gap_s: float) -> None:
    new = SessionState("s", max_gap_s=max_gap_s)
    old = reference.SessionState("s", max_gap_s=max_gap_s)
    for tick in ticks:
        got = new.apply(tick)
        want = old.apply([reference.DeviceBatch(b.device, b.participant, b.rows, b.rejected) for b in tick])
        assert (got.applied, got.duplicates, got.rejected) == (want.applied, want.duplicates, want.rejected)
        assert_same(new, old)


@settings(max_examples=150, deadline=None)
@given(ticks=ticks)
def test_a_tick_over_the_wire_applies_like_device_batches(ticks: list[list[DeviceBatch]]) -> None:
    """The edge's path: one batch per device per tick, encoded, decoded, applied as columns."""
    direct = SessionState("s")
    wired = SessionState("s")
    for tick in ticks:
        merged: dict[str, DeviceBatch] = {}
        for b in tick:
            had = merged.get(b.device)
            merged[b.device] = b if had is None else DeviceBatch(
                b.device, b.participant, [*had.rows, *b.rows], [*had.rejected, *b.rejected])
        batches = list(merged.values())
        request = TickRequest.from_batches("s", ((b.device, b.participant, b.rows, b.rejected) for b in batches))
        decoded = decode_message(encode_message(request))
        assert isinstance(decoded, TickRequest)
        got = wired.apply_tick(decoded)
        want = direct.apply(batches)
        assert (got.applied, got.duplicates, got.rejected) == (want.applied, want.duplicates, want.rejected)
    assert direct.snapshot() == wired.snapshot()


def test_a_thousand_riders_apply_in_one_tick_without_per_sample_python() -> None:
    """One tick of 1,000 devices with 1 sample each: every sample counts once, energy adds up."""
    state = SessionState("big")
    devices = [f"d{i}" for i in range(1000)]
    for second in range(3):
        batches = [DeviceBatch(d, f"p{i}", [[second + 1, 100.0 + second, 120, 200.0 + i, 90, 8.0, 5.0 * second]])
                   for i, d in enumerate(devices)]
        result = state.apply(batches)
        assert result.applied == 1000 and result.duplicates == 0
    energy = np.array([state.summary(f"p{i}")["energy_kj"] for i in range(1000)])  # type: ignore[index]
    assert energy == pytest.approx((200.0 + np.arange(1000)) * 2 / 1000.0)
    assert state.board()["rows"][0][0] == "p999"
    assert set(state.applied_seqs().values()) == {3}


def test_seqs_beyond_float_precision_keep_their_value() -> None:
    state = SessionState("s")
    big = 2**60
    state.apply([DeviceBatch("d", "p", [], list(range(1, 3)))])
    request = TickRequest.from_batches("s", [("d", "p", [[big, 1.0, 100]], [])])
    assert int(request.samples.seq[0]) == big
