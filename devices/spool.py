"""The bridge's on-disk queue of unacknowledged samples (SQLite), and the stream over it.

``Spool`` is one SQLite file holding, per ``(session, device)`` stream, the next seq to
give out, the server's durable-ack high-water mark, the count of rejected samples, and
every emitted sample not yet acknowledged or rejected. Guarantees:

* ``append`` is one transaction that stores the rows *and* advances ``next_seq``,
  committed with ``synchronous=FULL`` (WAL): once it returns, a crash of the process or
  of the machine loses neither the rows nor the seq counter, so a restarted bridge
  never reuses a seq the server may already hold.
* ``ack(seq)`` deletes every row up to ``seq``; ``reject(seqs)`` deletes those rows and
  counts them. Both are idempotent; doing them late only means resending rows the
  server already has, which it ignores (apply is idempotent by seq).
* Bounded: at most ``max_rows`` rows are kept (all streams together). ``append`` that
  would exceed it raises ``SpoolFull`` and stores nothing; no seq is consumed, so the
  stream has no gap and the server's ack keeps moving. The bridge then drops *new*
  readings (counted) until acks make room: the oldest data, already queued, is never
  evicted.

``Spool`` is synchronous and thread-safe (one connection, one lock); the bridge calls it
from a single worker thread so the event loop never waits on the disk.

``SpooledStream`` is a ``devices.client.DeviceStream`` whose unacknowledged rows mirror
the spool: restored from it at start, trimmed into it on acks and rejections (recorded
here, written by the bridge in batches), and resent after a ``welcome`` in windows of
``window`` rows so a long offline backlog never trips the edge's per-device limit.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import msgpack

from devices.client import DeviceStream
from devices.errors import DevicesError

__all__ = ["DEFAULT_MAX_ROWS", "SpoolError", "SpoolFull", "Spool", "SpooledStream", "StreamRecord"]

DEFAULT_MAX_ROWS: Final = 200_000  # e.g. 55 participants for an hour at 1 Hz
DEFAULT_WINDOW: Final = 1_000
SCHEMA_VERSION: Final = 1

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS streams (
    session TEXT NOT NULL, device TEXT NOT NULL, participant TEXT NOT NULL,
    next_seq INTEGER NOT NULL DEFAULT 1, acked INTEGER NOT NULL DEFAULT 0,
    rejected INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (session, device)
);
CREATE TABLE IF NOT EXISTS samples (
    session TEXT NOT NULL, device TEXT NOT NULL, seq INTEGER NOT NULL, row BLOB NOT NULL,
    PRIMARY KEY (session, device, seq)
) WITHOUT ROWID;
"""


class SpoolError(DevicesError):
    """Root of the spool's errors."""


class SpoolFull(SpoolError):
    """``append`` would exceed ``max_rows``; nothing was stored."""


@dataclass(frozen=True, slots=True)
class StreamRecord:
    """One stream as the spool holds it."""

    session: str
    device: str
    participant: str
    next_seq: int
    acked: int
    rejected: int
    spooled: int


class Spool:
    """See the module docstring. ``path`` may be ``":memory:"`` for tests of callers."""

    def __init__(self, path: str | Path, *, max_rows: int = DEFAULT_MAX_ROWS) -> None:
        if max_rows < 1:
            raise ValueError("max_rows must be at least 1")
        self.path = str(path)
        self.max_rows = max_rows
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            self._check_version()
            self._rows = int(self._db.execute("SELECT COUNT(*) FROM samples").fetchone()[0])
        except sqlite3.Error as exc:
            raise SpoolError(f"cannot open spool {self.path}: {exc}") from exc

    def _check_version(self) -> None:
        found = self._db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        if found is None:
            self._db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        elif int(found[0]) != SCHEMA_VERSION:
            raise SpoolError(f"spool schema {found[0]} is not {SCHEMA_VERSION}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @property
    def rows(self) -> int:
        """How many samples are spooled (all streams)."""
        return self._rows

    def open_stream(self, session: str, device: str, participant: str) -> StreamRecord:
        """The stream's record, created (seq from 1) if new. Idempotent."""
        with self._lock, self._tx():
            self._db.execute(
                "INSERT OR IGNORE INTO streams (session, device, participant) VALUES (?, ?, ?)",
                (session, device, participant),
            )
        record = self.stream(session, device)
        assert record is not None
        return record

    def stream(self, session: str, device: str) -> StreamRecord | None:
        with self._lock:
            row = self._db.execute(
                "SELECT participant, next_seq, acked, rejected FROM streams WHERE session=? AND device=?",
                (session, device),
            ).fetchone()
            if row is None:
                return None
            spooled = self._db.execute(
                "SELECT COUNT(*) FROM samples WHERE session=? AND device=?", (session, device)
            ).fetchone()[0]
        return StreamRecord(session, device, row[0], row[1], row[2], row[3], int(spooled))

    def streams(self, session: str | None = None) -> list[StreamRecord]:
        with self._lock:
            keys = self._db.execute(
                "SELECT session, device FROM streams WHERE ? IS NULL OR session=? ORDER BY session, device",
                (session, session),
            ).fetchall()
        records = [self.stream(s, d) for s, d in keys]
        return [r for r in records if r is not None]

    def append(self, entries: Sequence[tuple[str, str, list[Any]]]) -> None:
        """Store ``(session, device, row)`` rows; each row's seq must be its stream's next.

        All or nothing, in one durable transaction. Raises ``SpoolFull`` (nothing stored)
        or ``SpoolError`` (a seq out of order, an unknown stream).
        """
        if not entries:
            return
        with self._lock:
            if self._rows + len(entries) > self.max_rows:
                raise SpoolFull(f"spool holds {self._rows} of {self.max_rows} rows; {len(entries)} more refused")
            try:
                with self._tx():
                    for session, device, row in entries:
                        self._append_one(session, device, row)
            except sqlite3.Error as exc:
                raise SpoolError(f"append failed: {exc}") from exc
            self._rows += len(entries)

    def _append_one(self, session: str, device: str, row: list[Any]) -> None:
        found = self._db.execute(
            "SELECT next_seq FROM streams WHERE session=? AND device=?", (session, device)
        ).fetchone()
        if found is None:
            raise SpoolError(f"no stream {session}/{device}; open_stream first")
        if row[0] != found[0]:
            raise SpoolError(f"{session}/{device}: seq {row[0]} appended, {found[0]} expected")
        self._db.execute(
            "INSERT INTO samples VALUES (?, ?, ?, ?)", (session, device, row[0], msgpack.packb(row))
        )
        self._db.execute(
            "UPDATE streams SET next_seq=? WHERE session=? AND device=?", (row[0] + 1, session, device)
        )

    def ack(self, session: str, device: str, seq: int) -> int:
        """The server holds every sample up to ``seq``: drop them. Returns rows deleted."""
        with self._lock, self._tx():
            self._db.execute(
                "UPDATE streams SET acked=MAX(acked, ?) WHERE session=? AND device=?", (seq, session, device)
            )
            deleted = self._db.execute(
                "DELETE FROM samples WHERE session=? AND device=? AND seq<=?", (session, device, seq)
            ).rowcount
            self._rows -= deleted
        return deleted

    def reject(self, session: str, device: str, seqs: Iterable[int]) -> int:
        """The server refused ``seqs`` for good: drop and count them. Returns rows deleted."""
        deleted = 0
        with self._lock, self._tx():
            for seq in seqs:
                deleted += self._db.execute(
                    "DELETE FROM samples WHERE session=? AND device=? AND seq=?", (session, device, seq)
                ).rowcount
            self._db.execute(
                "UPDATE streams SET rejected=rejected+? WHERE session=? AND device=?", (deleted, session, device)
            )
            self._rows -= deleted
        return deleted

    def skip_to(self, session: str, device: str, next_seq: int) -> None:
        """Never give out a seq below ``next_seq`` (the server holds more than this spool)."""
        with self._lock, self._tx():
            self._db.execute(
                "UPDATE streams SET next_seq=MAX(next_seq, ?), acked=MAX(acked, ?) WHERE session=? AND device=?",
                (next_seq, next_seq - 1, session, device),
            )

    def pending(self, session: str, device: str, *, after: int = 0, limit: int | None = None) -> list[list[Any]]:
        """Spooled rows of one stream with seq > ``after``, oldest first."""
        with self._lock:
            cursor = self._db.execute(
                "SELECT row FROM samples WHERE session=? AND device=? AND seq>? ORDER BY seq LIMIT ?",
                (session, device, after, -1 if limit is None else limit),
            )
            return [msgpack.unpackb(blob) for (blob,) in cursor]

    def _tx(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, *_: object) -> None:
        self._db.execute("COMMIT" if kind is None else "ROLLBACK")


class SpooledStream(DeviceStream):
    """A ``DeviceStream`` restored from and trimmed into a ``Spool``.

    Rows enter with ``add_row`` (after the spool stored them). Acks and rejections update
    memory at once and are queued in ``take_trims`` for the bridge to write to the spool.
    Sending is windowed: ``take_sendable`` returns the rows not yet sent on this
    connection, at most ``window`` beyond the last ack; ``on_welcome`` starts over from
    the server's position.
    """

    def __init__(self, record: StreamRecord, rows: list[list[Any]], *, window: int = DEFAULT_WINDOW) -> None:
        super().__init__(record.device, record.participant, record.session)
        self.next_seq = record.next_seq
        self.acked = record.acked
        self.unacked = {int(row[0]): row for row in rows}
        self.window = window
        self.sent_upto = record.acked
        self._ack_trim = 0
        self._rejected_trim: list[int] = []
        self.resume_from = 0  # > next_seq: the bridge must skip ahead before the next sample

    def add_row(self, row: list[Any]) -> None:
        """A row the spool has stored (its seq is ``next_seq``)."""
        seq = int(row[0])
        if seq != self.next_seq:
            raise SpoolError(f"{self.device}: row seq {seq} added, {self.next_seq} expected")
        self.unacked[seq] = row
        self.next_seq = seq + 1
        self.sent += 1

    def on_ack(self, seq: int) -> None:
        super().on_ack(seq)
        self._ack_trim = max(self._ack_trim, self.acked)

    def on_rejected(self, seqs: Iterable[int], reason: str) -> None:
        seqs = list(seqs)
        super().on_rejected(seqs, reason)
        self._rejected_trim.extend(seqs)

    def on_welcome(self, seq: int) -> list[list[Any]]:
        if seq >= self.next_seq:  # the server holds seqs this spool never gave out (lost spool)
            self.resume_from = max(self.resume_from, seq + 1)
        self.on_ack(seq)
        self.sent_upto = self.acked
        return self.take_sendable()

    def pending_rows(self) -> list[list[Any]]:
        """After a throttle: resend from the ack, one window."""
        self.sent_upto = self.acked
        return self.take_sendable()

    def take_sendable(self) -> list[list[Any]]:
        limit = self.acked + self.window
        rows = [self.unacked[s] for s in sorted(self.unacked) if self.sent_upto < s <= limit]
        if rows:
            self.sent_upto = int(rows[-1][0])
        return rows

    def take_trims(self) -> tuple[int, list[int]]:
        """The (ack seq, rejected seqs) to write to the spool since the last call."""
        trim, rejected = self._ack_trim, self._rejected_trim
        self._ack_trim, self._rejected_trim = 0, []
        return trim, rejected
