"""The load shape of a swarm: when devices join, and how fast they send over time.

* ``join_window_s`` — 0: every connection is up before the class starts (a steady class);
  otherwise each connection joins at a uniformly random time in ``[0, join_window_s)``
  after the start (a join storm when thousands join within seconds; a ramp when the window
  is the whole run).
* ``Surge(at_s, duration_s, multiplier)`` — from ``at_s`` for ``duration_s`` every device
  sends ``multiplier`` times as often (an end-of-class surge: 10x for 30 s).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Surge", "rate_at"]


@dataclass(frozen=True)
class Surge:
    at_s: float
    duration_s: float
    multiplier: float = 10.0

    def covers(self, t: float) -> bool:
        return self.at_s <= t < self.at_s + self.duration_s


def rate_at(base_hz: float, surges: Sequence[Surge], t: float) -> float:
    """Samples per second per device at class time ``t`` (surges multiply; overlaps compound)."""
    rate = base_hz
    for surge in surges:
        if surge.covers(t):
            rate *= surge.multiplier
    return rate
