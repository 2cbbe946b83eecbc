"""The cyclic garbage collector of a long-lived pulseline process (the edge, a class's actor).

Python collects its young generation every 700 net new container objects by default. A
live class allocates in bursts that live about a second (a tick's board rows, decoded
frames): at 700 they outlive two young collections, reach the old generation, and make
the full collections — passes over every object the process holds (Ray, the web stack,
every connection: ~600k objects in an edge with 3,000 riders) — run every few seconds,
~350 ms each there. ``settle()`` takes what exists once the process is up out of the
collector for good (``gc.freeze``: modules, Ray, the app: it lives as long as the process)
and collects the young generation every ``GEN0_THRESHOLD`` net new objects instead, so a
steady class frees what it allocates (reference counting) before a collection is due.
Measured in ``docs/benchmarks.md``, "The edge's garbage collector".
"""

from __future__ import annotations

import gc

GEN0_THRESHOLD = 10_000  # net new GC-tracked objects between young collections (Python's default: 700)


def settle(gen0_threshold: int = GEN0_THRESHOLD) -> None:
    """Freeze what is alive now and raise the young generation's threshold (idempotent)."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(gen0_threshold, gen1, gen2)
