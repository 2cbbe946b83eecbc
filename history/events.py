"""Platform events for webhooks: what happened to classes and riders, as one Redis Stream.

The edge ``XADD``s ``class.scheduled``, ``class.starting`` (the lobby opened),
``class.live``, ``class.ended`` when it sees a class move there (a phase call or the class's
own plan; ``SessionRecords.record_phase`` says whether the phase really changed, so several
edges do not repeat it), ``rider.joined`` once per rider (the join route, or a device's first
samples: ``api.edge.Edge.riders_joined``) and ``rider.left`` on the leave route.
``record.set`` and ``result.revised`` come from the results stream (``history.results_stream``):
the webhook dispatcher (``history.webhooks``) reads both.

Key ``{p}:events:{stream}``; entry fields as the results stream's (``v`` "1", ``type``, ``at``
ms, ``session``, ``rider``, ``data`` JSON); trimmed to about ``MAXLEN`` entries.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from storage.checkpoint import key_base
from storage.redis_url import AsyncRedis

SCHEMA_VERSION = "1"
MAXLEN = 100_000
PHASE_EVENTS = {"scheduled": "class.scheduled", "lobby": "class.starting", "live": "class.live", "ended": "class.ended"}
EVENT_TYPES = (*PHASE_EVENTS.values(), "rider.joined", "rider.left", "record.set", "result.revised")


def events_key(prefix: str) -> str:
    return key_base(prefix, "events", "stream")


def _fields(kind: str, session: str, data: Mapping[str, Any], rider: str) -> dict[str, str]:
    if kind not in EVENT_TYPES:
        raise ValueError(f"unknown event type {kind!r}")
    return {"v": SCHEMA_VERSION, "type": kind, "at": str(int(time.time() * 1000)), "session": session,
            "rider": rider, "data": json.dumps(dict(data), separators=(",", ":"), sort_keys=True)}


async def publish_event(client: AsyncRedis, prefix: str, kind: str, session: str, data: Mapping[str, Any], *,
                        rider: str = "") -> str:
    """``XADD`` one event (one round trip); returns its stream id."""
    fields = _fields(kind, session, data, rider)
    reply = await client.xadd(events_key(prefix), fields, maxlen=MAXLEN, approximate=True)  # type: ignore[arg-type]
    return reply if isinstance(reply, str) else reply.decode()


async def publish_rider_events(client: AsyncRedis, prefix: str, kind: str, session: str,
                               riders: Sequence[str]) -> None:
    """One ``kind`` event per rider (``{"session", "rider"}``), all in one pipelined round
    trip: a class's start reports thousands of first joins at once. Raises if any failed
    (some may be in the stream then: events are at least once)."""
    key = events_key(prefix)
    async with client.pipeline(transaction=False) as pipe:
        for rider in riders:
            pipe.xadd(key, _fields(kind, session, {"session": session, "rider": rider}, rider),  # type: ignore[arg-type]
                      maxlen=MAXLEN, approximate=True)
        await pipe.execute()
