"""Presence: whether each rider of a class is riding, dropped out for now, or gone.

=================  ==========================================================================
``active``         the rider sent something (or joined) within ``quiet_s`` (default 5 s)
``reconnecting``   nothing for longer than that, but for less than ``grace_s`` (default 60 s,
                   ``presence_grace_s`` in the settings): seat and totals kept, still on the board
``left``           nothing for ``grace_s``, or an explicit leave: off the board (totals kept);
                   any sample or a join brings the rider back as ``active``
=================  ==========================================================================

Presence is read from the data (the server's clock when a rider's samples or join last
arrived), so it works the same for phones, hubs and the direct path: a phone that drops
its connection stops sending, and its rider shows ``reconnecting`` within ``quiet_s``.
Riders only age while the class is ``live`` or in ``cooldown``: in the lobby a rider who
joined from an app before their sensors are on stays ``active``, and the grace starts when
the class goes live; an ended class keeps the presence it ended with. After a restart of
the class every rider's grace starts again (the outage was not theirs).

Arrays indexed by participant slot; ``age`` is a handful of numpy operations over the
roster (no Python per rider), run at most once per ``AGE_INTERVAL_S`` from the tick path.
"""

from __future__ import annotations

import enum

import numpy as np

DEFAULT_QUIET_S = 5.0
DEFAULT_GRACE_S = 60.0
AGE_INTERVAL_S = 0.5


class Presence(str, enum.Enum):
    ACTIVE = "active"
    RECONNECTING = "reconnecting"
    LEFT = "left"


_CODES = np.array([p.value for p in Presence], dtype=object)  # code -> value
ACTIVE, RECONNECTING, LEFT = 0, 1, 2


class PresenceTable:
    """Per slot: when the rider was last seen (server clock) and its presence code."""

    def __init__(self, *, quiet_s: float = DEFAULT_QUIET_S, grace_s: float = DEFAULT_GRACE_S) -> None:
        self.quiet_s = quiet_s
        self.grace_s = grace_s
        self.seen_at = np.zeros(0)
        self.code = np.zeros(0, np.int8)
        self.aged_at = -np.inf

    def grow(self, capacity: int, used: int) -> None:
        seen_at = np.full(capacity, np.nan)
        seen_at[:used] = self.seen_at[:used]
        code = np.full(capacity, LEFT, np.int8)
        code[:used] = self.code[:used]
        self.seen_at, self.code = seen_at, code

    def seen(self, slots: np.ndarray | int, now: float) -> bool:
        """Riders in ``slots`` sent something now; True if one of them was not ``active``."""
        self.seen_at[slots] = now
        back = bool(np.any(self.code[slots] != ACTIVE))
        if back:
            self.code[slots] = ACTIVE
        return back

    def leave(self, slot: int) -> None:
        self.code[slot] = LEFT

    def restart(self, used: int, now: float) -> None:
        """Every rider's grace starts now (a restart, or the class going live)."""
        self.seen_at[:used] = now

    def age(self, active: np.ndarray, used: int, now: float) -> np.ndarray | None:
        """Recompute presence of the first ``used`` slots (``active``: still on the board);
        returns the slots whose presence changed (None if none did)."""
        self.aged_at = now
        quiet = now - self.seen_at[:used]
        code = np.where(quiet >= self.grace_s, LEFT, np.where(quiet > self.quiet_s, RECONNECTING, ACTIVE))
        code = np.where(active[:used], code, LEFT).astype(np.int8)
        changed = np.flatnonzero(code != self.code[:used])
        if not len(changed):
            return None
        self.code[:used] = code
        return changed

    def due(self, now: float) -> bool:
        return now - self.aged_at >= AGE_INTERVAL_S

    def labels(self, order: np.ndarray) -> np.ndarray:
        return _CODES[self.code[order]]  # type: ignore[no-any-return]

    def label(self, slot: int) -> str:
        return str(_CODES[self.code[slot]])

    def counts(self, used: int) -> dict[str, int]:
        per_code = np.bincount(self.code[:used], minlength=len(_CODES))
        return {p.value: int(n) for p, n in zip(Presence, per_code, strict=True)}
