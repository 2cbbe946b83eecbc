"""``actors.gctune``: a long-lived process's collector settles (frozen start, higher young
threshold), and what is created afterwards is still collected."""

from __future__ import annotations

import gc
import weakref

from actors import gctune


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def test_settle_freezes_what_exists_and_raises_the_young_threshold() -> None:
    before = gc.get_threshold()
    try:
        keep = [[i] for i in range(1000)]  # alive when the process settles: frozen with the rest
        gctune.settle()
        assert gc.get_threshold() == (gctune.GEN0_THRESHOLD, before[1], before[2])
        assert gc.get_freeze_count() >= len(keep)
        a, b = _Node(), _Node()  # a cycle made after settling is still the collector's
        a.other, b.other = b, a
        gone = weakref.ref(a)
        del a, b
        gc.collect()
        assert gone() is None
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
