"""A class shard's board part: what one shard of a big class sends the edge instead of a board.

A class with many riders runs as several class shards (``cluster/class_shards.py``), each a
plain ``SessionCell`` that owns the riders hashed to it. Its tick result carries, instead
of a board with a row per rider, a *part* the edge merges with the other shards' parts
(``api/class_board.py``):

=========  ===============================================================================
key        value
=========  ===============================================================================
``part``   1 (this is a part, not a board)
``session``, ``version``, ``phase``, ``n``, ``cols``: as on a board (``n``: active riders)
``top``    the shard's top ``board_size`` rows, best first (ranks are the shard's own)
``ids``    every rider of the shard (its slots, in order), joined by ``"\\n"``
``e``      float64 per slot: the ranking score (energy, kJ, unrounded)
``ord``    int32: the active slots, best first (``SessionState.ranking``)
``m``      float64 (slots x ``BOARD_VALUE_COLUMNS``): the board numbers of every slot,
           rounded as a board shows them, NaN where unknown (``SessionState.board_matrix``)
``pc``     int8 per slot: presence code (``actors.presence``)
``tc``     int8 (slots x 3): place against the running segment's targets (``actors.plan``)
``plan``   the class plan's position, as on a board (absent without a plan)
``sum``    the shard's output (kJ over its active riders)
=========  ===============================================================================

All per-rider data are numpy columns as little-endian bytes: building a part costs the
shard no Python object per rider, and the edge builds a rider's row only for a rider who
looks at it. The edge ranks a rider exactly across shards as 1 + the number of riders with
a higher score in every shard (``searchsorted`` on each shard's sorted score column).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from actors.session import BOARD_COLUMNS, SessionState

PART_KEYS = ("part", "session", "version", "phase", "n", "cols", "top", "ids", "e", "ord", "m", "pc", "tc", "sum", "plan")


def board_part(state: SessionState) -> dict[str, Any]:
    """The state's board part (see the module docstring)."""
    order = state.ranking()
    slots = np.arange(len(state.participants))
    scores = state.scores()
    part = {
        "part": 1,
        "session": state.session_id,
        "version": state.version,
        "phase": state.phase.value,
        "n": len(order),
        "cols": list(BOARD_COLUMNS),
        "top": state.board_rows(order[: state.board_size]),
        "ids": "\n".join(state.participants),
        "e": np.ascontiguousarray(scores, dtype="<f8").tobytes(),
        "ord": order.astype("<i4").tobytes(),
        "m": np.ascontiguousarray(state.board_matrix(slots), dtype="<f8").tobytes(),
        "pc": state.presence.code[: len(slots)].astype(np.int8).tobytes(),
        "tc": np.column_stack(list(state.targets(slots).values())).astype(np.int8).tobytes(),
        "sum": float(scores[order].sum()),
    }
    plan = state.schedule.position(state.clock())
    if plan is not None:
        part["plan"] = plan
    return part


def is_part(board: dict[str, Any] | None) -> bool:
    return board is not None and board.get("part") == 1
