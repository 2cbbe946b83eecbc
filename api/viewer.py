"""Board frames for viewers: the shared board plus the viewer's own row.

The session actor returns one board per version (top-N plus every participant's row);
each viewer gets ``top`` and, when it names a participant, ``you`` (its own rank and
values); a ``view=all`` viewer (a studio screen, the swarm's latency probe) gets every
row. Encoded lazily at send time, so boards a slow viewer skips cost nothing.
"""

from __future__ import annotations

from typing import Any, Callable

from devices.protocol import encode

_SHARED = ("session", "version", "phase", "n", "cols", "top", "ts")


def own_row(board: dict[str, Any], participant: str) -> list[Any] | None:
    index = board.get("_index")
    if index is None:
        index = board["_index"] = {row[0]: row for row in board["rows"]}
    return index.get(participant)  # type: ignore[no-any-return]


def board_encoder(participant: str | None, *, everyone: bool) -> Callable[[dict[str, Any]], bytes]:
    def encode_board(board: dict[str, Any]) -> bytes:
        frame: dict[str, Any] = {"t": "board", **{k: board[k] for k in _SHARED if k in board}}
        if participant is not None:
            frame["you"] = own_row(board, participant)
        if everyone:
            frame["rows"] = board["rows"]
        return encode(frame)

    return encode_board
