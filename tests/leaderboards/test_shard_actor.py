"""Leaderboard shard actors and the cross-shard router, against real Ray and Redis.

Exact ranks against a brute-force sort across shards (hypothesis; one board per operator,
one fresh per-class period per example), a SIGKILLed shard restored without losing or
doubling a score, resharding 2 -> 5 with writes racing the reshard, periods with an injected
clock, and class results published by a real session actor.
"""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from leaderboards.shard import CLASS_TAG, LeaderboardSpec, Write
from leaderboards.shard_actor import actor_name
from leaderboards.results import session_writes
from leaderboards.router import Leaderboards, UnknownBoard

pytestmark = pytest.mark.integration
NS = "pulseline-test"
WEEK = 7 * 86_400.0
T0 = 1_795_000_000.0  # a Tuesday in 2026


def client(redis_server: Any, prefix: str, **kwargs: Any) -> Leaderboards:
    return Leaderboards.connect(redis_server.url, prefix=prefix, namespace=NS, **kwargs)


async def drop_all(lb: Leaderboards, names: list[str]) -> None:
    for name in names:
        try:
            await lb.drop(name)
        except UnknownBoard:
            pass
    await lb.aclose()


def brute_force(records: dict[tuple[str, str], tuple[float, float]], operator: str, desc: bool) -> list[tuple[str, float, float]]:
    """Entries (user, score, at) best first, derived from the final record per (user, source)."""
    by_user: dict[str, list[tuple[str, float, float]]] = {}
    for (user, source), (score, at) in records.items():
        by_user.setdefault(user, []).append((source, score, at))
    sign = -1.0 if desc else 1.0
    entries = []
    for user, recs in by_user.items():
        if operator == "sum":
            score, at = sum(r[1] for r in recs), max(r[2] for r in recs)
        elif operator == "latest":
            _, score, at = max(recs, key=lambda r: (r[2], r[0]))
        else:
            _, score, at = min(recs, key=lambda r: (sign * r[1], r[2], r[0]))
        entries.append((user, score, at))
    return sorted(entries, key=lambda e: (sign * e[1], e[2], e[0]))


def apply_brute(records: dict[tuple[str, str], tuple[float, float]], w: Write) -> None:
    old = records.get((w.user, w.source))
    if old is None or w.achieved_at >= old[1]:
        records[(w.user, w.source)] = (w.score, w.achieved_at)


# -- exact ranks and pages across shards -------------------------------------------------

BOARDS = {"best": ("desc", 3), "sum": ("asc", 2), "latest": ("desc", 2)}


@pytest.fixture(scope="module")
def property_boards(redis_server: Any, ray_instance: Any) -> Iterator[tuple[str, dict[str, str]]]:
    prefix = f"lbp{uuid.uuid4().hex[:6]}"
    names = {op: f"prop-{op}-{uuid.uuid4().hex[:6]}" for op in BOARDS}

    async def create() -> None:
        lb = client(redis_server, prefix)
        for op, (order, shards) in BOARDS.items():
            spec = LeaderboardSpec(names[op], "m", operator=op, order=order, period="class", shard_count=shards)
            assert await lb.create(spec)
        await lb.aclose()

    asyncio.run(create())
    yield prefix, names
    asyncio.run(drop_all(client(redis_server, prefix), list(names.values())))


writes_strategy = st.lists(
    st.tuples(
        st.integers(0, 11),  # user
        st.sampled_from(["a", "b", "c"]),  # source
        st.integers(-3, 3),  # score: small, so ties are common
        st.integers(0, 4),  # achieved_at: small, so time ties are common too
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(writes=writes_strategy, operator=st.sampled_from(sorted(BOARDS)), page=st.integers(1, 5))
def test_ranks_pages_and_around_match_brute_force_across_shard_actors(
    property_boards: tuple[str, dict[str, str]], redis_server: Any, writes: list[Any], operator: str, page: int
) -> None:
    prefix, names = property_boards
    name, period = names[operator], uuid.uuid4().hex[:8]
    batch = [Write(f"user-{u}", s, float(sc), float(at), {CLASS_TAG: period}) for u, s, sc, at in writes]
    records: dict[tuple[str, str], tuple[float, float]] = {}
    for w in batch:
        apply_brute(records, w)
    expected = brute_force(records, operator, BOARDS[operator][0] == "desc")

    async def scenario() -> None:
        lb = client(redis_server, prefix)
        try:
            half = len(batch) // 2  # two calls: order across calls matters for ties in time
            await lb.write(name, batch[:half])
            await lb.write(name, batch[half:])
            users = [e[0] for e in expected] + ["user-absent"]
            ranks = await lb.ranks(name, users, period=period)
            assert [(r.rank, r.user, r.score, r.achieved_at) for r in ranks[:-1]] == [
                (i + 1, u, s, t) for i, (u, s, t) in enumerate(expected)
            ]
            assert ranks[-1] is None
            seen, cursor = [], None
            while True:
                got = await lb.top(name, page, cursor=cursor, period=period)
                seen += [(e.rank, e.user, e.score) for e in got.entries]
                cursor = got.next_cursor
                if cursor is None:
                    break
            assert seen == [(i + 1, u, s) for i, (u, s, _) in enumerate(expected)]
            middle = expected[len(expected) // 2][0]
            around = await lb.around(name, middle, 2, period=period)
            assert around is not None
            i = len(expected) // 2
            assert [e.user for e in around.above] == [e[0] for e in expected[max(0, i - 2) : i]]
            assert around.entry.rank == i + 1 and around.entry.user == middle
            assert [e.user for e in around.below] == [e[0] for e in expected[i + 1 : i + 3]]
            assert [e.rank for e in around.below] == list(range(i + 2, i + 2 + len(around.below)))
        finally:
            await lb.aclose()

    asyncio.run(scenario())


# -- a shard killed mid-write ------------------------------------------------------------


def test_shard_killed_mid_write_restores_without_losing_or_doubling(
    redis_server: Any, ray_instance: Any, unique_id: str
) -> None:
    import ray

    prefix, name = f"lbk{unique_id}", f"kill-{unique_id}"
    users = [f"rider-{i}" for i in range(400)]

    def batch(source: str, score: float) -> list[Write]:
        return [Write(u, source, score + i % 7, T0, None) for i, u in enumerate(users)]

    async def scenario() -> dict[str, Any]:
        lb = client(redis_server, prefix, snapshot_min_writes=1_000)  # snapshots + log trims too
        try:
            await lb.create(LeaderboardSpec(name, "kj", operator="sum", shard_count=1))
            for k in range(4):
                await lb.write(name, batch(f"class-{k}", 10.0 * k))
            before = (await lb.shard_infos(name))[0]
            handle = ray.get_actor(actor_name(name, 0), namespace=NS)
            pid = (await handle.info.remote())["pid"]
            writing = [asyncio.ensure_future(lb.write(name, batch(f"late-{k}", 1.0))) for k in range(6)]
            await asyncio.sleep(0.01)
            os.kill(pid, signal.SIGKILL)
            await asyncio.gather(*writing)  # retried by Ray on the restarted actor
            for k in (0, 3):  # and the writer retries some batches itself: nothing doubles
                await lb.write(name, batch(f"late-{k}", 1.0))
                await lb.write(name, batch(f"class-{k}", 10.0 * k))
            after = (await lb.shard_infos(name))[0]
            ranks = await lb.ranks(name, users)
            return {"before": before, "after": after, "ranks": ranks}
        finally:
            await drop_all(lb, [name])

    out = asyncio.run(scenario())
    assert out["after"]["pid"] != out["before"]["pid"]
    assert out["after"]["epoch"] == out["before"]["epoch"] + 1
    assert out["before"]["snapshots_written"] >= 1
    for i, entry in enumerate(out["ranks"]):
        expected = sum(10.0 * k + i % 7 for k in range(4)) + 6 * (1.0 + i % 7)
        assert entry is not None and entry.score == expected


def test_stale_shard_instance_cannot_append_after_a_newer_one_started(
    redis_server: Any, ray_instance: Any, unique_id: str
) -> None:
    import ray

    from actors.errors import StaleInstance
    from leaderboards.shard_actor import LeaderboardShardActor

    settings_ = {"redis_url": redis_server.url, "prefix": f"lbf{unique_id}"}
    spec = LeaderboardSpec("fenced", "m").to_dict()
    old = LeaderboardShardActor.options(name=f"old-{unique_id}", num_cpus=0).remote("fenced", 0, 0, spec, settings_)
    ray.get(old.write.remote(writes=[("a", "s", 1.0, T0, None)]))
    new = LeaderboardShardActor.options(name=f"new-{unique_id}", num_cpus=0).remote("fenced", 0, 0, spec, settings_)
    assert ray.get(new.locate.remote(users=["a"])).positions[0] == 0  # replayed from the log
    with pytest.raises(ray.exceptions.RayTaskError) as refused:
        ray.get(old.write.remote(writes=[("zombie", "s", 9.0, T0, None)]))
    assert isinstance(refused.value.cause, StaleInstance)
    newer = LeaderboardShardActor.options(name=f"newer-{unique_id}", num_cpus=0).remote("fenced", 0, 0, spec, settings_)
    assert ray.get(newer.locate.remote(users=["zombie"])).positions[0] == -1
    for handle in (old, new, newer):
        ray.kill(handle, no_restart=True)


# -- resharding --------------------------------------------------------------------------


def test_reshard_two_to_five_through_actors_keeps_every_entry_and_rank(
    redis_server: Any, ray_instance: Any, unique_id: str
) -> None:
    import ray

    prefix, name = f"lbr{unique_id}", f"reshard-{unique_id}"
    now = [T0]
    weeks = ["2026-W46", "2026-W47"]  # T0 is in week 47

    async def snapshot(lb: Leaderboards, users: list[str]) -> list[Any]:
        out: list[Any] = []
        for week in weeks:
            out.append([(r and (r.rank, r.score)) for r in await lb.ranks(name, users, period=week)])
            out.append(await lb.ranks(name, users, period=week, cohort={"age": "30-39"}))
            out.append((await lb.top(name, 1000, period=week)).entries)
        return out

    async def scenario() -> None:
        lb = client(redis_server, prefix, now=lambda: now[0])
        try:
            spec = LeaderboardSpec(name, "kj", operator="sum", period="weekly", cohort_keys=("age",), shard_count=2)
            await lb.create(spec)
            writes = [
                Write(f"u{i}", f"s{j}", float((i * 7 + j) % 23), T0 - WEEK * (i % 2) + j, {"age": ["20-29", "30-39"][i % 2 ^ j % 2]})
                for i in range(120) for j in range(3)
            ]
            await lb.write(name, writes)
            users = [f"u{i}" for i in range(120)]
            before = await snapshot(lb, users)
            racer = [Write("racer", "s", 99.0, T0 + WEEK, {"age": "30-39"})]  # races the reshard
            moved, _ = await asyncio.gather(lb.reshard(name, 5), lb.write(name, racer))
            assert moved in (len(writes), len(writes) + 1)  # the racing write lands on either side
            board = await lb.board(name, fresh=True)
            assert board.spec.shard_count == 5 and board.generation == 1
            assert await snapshot(lb, users) == before
            found = await lb.rank(name, "racer", period="2026-W48", cohort={"age": "30-39"})
            assert found is not None and found.rank == 1 and found.score == 99.0
            assert len({i["pid"] for i in await lb.shard_infos(name)}) == 5
            with pytest.raises(ValueError):
                ray.get_actor(actor_name(name, 0), namespace=NS)
            keys = redis.Redis.from_url(redis_server.url).keys(f"{prefix}:lbshard:{{{name}:0:*")
            assert keys == []
        finally:
            await drop_all(lb, [name])

    asyncio.run(scenario())


# -- periods with an injected clock ------------------------------------------------------


def test_weekly_board_resets_for_queries_and_keeps_past_weeks(
    redis_server: Any, ray_instance: Any, unique_id: str
) -> None:
    prefix, name = f"lbw{unique_id}", f"weekly-{unique_id}"
    now = [T0]

    async def scenario() -> None:
        lb = client(redis_server, prefix, now=lambda: now[0])
        try:
            await lb.create(LeaderboardSpec(name, "km", operator="best", period="weekly", shard_count=2))
            await lb.write(name, [Write("ann", "ride-1", 30.0, T0), Write("bob", "ride-2", 40.0, T0 + 60)])
            first = await lb.rank(name, "ann")
            assert first is not None and first.rank == 2
            now[0] = T0 + WEEK  # next week: the board is empty for "now"
            assert await lb.rank(name, "ann") is None
            assert (await lb.top(name, 10)).entries == []
            await lb.write(name, [Write("ann", "ride-3", 10.0, now[0])])
            assert (await lb.rank(name, "ann")).rank == 1  # type: ignore[union-attr]
            past = await lb.top(name, 10, period="2026-W47")
            assert [e.user for e in past.entries] == ["bob", "ann"]
            last_week = await lb.around(name, "bob", 3, period="2026-W47")
            assert last_week is not None and [e.user for e in last_week.below] == ["ann"]
        finally:
            await drop_all(lb, [name])

    asyncio.run(scenario())


# -- class results from a session actor --------------------------------------------------


def test_session_writes_skip_participants_without_results() -> None:
    spec = LeaderboardSpec("e", "energy_kj", operator="sum")
    snapshot = {
        "session": "s1",
        "participants": [
            {"participant": "a", "samples": 10, "energy_kj": 12.5, "last_ts": 1000.0},
            {"participant": "b", "samples": 0, "energy_kj": 0.0, "last_ts": None},
            {"participant": "c", "samples": 3, "energy_kj": float("nan"), "last_ts": 900.0},
            None,
        ],
    }
    assert session_writes(spec, snapshot) == [Write("a", "session:s1", 12.5, 1000.0, {})]
    per_class = LeaderboardSpec("c", "energy_kj", period="class")
    assert session_writes(per_class, snapshot)[0].tags == {CLASS_TAG: "s1"}


def rows(start: int, n: int, *, power: float, t0: float = T0) -> list[list[float]]:
    return [[s, t0 + (s - 1), 120.0, power, 90.0, 8.0, 10.0 * s] for s in range(start, start + n)]


def test_ended_session_publishes_results_and_late_data_replaces_them(
    redis_server: Any, ray_instance: Any, unique_id: str
) -> None:
    import ray

    from actors.session_actor import SessionActor

    prefix, name = f"lbs{unique_id}", f"energy-{unique_id}"

    async def wait_for_score(lb: Leaderboards, user: str, score: float) -> None:
        for _ in range(200):
            found = await lb.rank(name, user)
            if found is not None and abs(found.score - score) < 1e-9:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"{user} never reached {score}; last {found}")

    async def scenario() -> None:
        lb = client(redis_server, prefix)
        settings_ = {"redis_url": redis_server.url, "prefix": prefix, "leaderboards": [name, "no-such-board"],
                     "results_sink": "leaderboards.results:publish_from_session"}
        session = SessionActor.options(name=f"s-{unique_id}", namespace=NS, resources={"session_slot": 1}).remote(unique_id, settings_)
        try:
            await lb.create(LeaderboardSpec(name, "energy_kj", operator="sum", shard_count=2))
            batches = [("d1", "ann", rows(1, 20, power=200.0), []), ("d2", "bob", rows(1, 20, power=150.0), [])]
            await session.tick.remote(batches=batches, want_durable=[], known_version=-1)
            await session.set_phase.remote(phase="ended")
            snap = await session.snapshot.remote()
            energy = {p["participant"]: p["energy_kj"] for p in snap["participants"]}
            await wait_for_score(lb, "ann", energy["ann"])
            await wait_for_score(lb, "bob", energy["bob"])
            late = [("d2", "bob", rows(21, 30, power=300.0), [])]  # a phone syncs after the class
            await session.tick.remote(batches=late, want_durable=[], known_version=-1)
            snap = await session.snapshot.remote()
            bob = next(p for p in snap["participants"] if p["participant"] == "bob")
            assert bob["energy_kj"] > energy["bob"]
            await wait_for_score(lb, "bob", bob["energy_kj"])  # replaced, not added
            assert (await lb.rank(name, "bob")).rank == 1  # type: ignore[union-attr]
        finally:
            ray.kill(session, no_restart=True)
            await drop_all(lb, [name])

    asyncio.run(scenario())


# -- one-call ranks from peer replicas ---------------------------------------------------


def test_one_call_ranks_from_peer_replicas_match_exact_ranks_and_survive_a_killed_shard(
    redis_server: Any, ray_instance: Any, unique_id: str
) -> None:
    import time

    import ray

    prefix, name = f"lbr{unique_id}", f"replica-{unique_id}"
    users = [f"rider-{i}" for i in range(300)]
    probe = users[::7]

    def batch(source: str, seed: int) -> list[Write]:
        return [Write(u, source, float((i * seed) % 97), T0 + i % 5) for i, u in enumerate(users)]

    async def settled(lb: Leaderboards) -> list[Any]:
        """Poll until every one-call answer came from the replicas and equals the exact rank."""
        deadline = time.monotonic() + 60
        while True:
            exact = await lb.ranks(name, probe)
            fast = [await lb.rank(name, u, max_stale_ms=60_000) for u in probe]
            if all(f is not None and f.stale_ms is not None for f in fast):
                if [(f.rank, f.score) for f in fast] == [(e.rank, e.score) for e in exact]:
                    return fast
            assert time.monotonic() < deadline, [(f, e) for f, e in zip(fast, exact, strict=True) if f != e][:3]
            await asyncio.sleep(0.2)

    async def scenario() -> dict[str, Any]:
        lb = client(redis_server, prefix)
        try:
            await lb.create(LeaderboardSpec(name, "kj", operator="best", shard_count=3))
            await lb.write(name, batch("a", 3))
            await settled(lb)
            await lb.write(name, batch("b", 11))  # new bests for some riders
            first = await settled(lb)
            handle = ray.get_actor(actor_name(name, 1), namespace=NS)
            before = await handle.info.remote()
            os.kill(before["pid"], signal.SIGKILL)
            await lb.write(name, batch("c", 29))  # retried by Ray on the restarted shard
            second = await settled(lb)
            exact_default = await lb.rank(name, probe[0])
            after = await handle.info.remote()
            others = [await ray.get_actor(actor_name(name, s), namespace=NS).info.remote() for s in (0, 2)]
            return {"first": first, "second": second, "before": before, "after": after, "others": others,
                    "exact_default": exact_default}
        finally:
            await drop_all(lb, [name])

    out = asyncio.run(scenario())
    assert out["after"]["pid"] != out["before"]["pid"] and out["after"]["epoch"] == out["before"]["epoch"] + 1
    assert out["after"]["replica"]["resyncs"] >= 2  # the restarted shard re-read both peers
    assert all(o["replica"]["resyncs"] >= 2 for o in out["others"])  # and both re-read it
    assert all(0 <= f.stale_ms < 60_000 for f in out["second"])
    assert out["exact_default"].stale_ms is None  # without max_stale_ms: exact now, two rounds
    best = {u: max(float((i * seed) % 97) for seed in (3, 11, 29)) for i, u in enumerate(users)}
    assert {f.user: f.score for f in out["second"]} == {u: best[u] for u in probe}


def test_a_dropped_period_stays_dropped_after_a_crash(redis_server: Any, ray_instance: Any, unique_id: str) -> None:
    import ray

    prefix, name = f"lbd{unique_id}", f"retention-{unique_id}"

    async def scenario() -> dict[str, Any]:
        lb = client(redis_server, prefix)
        try:
            await lb.create(LeaderboardSpec(name, "kj", operator="best", period="daily", timezone="UTC"))  # type: ignore[arg-type]
            await lb.write(name, [Write(f"u{i}", "s", float(i), T0 + i) for i in range(20)])
            await lb.write(name, [Write(f"u{i}", "s", float(i), T0 + 86_400 + i) for i in range(5)])
            day1, day2 = sorted((await lb.shard_infos(name))[0]["periods"])
            dropped = await lb.drop_period(name, day1)
            handle = ray.get_actor(actor_name(name, 0), namespace=NS)
            os.kill((await handle.info.remote())["pid"], signal.SIGKILL)
            after = await lb.shard_infos(name)  # retried on the restarted shard: log replayed
            return {"dropped": dropped, "periods": after[0]["periods"], "day2": await lb.size(name, period=day2),
                    "day1": await lb.size(name, period=day1), "names": (day1, day2)}
        finally:
            await drop_all(lb, [name])

    out = asyncio.run(scenario())
    assert out["dropped"] == 20
    assert out["periods"] == [out["names"][1]] and out["day2"] == 5 and out["day1"] == 0
