"""Class results from a real session actor: join tags carried to cohort ranks, and the
results sink (named in the session's settings) that never fails a session call."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from leaderboards.shard import CLASS_TAG, LeaderboardSpec, Write
from leaderboards.results import session_writes
from leaderboards.router import Leaderboards, UnknownBoard

pytestmark = pytest.mark.integration
NS = "pulseline-test"
T0 = 1_795_000_000.0
SINK = "leaderboards.results:publish_from_session"


def rows(start: int, n: int, *, power: float) -> list[list[float]]:
    return [[s, T0 + (s - 1), 120.0, power, 90.0, 8.0, 10.0 * s] for s in range(start, start + n)]


async def eventually(probe: Callable[[], Awaitable[Any]], what: str, timeout_s: float = 30.0) -> Any:
    """Poll ``probe`` until it returns something truthy (bounded; the failure says what)."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what} never happened; last {last!r}")


def start_session(unique_id: str, settings: dict[str, Any]) -> Any:
    from actors.session_actor import SessionActor

    return SessionActor.options(
        name=f"sr-{unique_id}", namespace=NS, resources={"session_slot": 1}
    ).remote(unique_id, settings)


def test_session_writes_carry_join_tags_and_the_class_tag_wins() -> None:
    snapshot = {
        "session": "s1",
        "participants": [
            {"participant": "a", "samples": 3, "energy_kj": 2.0, "last_ts": T0, "tags": {"age": "30-39"}},
            {"participant": "b", "samples": 3, "energy_kj": 1.0, "last_ts": T0,
             "tags": {"age": "40-49", CLASS_TAG: "spoof"}},
            {"participant": "c", "samples": 3, "energy_kj": 1.0, "last_ts": T0},  # an older snapshot
        ],
    }
    alltime = session_writes(LeaderboardSpec("e", "energy_kj", operator="sum"), snapshot)
    assert [w.tags for w in alltime] == [{"age": "30-39"}, {"age": "40-49", CLASS_TAG: "spoof"}, {}]
    per_class = session_writes(LeaderboardSpec("c", "energy_kj", period="class"), snapshot)  # type: ignore[arg-type]
    assert [w.tags for w in per_class] == [
        {"age": "30-39", CLASS_TAG: "s1"}, {"age": "40-49", CLASS_TAG: "s1"}, {CLASS_TAG: "s1"},
    ]
    assert all(isinstance(w, Write) and w.source == "session:s1" for w in per_class)


def test_an_ended_class_ranks_its_results_within_a_cohort(
    redis_server: Any, ray_instance: Any, unique_id: str
) -> None:
    import ray

    prefix, name = f"srs{unique_id}", f"cohort-{unique_id}"
    riders = {  # participant: (age group or None, power)
        "ann": ("30-39", 200.0), "bob": ("30-39", 150.0), "cat": ("40-49", 300.0), "dan": (None, 250.0),
    }

    async def scenario() -> dict[str, Any]:
        lb = Leaderboards.connect(redis_server.url, prefix=prefix, namespace=NS)
        settings = {"redis_url": redis_server.url, "prefix": prefix, "leaderboards": [name], "results_sink": SINK}
        session = start_session(unique_id, settings)
        try:
            await lb.create(LeaderboardSpec(name, "energy_kj", operator="sum", shard_count=2, cohort_keys=("age",)))
            for who, (age, _) in riders.items():
                await session.join.remote(participant=who, tags=None if age is None else {"age": age})
            await session.join.remote(participant="ann")  # a device hello re-joins: tags kept
            batches = [(f"d-{who}", who, rows(1, 20, power=power), []) for who, (_, power) in riders.items()]
            await session.tick.remote(batches=batches, want_durable=[], known_version=-1)
            await session.set_phase.remote(phase="ended")
            snap = await session.snapshot.remote()
            energy = {p["participant"]: p["energy_kj"] for p in snap["participants"]}

            async def published() -> bool:
                found = [await lb.rank(name, who) for who in riders]
                return all(f is not None and abs(f.score - energy[f.user]) < 1e-9 for f in found)

            await eventually(published, "every result on the board")
            young = {who: await lb.rank(name, who, cohort={"age": "30-39"}) for who in riders}
            older = await lb.rank(name, "cat", cohort={"age": "40-49"})
            overall = {who: await lb.rank(name, who) for who in riders}
            return {"snap": snap, "young": young, "older": older, "overall": overall,
                    "sizes": (await lb.size(name, cohort={"age": "30-39"}), await lb.size(name))}
        finally:
            ray.kill(session, no_restart=True)
            try:
                await lb.drop(name)
            except UnknownBoard:
                pass
            await lb.aclose()

    out = asyncio.run(asyncio.wait_for(scenario(), 120))
    tags = {p["participant"]: p["tags"] for p in out["snap"]["participants"]}
    assert tags == {"ann": {"age": "30-39"}, "bob": {"age": "30-39"}, "cat": {"age": "40-49"}, "dan": {}}
    assert [out["overall"][w].rank for w in ("cat", "dan", "ann", "bob")] == [1, 2, 3, 4]
    young = out["young"]
    assert young["ann"].rank == 1 and young["bob"].rank == 2, young
    assert young["cat"] is None and young["dan"] is None, young  # not in the cohort
    assert young["ann"].tags == {"age": "30-39"}
    assert out["older"].rank == 1 and out["older"].user == "cat"
    assert out["sizes"] == (2, 4)


@pytest.mark.parametrize("sink", ["tests.actors.sinks:failing", "no_such_module_here:publish", "not a path"])
def test_a_failing_results_sink_never_fails_a_session_call(
    redis_server: Any, ray_instance: Any, unique_id: str, sink: str
) -> None:
    import ray

    settings = {"redis_url": redis_server.url, "prefix": f"srf{unique_id}", "leaderboards": ["any"], "results_sink": sink}

    async def scenario() -> dict[str, Any]:
        session = start_session(unique_id, settings)
        try:
            await session.join.remote(participant="ann", tags={"age": "30-39"})
            await session.tick.remote(batches=[("d1", "ann", rows(1, 10, power=200.0), [])], want_durable=[], known_version=-1)
            ended = await session.set_phase.remote(phase="ended")

            async def failed_once() -> Any:
                snap = await session.snapshot.remote()
                return snap if snap["publish_failures"] >= 1 else None

            await eventually(failed_once, "the sink's failure being counted")
            late = await session.tick.remote(batches=[("d1", "ann", rows(11, 5, power=200.0), [])],
                                             want_durable=["d1"], known_version=-1)
            durable = await session.flush.remote()
            rejoined = await session.join.remote(participant="ann")
            snap = await eventually(lambda: failed_twice(session), "the re-publish after late data failing too")
            return {"ended": ended, "late": late, "durable": durable, "rejoined": rejoined, "snap": snap}
        finally:
            ray.kill(session, no_restart=True)

    async def failed_twice(session: Any) -> Any:
        snap = await session.snapshot.remote()
        return snap if snap["publish_failures"] >= 2 else None

    out = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert out["ended"] == "ended" and out["rejoined"] == 0
    assert out["late"]["applied"] == 5 and out["durable"] == {"d1": 15}
    ann = out["snap"]["participants"][0]
    assert out["snap"]["phase"] == "ended" and ann["samples"] == 15 and ann["tags"] == {"age": "30-39"}


def test_actor_settings_name_the_sink_only_with_boards(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    from actors.session_actor import resolve_sink
    from leaderboards.results import publish_from_session
    from cluster.settings import Settings

    assert "results_sink" not in Settings(redis_url="redis://x").actor_settings()
    with_boards = Settings(redis_url="redis://x", session_leaderboards=["weekly-kj"]).actor_settings()
    assert with_boards["leaderboards"] == ["weekly-kj"] and with_boards["results_sink"] == SINK
    assert resolve_sink(with_boards["results_sink"]) is publish_from_session
    monkeypatch.setenv("PULSELINE_RESULTS_SINK", "tests.actors.sinks:failing")
    assert Settings(redis_url="redis://x", session_leaderboards=["b"]).actor_settings()["results_sink"] == (
        "tests.actors.sinks:failing"
    )
    monkeypatch.setenv("PULSELINE_RESULTS_SINK", "")  # switched off
    assert "results_sink" not in Settings(redis_url="redis://x", session_leaderboards=["b"]).actor_settings()
    monkeypatch.setenv("PULSELINE_RESULTS_SINK", "not a path")
    with pytest.raises(ValidationError):
        Settings(redis_url="redis://x")
