"""Peer replicas (leaderboards/peers.py): counts equal the owners' own, whatever the delivery.

Three plain ``LeaderboardShard``s feed the replica of a fourth point of view (shard 0) with
their recorded changes; the replica's count of entries beating a key must equal the sum of the
owners' exact counts — with messages in order, out of order, lost (then a snapshot), from a
restarted owner (new epoch), and after removals and dropped periods.
"""

from __future__ import annotations

import random

import pytest

from leaderboards.peers import PeerMessage, PeerReplica, PeerSnapshot
from leaderboards.shard import LeaderboardShard, LeaderboardSpec, Write, shard_of

COUNT = 3


class Owner:
    """A shard whose changes become numbered messages, as the actor sends them."""

    def __init__(self, spec: LeaderboardSpec, index: int, epoch: int = 1) -> None:
        self.shard = LeaderboardShard(spec, shard_index=index, now=lambda: 0.0)
        self.shard.track_changes()
        self.index, self.epoch, self.seq, self.clock = index, epoch, 0, 0.0

    def write(self, writes: list[Write]) -> PeerMessage:
        self.shard.write_many(writes)
        return self.message()

    def message(self) -> PeerMessage:
        changes = self.shard.take_changes()
        self.seq += 1 if changes else 0
        self.clock += 1.0
        return PeerMessage(self.index, self.epoch, self.seq, self.clock, changes)

    def snapshot(self) -> PeerSnapshot:
        return PeerSnapshot(self.index, self.epoch, self.seq, self.clock, self.shard.main_entries())


def users_of(shard: int, n: int, start: int = 0) -> list[str]:
    found, i = [], start
    while len(found) < n:
        user = f"user-{i}"
        if shard_of(user, COUNT) == shard:
            found.append(user)
        i += 1
    return found


def random_writes(rng: random.Random, users: list[str], n: int, t0: float) -> list[Write]:
    return [Write(rng.choice(users), rng.choice("ab"), float(rng.randint(0, 50)), t0 + i) for i in range(n)]


def check_counts(replica: PeerReplica, owners: list[Owner], rng: random.Random, period: str = "all") -> None:
    for _ in range(60):
        score, at, user = float(rng.randint(-5, 55)), float(rng.randint(0, 400)), f"probe-{rng.randint(0, 9)}"
        expected = sum(o.shard.count_better(score, at, user, period=period) for o in owners)
        assert replica.count_better(period, score, at, user.encode()) == expected, (score, at, user)


@pytest.fixture
def setup() -> tuple[PeerReplica, list[Owner], dict[int, list[str]]]:
    spec = LeaderboardSpec("b", "kcal", operator="best", shard_count=COUNT)
    replica = PeerReplica(0, COUNT, descending=True)
    owners = [Owner(spec, i) for i in (1, 2)]
    users = {i: users_of(i, 30) for i in (1, 2)}
    for owner in owners:
        assert replica.load(owner.snapshot())  # empty: the replica starts synced on both
    return replica, owners, users


def test_in_order_messages_keep_exact_counts(setup: tuple[PeerReplica, list[Owner], dict[int, list[str]]]) -> None:
    replica, owners, users = setup
    rng = random.Random(1)
    for step in range(20):
        for owner in owners:
            assert replica.receive(owner.write(random_writes(rng, users[owner.index], 15, step * 20.0)))
        check_counts(replica, owners, rng)
    assert replica.age_s(now=owners[0].clock) is not None


def test_out_of_order_messages_wait_for_the_missing_one(setup: tuple[PeerReplica, list[Owner], dict[int, list[str]]]) -> None:
    replica, owners, users = setup
    rng = random.Random(2)
    owner = owners[0]
    first = owner.write(random_writes(rng, users[1], 20, 0.0))
    second = owner.write(random_writes(rng, users[1], 20, 100.0))
    heartbeat = owner.message()
    assert replica.receive(second, now=0.0)  # early: held, not applied
    assert replica.receive(heartbeat, now=0.1)
    assert replica.receive(first, now=0.2)  # the gap closes: both applied in order
    check_counts(replica, owners, rng)
    assert replica.unsynced() == []


def test_a_lost_message_ends_in_a_snapshot(setup: tuple[PeerReplica, list[Owner], dict[int, list[str]]]) -> None:
    replica, owners, users = setup
    rng = random.Random(3)
    owner = owners[1]
    owner.write(random_writes(rng, users[2], 25, 0.0))  # lost on the way
    later = owner.write(random_writes(rng, users[2], 25, 100.0))
    assert replica.receive(later, now=0.0)
    assert replica.age_s() is not None and replica.unsynced() == []
    assert not replica.receive(owner.message(), now=5.0)  # the gap outlived the timeout
    assert replica.unsynced() == [2] and replica.age_s() is None
    snapshot = owner.snapshot()
    newer = owner.write(random_writes(rng, users[2], 10, 200.0))  # arrives before the snapshot
    assert not replica.receive(newer)
    assert replica.load(snapshot)
    check_counts(replica, owners, rng)


def test_a_restarted_owner_is_read_whole_again(setup: tuple[PeerReplica, list[Owner], dict[int, list[str]]]) -> None:
    replica, owners, users = setup
    rng = random.Random(4)
    old = owners[0]
    assert replica.receive(old.write(random_writes(rng, users[1], 30, 0.0)))
    restarted = Owner(old.shard.spec, 1, epoch=2)
    restarted.shard = old.shard  # restored from its log: same entries, new epoch, seq from 0
    restarted.shard.take_changes()
    assert not replica.receive(restarted.message())
    assert replica.unsynced() == [1]
    assert replica.receive(PeerMessage(1, 1, 99, 0.0, [])) is False  # stragglers wait too
    assert replica.load(restarted.snapshot())
    owners[0] = restarted
    assert replica.receive(restarted.write(random_writes(rng, users[1], 30, 500.0)))
    check_counts(replica, owners, rng)


def test_removals_and_dropped_periods_reach_the_replica() -> None:
    spec = LeaderboardSpec("b", "kcal", operator="latest", shard_count=COUNT, period="daily")  # type: ignore[arg-type]
    replica = PeerReplica(0, COUNT, descending=True)
    owner = Owner(spec, 1)
    assert replica.load(owner.snapshot())
    users = users_of(1, 10)
    day1, day2 = 1_795_000_000.0, 1_795_000_000.0 + 86_400
    assert replica.receive(owner.write([Write(u, "s", float(i), day1 + i) for i, u in enumerate(users)]))
    assert replica.receive(owner.write([Write(u, "s", float(i), day2 + i) for i, u in enumerate(users)]))
    p1, p2 = owner.shard.periods()
    assert replica.size(p1) == replica.size(p2) == 10
    owner.shard.forget_user(users[3])
    assert replica.receive(owner.message())
    assert replica.size(p1) == replica.size(p2) == 9
    owner.shard.drop_period(p1)
    assert replica.receive(owner.message())
    assert replica.size(p1) == 0 and replica.size(p2) == 9
    assert replica.count_better(p2, 4.5, day2, b"zz") == 5  # scores 5..9


def test_long_user_ids_widen_the_replica() -> None:
    spec = LeaderboardSpec("b", "kcal", shard_count=COUNT)
    replica = PeerReplica(0, COUNT, descending=True)
    owner = Owner(spec, 2)
    assert replica.load(owner.snapshot())
    long_users = [u for u in (f"{'x' * 40}-{i}" for i in range(200)) if shard_of(u, COUNT) == 2][:5]
    assert len(long_users) == 5
    assert replica.receive(owner.write([Write(u, "s", 10.0, 1.0) for u in long_users]))
    probe = "y" * 90  # longer than any peer id: the replica widens once, counts stay exact
    assert replica.count_better("all", 10.0, 1.0, probe.encode()) == owner.shard.count_better(10.0, 1.0, probe) == 5
    assert replica.count_better("all", 10.0, 0.5, probe.encode()) == 0  # earlier: beats them all
    assert replica.count_better("all", 10.0, 1.0, b"a") == 0  # ties: "a" sorts first
    assert replica.count_better("all", 10.0, 1.0, b"z") == 5
