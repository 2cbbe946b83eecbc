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
``summaries`` an ended class's riders' end-of-class summaries (``rank`` and ``riders``
           within the shard: the edge replaces them with the class's)
``sum``    the shard's output (kJ over its active riders)
``base``   (a change part) the version the rows below change: only the rows that differ
           from it, at the slots in ``di`` (int32), go in ``m``, ``pc`` and ``tc``, and
           ``ids`` holds only the riders added since
=========  ===============================================================================

A shard sends a change part when the edge's tick says it holds one of the shard's last
``KEEP_VERSIONS`` versions (``BoardParts``): a class of riders at 1 Hz ticked at 10 Hz
changes about a tenth of its rows per tick, so most of the part's bytes stay home.

All per-rider data are numpy columns as little-endian bytes: building a part costs the
shard no Python object per rider, and the edge builds a rider's row only for a rider who
looks at it. The edge ranks a rider exactly across shards as 1 + the number of riders with
a higher score in every shard (``searchsorted`` on each shard's sorted score column).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from actors.session import BOARD_COLUMNS, Phase, SessionState

PART_KEYS = ("part", "session", "version", "phase", "n", "cols", "top", "ids", "e", "ord", "m", "pc", "tc", "sum",
             "plan", "summaries", "base", "di")
KEEP_VERSIONS = 16  # recent versions a shard can send changes against (edges hold different ones)


@dataclass(frozen=True, slots=True)
class _Rows:
    """The per-slot numbers of one version (what a change is computed against)."""

    matrix: np.ndarray
    presence: np.ndarray
    targets: np.ndarray


class BoardParts:
    """A shard's parts, one per version, whole or as the rows changed since a version the
    edge says it holds (``base``) when that version is among the last ``KEEP_VERSIONS``."""

    def __init__(self) -> None:
        self._recent: OrderedDict[int, tuple[dict[str, Any], _Rows]] = OrderedDict()

    def part(self, state: SessionState, known_version: int) -> dict[str, Any]:
        whole, rows = self._whole(state)
        base = self._recent.get(known_version)
        if base is None or known_version == state.version:
            return whole
        return _changes(whole, rows, base[1], state, known_version)

    def _whole(self, state: SessionState) -> tuple[dict[str, Any], _Rows]:
        cached = self._recent.get(state.version)
        if cached is None:
            cached = self._recent[state.version] = board_part(state)
            while len(self._recent) > KEEP_VERSIONS:
                self._recent.popitem(last=False)
        return cached


def _changes(whole: dict[str, Any], rows: _Rows, base: _Rows, state: SessionState, version: int) -> dict[str, Any]:
    """``whole`` with only the rows that differ from ``base`` (and the riders added since)."""
    before = len(base.presence)
    old, new = base.matrix, rows.matrix[:before]
    differs = ((old != new) & ~(np.isnan(old) & np.isnan(new))).any(axis=1)
    differs |= (base.presence != rows.presence[:before]) | (base.targets != rows.targets[:before]).any(axis=1)
    changed = np.concatenate([np.flatnonzero(differs), np.arange(before, len(rows.presence))]).astype("<i4")
    part = {k: v for k, v in whole.items() if k not in ("ids", "m", "pc", "tc")}
    part.update(base=version, di=changed.tobytes(), m=np.ascontiguousarray(rows.matrix[changed]).tobytes(),
                pc=rows.presence[changed].tobytes(), tc=np.ascontiguousarray(rows.targets[changed]).tobytes(),
                ids="\n".join(state.participants[before:]))
    return part


def board_part(state: SessionState) -> tuple[dict[str, Any], _Rows]:
    """The state's whole board part (see the module docstring) and its per-slot numbers."""
    order = state.ranking()
    slots = np.arange(len(state.participants))
    scores = state.scores()
    rows = _Rows(np.ascontiguousarray(state.board_matrix(slots), dtype="<f8"),
                 state.presence.code[: len(slots)].astype(np.int8),
                 np.ascontiguousarray(np.column_stack(list(state.targets(slots).values())), dtype=np.int8))
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
        "m": rows.matrix.tobytes(),
        "pc": rows.presence.tobytes(),
        "tc": rows.targets.tobytes(),
        "sum": float(scores[order].sum()),
    }
    plan = state.schedule.position(state.clock())
    if plan is not None:
        part["plan"] = plan
    if state.phase is Phase.ENDED:  # each rider's end-of-class summary (the edge sets the class rank)
        part["summaries"] = state.class_summaries(state.board_rows(order))
    return part, rows


def is_part(board: dict[str, Any] | None) -> bool:
    return board is not None and board.get("part") == 1
