"""The history sink: what a session actor calls (through ``settings.history_sink``, an import
path, see ``actors/session_cell.py``) when its class ended and again after late data.

``snapshot`` is the class snapshot plus ``"series"``: ``{participant: actors.recording.Series}``
for the riders whose recording changed since the last call (all of them on the first call
of an actor instance). Each becomes a ride record (``history.rides``) and updates the
rider's personal records (``history.records``); a ride whose content did not change is not
rewritten. Every ride written, record set, and (when any) the class result go onto the
results stream (``history.results_stream``). Returns what it did (``rides``: written,
``revised``: of those, rewrites, ``records``: records set) and those ``events``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from history import results_stream
from history.records import RecordStore
from history.rides import RideStore, build_ride, class_ranks
from storage.checkpoint import client_for

log = logging.getLogger(__name__)


async def record_rides(settings: Mapping[str, Any], snapshot: Mapping[str, Any]) -> dict[str, Any]:
    session = str(snapshot["session"])
    participants = list(snapshot.get("participants") or [])
    # a class shard (docs/big-classes.md) ranks its riders among the whole class
    ranks = dict(snapshot["class_ranks"]) if "class_ranks" in snapshot else class_ranks(participants)
    riders = int(snapshot.get("class_riders", len(ranks)))
    by_name = {str(p["participant"]): p for p in participants}
    series = dict(snapshot.get("series") or {})
    client = client_for(str(settings["redis_url"]))
    prefix = str(settings.get("prefix", "pl"))
    rides, records = RideStore(client, prefix=prefix), RecordStore(client, prefix=prefix)
    done: dict[str, Any] = {"rides": 0, "revised": 0, "records": 0, "events": []}
    try:
        for rider, rider_series in series.items():
            summary = by_name.get(rider)
            if summary is None:
                continue
            ride = build_ride(session, summary, rider_series, rank=ranks.get(rider), riders=riders)
            if ride is None:
                continue
            revision = await rides.put(ride)
            if not revision:
                continue
            done["rides"] += 1
            ride_event = {"type": "ride.revised" if revision > 1 else "ride.recorded",
                          "ride": {**ride.summary, "revision": revision}}
            done["revised"] += revision > 1
            done["events"].append(ride_event)
            for record in await records.update(rider, ride.id, ride.summary["bests"]):
                done["records"] += 1
                done["events"].append({"type": "record.set", "rider": rider, "ride": ride.id, **record.as_dict()})
        result = _class_result(snapshot, participants, ranks, revised=bool(done["revised"]))
        if result is not None and (done["events"] or snapshot.get("class_completed")):
            done["events"].append({"type": "class.result", **result})
        if done["events"]:
            await results_stream.publish(
                client, prefix, (_entry(session, e) for e in done["events"]),
                retention_s=float(settings.get("results_stream_retention_s", results_stream.DEFAULT_RETENTION_S)),
                maxlen=int(settings.get("results_stream_maxlen", results_stream.DEFAULT_MAXLEN)))
    finally:
        await client.aclose()
    log.info("class %s: %d ride(s) written (%d revised), %d record(s) set", session, done["rides"],
             done["revised"], done["records"])
    return done


def _class_result(snapshot: Mapping[str, Any], participants: list[Mapping[str, Any]], ranks: Mapping[str, int], *,
                  revised: bool) -> dict[str, Any] | None:
    """The class's result (None: not this call's to publish). A class shard
    (``actors/class_shard.py``) hands the whole class's riders as ``class_result`` when it
    is the one to publish it, None otherwise; a one-actor class ranks its own."""
    session = str(snapshot["session"])
    if "class_result" in snapshot:
        riders = snapshot["class_result"]
        return None if riders is None else {"session": session, "revised": revised, "riders": list(riders)}
    return class_result(session, participants, ranks, revised=revised)


def class_result(session: str, participants: list[Mapping[str, Any]], ranks: Mapping[str, int], *,
                 revised: bool) -> dict[str, Any]:
    """The class's result: its riders by rank with their totals (``revised``: late data)."""
    by_name = {str(p["participant"]): p for p in participants}
    riders = [{"rider": rider, "rank": rank, "energy_kj": by_name[rider].get("energy_kj"),
               "samples": by_name[rider].get("samples"), "distance_m": by_name[rider].get("distance_m"),
               "power_avg": by_name[rider].get("power_avg"), "hr_avg": by_name[rider].get("hr_avg")}
              for rider, rank in sorted(ranks.items(), key=lambda item: item[1]) if rider in by_name]
    return {"session": session, "revised": revised, "riders": riders}


def _entry(session: str, event: Mapping[str, Any]) -> dict[str, str]:
    kind = str(event["type"])
    data = {k: v for k, v in event.items() if k != "type"}
    if kind.startswith("ride."):
        data = dict(event["ride"])
        return results_stream.entry(kind, session, data, rider=str(data["rider"]))
    return results_stream.entry(kind, session, data, rider=str(event.get("rider", "")))
