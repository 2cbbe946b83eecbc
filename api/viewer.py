"""Board frames for viewers: the shared board plus the viewer's own row.

The session actor returns one board per version (top-N plus every participant's row);
each viewer gets ``top`` and, when it names a participant, ``you`` (its own rank and
values); a ``view=all`` viewer (a studio screen, the swarm's latency probe) gets every
row. Encoded lazily at send time, so boards a slow viewer skips cost nothing. A sharded
class's board (``api/class_board.py``) has no ``rows``: ``you``/``me`` are built per rider
from its columns, and ``view=all`` gets a page by rank (``Paging``). A
participant's token gets the ``public_board``: other riders' ``PRIVATE_COLUMNS`` blanked in
``top`` and ``rows`` (its own row whole in ``you``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable

from devices.protocol import encode_value

_SHARED = ("session", "version", "phase", "n", "cols", "top", "ts", "plan", "replay")  # (when the class has them)


def own_row(board: dict[str, Any], participant: str) -> list[Any] | None:
    merged = board.get("merged")
    if merged is not None:  # a sharded class (api/class_board.py): the row is built for this rider
        return merged.get(participant)  # type: ignore[no-any-return]
    index = board.get("_index")
    if index is None:
        index = board["_index"] = {row[0]: row for row in board["rows"]}
    return index.get(participant)  # type: ignore[no-any-return]


def _cached(board: dict[str, Any], key: str, make: Callable[[], bytes]) -> bytes:
    value = board.get(key)
    if value is None:
        value = board[key] = make()
    return value  # type: ignore[no-any-return]


def _shared_pairs(board: dict[str, Any]) -> bytes:
    """The key/value pairs every viewer's frame shares, msgpack-encoded once per board."""
    pairs = [("t", "board"), *((k, board[k]) for k in _SHARED if k in board)]
    return b"".join(encode_value(k) + encode_value(v) for k, v in pairs)


@dataclass(frozen=True, slots=True)
class Paging:
    """What a ``view=all`` viewer gets as ``rows``: every row (``page`` None, a class with one
    actor), or one page of ``size`` rows by rank (a sharded class always pages: page 0 by default)."""

    page: int | None = None
    size: int = 500

    def rows(self, board: dict[str, Any]) -> list[list[Any]]:
        merged = board.get("merged")
        if merged is not None:
            return merged.page(self.page or 0, self.size, board.get("_hidden", ()))  # type: ignore[no-any-return]
        rows: list[list[Any]] = board["rows"]
        return rows if self.page is None else rows[self.page * self.size:(self.page + 1) * self.size]

    def info(self, board: dict[str, Any]) -> dict[str, int] | None:
        """``page`` and ``pages`` for the frame (None: every row, no paging)."""
        merged = board.get("merged")
        if merged is not None:
            return {"page": self.page or 0, "pages": merged.pages(self.size)}
        if self.page is None:
            return None
        return {"page": self.page, "pages": max(1, -(-len(board["rows"]) // self.size))}


def _all_rows(board: dict[str, Any], paging: Paging) -> tuple[int, bytes]:
    """(pairs, bytes) of ``rows`` (and ``page``/``pages``), encoded once per board and page."""
    info = paging.info(board)
    pairs = [("rows", paging.rows(board)), *(info or {}).items()]
    return len(pairs), b"".join(encode_value(k) + encode_value(v) for k, v in pairs)


def _msgpack_frame(board: dict[str, Any], participant: str | None, paging: Paging | None) -> bytes:
    """A msgpack map spliced from cached pairs: only ``you`` is encoded per viewer."""
    shared = _cached(board, "_shared", lambda: _shared_pairs(board))
    count = 1 + sum(1 for k in _SHARED if k in board)
    parts = [shared]
    if participant is not None:
        parts.append(_YOU_KEY + encode_value(own_row(board, participant)))
        count += 1
        summary = own_summary(board, participant)
        if summary is not None:
            parts.append(_SUMMARY_KEY + encode_value(summary))
            count += 1
    if paging is not None:
        key = f"_rows:{paging.page}:{paging.size}"
        pairs = board.get(key)
        if pairs is None:
            pairs = board[key] = _all_rows(board, paging)
        parts.append(pairs[1])
        count += pairs[0]
    return bytes([0x80 | count]) + b"".join(parts)  # fixmap: fewer than 16 pairs


_YOU_KEY = encode_value("you")
_SUMMARY_KEY = encode_value("summary")


def own_summary(board: dict[str, Any], participant: str) -> dict[str, Any] | None:
    """The rider's end-of-class summary (boards of an ended class carry them: only the
    rider's own is ever sent to it)."""
    summaries = board.get("summaries")
    return None if summaries is None else summaries.get(participant)  # type: ignore[no-any-return]


# What only the rider, instructors and screens see: heart rate, and what the rider's
# profile (FTP, heart-rate range, weight) shows through (zones, calories, IF, TSS).
PRIVATE_COLUMNS = ("hr_bpm", "hr_zone", "power_zone", "kcal", "if", "tss", "power_target", "hr_target")


def public_board(board: dict[str, Any], rows: bool = True) -> dict[str, Any]:
    """The board with every rider's private columns blanked, built once per board; its
    ``_index`` keeps the whole rows, so ``own_row`` (``you``) stays whole. ``rows``: the
    blanked ``rows`` too (only a ``view=all`` viewer sends them: a rider's own board, the
    common case, blanks only ``top``)."""
    public = board.get("_public")
    if public is None:
        hidden = tuple(i for i, c in enumerate(board["cols"]) if c in PRIVATE_COLUMNS)
        public = board["_public"] = {k: board[k] for k in (*_SHARED, "summaries") if k in board}
        public.update(top=_blanked(board["top"], hidden), _hidden=hidden)
        if "merged" in board:  # a sharded class: pages are blanked as they are built
            public["merged"] = board["merged"]
            return public  # type: ignore[no-any-return]
        public["_index"] = {row[0]: row for row in board["rows"]}
    if rows and "rows" not in public and "merged" not in public:
        public["rows"] = _blanked(board["rows"], public["_hidden"])
    return public  # type: ignore[no-any-return]


def _blanked(rows: list[list[Any]], hidden: tuple[int, ...]) -> list[list[Any]]:
    return [[None if i in hidden else v for i, v in enumerate(row)] for row in rows]


def board_encoder(
    participant: str | None, *, everyone: bool, as_json: bool = False, private: bool = False,
    paging: Paging | None = None,
) -> Callable[[dict[str, Any]], bytes | str]:
    """``private``: the viewer's token is a participant's (``public_board``); ``paging``: which
    rows a ``view=all`` viewer gets (default: every row, or page 0 of a sharded class)."""
    rows_of = (paging or Paging()) if everyone else None

    def encode_board(whole: dict[str, Any]) -> bytes | str:
        board = public_board(whole, rows=rows_of is not None) if private else whole
        if not as_json:
            return _msgpack_frame(board, participant, rows_of)
        frame: dict[str, Any] = {"t": "board", **{k: board[k] for k in _SHARED if k in board}}
        if participant is not None:
            frame["you"] = own_row(board, participant)
            summary = own_summary(board, participant)
            if summary is not None:
                frame["summary"] = summary
        if rows_of is not None:
            frame["rows"] = rows_of.rows(board)
            frame.update(rows_of.info(board) or {})
        return json.dumps(frame)

    return encode_board


# -- protocol v1.1: the compact board on a device connection ---------------------------------
_COMPACT_SHARED = ("session", "version", "phase", "n", "ts", "plan", "replay")
_ME_COLUMNS = ("rank", "energy_kj", "power_w", "hr_bpm", "cadence_rpm", "samples", "last_ts")
_ME_METRICS = ("power_zone", "hr_zone", "np_w", "kcal")  # trailing, on boards that carry them
_ME_TARGETS = ("power_target", "cadence_target", "hr_target")  # after those: -1 below, 0 in, 1 above
_ME_REPLAY = ("replay_rank", "offset_s")  # after those: on-demand classes (None elsewhere)
_TARGET_CODE = {"below": -1, "in": 0, "above": 1, None: None}


def _tenths(kj: float | None) -> int:
    return 0 if kj is None else int(round(kj * 10))


def _whole(value: float | None) -> int | None:
    return None if value is None else int(round(value))


def _compact_shared(board: dict[str, Any]) -> tuple[bytes, bytes]:
    """(fixmap header, pairs) every rider's frame shares, packed once per board: ``top`` as
    ``[participant, output]`` rows and ``sum``, the class's output (tenths of a kJ)."""
    cols = board["cols"]
    who, energy = cols.index("participant"), cols.index("energy_kj")
    top = [[row[who], _tenths(row[energy])] for row in board["top"]]
    total = _tenths(board["total_kj"] if "total_kj" in board else sum(row[energy] or 0.0 for row in board["rows"]))
    pairs = [("t", "board"), *((k, board[k]) for k in _COMPACT_SHARED if k in board), ("top", top), ("sum", total)]
    return bytes([0x80 | len(pairs)]), b"".join(encode_value(k) + encode_value(v) for k, v in pairs)


def _me_row(board: dict[str, Any], participant: str) -> list[Any] | None:
    row = own_row(board, participant)
    if row is None:
        return None
    at = board.get("_me_at")
    if at is None:  # once per board, not per rider
        cols = board["cols"]
        at = board["_me_at"] = ([cols.index(c) for c in _ME_COLUMNS], [cols.index(c) for c in _ME_METRICS if c in cols],
                                [cols.index(c) for c in _ME_TARGETS if c in cols],
                                [cols.index(c) for c in _ME_REPLAY if c in cols])
    base, metrics, targets, replay = at
    rank, energy, power, hr, cadence, samples, last_ts = (row[i] for i in base)
    return [rank, _tenths(energy), _whole(power), _whole(hr), _whole(cadence), samples, last_ts,
            *(_whole(row[i]) for i in metrics), *(_TARGET_CODE.get(row[i]) for i in targets), *(row[i] for i in replay)]


_ME_KEY = encode_value("me")
_ACKS_KEY = encode_value("acks")


class CompactBoard:
    """Protocol v1.1 board frames for one rider: the class's top N as ``[participant,
    output]``, the rider's own ``me`` row ``[rank, output, power_w, hr_bpm, cadence_rpm,
    samples, last_ts, power_zone, hr_zone, np_w, kcal]`` (the last four since issue 16,
    whole numbers, None while unknown), ``sum``, ``n``, ``ts``, and the acks that are due (``acks``).
    Output is in tenths of a kJ (integers pack small). About 250-280 B for a 100-rider
    class at N = 10 (measured in ``tests/api/test_protocol_v11.py``)."""

    def __init__(self, participant: str | None) -> None:
        self.participant = participant

    def __call__(self, board: dict[str, Any], acks: dict[str, int] | None = None) -> bytes:
        header, shared = _cached_pair(board)
        count = header[0] & 0x0F
        parts = [shared]
        if self.participant is not None:
            me = _me_row(board, self.participant)
            if me is not None:
                parts.append(_ME_KEY + encode_value(me))
                count += 1
            summary = own_summary(board, self.participant)
            if summary is not None:
                parts.append(_SUMMARY_KEY + encode_value(summary))
                count += 1
        if acks:
            parts.append(_ACKS_KEY + encode_value(acks))
            count += 1
        return bytes([0x80 | count]) + b"".join(parts)  # fixmap: at most 10 pairs


def _cached_pair(board: dict[str, Any]) -> tuple[bytes, bytes]:
    value = board.get("_compact")
    if value is None:
        value = board["_compact"] = _compact_shared(board)
    return value  # type: ignore[no-any-return]
