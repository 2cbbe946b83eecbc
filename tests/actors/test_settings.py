"""``ActorSettings``: the typed settings a session actor reads once from what the edge sent."""

from __future__ import annotations

import pytest

from actors.settings import ActorSettings


def test_settings_from_a_mapping_are_typed_with_defaults_and_overrides() -> None:
    typed = ActorSettings.of({"redis_url": "redis://x", "board_size": "7", "leaderboards": ["a", "b"],
                              "unknown": 1})
    assert typed == ActorSettings("redis://x", board_size=7, leaderboards=("a", "b"))
    assert typed.checkpoint_interval_s == 0.25 and typed.prefix == "pl" and typed.results_sink == ""
    again = ActorSettings.of(typed, board_size=3, not_a_setting=True)
    assert again.board_size == 3 and again.leaderboards == ("a", "b") and typed.board_size == 7
    assert ActorSettings.of(typed) is typed
    assert again.as_dict()["leaderboards"] == ["a", "b"]  # what a results sink reads


def test_settings_without_redis_are_refused() -> None:
    with pytest.raises(ValueError, match="redis_url"):
        ActorSettings.of({"prefix": "p"})
