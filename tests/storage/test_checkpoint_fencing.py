"""Epoch fencing against a real redis-server and real Ray actors."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis

from storage.checkpoint import CheckpointStore
from actors.errors import StaleInstance
from actors.session import SessionState


def test_stale_store_write_is_refused(redis_server: Any, unique_id: str) -> None:
    old = CheckpointStore(redis_server.url, prefix="fence", kind="session", ident=unique_id)
    new = CheckpointStore(redis_server.url, prefix="fence", kind="session", ident=unique_id)
    assert old.acquire() is None
    old_state = SessionState(unique_id)
    old_state.join("from-old")

    async def scenario() -> None:
        await old.write(old_state.to_checkpoint())  # still current: accepted
        assert new.acquire() is not None  # a newer instance starts and reads it
        new_state = SessionState.from_checkpoint(await new.read() or b"")
        new_state.join("from-new")
        await new.write(new_state.to_checkpoint())
        with pytest.raises(StaleInstance) as refused:
            await old.write(old_state.to_checkpoint())
        assert refused.value.epoch == old.epoch and refused.value.current == new.epoch
        await old.close()
        await new.close()

    asyncio.run(scenario())
    client = redis.Redis.from_url(redis_server.url)
    stored = SessionState.from_checkpoint(client.get(new.ckpt_key))
    assert stored.participants == ["from-old", "from-new"]
    assert int(client.get(new.ckpt_epoch_key)) == new.epoch > old.epoch


def test_old_actor_instance_cannot_overwrite_newer_checkpoint(
    ray_instance: Any, redis_server: Any, unique_id: str
) -> None:
    import ray

    from actors.session_actor import SessionActor

    settings = {"redis_url": redis_server.url, "prefix": "fence", "checkpoint_interval_s": 0.05}
    old = SessionActor.options(name=f"old-{unique_id}", resources={"session_slot": 1}).remote(unique_id, settings)
    ray.get(old.join.remote(participant="early"))
    old_epoch = ray.get(old.info.remote())["epoch"]
    new = SessionActor.options(name=f"new-{unique_id}", resources={"session_slot": 1}).remote(unique_id, settings)
    assert ray.get(new.info.remote())["epoch"] == old_epoch + 1
    assert ray.get(new.snapshot.remote())["participants"][0]["participant"] == "early"
    with pytest.raises(ray.exceptions.RayTaskError) as refused:
        ray.get(old.join.remote(participant="zombie"))
    assert isinstance(refused.value.cause, StaleInstance)
    ray.get(new.join.remote(participant="late"))
    client = redis.Redis.from_url(redis_server.url)
    stored = SessionState.from_checkpoint(client.get(f"fence:session:{{{unique_id}}}:ckpt"))
    assert stored.participants == ["early", "late"]
    assert ray.get(old.info.remote())["fenced"] is True
    for actor in (old, new):
        ray.kill(actor)
