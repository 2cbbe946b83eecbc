"""A ride as the files the ecosystem reads: FIT (Garmin's binary activity format), TCX
(Garmin's TrainingCenterDatabase v2 XML) and JSON.

* **FIT** is encoded by Garmin's own FIT SDK (``garmin_fit_sdk.Encoder``; ~0.1 s for a
  one-hour ride, in a thread of the edge, cached per revision): a ``file_id`` (activity), a
  timer start ``event``, one ``record`` per recorded second (timestamp, power, heart rate,
  cadence, speed, distance: whatever that second has; a field a second lacks is left out of
  its record), a timer stop ``event``, one ``lap`` and one ``session`` (sport cycling,
  sub-sport indoor cycling, totals) and the ``activity``. What Strava, Garmin Connect and
  TrainingPeaks import.
* **TCX** follows ``TrainingCenterDatabasev2.xsd``: one ``Activity Sport="Biking"``, one
  ``Lap`` with the totals, one ``Trackpoint`` per recorded second; power goes where Garmin
  puts it, in the ``ActivityExtension/v2`` ``TPX/Watts`` extension (and the lap's average in
  ``LX/AvgWatts``), speed in ``TPX/Speed``.
* **JSON** is the ride's summary and series (``Ride.series_json``) in one document.

Every value is at the recording's resolution (``actors.recording``): what a rider's
devices sent, rounded as a FIT record rounds it.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
from garmin_fit_sdk import Encoder, Profile
from lxml import etree

from history.rides import Ride

TCX_NS = "http://www.garmin.com/xmlschemas/TrainingCenterDatabase/v2"
AX_NS = "http://www.garmin.com/xmlschemas/ActivityExtension/v2"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"
TCX_SCHEMA_LOCATION = f"{TCX_NS} http://www.garmin.com/xmlschemas/TrainingCenterDatabasev2.xsd"
MEDIA_TYPES = {"fit": "application/vnd.ant.fit", "tcx": "application/vnd.garmin.tcx+xml", "json": "application/json"}


def _seconds(ride: Ride) -> list[tuple[int, dict[str, float | None]]]:
    """(epoch second, values) per recorded second of the ride, None where absent."""
    series = ride.series
    columns = {name: series.values[name].tolist() for name in series.values}
    out = []
    for i, t in enumerate(series.t.tolist()):
        out.append((series.t0 + t, {k: (None if np.isnan(v[i]) else v[i]) for k, v in columns.items()}))
    return out


# -- FIT ---------------------------------------------------------------------------------------
# The recording's columns (actors.recording.FIELDS) -> the FIT record fields they fill
RECORD_FIELDS = {"power_w": "power", "hr_bpm": "heart_rate", "cadence_rpm": "cadence", "speed_mps": "speed",
                 "distance_m": "distance"}
_WHOLE = frozenset({"power", "heart_rate", "cadence"})  # FIT integers without a scale: whole numbers
MESG_NUM = Profile["mesg_num"]


def _when(epoch_s: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(int(epoch_s), dt.UTC)


def _fit_value(name: str, value: float) -> float | int:
    return int(round(value)) if name in _WHOLE else value


def to_fit(ride: Ride) -> bytes:
    s = ride.summary
    start, end, elapsed = float(s["start_ts"]), float(s["end_ts"]), float(s["elapsed_s"])
    out = Encoder()
    out.on_mesg(MESG_NUM["FILE_ID"], {"type": "activity", "manufacturer": "development", "product": 0,
                                      "serial_number": 0x50_4C, "time_created": _when(start)})  # ("PL")
    out.on_mesg(MESG_NUM["EVENT"], {"timestamp": _when(start), "event": "timer", "event_type": "start"})
    for second, values in _seconds(ride):
        record: dict[str, Any] = {"timestamp": _when(second)}
        for column, value in values.items():
            if value is not None:
                name = RECORD_FIELDS[column]
                record[name] = _fit_value(name, value)
        out.on_mesg(MESG_NUM["RECORD"], record)
    out.on_mesg(MESG_NUM["EVENT"], {"timestamp": _when(end), "event": "timer", "event_type": "stop_all"})
    common = {"timestamp": _when(end), "start_time": _when(start), "total_elapsed_time": elapsed,
              "total_timer_time": elapsed, "event_type": "stop", "sport": "cycling", "sub_sport": "indoor_cycling",
              "message_index": 0, **_totals(s["totals"])}
    out.on_mesg(MESG_NUM["LAP"], {**common, "event": "lap"})
    out.on_mesg(MESG_NUM["SESSION"], {**common, "event": "session", "first_lap_index": 0, "num_laps": 1})
    out.on_mesg(MESG_NUM["ACTIVITY"], {"timestamp": _when(end), "total_timer_time": elapsed, "num_sessions": 1,
                                       "type": "manual", "event": "activity", "event_type": "stop",
                                       "local_timestamp": _when(end)})
    return bytes(out.close())


def _totals(totals: dict[str, Any]) -> dict[str, float | int]:
    """A lap's and a session's totals from a ride's (what is not known is left out)."""
    energy = totals.get("energy_kj")
    values = {"total_distance": totals.get("distance_m"), "total_calories": totals.get("kcal"),
              "total_work": None if energy is None else energy * 1000, "avg_power": totals.get("avg_power_w"),
              "max_power": totals.get("max_power_w"), "avg_heart_rate": totals.get("avg_hr_bpm"),
              "max_heart_rate": totals.get("max_hr_bpm"), "avg_cadence": totals.get("avg_cadence_rpm"),
              "normalized_power": totals.get("np_w")}
    whole = {"total_calories", "total_work", "avg_power", "max_power", "avg_heart_rate", "max_heart_rate",
             "avg_cadence", "normalized_power"}  # FIT integers without a scale
    return {k: (int(round(v)) if k in whole else float(v)) for k, v in values.items() if v is not None}


# -- TCX ---------------------------------------------------------------------------------------
def _iso(epoch_s: float) -> str:
    return dt.datetime.fromtimestamp(epoch_s, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _sub(parent: etree._Element, tag: str, text: str | None = None, ns: str = TCX_NS) -> etree._Element:
    element = etree.SubElement(parent, f"{{{ns}}}{tag}")
    if text is not None:
        element.text = text
    return element


def _bpm(parent: etree._Element, tag: str, value: float) -> None:
    _sub(_sub(parent, tag), "Value", str(int(round(value))))


def to_tcx(ride: Ride) -> bytes:
    s = ride.summary
    totals = s["totals"]
    root = etree.Element(f"{{{TCX_NS}}}TrainingCenterDatabase", nsmap={None: TCX_NS, "ns3": AX_NS, "xsi": XSI_NS})
    root.set(f"{{{XSI_NS}}}schemaLocation", TCX_SCHEMA_LOCATION)
    activity = _sub(_sub(root, "Activities"), "Activity")
    activity.set("Sport", "Biking")
    _sub(activity, "Id", _iso(s["start_ts"]))
    lap = _sub(activity, "Lap")
    lap.set("StartTime", _iso(s["start_ts"]))
    _sub(lap, "TotalTimeSeconds", f"{float(s['elapsed_s']):.1f}")
    _sub(lap, "DistanceMeters", f"{float(totals.get('distance_m') or 0.0):.2f}")
    if totals.get("max_speed_mps") is not None:
        _sub(lap, "MaximumSpeed", f"{totals['max_speed_mps']:.3f}")
    _sub(lap, "Calories", str(min(65535, int(round(totals.get("kcal") or 0)))))
    if totals.get("avg_hr_bpm") is not None:
        _bpm(lap, "AverageHeartRateBpm", totals["avg_hr_bpm"])
    if totals.get("max_hr_bpm") is not None:
        _bpm(lap, "MaximumHeartRateBpm", totals["max_hr_bpm"])
    _sub(lap, "Intensity", "Active")
    if totals.get("avg_cadence_rpm") is not None:
        _sub(lap, "Cadence", str(min(254, int(round(totals["avg_cadence_rpm"])))))
    _sub(lap, "TriggerMethod", "Manual")
    track = _sub(lap, "Track")
    for second, values in _seconds(ride):
        point = _sub(track, "Trackpoint")
        _sub(point, "Time", _iso(second))
        if values["distance_m"] is not None:
            _sub(point, "DistanceMeters", f"{values['distance_m']:.2f}")
        if values["hr_bpm"] is not None:
            _bpm(point, "HeartRateBpm", values["hr_bpm"])
        if values["cadence_rpm"] is not None:
            _sub(point, "Cadence", str(min(254, int(values["cadence_rpm"]))))
        if values["power_w"] is not None or values["speed_mps"] is not None:
            tpx = _sub(_sub(point, "Extensions"), "TPX", ns=AX_NS)
            if values["speed_mps"] is not None:
                _sub(tpx, "Speed", f"{values['speed_mps']:.3f}", ns=AX_NS)
            if values["power_w"] is not None:
                _sub(tpx, "Watts", str(int(values["power_w"])), ns=AX_NS)
    if totals.get("avg_power_w") is not None:
        lx = _sub(_sub(lap, "Extensions"), "LX", ns=AX_NS)
        _sub(lx, "AvgWatts", str(int(round(totals["avg_power_w"]))), ns=AX_NS)
    creator = _sub(activity, "Creator")
    creator.set(f"{{{XSI_NS}}}type", "Device_t")
    _sub(creator, "Name", "pulseline")
    _sub(creator, "UnitId", "0")
    _sub(creator, "ProductID", "0")
    version = _sub(creator, "Version")
    _sub(version, "VersionMajor", "1")
    _sub(version, "VersionMinor", "0")
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True)  # type: ignore[no-any-return]


# -- JSON --------------------------------------------------------------------------------------
def to_json(ride: Ride) -> dict[str, Any]:
    return {**ride.summary, "series": ride.series_json()}
