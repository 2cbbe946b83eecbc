"""Presence (``actors/presence.py``): active, reconnecting within the grace period, left after it.

``SessionState`` with an injected clock for the rules; one real session actor (real Ray
and Redis) for the settings and the snapshot path.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from actors.session import DeviceBatch, Phase, SessionState

pytestmark = pytest.mark.timeout(120)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def live_class(clock: Clock, **options: Any) -> SessionState:
    state = SessionState("p", clock=clock, **options)
    for who in ("ann", "bob"):
        state.join(who)
    state.set_phase(Phase.LIVE)
    return state


def send(state: SessionState, who: str, seq: int, power: float = 200.0) -> None:
    state.apply([DeviceBatch(f"{who}-dev", who, [[seq, state.clock(), None, power]])])


def presence_of(state: SessionState) -> dict[str, str]:
    board = state.board()
    at = board["cols"].index("presence")
    return {row[0]: row[at] for row in board["rows"]}


def test_a_quiet_rider_is_reconnecting_then_leaves_after_the_grace_and_comes_back() -> None:
    clock = Clock()
    state = live_class(clock)
    send(state, "ann", 1)
    send(state, "bob", 1)
    for seq in range(2, 8):  # ann keeps riding, bob goes quiet
        clock.now += 1.0
        send(state, "ann", seq)
        state.age_presence(force=True)
    assert presence_of(state) == {"ann": "active", "bob": "reconnecting"}  # 6 s quiet > 5 s
    assert state.snapshot()["presence"] == {"active": 1, "reconnecting": 1, "left": 0}
    clock.now += 54.0  # bob: 60 s without a sample
    send(state, "ann", 8)
    state.age_presence(force=True)
    assert presence_of(state) == {"ann": "active"}  # off the board ...
    bob = state.summary("bob")
    assert bob is not None and bob["presence"] == "left" and bob["samples"] == 1  # ... totals kept
    assert state.snapshot()["presence"] == {"active": 1, "reconnecting": 0, "left": 1}
    clock.now += 10.0
    send(state, "bob", 2)  # back
    assert presence_of(state) == {"ann": "active", "bob": "active"}
    assert state.summary("bob")["samples"] == 2 and state.summary("bob")["energy_kj"] == pytest.approx(1.0)  # type: ignore[index]


def test_the_grace_period_is_configurable() -> None:
    clock = Clock()
    state = live_class(clock, presence_grace_s=10.0)
    send(state, "ann", 1)
    clock.now += 9.0
    state.age_presence(force=True)
    assert presence_of(state)["ann"] == "reconnecting"
    clock.now += 1.0
    state.age_presence(force=True)
    assert "ann" not in presence_of(state)


def test_nobody_ages_in_the_lobby_and_the_grace_starts_when_the_class_goes_live() -> None:
    clock = Clock()
    state = SessionState("lobby", clock=clock)
    state.join("ann")  # from an app, no sensor yet
    clock.now += 600.0
    assert state.age_presence(force=True) is False and presence_of(state) == {"ann": "active"}
    state.set_phase(Phase.LIVE)
    clock.now += 3.0
    state.age_presence(force=True)
    assert presence_of(state) == {"ann": "active"}  # 3 s since the start, not 603 since the join


def test_an_explicit_leave_is_left_and_an_ended_class_keeps_its_presence() -> None:
    clock = Clock()
    state = live_class(clock)
    state.leave("bob")
    assert state.snapshot()["presence"] == {"active": 1, "reconnecting": 0, "left": 1}
    state.set_phase(Phase.ENDED)
    clock.now += 3_600.0
    assert state.age_presence(force=True) is False and presence_of(state) == {"ann": "active"}


def test_ageing_is_rate_limited_unless_forced() -> None:
    clock = Clock()
    state = live_class(clock)
    assert state.age_presence() is False  # nothing changed
    clock.now += 7.0
    assert state.age_presence() is True  # both quiet for 7 s
    clock.now += 0.1
    assert state.age_presence() is False  # (not due: at most every AGE_INTERVAL_S)


def test_a_restored_class_gives_every_rider_a_fresh_grace() -> None:
    clock = Clock()
    state = live_class(clock)
    clock.now += 30.0
    state.age_presence(force=True)
    assert set(presence_of(state).values()) == {"reconnecting"}
    clock.now += 25.0  # the actor was down meanwhile
    restored = SessionState.from_checkpoint(state.to_checkpoint(), clock=clock)
    clock.now += 10.0  # 65 s since anyone sent, 10 s since the restart
    restored.age_presence(force=True)
    assert presence_of(restored) == {"ann": "reconnecting", "bob": "reconnecting"}


@pytest.mark.integration
def test_a_session_actor_takes_the_grace_from_its_settings(ray_instance: Any, redis_server: Any, unique_id: str) -> None:
    """A real actor with ``presence_grace_s`` 6: a rider silent that long leaves its board."""
    import ray

    from actors.session_actor import SessionActor

    settings = {"redis_url": redis_server.url, "prefix": f"pres{unique_id}", "presence_grace_s": 6.0}
    actor = SessionActor.options(name=f"presence-{unique_id}", resources={"session_slot": 1}).remote(unique_id, settings)
    try:
        ray.get(actor.join.remote(participant="ann"), timeout=60)
        ray.get(actor.set_phase.remote(phase="live"), timeout=60)
        ray.get(actor.tick.remote(batches=[["ann-dev", "ann", [[1, time.time(), None, 150.0]], []]],
                                  want_durable=[], known_version=-1), timeout=60)
        deadline = time.monotonic() + 60
        while True:
            snap = ray.get(actor.snapshot.remote(), timeout=60)
            if snap["presence"]["left"] or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert snap["presence"] == {"active": 0, "reconnecting": 0, "left": 1}
        ann = snap["participants"][0]
        assert ann["presence"] == "left" and ann["active"] is False and ann["samples"] == 1
    finally:
        ray.kill(actor)
