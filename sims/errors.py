"""``SimsError``: the root of the simulator's errors (a bad scenario, no edge to talk to)."""

from __future__ import annotations


class SimsError(Exception):
    """Root of the sims package's errors."""
