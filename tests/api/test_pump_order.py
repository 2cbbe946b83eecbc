"""A pump hands its board to its viewers fastest period first: a 10 Hz screen of a big class
is not written after thousands of riders' 1 Hz boards in the same tick."""

from __future__ import annotations

from typing import Any

import pytest

from api.outbox import Outbox
from api.pump import SessionPump


def _pump() -> SessionPump:
    return SessionPump("order-test", None, tick_interval_s=0.1, max_tick_interval_s=1.0, max_pending=100)  # type: ignore[arg-type]


def _viewer(period_s: float) -> Outbox:
    ws: Any = None  # never written: the order is all that is looked at
    return Outbox(ws, board_interval_s=period_s)


def test_viewers_come_fastest_period_first_in_joining_order_within_a_period() -> None:
    pump = _pump()
    riders = [_viewer(1.0) for _ in range(5)]
    screen = _viewer(0.1)
    slow = _viewer(5.0)
    for v in riders[:3]:
        pump.add_viewer(v)
    pump.add_viewer(slow)
    pump.add_viewer(screen)
    for v in riders[3:]:
        pump.add_viewer(v)
    assert pump._in_order() == [screen, *riders, slow]
    assert pump.interval_s == 0.1


def test_viewers_leaving_take_their_period_with_them() -> None:
    pump = _pump()
    screen, rider = _viewer(0.1), _viewer(1.0)
    pump.add_viewer(screen)
    pump.add_viewer(rider)
    pump.add_viewer(rider)  # again: once only
    assert pump._in_order() == [screen, rider]
    pump.remove_viewer(screen)
    assert pump._in_order() == [rider] and pump.interval_s == 1.0
    pump.remove_viewer(rider)
    pump.remove_viewer(rider)  # twice: nothing left to remove
    assert pump._in_order() == [] and not pump.viewers


def test_a_pump_given_a_beat_moves_its_next_tick_onto_it_by_less_than_a_period() -> None:
    """The class asks an edge to tick on its beat (just before the edge of its fastest
    viewer): the next wait is moved later by up to 3/4 of a class period, or sooner by at
    most a quarter, and stays as it is without a beat."""
    pump = _pump()
    pump._tick_began = 100.0
    assert pump._in_step(0.1) == 0.1  # no beat
    pump._class_period = 0.1
    pump._beat_at = 100.0 + 0.13  # the class wants a tick at 100.13 (and 100.23, 100.03, ...)
    assert pump._in_step(0.1) == pytest.approx(0.13)
    pump._beat_at = 100.0 + 0.08  # 0.02 s sooner than planned: sooner
    assert pump._in_step(0.1) == pytest.approx(0.08)
    pump._beat_at = 100.0 + 0.06  # 0.04 s sooner (more than a quarter period): later instead
    assert pump._in_step(0.1) == pytest.approx(0.16)
    pump._beat_at = 100.0 + 0.35  # a beat further away is the same beat a few periods on
    assert pump._in_step(1.0) == pytest.approx(1.05)
