"""Board frames for viewers: the shared board plus the viewer's own row.

The session actor returns one board per version (top-N plus every participant's row);
each viewer gets ``top`` and, when it names a participant, ``you`` (its own rank and
values); a ``view=all`` viewer (a studio screen, the swarm's latency probe) gets every
row. Encoded lazily at send time, so boards a slow viewer skips cost nothing.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from devices.protocol import encode_value

_SHARED = ("session", "version", "phase", "n", "cols", "top", "ts")


def own_row(board: dict[str, Any], participant: str) -> list[Any] | None:
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


def _msgpack_frame(board: dict[str, Any], participant: str | None, everyone: bool) -> bytes:
    """A msgpack map spliced from cached pairs: only ``you`` is encoded per viewer."""
    shared = _cached(board, "_shared", lambda: _shared_pairs(board))
    count = 1 + sum(1 for k in _SHARED if k in board)
    parts = [shared]
    if participant is not None:
        parts.append(_YOU_KEY + encode_value(own_row(board, participant)))
        count += 1
    if everyone:
        parts.append(_cached(board, "_rows", lambda: _ROWS_KEY + encode_value(board["rows"])))
        count += 1
    return bytes([0x80 | count]) + b"".join(parts)  # fixmap: fewer than 16 pairs


_YOU_KEY = encode_value("you")
_ROWS_KEY = encode_value("rows")


def board_encoder(
    participant: str | None, *, everyone: bool, as_json: bool = False
) -> Callable[[dict[str, Any]], bytes | str]:
    def encode_board(board: dict[str, Any]) -> bytes | str:
        if not as_json:
            return _msgpack_frame(board, participant, everyone)
        frame: dict[str, Any] = {"t": "board", **{k: board[k] for k in _SHARED if k in board}}
        if participant is not None:
            frame["you"] = own_row(board, participant)
        if everyone:
            frame["rows"] = board["rows"]
        return json.dumps(frame)

    return encode_board
