"""Participant tags in ``SessionState``, synchronously: join semantics, validation, checkpoints."""

from __future__ import annotations

import msgpack
import pytest

from actors.session import MAX_TAGS, DeviceBatch, SessionState, TagError, check_tags


def rows(start: int, n: int, *, power: float = 200.0, t0: float = 1000.0) -> list[list[float]]:
    return [[s, t0 + (s - 1), 120.0, power, 90.0, 8.0, 10.0 * s] for s in range(start, start + n)]


def tags_of(state: SessionState, participant: str) -> dict[str, str]:
    summary = state.summary(participant)
    assert summary is not None
    return summary["tags"]  # type: ignore[no-any-return]


def test_join_with_tags_replaces_and_join_without_keeps() -> None:
    state = SessionState("s")
    state.join("ann", {"age": "30-39", "gender": "f"})
    assert tags_of(state, "ann") == {"age": "30-39", "gender": "f"}
    state.join("ann")  # a re-join without tags (e.g. a device hello) keeps them
    assert tags_of(state, "ann") == {"age": "30-39", "gender": "f"}
    state.join("ann", {"age": "40-49"})  # replaces, does not merge
    assert tags_of(state, "ann") == {"age": "40-49"}
    state.join("ann", {})  # clears
    assert tags_of(state, "ann") == {}
    state.join("bob")
    assert tags_of(state, "bob") == {}


def test_a_tag_change_moves_the_version_and_an_equal_rejoin_does_not() -> None:
    state = SessionState("s")
    state.join("ann", {"age": "30-39"})
    version = state.version
    state.join("ann", {"age": "30-39"})
    assert state.version == version
    state.join("ann", {"age": "50-59"})
    assert state.version > version  # so the actor checkpoints the change


def test_samples_do_not_touch_tags() -> None:
    state = SessionState("s")
    state.join("ann", {"age": "30-39"})
    state.apply([DeviceBatch("d1", "ann", rows(1, 5)), DeviceBatch("d2", "new", rows(1, 5))])
    assert tags_of(state, "ann") == {"age": "30-39"}
    assert tags_of(state, "new") == {}


@pytest.mark.parametrize(
    "tags",
    [
        {f"k{i}": "v" for i in range(MAX_TAGS + 1)},
        {"": "v"},
        {"bad key": "v"},
        {"k" * 33: "v"},
        {"age": ""},
        {"age": "x" * 65},
        {"age": "tab\there"},
        {"age": 30},
        {"age": None},
        ["age", "30-39"],
    ],
)
def test_bad_tags_raise_tag_error_and_change_nothing(tags: object) -> None:
    state = SessionState("s")
    state.join("ann", {"age": "30-39"})
    version = state.version
    with pytest.raises(TagError):
        state.join("ann", tags)  # type: ignore[arg-type]
    with pytest.raises(TagError):
        state.join("eve", tags)  # type: ignore[arg-type]
    assert tags_of(state, "ann") == {"age": "30-39"}
    assert "eve" not in state.slots and state.version == version


def test_good_tags_at_the_limits_pass() -> None:
    tags = {f"k.{i}-_{'x' * 27}": "y" * 64 for i in range(MAX_TAGS)}
    tags["k.0-_" + "x" * 27] = "ü ß 30–39"  # printable non-ASCII and a space
    assert check_tags(tags) == tags


def test_tags_survive_a_checkpoint_round_trip() -> None:
    state = SessionState("s")
    for i in range(20):
        state.join(f"p{i}", {"age": f"{i % 3}0-{i % 3}9"} if i % 2 else None)
    state.apply([DeviceBatch("d1", "p1", rows(1, 4))])
    restored = SessionState.from_checkpoint(state.to_checkpoint())
    assert restored.snapshot() == state.snapshot()
    assert tags_of(restored, "p1") == {"age": "10-19"} and tags_of(restored, "p2") == {}
    restored.join("p1")
    assert tags_of(restored, "p1") == {"age": "10-19"}


def test_a_checkpoint_written_before_tags_still_restores() -> None:
    state = SessionState("s")
    state.join("ann")
    state.apply([DeviceBatch("d1", "ann", rows(1, 4))])
    raw = msgpack.unpackb(state.to_checkpoint(), raw=False, strict_map_key=False)
    del raw["tags"]  # exactly what an older build wrote
    restored = SessionState.from_checkpoint(msgpack.packb(raw, use_bin_type=True))
    assert restored.snapshot() == state.snapshot()
    assert tags_of(restored, "ann") == {}
    restored.join("ann", {"age": "30-39"})
    assert tags_of(restored, "ann") == {"age": "30-39"}
