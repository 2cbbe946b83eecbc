"""The swarm's collector: settled once the class runs, and every collection it runs counted
with its pause (``swarm_gc`` in the report: a pause is lag on the swarm's own schedule)."""

from __future__ import annotations

import gc

from sims.swarm import GcWatch, _settle_collector


def test_the_watch_counts_each_generation_and_its_pauses_only_while_installed() -> None:
    watch = GcWatch()
    watch.install()
    watch.install()  # once only
    try:
        gc.collect(0)
        gc.collect(2)
    finally:
        watch.remove()
    gc.collect()
    summary = watch.summary()
    assert summary["collections"][0] >= 1 and summary["collections"][2] >= 1
    assert sum(summary["collections"]) <= 3  # nothing counted after remove(), nothing twice
    assert summary["longest_ms"] >= 0.0 and len(summary["pause_ms"]) == 3


def test_settling_freezes_what_lives_and_raises_the_young_threshold() -> None:
    before = gc.get_threshold()
    try:
        held = [[k] for k in range(1000)]
        _settle_collector()
        assert gc.get_freeze_count() >= len(held)
        assert gc.get_threshold() == (10_000, before[1], before[2])
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
