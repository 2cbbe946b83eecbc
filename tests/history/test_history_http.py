"""Ride history over HTTP against the real edge (Ray, Redis, uvicorn): a swarm rides a class,
every rider's ride is exported as FIT (decoded by Garmin's SDK and by fitdecode), TCX
(validated against Garmin's XSD) and JSON, and compared with what the swarm sent, second by
second; late data revises a ride; a rider sees only their own rides."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import msgpack
import pytest
import redis
from lxml import etree
from websockets.asyncio.client import connect

from history import results_stream
from sims.swarm import Swarm, SwarmConfig
from tests.history.fit_decoders import from_fitdecode, from_garmin

pytestmark = pytest.mark.integration
HTTP = httpx.Client(timeout=60)  # (the edge answers slowly at load ~50; the default is 5 s)
XSD = Path(__file__).with_name("TrainingCenterDatabasev2.xsd")
TCX = "{http://www.garmin.com/xmlschemas/TrainingCenterDatabase/v2}"
AX = "{http://www.garmin.com/xmlschemas/ActivityExtension/v2}"
# sent value index (hr, power, cadence, speed, distance) -> (name, resolution of a FIT record)
FIELDS = {0: ("hr_bpm", 1.0), 1: ("power_w", 1.0), 2: ("cadence_rpm", 1.0), 3: ("speed_mps", 0.001), 4: ("distance_m", 0.01)}


def eventually(probe: Callable[[], Any], what: str, timeout_s: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"{what} never happened; last {last!r}")


def expected_seconds(sent: list[tuple[float, list[float | None]]]) -> dict[int, dict[str, float]]:
    """What each second should hold: the newest sample's value per field, at FIT resolution."""
    out: dict[int, dict[str, float]] = {}
    for ts, values in sorted(sent, key=lambda s: s[0]):
        second = out.setdefault(math.floor(ts), {})
        for i, (name, step) in FIELDS.items():
            if i < len(values) and values[i] is not None:
                second[name] = round(values[i] / step) * step  # type: ignore[operator]
    return out


def close(a: dict[int, dict[str, float]], b: dict[int, dict[str, float]]) -> None:
    assert sorted(a) == sorted(b)
    for second in a:
        assert a[second].keys() == b[second].keys(), second
        for name, value in a[second].items():
            assert b[second][name] == pytest.approx(value, abs=1e-6), (second, name)


def from_tcx(tcx: bytes) -> dict[int, dict[str, float]]:
    schema = etree.XMLSchema(etree.parse(str(XSD)))
    doc = etree.fromstring(tcx)
    assert schema.validate(doc), schema.error_log
    out = {}
    for point in doc.iter(f"{TCX}Trackpoint"):
        second = int(dt.datetime.fromisoformat(point.findtext(f"{TCX}Time").replace("Z", "+00:00")).timestamp())
        values = {}
        for path, name in ((f"{TCX}HeartRateBpm/{TCX}Value", "hr_bpm"), (f"{TCX}Cadence", "cadence_rpm"),
                           (f"{TCX}DistanceMeters", "distance_m"), (f".//{AX}Watts", "power_w"), (f".//{AX}Speed", "speed_mps")):
            text = point.findtext(path)
            if text is not None:
                values[name] = float(text)
        out[second] = values
    return out


def from_json(doc: dict[str, Any]) -> dict[int, dict[str, float]]:
    series = doc["series"]
    out = {}
    for i, t in enumerate(series["t"]):
        out[int(series["start_ts"]) + t] = {name: series[name][i] for name, _ in FIELDS.values() if series[name][i] is not None}
    return out


@pytest.mark.timeout(300)
def test_a_swarms_rides_export_sample_for_sample(edge: Any, tokens: Any, unique_id: str, run: Any) -> None:
    swarm = Swarm(SwarmConfig(base_url=edge.url, sessions=1, devices=3, seconds=12, rate_hz=1.0, keep_sent=True,
                              session_prefix=f"hist-{unique_id}", drain_timeout_s=60))
    result = run(swarm.run(), timeout=240)
    assert result["lost"] == 0 and result["sent"] > 0, result
    ops = tokens.headers()
    sent = swarm.sent_samples()
    assert len(sent) == 3
    for (session, rider), samples in sent.items():
        listing = eventually(lambda rider=rider: HTTP.get(f"{edge.url}/v1/riders/{rider}/rides", headers=ops).json()["rides"],
                             f"{rider}'s ride")
        assert [r["id"] for r in listing] == [session] and listing[0]["revision"] >= 1
        want = expected_seconds(samples)
        assert len(want) >= 10  # (12 s at 1 Hz)
        base = f"{edge.url}/v1/riders/{rider}/rides/{session}"
        fit = HTTP.get(f"{base}.fit", headers=ops)
        assert fit.status_code == 200 and fit.headers["content-type"] == "application/vnd.ant.fit"
        close(want, from_garmin(fit.content))
        close(want, from_fitdecode(fit.content))
        tcx = HTTP.get(f"{base}.tcx", headers=ops)
        assert tcx.status_code == 200
        close(want, from_tcx(tcx.content))
        close(want, from_json(HTTP.get(f"{base}.json", headers=ops).json()))
        summary = HTTP.get(base, headers=ops).json()
        assert summary["rider"] == rider and summary["riders"] == 3 and 1 <= summary["rank"] <= 3
        assert summary["recorded_s"] == len(want) and summary["bests"]["power_5s_w"] > 0
        assert summary["records"]["class_output_kj"] == summary["bests"]["class_output_kj"]  # the first ride: all PRs
        profile = HTTP.get(f"{edge.url}/v1/riders/{rider}/profile", headers=ops).json()
        assert profile["records"]["power_5s_w"]["ride"] == session

    (session, rider), (_, other) = list(sent)[:2]
    mine = tokens.headers("participant", participant=rider)
    assert HTTP.get(f"{edge.url}/v1/riders/{rider}/rides/{session}", headers=mine).status_code == 200
    theirs = HTTP.get(f"{edge.url}/v1/riders/{other}/rides", headers=mine)
    assert theirs.status_code == 403, theirs.text
    assert HTTP.get(f"{edge.url}/v1/riders/{other}/rides/{session}.fit", headers=mine).status_code == 403


def test_bad_ride_requests_get_clear_errors(edge: Any, tokens: Any, unique_id: str) -> None:
    ops = tokens.headers()
    missing = HTTP.get(f"{edge.url}/v1/riders/r{unique_id}/rides/nope.fit", headers=ops)
    assert missing.status_code == 404 and missing.json()["error"] == "unknown_ride"
    cursor = HTTP.get(f"{edge.url}/v1/riders/r{unique_id}/rides?before=xyz", headers=ops)
    assert cursor.status_code == 400 and cursor.json()["error"] == "bad_cursor"
    assert HTTP.get(f"{edge.url}/v1/riders/r{unique_id}/rides?limit=0", headers=ops).status_code == 422
    assert HTTP.get(f"{edge.url}/v1/riders/r{unique_id}/rides").status_code == 401
    empty = HTTP.get(f"{edge.url}/v1/riders/r{unique_id}/rides", headers=ops).json()
    assert empty == {"rider": f"r{unique_id}", "rides": [], "next": None}


@pytest.mark.timeout(180)
def test_late_data_revises_the_ride(edge: Any, tokens: Any, unique_id: str, run: Any) -> None:
    sid, ann = f"late-{unique_id}", f"ann-{unique_id}"
    ops = tokens.headers()
    HTTP.post(f"{edge.url}/v1/sessions", json={"id": sid}, headers=ops).raise_for_status()
    HTTP.post(f"{edge.url}/v1/sessions/{sid}/participants", json={"participant": ann}, headers=ops).raise_for_status()
    token = tokens("device", device=f"{ann}-bike", participant=ann, sessions=[sid])
    start = float(int(time.time()) - 600)

    async def send(samples: list[list[float]]) -> None:
        async with connect(f"{edge.ws_url}/v1/devices", additional_headers={"Authorization": f"Bearer {token}"}) as ws:
            await ws.send(msgpack.packb({"t": "hello", "v": 1, "devices": [
                {"device": f"{ann}-bike", "participant": ann, "session": sid}]}))
            await ws.send(msgpack.packb({"t": "samples", "device": f"{ann}-bike", "samples": samples}))
            top = samples[-1][0]
            while True:
                frame = msgpack.unpackb(await asyncio.wait_for(ws.recv(), 30))
                if frame.get("t") == "ack" and (frame.get("acks") or {}).get(f"{ann}-bike", 0) >= top:
                    return

    for phase in ("live",):
        HTTP.post(f"{edge.url}/v1/sessions/{sid}/phase", json={"phase": phase}, headers=ops).raise_for_status()
    run(send([[seq, start + seq, 120.0, 200.0, 90.0, 8.0, 8.0 * seq] for seq in range(1, 21)]))
    HTTP.post(f"{edge.url}/v1/sessions/{sid}/phase", json={"phase": "ended"}, headers=ops).raise_for_status()
    url = f"{edge.url}/v1/riders/{ann}/rides/{sid}"
    first = eventually(lambda: (r := HTTP.get(url, headers=ops)).status_code == 200 and r.json(), "the ride")
    assert first["revision"] == 1 and first["recorded_s"] == 20
    assert len(from_fitdecode(HTTP.get(f"{url}.fit", headers=ops).content)) == 20  # (kept for revision 1)
    run(send([[seq, start + seq, 150.0, 400.0, 95.0, 9.0, 8.0 * seq] for seq in range(21, 31)]))  # a late sync
    second = eventually(lambda: (r := HTTP.get(url, headers=ops).json())["revision"] >= 2
                        and r["recorded_s"] == 30 and r, "the revision with every late second")
    assert second["recorded_s"] == 30 and second["bests"]["power_5s_w"] == 400.0
    fit = HTTP.get(f"{url}.fit", headers=ops)  # the kept revision-1 file is not served again
    assert len(from_garmin(fit.content)) == 30 and int(fit.headers["x-ride-revision"]) >= second["revision"]
    series = HTTP.get(f"{url}/series", headers=ops).json()
    assert series["power_w"][-1] == 400.0 and series["t"] == list(range(30))
    stream = results_stream.stream_key(edge.settings.prefix)
    client = redis.Redis.from_url(edge.settings.redis_url)
    try:
        mine = [f for _, f in client.xrange(stream) if f[b"session"].decode() == sid]
    finally:
        client.close()
    kinds = [f[b"type"].decode() for f in mine]
    assert kinds.count("ride.recorded") == 1 and kinds.count("ride.revised") >= 1 and "class.result" in kinds
    assert "record.set" in kinds and all(f[b"v"] == b"1" for f in mine)
    revised = json.loads(next(f for f in mine if f[b"type"] == b"ride.revised")[b"data"])
    assert revised["rider"] == ann and revised["revision"] >= 2


@pytest.mark.timeout(180)
def test_the_rider_gets_an_end_of_class_summary_on_its_connection(edge: Any, tokens: Any, unique_id: str,
                                                                  run: Any) -> None:
    """Protocol v1.1: after the class ends, the rider's board frames carry its ``summary``
    (final rank, totals, zones, best efforts) and, once its ride is recorded, the personal
    records it set; nobody else's summary reaches it."""
    sid, ann, bob = f"sum-{unique_id}", f"ann-{unique_id}", f"bob-{unique_id}"
    ops = tokens.headers()
    HTTP.post(f"{edge.url}/v1/sessions", json={"id": sid}, headers=ops).raise_for_status()
    for who in (ann, bob):
        HTTP.post(f"{edge.url}/v1/sessions/{sid}/participants", json={"participant": who}, headers=ops).raise_for_status()
    HTTP.post(f"{edge.url}/v1/sessions/{sid}/phase", json={"phase": "live"}, headers=ops).raise_for_status()
    start = float(int(time.time()) - 100)

    async def ride() -> dict[str, Any]:
        frames = {}
        for who, power in ((bob, 300.0), (ann, 200.0)):
            token = tokens("device", device=f"{who}-bike", participant=who, sessions=[sid])
            ws = await connect(f"{edge.ws_url}/v1/devices", additional_headers={"Authorization": f"Bearer {token}"})
            await ws.send(msgpack.packb({"t": "hello", "v": 1.1, "board": {"rate": 2},
                                         "devices": [{"device": f"{who}-bike", "participant": who, "session": sid}]}))
            await ws.send(msgpack.packb({"t": "samples", "device": f"{who}-bike", "samples": [
                [seq, start + seq, 140.0, power, 90.0, 8.0, 8.0 * seq] for seq in range(1, 11)]}))
            frames[who] = ws
        ws = frames[ann]
        try:
            while True:  # (acked: the samples are in)
                frame = msgpack.unpackb(await asyncio.wait_for(ws.recv(), 30))
                if (frame.get("acks") or {}).get(f"{ann}-bike") == 10:
                    break
            answer = HTTP.post(f"{edge.url}/v1/sessions/{sid}/phase", json={"phase": "ended"}, headers=ops)
            answer.raise_for_status()
            while True:
                frame = msgpack.unpackb(await asyncio.wait_for(ws.recv(), 30))
                if frame.get("t") == "board" and (frame.get("summary") or {}).get("records") is not None:
                    return frame  # type: ignore[no-any-return]
        finally:
            for socket in frames.values():
                await socket.close()

    frame = run(ride())
    summary = frame["summary"]
    assert frame["phase"] == "ended" and summary["rank"] == 2 and summary["riders"] == 2
    assert summary["power_avg"] == 200.0 and summary["duration_s"] == 10 and summary["bests"]["power_5s_w"] == 200.0
    assert summary["energy_kj"] == pytest.approx(1.8) and sum(summary["power_zone_s"]) > 0
    assert sorted(summary["records"]) == ["class_output_kj", "power_5s_w"]  # a first ride sets them
    assert "summaries" not in frame and bob not in json.dumps(summary)
