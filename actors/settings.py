"""``ActorSettings``: what a session actor (or host) process is configured with.

Built by the edge from its own settings (``cluster.settings.Settings.actor_settings``) and
passed to the actor when it is created, through Ray, as a plain mapping (so actors created
by an older edge, and tests, may pass a dict); ``ActorSettings.of`` reads it, once, in the
actor, with the defaults below. The results sink gets ``as_dict()`` (``redis_url``,
``prefix``, ``leaderboards``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class ActorSettings:
    redis_url: str
    prefix: str = "pl"
    board_size: int = 10  # top-N rows of a class board (a class's own overrides it)
    checkpoint_interval_s: float = 0.25  # a changed class is checkpointed at most this often
    idle_deactivate_s: float = 900.0  # a class's own actor idle this long exits (0: never; SessionCell.idle_for)
    max_gap_s: float = 5.0  # a longer gap between two samples of a device adds no energy
    presence_grace_s: float = 60.0  # a live rider silent this long has left (actors.presence)
    profile_refresh_s: float = 60.0  # a class re-reads its riders' profiles this often (0: never)
    lobby_lead_s: float = 300.0  # a scheduled class opens its lobby this long before its start
    leaderboards: tuple[str, ...] = ()  # boards an ended class publishes its results to
    results_sink: str = ""  # "package.module:function" that publishes them (empty: none)
    board_parts: bool = False  # a class shard: ticks return board parts (actors/board_part.py)
    class_id: str = ""  # a class shard: the class it belongs to (its results are published as the class's)
    class_shards: int = 0  # a class shard: how many shards the class has (0: not a shard)
    history_sink: str = ""  # "package.module:function" that records the riders' rides (empty: none)
    results_stream_retention_s: float = 7 * 86400.0  # the history sink's results stream keeps this long
    results_stream_maxlen: int = 1_000_000  # ... and at most this many entries

    @classmethod
    def of(cls, raw: ActorSettings | Mapping[str, Any], **overrides: Any) -> ActorSettings:
        """Typed settings from ``raw`` (unknown keys are ignored), with ``overrides`` on top."""
        if isinstance(raw, ActorSettings):
            if not overrides:
                return raw
            raw = raw.as_dict()
        values = {**raw, **overrides}
        names = {f.name for f in dataclasses.fields(cls)}
        known = {k: v for k, v in values.items() if k in names}
        if "redis_url" not in known:
            raise ValueError("actor settings need a redis_url")
        if "leaderboards" in known:
            known["leaderboards"] = tuple(str(b) for b in known["leaderboards"] or ())
        for name, kind in (("board_size", int), ("checkpoint_interval_s", float), ("idle_deactivate_s", float), ("max_gap_s", float),
                           ("presence_grace_s", float), ("profile_refresh_s", float), ("lobby_lead_s", float),
                           ("results_stream_retention_s", float), ("results_stream_maxlen", int)):
            if name in known:
                known[name] = kind(known[name])
        if "class_shards" in known:
            known["class_shards"] = int(known["class_shards"])
        if "board_parts" in known:
            known["board_parts"] = bool(known["board_parts"])
        return cls(**known)

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "leaderboards": list(self.leaderboards)}
