"""The class plan through the real edge, Ray and Redis: a scheduled class moves scheduled ->
lobby -> live -> ended by itself (its own clock, nobody connected), survives its actor
being killed mid-plan, its boards carry the plan, bad plans are 422s (issue 16)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from typing import Any

import httpx
import pytest
import redis
from websockets.asyncio.client import connect

from actors.session import Phase, SessionState
from storage.checkpoint import key_base

pytestmark = pytest.mark.integration

SHORT = {"segments": [
    {"kind": "warm-up", "duration_s": 5, "power_zone": [1, 2], "cue": "Easy spin"},
    {"kind": "interval", "duration_s": 5, "ftp_pct": [100, 120], "cadence_rpm": [90, 110], "cue": "Go!"},
    {"kind": "cool-down", "duration_s": 5, "cue": "Breathe"},
]}


def _create(edge: Any, tokens: Any, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{edge.url}/v1/sessions", json=body, headers=tokens.headers(), timeout=60)


def _checkpointed(edge_settings: Any, sid: str) -> SessionState:
    """The class as its last checkpoint in Redis says (read without calling the actor)."""
    client = redis.Redis.from_url(edge_settings.redis_url)
    try:
        data = client.get(f"{key_base(edge_settings.prefix, 'session', sid)}:ckpt")
    finally:
        client.close()
    assert data is not None
    return SessionState.from_checkpoint(data)


@pytest.mark.parametrize("body, says", [
    ({"plan": {"segments": [{"kind": "sprint", "duration_s": 30}]}}, "kind must be one of"),
    ({"plan": {"segments": [{"kind": "interval", "duration_s": 30, "power_zone": 9}]}}, "power_zone"),
    ({"plan": {"segments": [{"kind": "interval", "duration_s": 30, "cadence_rpm": [100, 80]}]}}, "above high"),
    ({"plan": {"segments": []}}, "segments"),
    ({"start_at": 1.0}, "start_at must be a Unix time"),
    ({"start_at": "soon"}, "start_at"),
])
def test_a_bad_plan_or_start_is_a_422_naming_it(edge: Any, tokens: Any, unique_id: str, body: dict[str, Any],
                                                says: str) -> None:
    response = _create(edge, tokens, {"id": f"bad-plan-{unique_id}", **body})
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "invalid_request" and says in response.json()["message"], response.text


def test_a_far_class_is_scheduled_and_booked_for_prescaling(edge: Any, tokens: Any, unique_id: str) -> None:
    sid = f"far-{unique_id}"
    start = time.time() + 3600
    response = _create(edge, tokens, {"id": sid, "start_at": start, "plan": SHORT, "expected_riders": 2500})
    assert response.status_code == 201, response.text
    answer = response.json()
    assert answer["schedule"]["phase"] == "scheduled" and answer["schedule"]["start_at"] == start
    assert answer["prescale"]["slots"] == 3 and answer["prescale"]["requested_from"] == start - 300
    status = httpx.get(f"{edge.url}/v1/cluster/status", headers=tokens.headers(), timeout=60).json()
    assert sid in [c["session_id"] for c in status["prescale"]["classes"]]
    state = httpx.get(f"{edge.url}/v1/sessions/{sid}", headers=tokens.headers(), timeout=60).json()
    assert state["phase"] == "scheduled" and state["meta"]["phase"] == "scheduled"
    assert state["plan"]["starts_in_s"] > 3500 and state["plan"]["next"]["cue"] == "Easy spin"
    # the instructor starts an hour early: the plan starts now; a plan can no longer change
    httpx.post(f"{edge.url}/v1/sessions/{sid}/phase", json={"phase": "live"}, headers=tokens.headers(),
               timeout=60).raise_for_status()
    state = httpx.get(f"{edge.url}/v1/sessions/{sid}", headers=tokens.headers(), timeout=60).json()
    assert state["phase"] == "live" and state["plan"]["segment"] == 0 and state["schedule"]["live_at"] < start - 3000
    again = _create(edge, tokens, {"id": sid, "start_at": start + 60, "plan": SHORT})
    assert again.status_code == 409 and again.json()["error"] == "plan_locked", again.text


def test_a_class_follows_its_plan_by_itself_even_through_a_killed_actor(
        edge: Any, edge_settings: Any, tokens: Any, unique_id: str, run: Any, ray_instance: Any) -> None:
    sid = f"plan-{unique_id}"
    start = time.time() + 6
    response = _create(edge, tokens, {"id": sid, "start_at": start, "plan": SHORT})
    assert response.status_code == 201 and response.json()["schedule"]["phase"] == "lobby", response.text

    async def watch() -> list[dict[str, Any]]:
        boards = []
        async with connect(f"{edge.ws_url}/v1/sessions/{sid}/board?format=json&rate=2",
                           additional_headers=tokens.headers()) as ws:
            while True:
                board = json.loads(await asyncio.wait_for(ws.recv(), 30))
                boards.append(board)
                if (board.get("plan") or {}).get("segment") == 1:
                    return boards

    boards = run(watch())
    assert boards[0]["phase"] == "lobby" and boards[0]["plan"]["next"]["cue"] == "Easy spin"
    live = boards[-1]
    assert live["phase"] == "live" and live["plan"]["cue"] == "Go!" and live["plan"]["next"]["cue"] == "Breathe"
    assert 0 <= live["plan"]["segment_left_s"] <= 5 and live["plan"]["class_left_s"] <= 10
    assert live["cols"][-5:-2] == ["power_target", "cadence_target", "hr_target"]
    lefts = [b["plan"]["class_left_s"] for b in boards if b["phase"] == "live"]
    assert lefts == sorted(lefts, reverse=True) and len(set(lefts)) >= 2  # counted down without any data

    # kill the class's process mid-plan (Ray restarts it): nobody calls it afterwards, and
    # its own loop still ends it at the plan's end, from its checkpoint
    actor = ray_instance.get_actor(f"session:{sid}", namespace=edge_settings.namespace)
    pid = ray_instance.get(actor.info.remote(), timeout=60)["pid"]
    os.kill(pid, signal.SIGKILL)
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            if _checkpointed(edge_settings, sid).phase is Phase.ENDED:
                break
        except AssertionError:
            pass
        time.sleep(0.5)
    ended = _checkpointed(edge_settings, sid)
    assert ended.phase is Phase.ENDED and ended.schedule.live_at == pytest.approx(start)
    new_pid = ray_instance.get(actor.info.remote(), timeout=60)["pid"]
    assert new_pid != pid


def test_a_dense_class_resumes_its_plan_by_itself_after_its_host_is_killed(
        edge: Any, edge_settings: Any, tokens: Any, unique_id: str, ray_instance: Any) -> None:
    """A dense class (its host process holds many classes): the host is SIGKILLed in the
    lobby and nobody calls the class afterwards — no device, no viewer, no HTTP call —
    yet the restarted host reopens it from the set of its running clocks and the class goes
    live and ends on schedule."""
    from actors.session_host import host_name

    sid = f"dense-plan-{unique_id}"
    start = time.time() + 15
    response = _create(edge, tokens, {"id": sid, "start_at": start, "plan": SHORT, "placement": "dense"})
    assert response.status_code == 201 and response.json()["schedule"]["phase"] == "lobby", response.text
    directory = edge.config.app.state.edge.directory
    host = ray_instance.get_actor(host_name(directory.host_for(sid)), namespace=edge_settings.namespace)
    pid = ray_instance.get(host.info.remote(), timeout=60)["pid"]
    assert sid in ray_instance.get(host.hosted.remote(), timeout=60)
    os.kill(pid, signal.SIGKILL)
    # (no call for the class from here on: only Redis is read, and the host's own list)
    deadline = time.time() + 120
    phases = []
    while time.time() < deadline:
        phase = _checkpointed(edge_settings, sid).phase
        if not phases or phases[-1] is not phase:
            phases.append(phase)
        if phase is Phase.ENDED:
            break
        time.sleep(0.25)
    ended = _checkpointed(edge_settings, sid)
    assert ended.phase is Phase.ENDED, phases
    assert ended.schedule.live_at == pytest.approx(start) and Phase.LIVE in phases, phases
    info = ray_instance.get(host.info.remote(), timeout=60)  # (after the end: a call now changes nothing)
    assert info["pid"] != pid
