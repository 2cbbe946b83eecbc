"""Rider profiles over HTTP, read by the class when the rider joins, and the metrics they
drive on the board and in the snapshot (real Redis, Ray and uvicorn: ``tests/conftest.py``)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import msgpack
import pytest
from websockets.asyncio.client import connect

pytestmark = pytest.mark.integration

ANN = {"ftp_w": 200, "hr_max_bpm": 190, "hr_rest_bpm": 50, "weight_kg": 70, "birth_year": 1990, "sex": "female"}


def put(edge: Any, rider: str, body: Any, headers: dict[str, str]) -> httpx.Response:
    return httpx.put(f"{edge.url}/v1/riders/{rider}/profile", json=body, headers=headers, timeout=30)


def test_a_rider_sets_and_reads_its_own_profile(edge: Any, tokens: Any, unique_id: str) -> None:
    rider = f"ann-{unique_id}"
    mine = tokens.headers("participant", participant=rider)
    fresh = httpx.get(f"{edge.url}/v1/riders/{rider}/profile", headers=mine, timeout=30).json()
    assert fresh["set"]["ftp_w"] is None and "ftp_w" in fresh["effective"]["estimated"]  # defaults, flagged
    assert fresh["effective"]["weight_kg"] == 75.0
    answer = put(edge, rider, {"ftp_w": 240, "weight_kg": 68.5}, mine)
    assert answer.status_code == 200, answer.text
    again = httpx.get(f"{edge.url}/v1/riders/{rider}/profile", headers=mine, timeout=30).json()
    assert again["set"]["ftp_w"] == 240 and again["set"]["weight_kg"] == 68.5 and again["set"]["units"] == "metric"
    assert again["effective"]["ftp_w"] == 240 and set(again["effective"]["estimated"]) == {
        "age", "hr_max_bpm", "hr_rest_bpm", "sex"}
    assert put(edge, rider, {"units": "imperial"}, mine).json()["set"]["ftp_w"] is None  # a PUT replaces


def test_only_the_rider_or_an_operator_may_touch_a_profile(edge: Any, tokens: Any, unique_id: str) -> None:
    rider = f"bea-{unique_id}"
    other = tokens.headers("participant", participant=f"eve-{unique_id}")
    assert put(edge, rider, {"ftp_w": 250}, other).status_code == 403
    assert httpx.get(f"{edge.url}/v1/riders/{rider}/profile", headers=other, timeout=30).status_code == 403
    device = tokens.headers("device", device="d", participant=rider, sessions=["s"])
    assert put(edge, rider, {"ftp_w": 250}, device).status_code == 403
    assert put(edge, rider, {"ftp_w": 250}, {}).status_code == 401
    assert put(edge, rider, {"ftp_w": 250}, tokens.headers()).status_code == 200  # an operator


@pytest.mark.parametrize(("body", "where"), [
    ({"ftp_w": 5}, "ftp_w"),
    ({"ftp_w": "a lot"}, "ftp_w"),
    ({"hr_max_bpm": 110, "hr_rest_bpm": 115}, "hr_rest_bpm (115) must be below hr_max_bpm (110)"),
    ({"birth_year": 3000}, "birth_year must be between 1900"),
    ({"sex": "robot"}, "sex"),
    ({"vo2max": 55}, "vo2max"),
    ([1, 2], "body"),
])
def test_bad_profiles_are_422_with_a_message_never_500(edge: Any, tokens: Any, unique_id: str, body: Any,
                                                       where: str) -> None:
    answer = put(edge, f"cal-{unique_id}", body, tokens.headers())
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"] == "invalid_request" and where in answer.text


def test_a_bad_rider_id_is_422(edge: Any, tokens: Any) -> None:
    assert put(edge, "a%20b", {"ftp_w": 200}, tokens.headers()).status_code == 422


async def _boards_until(ws: Any, done: Any, seconds: float = 30.0) -> dict[str, Any]:
    """Read frames until a board satisfies ``done`` (or fail after ``seconds``)."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            raw = await asyncio.wait_for(ws.recv(), left)
        except TimeoutError:
            break
        frame = json.loads(raw) if isinstance(raw, str) else msgpack.unpackb(raw)
        if frame.get("t") == "board" and done(frame):
            return frame  # type: ignore[no-any-return]
    raise AssertionError("no such board arrived")


def test_the_class_reads_the_profile_at_join_and_the_rider_sees_zone_np_and_kcal(
        edge: Any, tokens: Any, unique_id: str, run: Any) -> None:
    """Ann (FTP 200, HR 50-190) rides 40 s at 200 W / 150 bpm: power zone 4 (100 % FTP),
    heart-rate zone 3 ((150 - 50) / 140 = 71 % of reserve), NP 200, 8 kJ of work = 7.97 kcal."""
    sid, ann, bob = f"prof-{unique_id}", f"ann-{unique_id}", f"bob-{unique_id}"
    put(edge, ann, ANN, tokens.headers()).raise_for_status()
    httpx.post(f"{edge.url}/v1/sessions", json={"id": sid}, headers=tokens.headers(), timeout=30).raise_for_status()
    for who in (ann, bob):
        httpx.post(f"{edge.url}/v1/sessions/{sid}/participants", json={"participant": who},
                   headers=tokens.headers(), timeout=30).raise_for_status()
    token = tokens("device", device=f"{ann}-bike", participant=ann, sessions=[sid])
    bob_sees = tokens.headers("participant", participant=bob, sessions=[sid])

    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        async with connect(f"{edge.ws_url}/v1/devices", additional_headers={"Authorization": f"Bearer {token}"}) as ws:
            await ws.send(msgpack.packb({"t": "hello", "v": 1.1, "board": {"rate": 2},
                                         "devices": [{"device": f"{ann}-bike", "participant": ann, "session": sid}]}))
            start = time.time() - 100
            samples = [[seq, start + seq, 150.0, 200.0, 90.0] for seq in range(1, 42)]
            await ws.send(msgpack.packb({"t": "samples", "device": f"{ann}-bike", "samples": samples}))
            me = await _boards_until(ws, lambda f: (f.get("me") or [0] * 11)[5] == 41)
        async with connect(f"{edge.ws_url}/v1/sessions/{sid}/board?format=json&view=all",
                           additional_headers=bob_sees) as board:
            shared = await _boards_until(board, lambda f: f["n"] == 2)
        return me, shared

    me, shared = run(scenario())
    assert me["me"][7:11] == [4, 3, 200, 8]  # power_zone, hr_zone, np_w, kcal (whole numbers; targets and replay after)
    assert len(msgpack.packb(me)) < 300
    cols = shared["cols"]
    ann_row = dict(zip(cols, next(r for r in shared["rows"] if r[0] == ann), strict=True))
    assert ann_row["np_w"] == 200.0 and ann_row["hr_zone"] is None and ann_row["kcal"] is None  # bob sees output only

    snap = httpx.get(f"{edge.url}/v1/sessions/{sid}", headers=tokens.headers("participant", participant=ann, sessions=[sid]), timeout=30).json()
    entry = next(p for p in snap["participants"] if p["participant"] == ann)
    assert entry["profile"]["loaded"] is True and entry["profile"]["effective"]["ftp_w"] == 200
    assert entry["profile"]["effective"]["estimated"] == []
    metrics = entry["metrics"]
    assert metrics["np_w"] == pytest.approx(200.0) and metrics["if"] == pytest.approx(1.0)
    assert metrics["power_zone_s"] == [0, 0, 0, 40, 0, 0, 0] and metrics["hr_zone_s"] == [0, 0, 40.0, 0, 0]
    assert metrics["kcal"] == pytest.approx(8.0 / (4.184 * 0.24)) and metrics["kcal_method"] == "work"


def test_a_rider_who_only_sends_samples_gets_its_profile_too(edge: Any, tokens: Any, unique_id: str, run: Any) -> None:
    """No HTTP join: the device's first samples put the rider in class, and the actor reads
    the profile in the background (estimates until then)."""
    sid, carl = f"prof2-{unique_id}", f"carl-{unique_id}"
    put(edge, carl, {"ftp_w": 300, "weight_kg": 80}, tokens.headers()).raise_for_status()
    httpx.post(f"{edge.url}/v1/sessions", json={"id": sid}, headers=tokens.headers(), timeout=30).raise_for_status()
    token = tokens("device", device=f"{carl}-pm", participant=carl, sessions=[sid])

    async def send() -> None:
        async with connect(f"{edge.ws_url}/v1/devices", additional_headers={"Authorization": f"Bearer {token}"}) as ws:
            await ws.send(msgpack.packb({"t": "hello", "v": 1, "devices": [
                {"device": f"{carl}-pm", "participant": carl, "session": sid}]}))
            now = time.time()
            await ws.send(msgpack.packb({"t": "samples", "device": f"{carl}-pm",
                                         "samples": [[1, now - 1, None, 150.0], [2, now, None, 150.0]]}))
            while True:
                frame = msgpack.unpackb(await asyncio.wait_for(ws.recv(), 30))
                if frame["t"] == "ack" and frame["acks"].get(f"{carl}-pm") == 2:
                    return

    run(send())
    deadline = time.monotonic() + 30
    while True:
        snap = httpx.get(f"{edge.url}/v1/sessions/{sid}", headers=tokens.headers(), timeout=30).json()
        entry = next(p for p in snap["participants"] if p["participant"] == carl)
        if entry["profile"]["loaded"] or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert entry["profile"]["loaded"] is True and entry["profile"]["effective"]["ftp_w"] == 300
    assert entry["profile"]["set"]["weight_kg"] == 80


def test_a_profile_changed_mid_class_reaches_the_class(ray_instance: Any, redis_server: Any, unique_id: str,
                                                       run: Any) -> None:
    """A real session actor re-reads its riders' profiles every ``profile_refresh_s``."""
    import ray

    from actors.profile import Profile, ProfileStore
    from actors.session_actor import SessionActor
    from storage.redis_url import connect

    prefix = f"prof{unique_id}"
    settings = {"redis_url": redis_server.url, "prefix": prefix, "profile_refresh_s": 0.5}

    async def put(ftp: float) -> None:
        client = connect(redis_server.url)
        await ProfileStore(client, prefix=prefix).put("dan", Profile(ftp_w=ftp))
        await client.aclose()

    def ftp_in_class() -> float:
        ray.get(actor.tick.remote(batches=[], want_durable=[], known_version=-1), timeout=60)  # (ticks drive it)
        snap = ray.get(actor.snapshot.remote(), timeout=60)
        return float(snap["participants"][0]["profile"]["effective"]["ftp_w"])

    run(put(210.0))
    actor = SessionActor.options(name=f"refresh-{unique_id}", resources={"session_slot": 1}).remote(unique_id, settings)
    try:
        ray.get(actor.join.remote(participant="dan"), timeout=60)
        assert ftp_in_class() == 210.0  # read at the join
        run(put(265.0))
        deadline = time.monotonic() + 30
        while ftp_in_class() != 265.0 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert ftp_in_class() == 265.0
    finally:
        ray.kill(actor)


def test_display_names_reach_the_page_for_riders_on_the_board_only(edge: Any, tokens: Any, unique_id: str, run: Any) -> None:
    """A rider's ``display_name`` (profile) is what the class page shows: ``GET .../names``
    answers it for riders on the class's live board, to whoever may watch that board."""
    sid, ann, bob = f"names-{unique_id}", f"ann-{unique_id}", f"bob-{unique_id}"
    assert put(edge, ann, {"display_name": "Ann Ö."}, tokens.headers()).json()["set"]["display_name"] == "Ann Ö."
    assert put(edge, bob, {"display_name": "\u0007bell"}, tokens.headers()).status_code == 422
    assert put(edge, bob, {"display_name": "x" * 41}, tokens.headers()).status_code == 422
    stranger = f"eve-{unique_id}"
    put(edge, stranger, {"display_name": "Eve"}, tokens.headers()).raise_for_status()  # not in the class
    httpx.post(f"{edge.url}/v1/sessions", json={"id": sid}, headers=tokens.headers(), timeout=30).raise_for_status()
    for who in (ann, bob):
        httpx.post(f"{edge.url}/v1/sessions/{sid}/participants", json={"participant": who},
                   headers=tokens.headers(), timeout=30).raise_for_status()
    token = tokens("device", device=f"{ann}-bike", participant=ann, sessions=[sid])

    async def ride() -> None:  # a board at the edge: Ann rides a little
        async with connect(f"{edge.ws_url}/v1/devices", additional_headers={"Authorization": f"Bearer {token}"}) as ws:
            await ws.send(msgpack.packb({"t": "hello", "v": 1.1, "board": {"rate": 2},
                                         "devices": [{"device": f"{ann}-bike", "participant": ann, "session": sid}]}))
            await ws.send(msgpack.packb({"t": "samples", "device": f"{ann}-bike", "samples": [[1, time.time(), None, 150.0]]}))
            await _boards_until(ws, lambda f: f.get("n") == 2)

    run(ride())
    viewer = tokens.headers("viewer", sessions=[sid])
    url = f"{edge.url}/v1/sessions/{sid}/names"
    reply = httpx.get(url, params={"riders": f"{ann},{bob},{stranger}"}, headers=viewer, timeout=30)
    assert reply.status_code == 200 and reply.json() == {"names": {ann: "Ann Ö."}}  # bob has none; eve is not in it
    other = tokens.headers("viewer", sessions=[f"other-{unique_id}"])
    assert httpx.get(url, params={"riders": ann}, headers=other, timeout=30).status_code == 403
    too_many = ",".join(f"r{i}" for i in range(201))
    assert httpx.get(url, params={"riders": too_many}, headers=viewer, timeout=30).status_code == 422
