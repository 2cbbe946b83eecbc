"""The board of a sharded class, merged at the edge from its shards' board parts.

Each class shard sends a part per version (``actors/board_part.py``): its top N rows, its
sorted score column and its riders' board numbers as numpy columns. ``ShardPart`` decodes
one (reusing the rider index while the shard's roster is unchanged); ``merge_board`` makes
the class board every viewer encoder takes (``api/viewer.py``), without putting all rows in
one place:

* ``top``: the N best of the shards' top N (every rider of the class's top N is in its
  shard's top N), re-ranked;
* a rider's rank is exact across the class: ``1 + sum over shards of the riders with a
  higher score`` (``np.searchsorted`` on each shard's sorted column: O(shards x log n) per
  rider; riders with equal output share a rank);
* ``n`` and ``total_kj`` are sums over the shards;
* ``merged`` (a ``ClassBoard``) builds one rider's row on demand (``get``: O(row), for a
  rider's ``you``/``me``) and pages of the whole class by rank (``page``: one global sort
  per board version, only when a ``view=all`` viewer asks).

Why the edge: it already holds every shard's stream and gets each part with the tick it
sent; merging where the parts arrive adds no hop and no Ray call, and each edge merges for
its own viewers only. A merger actor would add a hop per tick and one more process to
restart; the shards cannot merge among themselves without each sending its part N-1 times.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from actors.plan import TARGET_COLUMNS, target_labels
from actors.presence import Presence
from actors.session import BOARD_COLUMNS, BOARD_VALUE_COLUMNS, Phase, board_row

_LABELS = [p.value for p in Presence]
_WIDTH = len(BOARD_VALUE_COLUMNS)
_PHASES = [p.value for p in Phase]


@dataclass(frozen=True, slots=True)
class ShardPart:
    """One shard's part, decoded: numpy views on the part's bytes."""

    version: int
    phase: str
    n: int
    top: list[list[Any]]
    ids_text: str
    ids: list[str]
    index: dict[str, int]  # participant -> slot
    scores: np.ndarray  # float64 per slot
    neg_sorted: np.ndarray  # -score of the active slots, ascending (best first)
    order: np.ndarray  # the active slots, best first
    active: np.ndarray  # bool per slot
    matrix: np.ndarray  # (slots, BOARD_VALUE_COLUMNS)
    presence: np.ndarray  # int8 per slot
    targets: np.ndarray  # int8 (slots, 3): codes of actors.plan.target_codes
    total_kj: float
    plan: dict[str, Any] | None

    @classmethod
    def decode(cls, raw: dict[str, Any], previous: ShardPart | None = None) -> ShardPart:
        ids_text = raw["ids"]
        if previous is not None and previous.ids_text == ids_text:
            ids, index = previous.ids, previous.index
        else:
            ids = ids_text.split("\n") if ids_text else []
            index = {p: i for i, p in enumerate(ids)}
        scores = np.frombuffer(raw["e"], "<f8")
        order = np.frombuffer(raw["ord"], "<i4")
        active = np.zeros(len(ids), bool)
        active[order] = True
        return cls(
            version=raw["version"], phase=raw["phase"], n=raw["n"], top=raw["top"], ids_text=ids_text, ids=ids,
            index=index, scores=scores, neg_sorted=-scores[order], order=order, active=active,
            matrix=np.frombuffer(raw["m"], "<f8").reshape(len(ids), _WIDTH),
            presence=np.frombuffer(raw["pc"], np.int8),
            targets=np.frombuffer(raw["tc"], np.int8).reshape(len(ids), len(TARGET_COLUMNS)),
            total_kj=float(raw["sum"]), plan=raw.get("plan"),
        )

    def above(self, score: float) -> int:
        """How many active riders of this shard scored more than ``score``."""
        return int(np.searchsorted(self.neg_sorted, -score, side="left"))


class ClassBoard:
    """Rows of a merged class board, built on demand (one rider, or one page by rank)."""

    def __init__(self, parts: Sequence[ShardPart]) -> None:
        self.parts = tuple(parts)
        self._order: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._pages: dict[tuple[int, int, tuple[int, ...]], list[list[Any]]] = {}

    def rank(self, score: float) -> int:
        return 1 + sum(part.above(score) for part in self.parts)

    def get(self, participant: str) -> list[Any] | None:
        """The rider's row (None: not on the board), with its exact class rank."""
        for part in self.parts:
            slot = part.index.get(participant)
            if slot is not None:
                if not part.active[slot]:
                    return None
                return self._row(part, slot, self.rank(float(part.scores[slot])))
        return None

    def _row(self, part: ShardPart, slot: int, rank: int) -> list[Any]:
        return board_row(part.ids[slot], rank, part.matrix[slot].tolist(), _LABELS[part.presence[slot]],
                         target_labels(part.targets[slot]).tolist())

    def pages(self, size: int) -> int:
        return max(1, -(-sum(p.n for p in self.parts) // size))

    def page(self, number: int, size: int, hidden: tuple[int, ...] = ()) -> list[list[Any]]:
        """Rows ranked ``number * size + 1`` on (at most ``size``), ``hidden`` board columns
        blanked; built once per board, page and size."""
        key = (number, size, hidden)
        rows = self._pages.get(key)
        if rows is None:
            rows = self._pages[key] = self._page(number, size, hidden)
        return rows

    def _page(self, number: int, size: int, hidden: tuple[int, ...]) -> list[list[Any]]:
        shard, slot, ranks = self._global_order()
        rows = []
        for i in range(number * size, min(len(slot), (number + 1) * size)):
            row = self._row(self.parts[shard[i]], int(slot[i]), int(ranks[i]))
            for j in hidden:
                row[j] = None
            rows.append(row)
        return rows

    def _global_order(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(shard, slot, rank) of every active rider, best first (ties: shard, then slot)."""
        if self._order is None:
            shard = np.concatenate([np.full(len(p.order), i, np.int32) for i, p in enumerate(self.parts)])
            slot = np.concatenate([p.order for p in self.parts])
            score = np.concatenate([p.scores[p.order] for p in self.parts])
            at = np.lexsort((slot, shard, -score))
            ordered = score[at]
            ranks = 1 + np.searchsorted(-ordered, -ordered, side="left")
            self._order = (shard[at], slot[at], ranks)
        return self._order


def merge_board(class_id: str, parts: Sequence[ShardPart], board_size: int, version: int) -> dict[str, Any]:
    """The class board from every shard's part (see the module docstring)."""
    merged = ClassBoard(parts)
    candidates = [(-float(part.scores[part.order[i]]), s, i) for s, part in enumerate(parts) for i in range(len(part.top))]
    candidates.sort()
    top = []
    for neg, s, i in candidates[:board_size]:
        row = list(parts[s].top[i])
        row[1] = merged.rank(-neg)
        top.append(row)
    board = {
        "session": class_id,
        "version": version,
        "phase": min((p.phase for p in parts), key=_PHASES.index),
        "n": sum(p.n for p in parts),
        "cols": list(BOARD_COLUMNS),
        "top": top,
        "total_kj": sum(p.total_kj for p in parts),
        "shards": len(parts),
        "merged": merged,
    }
    plan = next((p.plan for p in parts if p.plan is not None), None)
    if plan is not None:  # (every shard runs the same plan on the same clock)
        board["plan"] = plan
    return board

