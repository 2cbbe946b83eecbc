"""Personal records: a rider's best 5 s / 1 min / 5 min / 20 min power and best class output.

A ride's *bests* (``ride_bests``) come from its per-second power: the highest mean power over
any window of that many consecutive seconds, a second without a power value counting as
0 W (coasting; a ride shorter than the window has no value for it), and its class output,
the work of the ride in kJ. The rider's record for a metric is the best of all their
rides' bests, so a ride revised by late data moves the record either way.

Redis (under the deployment's ``prefix``; ``{id}`` is the cluster hash tag of the rider):

==========================================  ====  ===========================================
key                                         type  content
==========================================  ====  ===========================================
``{p}:rider:{{id}}:best:{metric}``           zset  member: ride id, score: that ride's best
==========================================  ====  ===========================================

``update`` writes one ride's bests and reads the record before and after in one MULTI
(one slot), so the "record set" events it returns are exact even with two classes of the
rider ending at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from actors.recording import POWER_WINDOWS_S, power_bests
from storage.checkpoint import key_base
from storage.redis_url import AsyncRedis

CLASS_OUTPUT = "class_output_kj"
METRICS = (*POWER_WINDOWS_S, CLASS_OUTPUT)


def ride_bests(t: np.ndarray, power_w: np.ndarray, energy_kj: float | None) -> dict[str, float | None]:
    """A ride's bests: ``actors.recording.power_bests`` and its class output (kJ)."""
    bests = power_bests(t, power_w)
    bests[CLASS_OUTPUT] = None if not energy_kj else round(float(energy_kj), 3)
    return bests


@dataclass(frozen=True, slots=True)
class RecordSet:
    """A record this ride now holds that it did not hold before (or holds higher)."""

    metric: str
    value: float
    previous: float | None
    previous_ride: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "value": self.value, "previous": self.previous,
                "previous_ride": self.previous_ride}


def _text(raw: bytes | str) -> str:
    return raw if isinstance(raw, str) else raw.decode()


class RecordStore:
    """Rides' bests and riders' records in Redis (see the module docstring)."""

    def __init__(self, client: AsyncRedis, *, prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    def key(self, rider: str, metric: str) -> str:
        return f"{key_base(self.prefix, 'rider', rider)}:best:{metric}"

    async def update(self, rider: str, ride: str, bests: Mapping[str, float | None]) -> list[RecordSet]:
        """Store ``ride``'s bests; return the records it set."""
        async with self.client.pipeline(transaction=True) as pipe:
            for metric in METRICS:
                key = self.key(rider, metric)
                pipe.zrevrange(key, 0, 0, withscores=True)
                value = bests.get(metric)
                if value is None:
                    pipe.zrem(key, ride)
                else:
                    pipe.zadd(key, {ride: float(value)})
                pipe.zrevrange(key, 0, 0, withscores=True)
            replies = await pipe.execute()
        out = []
        for i, metric in enumerate(METRICS):
            before, after = replies[3 * i], replies[3 * i + 2]
            if not after or _text(after[0][0]) != ride:
                continue
            value = float(after[0][1])
            old_ride, old_value = (_text(before[0][0]), float(before[0][1])) if before else (None, None)
            if old_ride == ride and old_value is not None and value <= old_value:
                continue  # held it already, not higher now
            out.append(RecordSet(metric, value, old_value, old_ride))
        return out

    async def records(self, rider: str) -> dict[str, dict[str, Any] | None]:
        """The rider's record per metric: ``{"value", "ride"}`` or None (no ride has one)."""
        async with self.client.pipeline(transaction=False) as pipe:
            for metric in METRICS:
                pipe.zrevrange(self.key(rider, metric), 0, 0, withscores=True)
            replies = await pipe.execute()
        return {metric: ({"value": float(top[0][1]), "ride": _text(top[0][0])} if top else None)
                for metric, top in zip(METRICS, replies, strict=True)}
