"""Ride records: one per rider per finished class, built from the class's results and its
per-second recording (``actors.recording``), revised by late data.

A ride (``build_ride``) is a summary and a series:

* summary: ``id`` (the class id: a rider rides a class once), ``rider``, ``class``,
  ``sport``, ``start_ts``/``end_ts`` (epoch s: the rider's first recorded second and the
  end of the last), ``elapsed_s``, ``recorded_s`` (seconds with data), ``totals``, the
  class ``rank`` (by work, among the class's riders with samples; a class split over
  shard actors ranks among the whole class, ``actors/class_shard.py``) and ``riders``,
  ``zones`` (seconds per power and heart-rate zone), ``bests`` (``history.records``);
* series: the rider's recorded seconds (``t``, seconds from ``start_ts``) and each of
  ``power_w``, ``hr_bpm``, ``cadence_rpm``, ``speed_mps``, ``distance_m`` (None: no value).

Redis (under the deployment's ``prefix``; ``{id}`` is the rider's cluster hash tag, so a
ride and its rider's index are written by one script on one slot):

===========================================  ====  ==========================================
key                                          type  content
===========================================  ====  ==========================================
``{p}:rider:{{id}}:rides``                    zset  member: ride id, score: ``start_ts``
``{p}:rider:{{id}}:ride:{ride}``              hash  ``summary`` (JSON), ``series`` (below),
                                                   ``digest``, ``revision``, ``updated_at``;
                                                   ``export_fit``/``export_tcx`` and their
                                                   ``..._rev``: the files last served
===========================================  ====  ==========================================

``series`` is zlib-compressed msgpack ``{"v": 1, "t": int32 bytes, column: bytes}`` with the
columns at the recording's resolution and absent markers (``actors.recording.FIELDS``).
``put`` writes a ride only when its content (summary and series) changed, and then bumps
``revision`` (1: first written): late data that changes a ride is visible as a new revision.
Rides never expire (a rider's history is theirs to keep).
"""

from __future__ import annotations

import hashlib
import json
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

from actors.recording import FIELDS, Series
from history.errors import BadCursor, RideNotFound
from history.records import ride_bests
from storage.checkpoint import key_base
from storage.redis_url import AsyncRedis

SERIES_VERSION = 1
SPORT = "cycling"  # indoor classes; exports map it (FIT: cycling / indoor_cycling, TCX: Biking)

_PUT = """
if redis.call('HGET', KEYS[1], 'digest') == ARGV[1] then return 0 end
local revision = redis.call('HINCRBY', KEYS[1], 'revision', 1)
redis.call('HSET', KEYS[1], 'digest', ARGV[1], 'summary', ARGV[2], 'series', ARGV[3], 'updated_at', ARGV[4])
redis.call('ZADD', KEYS[2], ARGV[5], ARGV[6])
return revision
"""


@dataclass(slots=True)
class Ride:
    summary: dict[str, Any]
    series: Series  # ``t`` relative to the recording's t0 (``series.t0``)

    @property
    def id(self) -> str:
        return str(self.summary["id"])

    @property
    def rider(self) -> str:
        return str(self.summary["rider"])

    def series_json(self) -> dict[str, Any]:
        """The series as JSON lists, ``t`` from the ride's start."""
        first = int(self.series.t[0]) if len(self.series) else 0
        out: dict[str, Any] = {"start_ts": self.summary["start_ts"], "t": (self.series.t - first).tolist()}
        for f in FIELDS:
            column = self.series.values[f.name]
            out[f.name] = [None if np.isnan(v) else round(float(v), 3) for v in column.tolist()]
        return out


def _num(value: Any, digits: int = 3) -> float | None:
    return None if value is None else round(float(value), digits)


def class_ranks(participants: list[Mapping[str, Any]]) -> dict[str, int]:
    """Rank by work (desc), ties by join order, among the riders with samples."""
    riding = [(i, p) for i, p in enumerate(participants) if p.get("samples")]
    riding.sort(key=lambda item: (-float(item[1].get("energy_kj") or 0.0), item[0]))
    return {str(p["participant"]): rank for rank, (_, p) in enumerate(riding, start=1)}


def build_ride(session: str, summary: Mapping[str, Any], series: Series, *, rank: int | None,
               riders: int) -> Ride | None:
    """A rider's ride from its class summary (``SessionState.summary``) and recorded
    seconds; None when the rider recorded nothing (no data, no ride)."""
    if not len(series):
        return None
    metrics = summary.get("metrics") or {}
    first, last = int(series.t[0]), int(series.t[-1])
    start = series.t0 + first
    energy = summary.get("energy_kj")
    totals = {
        "energy_kj": _num(energy), "kcal": _num(metrics.get("kcal"), 1),
        "distance_m": _num(summary.get("distance_m"), 2), "samples": int(summary.get("samples") or 0),
        "avg_power_w": _num(summary.get("power_avg"), 1), "max_power_w": _num(summary.get("power_max"), 1),
        "avg_hr_bpm": _num(summary.get("hr_avg"), 1), "max_hr_bpm": _num(summary.get("hr_max"), 1),
        "avg_cadence_rpm": _num(summary.get("cadence_avg"), 1), "max_speed_mps": _num(summary.get("speed_max")),
        "np_w": _num(metrics.get("np_w"), 1), "if": _num(metrics.get("if")), "tss": _num(metrics.get("tss"), 1),
    }
    ride_summary = {
        "id": session, "rider": str(summary["participant"]), "class": session, "sport": SPORT,
        "start_ts": start, "end_ts": series.t0 + last + 1, "elapsed_s": last - first + 1,
        "recorded_s": len(series), "totals": totals, "rank": rank, "riders": riders,
        "zones": {"power_s": list(metrics.get("power_zone_s") or []), "hr_s": list(metrics.get("hr_zone_s") or [])},
        "bests": ride_bests(series.t, series.values["power_w"], energy),
    }
    return Ride(ride_summary, series)


# -- encoding ---------------------------------------------------------------------------------
def encode_series(series: Series) -> bytes:
    payload: dict[str, Any] = {"v": SERIES_VERSION, "t0": series.t0, "t": series.t.astype("<i4").tobytes()}
    for f in FIELDS:
        payload[f.name] = f.store(series.values[f.name]).astype(np.dtype(f.dtype).newbyteorder("<")).tobytes()
    return zlib.compress(msgpack.packb(payload, use_bin_type=True), 6)


def decode_series(blob: bytes) -> Series:
    raw = msgpack.unpackb(zlib.decompress(blob), raw=False)
    if raw.get("v") != SERIES_VERSION:
        raise ValueError(f"ride series version {raw.get('v')!r} unsupported")
    values = {f.name: f.value(np.frombuffer(raw[f.name], np.dtype(f.dtype).newbyteorder("<"))) for f in FIELDS}
    return Series(int(raw["t0"]), np.frombuffer(raw["t"], "<i4").astype(np.int64), values)


def _digest(summary_json: str, series_blob: bytes) -> str:
    return hashlib.sha256(summary_json.encode() + b"\0" + series_blob).hexdigest()


def _text(raw: bytes | str) -> str:
    return raw if isinstance(raw, str) else raw.decode()


def encode_cursor(start_ts: float, ride: str) -> str:
    return f"{start_ts!r}|{ride}"


def decode_cursor(cursor: str) -> tuple[float, str]:
    score, sep, ride = cursor.partition("|")
    try:
        if not sep or not ride:
            raise ValueError
        return float(score), ride
    except ValueError:
        raise BadCursor(f"cursor {cursor[:80]!r} is not one this server gave") from None


class RideStore:
    """Ride records in Redis (see the module docstring); the client is the caller's."""

    def __init__(self, client: AsyncRedis, *, prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    def index_key(self, rider: str) -> str:
        return f"{key_base(self.prefix, 'rider', rider)}:rides"

    def ride_key(self, rider: str, ride: str) -> str:
        return f"{key_base(self.prefix, 'rider', rider)}:ride:{ride}"

    async def put(self, ride: Ride, *, now: float | None = None) -> int:
        """Write ``ride`` if its content changed; returns its new revision, 0 if unchanged."""
        summary_json = json.dumps(ride.summary, sort_keys=True, separators=(",", ":"))
        blob = encode_series(ride.series)
        keys = (self.ride_key(ride.rider, ride.id), self.index_key(ride.rider))
        args = (_digest(summary_json, blob), summary_json, blob, f"{time.time() if now is None else now:.3f}",
                ride.summary["start_ts"], ride.id)
        return int(await self.client.eval(_PUT, len(keys), *keys, *args))  # type: ignore[misc]

    async def summary(self, rider: str, ride: str) -> dict[str, Any]:
        """The ride's summary with ``revision`` and ``updated_at``; ``RideNotFound``."""
        raw = await self.client.hmget(self.ride_key(rider, ride), ["summary", "revision", "updated_at"])  # type: ignore[misc]
        return _summary(rider, ride, raw)

    async def get(self, rider: str, ride: str) -> Ride:
        raw = await self.client.hmget(self.ride_key(rider, ride), ["summary", "revision", "updated_at", "series"])  # type: ignore[misc]
        summary = _summary(rider, ride, raw[:3])
        blob = raw[3]
        assert isinstance(blob, bytes), "these clients never decode responses"
        return Ride(summary, decode_series(blob))

    async def cached_export(self, ride: Ride, kind: str) -> bytes | None:
        """The ``kind`` export of this revision of ``ride`` if one was kept (``keep_export``)."""
        body, revision = await self.client.hmget(  # type: ignore[misc]
            self.ride_key(ride.rider, ride.id), [f"export_{kind}", f"export_{kind}_rev"])
        if body is None or revision is None or int(revision) != int(ride.summary["revision"]):
            return None
        return body if isinstance(body, bytes) else body.encode()

    async def keep_export(self, ride: Ride, kind: str, body: bytes) -> None:
        """Keep an export of this revision (a later revision makes it stale; see above)."""
        await self.client.hset(self.ride_key(ride.rider, ride.id), mapping={  # type: ignore[misc]
            f"export_{kind}": body, f"export_{kind}_rev": str(ride.summary["revision"])})

    async def page(self, rider: str, *, limit: int, before: str | None) -> tuple[list[dict[str, Any]], str | None]:
        """A rider's rides newest first (``limit`` of them, after the cursor ``before``), and
        the cursor of the next page (None at the end). Keyset paging: a ride written
        meanwhile neither shifts nor repeats a page."""
        top: float | str = "+inf"
        skip: tuple[float, str] | None = None
        if before:
            skip = decode_cursor(before)
            top = skip[0]
        found: list[tuple[str, float]] = []
        offset = 0
        while len(found) < limit + 1:
            batch: list[Any] = await self.client.zrevrangebyscore(
                self.index_key(rider), top, "-inf", start=offset, num=limit + 16, withscores=True)
            if not batch:
                break
            offset += len(batch)
            for member, score in batch:
                name = _text(member)
                if skip and score == skip[0] and name >= skip[1]:
                    continue  # (ties in start time: by id, descending, like ZREVRANGE)
                found.append((name, float(score)))
        page, more = found[:limit], len(found) > limit
        summaries = []
        if page:
            async with self.client.pipeline(transaction=False) as pipe:
                for name, _ in page:
                    pipe.hmget(self.ride_key(rider, name), ["summary", "revision", "updated_at"])
                replies = await pipe.execute()
            summaries = [_summary(rider, name, raw) for (name, _), raw in zip(page, replies, strict=True)]
        cursor = encode_cursor(page[-1][1], page[-1][0]) if more and page else None
        return summaries, cursor


def _summary(rider: str, ride: str, raw: list[Any]) -> dict[str, Any]:
    if raw[0] is None:
        raise RideNotFound(rider, ride)
    summary: dict[str, Any] = json.loads(raw[0])
    summary["revision"] = int(raw[1])
    summary["updated_at"] = float(raw[2])
    return summary
