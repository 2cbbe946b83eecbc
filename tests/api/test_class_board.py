"""The merged board of a sharded class against one ``SessionState`` fed the same samples.

Plain state, no Ray: N shard states and one reference state take the same device batches
(each rider's to its shard by ``shard_of``); the parts go through msgpack as on the wire;
every rider's row (exact rank included), the top N, every page, ``n`` and the class output
must equal what the single reference says. Ties (riders with the same output, riders with
none) share a rank: 1 + the riders with more output.
"""

from __future__ import annotations

import random
from typing import Any

import msgpack
import numpy as np
import pytest
import redis

from actors.board_part import KEEP_VERSIONS, BoardParts, board_part, is_part
from actors.session import DeviceBatch, Phase, SessionState
from api.class_board import PartGap, ShardPart, merge_board
from api.viewer import CompactBoard, Paging, board_encoder, own_row, own_summary
from cluster.class_shards import ASSIGN, merge_snapshots, placement_keys, shard_count, shard_of

SHARDS = 3
RIDERS = 240


def _wire(part: dict[str, Any]) -> dict[str, Any]:
    return msgpack.unpackb(msgpack.packb(part, use_bin_type=True), raw=False)  # type: ignore[no-any-return]


def _ride(seed: int) -> tuple[SessionState, list[SessionState]]:
    rng = random.Random(seed)
    clock = lambda: 1_000.0  # noqa: E731 - a fixed clock: presence does not move
    reference = SessionState("big", board_size=10, clock=clock)
    shards = [SessionState(f"big~{i}", board_size=10, clock=clock) for i in range(SHARDS)]
    riders = [f"r{k:03d}" for k in range(RIDERS)]
    for rider in riders:
        reference.join(rider)
        shards[shard_of(rider, SHARDS)].join(rider)
    for tick in range(4):
        batches = []
        for k, rider in enumerate(riders):
            if k % 10 == 0:
                continue  # joined, never rode: output 0, all tied
            power = 200.0 if k % 7 == 0 else rng.uniform(80, 400)  # every 7th: tied with each other
            rows = [[tick * 2 + j + 1, 100.0 + tick * 2 + j, 120.0, power, 85.0, 8.0, 10.0 * (tick * 2 + j)]
                    for j in range(2)]
            batches.append(DeviceBatch(f"{rider}-dev", rider, rows))
        reference.apply(batches)
        for i, shard in enumerate(shards):
            shard.apply(b for b in batches if shard_of(b.participant, SHARDS) == i)
    for rider in riders[5:12]:  # riders who left: off the board in both
        reference.leave(rider)
        shards[shard_of(rider, SHARDS)].leave(rider)
    return reference, shards


def _merged(shards: list[SessionState]) -> dict[str, Any]:
    parts = [ShardPart.decode(_wire(board_part(s)[0])) for s in shards]
    return merge_board("big", parts, 10, sum(s.version for s in shards))


def _expected_rank(reference: SessionState) -> dict[str, int]:
    energy = reference.scores()
    on = reference.active[: len(reference.participants)]
    return {p: 1 + int(np.sum(energy[on] > energy[slot])) for slot, p in enumerate(reference.participants) if on[slot]}


@pytest.mark.timeout(60)
def test_every_riders_row_and_rank_match_the_single_actor() -> None:
    reference, shards = _ride(seed=1)
    board = _merged(shards)
    whole = reference.board()
    ranks = _expected_rank(reference)
    assert board["n"] == whole["n"] == len(ranks) == RIDERS - 7
    on = reference.active[: len(reference.participants)]
    assert board["total_kj"] == pytest.approx(float(reference.scores()[on].sum()), abs=1e-9)
    assert len({r for r in ranks.values()}) < len(ranks)  # the ride has ties (else this test proves less)
    for row in whole["rows"]:
        mine = own_row(board, row[0])
        assert mine is not None
        assert mine[1] == ranks[row[0]], row[0]
        assert mine[0] == row[0] and mine[2:] == row[2:]  # every number as the single actor shows it
    for left in reference.participants[5:12]:
        assert own_row(board, left) is None
    assert own_row(board, "nobody") is None


@pytest.mark.timeout(60)
def test_top_and_pages_are_the_class_order() -> None:
    reference, shards = _ride(seed=2)
    board = _merged(shards)
    ranks = _expected_rank(reference)
    energy = dict(zip(reference.participants, reference.scores()))
    best = sorted(ranks, key=lambda p: -energy[p])[:10]
    assert [r[0] for r in board["top"]] == sorted(best, key=lambda p: -energy[p])  # no ties at the top here
    assert [r[1] for r in board["top"]] == [ranks[p] for p in best]
    pages = [board["merged"].page(k, 50) for k in range(board["merged"].pages(50))]
    seen = [row for page in pages for row in page]
    assert sorted(r[0] for r in seen) == sorted(ranks)  # every rider on exactly one page
    assert [r[1] for r in seen] == sorted(r[1] for r in seen)  # by rank
    assert all(r[1] == ranks[r[0]] for r in seen)


@pytest.mark.timeout(60)
def test_frames_of_a_merged_board() -> None:
    reference, shards = _ride(seed=3)
    board = _merged(shards)
    rider = reference.participants[21]
    frame = msgpack.unpackb(board_encoder(rider, everyone=True, paging=Paging(None, 100))(board), raw=False)
    assert frame["you"][0] == rider and frame["n"] == board["n"] and len(frame["rows"]) == 100
    assert frame["page"] == 0 and frame["pages"] == -(-board["n"] // 100)
    private = msgpack.unpackb(board_encoder(rider, everyone=True, private=True, paging=Paging(1, 100))(board), raw=False)
    hr = board["cols"].index("hr_bpm")
    assert private["you"][hr] == 120.0  # its own row whole
    assert all(r[hr] is None for r in private["rows"]) and all(r[hr] is None for r in private["top"])
    assert private["page"] == 1 and private["rows"][0][1] >= frame["rows"][-1][1]
    compact = msgpack.unpackb(CompactBoard(rider)(board, {"d": 3}), raw=False)
    assert compact["me"][0] == own_row(board, rider)[1]  # type: ignore[index]
    assert compact["sum"] == round(board["total_kj"] * 10) and compact["acks"] == {"d": 3}


def test_parts_and_counts() -> None:
    _, shards = _ride(seed=4)
    part, _ = board_part(shards[0])
    assert is_part(part) and not is_part(shards[0].board()) and not is_part(None)
    assert len(part["m"]) == 8 * len(shards[0].participants) * 14
    assert shard_count(None, 1000, 64) == 1 and shard_count(1000, 1000, 64) == 1
    assert shard_count(1001, 1000, 64) == 2 and shard_count(30_000, 1000, 8) == 8 and shard_count(5000, 0, 8) == 1
    snaps = [s.snapshot() for s in shards]
    merged = merge_snapshots("big", snaps)
    assert len(merged["participants"]) == RIDERS and merged["session"] == "big"
    assert merged["totals"]["applied"] == sum(s["totals"]["applied"] for s in snaps)


@pytest.mark.timeout(60)
def test_change_parts_rebuild_the_whole_part_exactly() -> None:
    """Ticks with new riders, leaves and quiet riders: each shard sends only the rows changed
    since the version the edge holds, and every rider's row and the pages come out as from
    whole parts; a change against a version the edge does not hold is refused (PartGap)."""
    rng = random.Random(7)
    clock = [1_000.0]
    shard = SessionState("big~0", board_size=5, clock=lambda: clock[0])
    maker = BoardParts()
    held: ShardPart | None = None
    sizes, versions = [], []
    for tick in range(40):
        clock[0] += 0.1
        riders = [f"r{k}" for k in range(30 + tick)]  # one new rider per tick
        shard.join(riders[-1])
        batches = [DeviceBatch(f"{r}-d", r, [[tick + 1, clock[0], 130.0, rng.uniform(100, 300), 90.0, 8.0, 5.0 * tick]])
                   for r in riders if rng.random() < 0.2]
        shard.apply(batches)
        if tick % 9 == 4:
            shard.leave(riders[tick])
        raw = _wire(maker.part(shard, -1 if held is None else held.version))
        held = ShardPart.decode(raw, held)
        versions.append(held.version)
        full = _wire(board_part(shard)[0])
        sizes.append((len(raw["m"]), len(full["m"])))
        whole = ShardPart.decode(full)
        assert held.ids == whole.ids and held.index == whole.index
        assert np.array_equal(held.matrix, whole.matrix, equal_nan=True)
        assert np.array_equal(held.presence, whole.presence) and np.array_equal(held.targets, whole.targets)
        mine = merge_board("big", [held], 5, held.version)
        theirs = merge_board("big", [whole], 5, whole.version)
        assert mine["top"] == theirs["top"] and mine["merged"].page(0, 100) == theirs["merged"].page(0, 100)
    assert sum(c for c, _ in sizes[1:]) < 0.4 * sum(w for _, w in sizes[1:])  # changes carry a fraction of the rows
    shard.join("late-rider")
    stale = _wire(maker.part(shard, versions[-2]))  # a change against a version this edge let go
    assert stale["base"] == versions[-2]
    with pytest.raises(PartGap):
        ShardPart.decode(stale, held)
    assert "base" not in maker.part(shard, versions[-KEEP_VERSIONS - 2])  # too old: the whole part
    assert "base" in maker.part(shard, versions[-1])


@pytest.mark.timeout(60)
def test_an_ended_class_gives_each_rider_its_summary_with_the_class_rank() -> None:
    reference, shards = _ride(seed=5)
    for state in (reference, *shards):
        state.set_phase(Phase.ENDED)
    board = _merged(shards)
    ranks = _expected_rank(reference)
    theirs = reference.board()["summaries"]
    assert set(theirs) == set(ranks)
    for rider, summary in theirs.items():
        mine = own_summary(board, rider)
        assert mine is not None and mine["rank"] == ranks[rider] and mine["riders"] == summary["riders"]
        assert {k: v for k, v in mine.items() if k != "rank"} == {k: v for k, v in summary.items() if k != "rank"}
    frame = msgpack.unpackb(CompactBoard(rider)(board), raw=False)
    assert frame["summary"]["rank"] == ranks[rider]
    assert own_summary(board, reference.participants[6]) is None  # left: not ranked, no summary


@pytest.mark.timeout(60)
def test_a_growing_class_places_riders_once_and_its_merge_stays_the_single_actors(redis_server: Any) -> None:
    """Riders placed by the class's own script (``ASSIGN``, real Redis), 20 per shard: 50
    riders who join over 5 rounds of riding grow the class from 1 shard to 3 (20, 20, 10);
    nobody moves, every rider's samples go to its recorded shard, and every rank of the merge
    is the single reference's. A shard added late follows the class's phase and clock."""
    client = redis.Redis.from_url(redis_server.url)
    meta, (placed_key, loads_key) = "grow:session:{g}:meta", placement_keys("grow", "g")
    client.delete(meta, placed_key, loads_key)
    client.hset(meta, mapping={"shards": 1, "shard_riders": 20, "max_shards": 64})
    assign = client.register_script(ASSIGN)
    clock = lambda: 1_000.0  # noqa: E731
    reference = SessionState("g", board_size=10, clock=clock)
    shards = [SessionState("g~0", board_size=10, clock=clock)]
    reference.set_phase(Phase.LIVE)
    shards[0].set_phase(Phase.LIVE)
    rng = random.Random(11)
    riders: list[str] = []
    owner: dict[str, int] = {}
    for tick in range(5):
        joining = [f"g{k:02d}" for k in range(tick * 10, tick * 10 + 10)]
        reply = assign(keys=[meta, placed_key, loads_key], args=joining)
        for rider, shard in zip(joining, reply[1:], strict=True):
            owner[rider] = int(shard)
        while len(shards) < int(reply[0]):  # a new shard follows the class (shard 0's phase and clock)
            shards.append(SessionState(f"g~{len(shards)}", board_size=10, clock=clock))
            assert shards[-1].follow(shards[0].phase, shards[0].schedule) and shards[-1].phase is Phase.LIVE
        riders += joining
        batches = [DeviceBatch(f"{r}-dev", r, [[tick + 1, 100.0 + tick, 120.0, rng.uniform(80, 400), 85.0, 8.0,
                                                 10.0 * tick]]) for r in riders]
        reference.apply(batches)
        for i, shard in enumerate(shards):
            shard.apply(b for b in batches if owner[b.participant] == i)
    again = assign(keys=[meta, placed_key, loads_key], args=riders)  # placed once: asked again, the same shards
    assert [int(s) for s in again[1:]] == [owner[r] for r in riders] and int(again[0]) == 3
    assert [len(s.participants) for s in shards] == [20, 20, 10] and client.hget(meta, "shards") == b"3"
    assert {int(k): int(v) for k, v in client.hgetall(loads_key).items()} == {0: 20, 1: 20, 2: 10}
    client.hset(meta, "max_shards", 3)  # at the most shards: the least loaded takes the next riders anyway
    assert [int(s) for s in assign(keys=[meta, placed_key, loads_key], args=["late-1", "late-2"])] == [3, 2, 2]
    client.delete(meta, placed_key, loads_key)
    client.close()
    board = _merged(shards)
    ranks = _expected_rank(reference)
    assert board["n"] == len(ranks) == 50 and len(board["merged"].page(0, 100)) == 50
    for rider, rank in ranks.items():
        mine = own_row(board, rider)
        assert mine is not None and mine[1] == rank, rider
    assert [r[0] for r in board["top"]] == [r[0] for r in reference.board()["rows"][:10]]
    assert not shards[2].follow(Phase.LIVE, shards[0].schedule)  # idempotent
    assert shards[2].follow(Phase.ENDED, shards[0].schedule) and shards[2].phase is Phase.ENDED
    assert not shards[2].follow(Phase.LIVE, shards[0].schedule) and shards[2].phase is Phase.ENDED  # only forward
