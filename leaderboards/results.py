"""A class's results on leaderboards: what a session actor publishes when its class ends.

``publish_from_session`` is the default *results sink* of session actors
(``actors/session_cell.py`` resolves it by name, ``"leaderboards.results:publish_from_session"``,
so ``actors`` imports nothing above itself): it turns the class's snapshot into writes
(``session_writes``) and sends them to the class's boards through the router
(``publish_session_results``). Idempotent: late data re-publishes and replaces.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import ray

from leaderboards.router import Leaderboards, UnknownBoard
from leaderboards.shard import CLASS_TAG, LeaderboardSpec, Period, Write

log = logging.getLogger(__name__)

__all__ = ["publish_from_session", "publish_session_results", "session_writes"]


def session_writes(
    spec: LeaderboardSpec, snapshot: Mapping[str, Any], *, now: Callable[[], float] = time.time
) -> list[Write]:
    """One write per participant with a result in ``spec.metric`` (a field of the session's
    participant summary: ``energy_kj``, ``distance_m``, ``power_avg``, ``samples``, …).

    ``source = "session:{id}"``, so a re-publish (late data) replaces the session's earlier
    value instead of adding to it. ``achieved_at`` is the participant's last device
    timestamp (a correction never moves it backwards, so it replaces). ``tags`` are the
    participant's join tags (its cohort values), plus ``class_id`` on per-class boards (the
    class wins over a participant tag of that name). Participants without samples or without
    a finite value are skipped.
    """
    session = str(snapshot["session"])
    writes = []
    for p in snapshot.get("participants") or ():
        if not p or not p.get("samples"):
            continue
        value = p.get(spec.metric)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            continue
        at = p.get("last_ts")
        at = float(at) if isinstance(at, int | float) and math.isfinite(at) else now()
        joined = p.get("tags")
        joined = joined if isinstance(joined, Mapping) else {}
        tags = {k: v for k, v in joined.items() if type(k) is str and type(v) is str}
        if spec.period is Period.CLASS:
            tags[CLASS_TAG] = session
        writes.append(Write(str(p["participant"]), f"session:{session}", float(value), at, tags))
    return writes


async def publish_session_results(
    client: Leaderboards, snapshot: Mapping[str, Any], boards: Iterable[str]
) -> dict[str, int]:
    """Write a session's per-participant results to ``boards``; return writes per board.

    Idempotent: call it again after late data changed the session, it replaces.
    An unknown board is logged and skipped (a session never fails because of a board).
    """
    written: dict[str, int] = {}
    for name in boards:
        try:
            spec = await client.spec(name)
        except UnknownBoard:
            log.warning("session %s: no leaderboard %r to publish to", snapshot.get("session"), name)
            continue
        writes = session_writes(spec, snapshot, now=client.now)
        if writes:
            await client.write(name, writes)
        written[name] = len(writes)
    return written


async def publish_from_session(settings: Mapping[str, Any], snapshot: Mapping[str, Any]) -> dict[str, int]:
    """What a session actor calls when its class ended: ``settings`` is its settings dict
    (``redis_url``, ``prefix``, ``leaderboards``: board names); the namespace is its own."""
    boards = [str(b) for b in settings.get("leaderboards") or ()]
    if not boards:
        return {}
    client = Leaderboards.connect(
        settings["redis_url"],
        prefix=settings.get("prefix", "pl"),
        namespace=ray.get_runtime_context().namespace,
    )
    try:
        return await publish_session_results(client, snapshot, boards)
    finally:
        await client.aclose()
