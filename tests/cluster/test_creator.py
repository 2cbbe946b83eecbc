"""Class actors are created by a recycled creator actor (``cluster.creator``), not by the edge:
the actors outlive the creators that made them, a replaced creator is killed once idle, and a
creator that died is replaced without the creation failing."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import ray

from actors.session_actor import actor_name
from cluster.creator import ActorMaker
from cluster.directory import SessionDirectory

pytestmark = pytest.mark.integration


def _state(handle: Any) -> str:
    """The creator's state in the GCS actor table (ALIVE, DEAD, ...)."""
    from ray._private.state import actors

    return str(actors(actor_id=handle._actor_id.hex())["State"])


def _dead_soon(handle: Any, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _state(handle) == "DEAD":
            return True
        time.sleep(0.2)
    return False


@pytest.fixture
def directory(edge_settings: Any, unique_id: str) -> Iterator[SessionDirectory]:
    """A directory of the test's own (no Redis needed to create actors); the actors it made,
    named ``{unique_id}...``, and its creators are killed afterwards."""
    directory = SessionDirectory(None, prefix=edge_settings.prefix, namespace=edge_settings.namespace,  # type: ignore[arg-type]
                                 actor_settings=edge_settings.actor_settings(), resources={})
    made: list[str] = []
    real = directory._get_or_create
    directory._get_or_create = lambda sid, overrides=None: (made.append(sid), real(sid, overrides))[1]  # type: ignore[method-assign]
    yield directory
    directory.close()
    for sid in made:
        try:
            ray.kill(ray.get_actor(actor_name(sid), namespace=edge_settings.namespace), no_restart=True)
        except ValueError:
            pass


@pytest.mark.timeout(240)
def test_creators_are_recycled_and_the_actors_they_made_live_on(directory: SessionDirectory, unique_id: str) -> None:
    namespace = directory.namespace
    directory.maker = maker = ActorMaker(namespace, recycle_every=2)
    sessions = [f"cr-{unique_id}-{i}" for i in range(5)]
    creators: list[Any] = []
    for sid in sessions:
        actor = directory._get_or_create(sid)
        assert ray.get(actor.info.remote(), timeout=60)["pid"] > 0
        if maker._creator not in creators:
            creators.append(maker._creator)
    # the same name again is looked up, not created: no creation is asked of anyone
    made = maker._made
    assert directory._get_or_create(sessions[0])._actor_id == ray.get_actor(
        actor_name(sessions[0]), namespace=namespace)._actor_id
    assert maker._made == made
    assert maker.creators_started == 3 == len(creators)
    # every replaced creator was killed once its calls returned; its actors live on
    assert all(_dead_soon(old) for old in creators[:-1]), [_state(c) for c in creators]
    assert _state(creators[-1]) == "ALIVE"
    for sid in sessions:
        assert ray.get(ray.get_actor(actor_name(sid), namespace=namespace).info.remote(), timeout=60)["pid"] > 0

    # a creator that died is replaced, and the creation it was asked for still happens
    ray.kill(creators[-1], no_restart=True)
    assert _dead_soon(creators[-1])
    late = f"cr-{unique_id}-late"
    sessions.append(late)
    actor = directory._get_or_create(late)
    assert ray.get(actor.info.remote(), timeout=60)["pid"] > 0
    assert maker.creators_started == 4


@pytest.mark.timeout(120)
def test_an_idle_creator_exits_and_the_next_creation_starts_another(directory: SessionDirectory, unique_id: str) -> None:
    directory.maker = maker = ActorMaker(directory.namespace, idle_s=3.0)
    sid = f"ci-{unique_id}"
    actor = directory._get_or_create(sid)
    first = maker._creator  # (now: the actor's start below may take longer than the idle time)
    assert first is not None and ray.get(actor.info.remote(), timeout=60)["pid"] > 0
    assert _dead_soon(first)  # nothing more to create for 3 s: it went
    assert maker._creator is None
    again = f"{sid}-again"
    assert ray.get(directory._get_or_create(again).info.remote(), timeout=60)["pid"] > 0
    assert maker.creators_started == 2 and maker._creator is not first
