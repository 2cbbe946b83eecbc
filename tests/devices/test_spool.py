"""The bridge's SQLite spool and the stream over it: persist, trim, reopen, bound."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from devices.spool import Spool, SpoolError, SpooledStream, SpoolFull


def _row(seq: int, power: float = 200.0) -> list[Any]:
    return [seq, 1_700_000_000.0 + seq, 140.0, power, 90.0, None, None]


def _fill(spool: Spool, device: str, seqs: range, session: str = "s1") -> None:
    spool.open_stream(session, device, f"p-{device}")
    spool.append([(session, device, _row(seq)) for seq in seqs])


def test_rows_and_the_seq_counter_survive_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite"
    with Spool(path) as spool:
        _fill(spool, "d1", range(1, 6))
        _fill(spool, "d2", range(1, 3))
    with Spool(path) as spool:
        assert spool.rows == 7
        record = spool.stream("s1", "d1")
        assert record is not None and (record.next_seq, record.acked, record.spooled) == (6, 0, 5)
        assert record.participant == "p-d1"
        assert spool.pending("s1", "d1") == [_row(s) for s in range(1, 6)]
        assert spool.pending("s1", "d1", after=3, limit=1) == [_row(4)]
        assert [r.device for r in spool.streams("s1")] == ["d1", "d2"]


def test_ack_trims_up_to_the_seq_and_is_idempotent(tmp_path: Path) -> None:
    with Spool(tmp_path / "s.sqlite") as spool:
        _fill(spool, "d", range(1, 11))
        assert spool.ack("s1", "d", 4) == 4
        assert spool.ack("s1", "d", 4) == 0
        assert spool.ack("s1", "d", 2) == 0  # an old ack never moves the mark back
        record = spool.stream("s1", "d")
        assert record is not None and (record.acked, record.spooled, record.next_seq) == (4, 6, 11)
        assert [r[0] for r in spool.pending("s1", "d")] == list(range(5, 11))
        assert spool.rows == 6


def test_rejections_are_dropped_and_counted(tmp_path: Path) -> None:
    with Spool(tmp_path / "s.sqlite") as spool:
        _fill(spool, "d", range(1, 6))
        assert spool.reject("s1", "d", [2, 4, 99]) == 2
        assert spool.reject("s1", "d", [2]) == 0
        record = spool.stream("s1", "d")
        assert record is not None and (record.rejected, record.spooled) == (2, 3)
        assert [r[0] for r in spool.pending("s1", "d")] == [1, 3, 5]


def test_streams_are_per_session(tmp_path: Path) -> None:
    with Spool(tmp_path / "s.sqlite") as spool:
        _fill(spool, "d", range(1, 4), session="a")
        _fill(spool, "d", range(1, 2), session="b")  # seq starts at 1 again in another session
        assert [r.session for r in spool.streams()] == ["a", "b"]
        assert [r.next_seq for r in spool.streams("b")] == [2]


def test_appends_must_follow_the_seq_counter(tmp_path: Path) -> None:
    with Spool(tmp_path / "s.sqlite") as spool:
        _fill(spool, "d", range(1, 3))
        with pytest.raises(SpoolError, match="seq 5 appended, 3 expected"):
            spool.append([("s1", "d", _row(5))])
        with pytest.raises(SpoolError, match="no stream"):
            spool.append([("s1", "ghost", _row(1))])
        with pytest.raises(SpoolError):  # all or nothing: the good first row is not kept
            spool.append([("s1", "d", _row(3)), ("s1", "d", _row(3))])
        record = spool.stream("s1", "d")
        assert record is not None and (record.next_seq, record.spooled) == (3, 2)
        assert spool.rows == 2


def test_a_full_spool_refuses_new_rows_and_keeps_the_old(tmp_path: Path) -> None:
    """The documented policy: bounded; new readings are refused, nothing is evicted,
    no seq is consumed (so the stream has no gap); acks make room again."""
    with Spool(tmp_path / "s.sqlite", max_rows=5) as spool:
        _fill(spool, "d", range(1, 5))
        with pytest.raises(SpoolFull):
            spool.append([("s1", "d", _row(5)), ("s1", "d", _row(6))])
        record = spool.stream("s1", "d")
        assert record is not None and (record.next_seq, record.spooled) == (5, 4)
        spool.append([("s1", "d", _row(5))])
        with pytest.raises(SpoolFull):
            spool.append([("s1", "d", _row(6))])
        spool.ack("s1", "d", 3)
        spool.append([("s1", "d", _row(6))])
        assert [r[0] for r in spool.pending("s1", "d")] == [4, 5, 6]


def test_a_spool_of_another_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    Spool(path).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value='99' WHERE key='schema'")
    with pytest.raises(SpoolError, match="schema 99"):
        Spool(path)


def test_spooled_stream_restores_trims_and_sends_in_windows(tmp_path: Path) -> None:
    with Spool(tmp_path / "s.sqlite") as spool:
        _fill(spool, "d", range(1, 26))
        spool.ack("s1", "d", 5)
        record = spool.stream("s1", "d")
        assert record is not None
        stream = SpooledStream(record, spool.pending("s1", "d"), window=8)
    assert (stream.next_seq, stream.acked, sorted(stream.unacked)) == (26, 5, list(range(6, 26)))
    # after a welcome at 5, one window beyond the ack goes out, then nothing until acks
    assert [r[0] for r in stream.on_welcome(5)] == list(range(6, 14))
    assert stream.take_sendable() == []
    stream.on_ack(9)
    assert [r[0] for r in stream.take_sendable()] == list(range(14, 18))
    stream.on_rejected([10, 11], "out_of_range")
    assert stream.take_trims() == (9, [10, 11])
    assert stream.take_trims() == (0, [])
    # a new welcome (reconnect) restarts from the server's position
    assert [r[0] for r in stream.on_welcome(12)] == list(range(13, 21))
    # a throttle resends from the ack, one window
    assert [r[0] for r in stream.pending_rows()] == list(range(13, 21))
    stream.add_row(_row(26))
    assert stream.next_seq == 27 and 26 in stream.unacked
    with pytest.raises(SpoolError, match="seq 30 added, 27 expected"):
        stream.add_row(_row(30))


def test_a_welcome_beyond_the_spool_makes_the_stream_skip_ahead(tmp_path: Path) -> None:
    """A deleted spool must not make the bridge reuse seqs the server already holds."""
    with Spool(tmp_path / "s.sqlite") as spool:
        record = spool.open_stream("s1", "d", "p")
        stream = SpooledStream(record, [])
        assert stream.on_welcome(40) == []
        assert stream.resume_from == 41
        spool.skip_to("s1", "d", stream.resume_from)
        spool.append([("s1", "d", _row(41))])
        record = spool.stream("s1", "d")
        assert record is not None and (record.next_seq, record.acked) == (42, 40)
        spool.skip_to("s1", "d", 10)  # never backwards
        assert spool.stream("s1", "d").next_seq == 42  # type: ignore[union-attr]
