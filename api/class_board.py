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
from actors.session import BOARD_COLUMNS, BOARD_VALUE_COLUMNS, Phase, board_row, rows_of

_LABELS = [p.value for p in Presence]
_PRESENCE_LABELS = np.array(_LABELS, dtype=object)
_TARGET_LABELS = dict(zip((-1, 0, 1, 2), target_labels(np.array([-1, 0, 1, 2])).tolist()))
_WIDTH = len(BOARD_VALUE_COLUMNS)
_PHASES = [p.value for p in Phase]


class PartGap(Exception):
    """A change part for a version this edge does not hold (it asks for the whole part)."""


def _roster_after(previous: ShardPart, added: str) -> tuple[list[str], dict[str, int], np.ndarray]:
    if not added:
        return previous.ids, previous.index, previous.id_column
    new = added.split("\n")
    ids = previous.ids + new
    index = dict(previous.index)
    index.update((p, i) for i, p in enumerate(new, start=len(previous.ids)))
    return ids, index, np.concatenate([previous.id_column, np.array(new, dtype=object)])


def _changed(before: np.ndarray, slots: int, at: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """A copy of ``before`` grown to ``slots`` rows, with ``rows`` at ``at`` (the previous
    part stays as it was: boards already handed out keep reading it)."""
    after = np.empty((slots, *before.shape[1:]), before.dtype)
    after[: len(before)] = before
    after[at] = rows
    return after


@dataclass(frozen=True, slots=True)
class ShardPart:
    """One shard's part, decoded: numpy views on the part's bytes."""

    version: int
    phase: str
    n: int
    top: list[list[Any]]
    ids: list[str]
    id_column: np.ndarray  # the same ids, an object array (for pages)
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
    summaries: dict[str, dict[str, Any]] | None

    @classmethod
    def decode(cls, raw: dict[str, Any], previous: ShardPart | None = None) -> ShardPart:
        """The part ``raw``; a change part (``base``) applies to ``previous``, which must be
        the version it names (else ``PartGap``: ask for the whole part)."""
        scores = np.frombuffer(raw["e"], "<f8")
        order = np.frombuffer(raw["ord"], "<i4")
        if "base" in raw:
            if previous is None or previous.version != raw["base"]:
                raise PartGap(f"a change since version {raw['base']} but this edge holds "
                              f"{None if previous is None else previous.version}")
            ids, index, id_column = _roster_after(previous, raw["ids"])
            changed = np.frombuffer(raw["di"], "<i4")
            matrix = _changed(previous.matrix, len(ids), changed, np.frombuffer(raw["m"], "<f8").reshape(-1, _WIDTH))
            presence = _changed(previous.presence, len(ids), changed, np.frombuffer(raw["pc"], np.int8))
            targets = _changed(previous.targets, len(ids), changed,
                               np.frombuffer(raw["tc"], np.int8).reshape(-1, len(TARGET_COLUMNS)))
        else:
            if previous is not None and len(previous.ids) == len(scores):  # (a roster only grows)
                ids, index, id_column = previous.ids, previous.index, previous.id_column
            else:
                ids = raw["ids"].split("\n") if raw["ids"] else []
                index = {p: i for i, p in enumerate(ids)}
                id_column = np.array(ids, dtype=object)
            matrix = np.frombuffer(raw["m"], "<f8").reshape(len(ids), _WIDTH)
            presence = np.frombuffer(raw["pc"], np.int8)
            targets = np.frombuffer(raw["tc"], np.int8).reshape(len(ids), len(TARGET_COLUMNS))
        active = np.zeros(len(ids), bool)
        active[order] = True
        return cls(
            version=raw["version"], phase=raw["phase"], n=raw["n"], top=raw["top"], ids=ids,
            id_column=id_column, index=index, scores=scores, neg_sorted=-scores[order], order=order, active=active,
            matrix=matrix, presence=presence, targets=targets, total_kj=float(raw["sum"]), plan=raw.get("plan"),
            summaries=raw.get("summaries"),
        )

    def above(self, score: float) -> int:
        """How many active riders of this shard scored more than ``score``."""
        return int(np.searchsorted(self.neg_sorted, -score, side="left"))


class ClassBoard:
    """Rows of a merged class board, built on demand (one rider, or one page by rank)."""

    def __init__(self, parts: Sequence[ShardPart]) -> None:
        self.parts = tuple(parts)
        self._order: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._rank_columns: dict[int, np.ndarray] = {}
        self._pages: dict[tuple[int, int, tuple[int, ...]], list[list[Any]]] = {}

    def rank(self, score: float) -> int:
        return 1 + sum(part.above(score) for part in self.parts)

    def get(self, participant: str) -> list[Any] | None:
        """The rider's row (None: not on the board), with its exact class rank."""
        for at, part in enumerate(self.parts):
            slot = part.index.get(participant)
            if slot is not None:
                if not part.active[slot]:
                    return None
                return self._row(part, slot, int(self._ranks(at)[slot]))
        return None

    def summary(self, participant: str) -> dict[str, Any] | None:
        """The rider's end-of-class summary with its class rank and the class's rider count."""
        for at, part in enumerate(self.parts):
            slot = part.index.get(participant)
            if slot is not None:
                mine = (part.summaries or {}).get(participant)
                if mine is None:
                    return None
                return {**mine, "rank": int(self._ranks(at)[slot]), "riders": sum(p.n for p in self.parts)}
        return None

    def _ranks(self, at: int) -> np.ndarray:
        """Every slot's class rank in shard ``at``: one ``searchsorted`` per shard over the
        whole column, on the first rider of that shard who asks for this board."""
        ranks = self._rank_columns.get(at)
        if ranks is None:
            neg = -self.parts[at].scores
            ranks = self._rank_columns[at] = 1 + sum(
                (np.searchsorted(p.neg_sorted, neg, side="left") for p in self.parts), np.zeros(len(neg), np.int64))
        return ranks

    def _row(self, part: ShardPart, slot: int, rank: int) -> list[Any]:
        return board_row(part.ids[slot], rank, part.matrix[slot].tolist(), _LABELS[part.presence[slot]],
                         [_TARGET_LABELS[code] for code in part.targets[slot].tolist()])

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
        """The page's rows, gathered as columns from each shard's part."""
        shard, slot, ranks = (column[number * size:(number + 1) * size] for column in self._global_order())
        if not len(slot):
            return []
        ids = np.empty(len(slot), dtype=object)
        matrix = np.empty((len(slot), _WIDTH))
        presence = np.empty(len(slot), np.int8)
        targets = np.empty((len(slot), len(TARGET_COLUMNS)), np.int8)
        for at, part in enumerate(self.parts):
            mine = shard == at
            ids[mine] = part.id_column[slot[mine]]
            matrix[mine] = part.matrix[slot[mine]]
            presence[mine] = part.presence[slot[mine]]
            targets[mine] = part.targets[slot[mine]]
        return rows_of(ids, ranks, matrix, _PRESENCE_LABELS[presence],
                       [target_labels(targets[:, j]) for j in range(len(TARGET_COLUMNS))], hidden)

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
    if any(p.summaries is not None for p in parts):
        board["summaries"] = _Summaries(merged)
    return board


class _Summaries:
    """``board["summaries"]`` of a merged board: ``get(rider)`` as on a one-actor board."""

    def __init__(self, merged: ClassBoard) -> None:
        self.merged = merged

    def get(self, participant: str) -> dict[str, Any] | None:
        return self.merged.summary(participant)

