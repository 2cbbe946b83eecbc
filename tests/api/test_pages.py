"""The class page and its credentials: security headers, view-only tokens, tokens kept out
of URLs, and names validated where they enter (issue 11; the browser half is
test_view_browser.py)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import msgpack
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from api.pages import API_CSP, PAGE_CSP

pytestmark = pytest.mark.integration


def pack(frame: Any) -> bytes:
    return msgpack.packb(frame, use_bin_type=True)


@pytest.fixture
def session(edge: Any, unique_id: str, tokens: Any) -> str:
    sid = f"page-{unique_id}"
    httpx.post(f"{edge.url}/v1/sessions", json={"id": sid}, headers=tokens.headers(), timeout=30).raise_for_status()
    return sid


def _csp(value: str) -> dict[str, str]:
    return {d.split(" ", 1)[0]: d.split(" ", 1)[1] for d in (p.strip() for p in value.split(";")) if " " in d}


def test_the_page_is_the_same_for_known_and_unknown_sessions_and_sends_a_strict_csp(edge: Any, session: str) -> None:
    known = httpx.get(f"{edge.url}/v1/sessions/{session}/view", timeout=30)
    unknown = httpx.get(f"{edge.url}/v1/sessions/no-such-{session}/view", timeout=30)
    assert known.status_code == unknown.status_code == 200
    assert known.text == unknown.text and "<script src=\"/static/view.js\"" in known.text
    assert "<script>" not in known.text and "onclick" not in known.text  # no inline script at all
    for response in (known, unknown):
        h = response.headers
        assert h["content-security-policy"] == PAGE_CSP
        csp = _csp(h["content-security-policy"])
        assert csp["default-src"] == "'none'" and csp["script-src"] == "'self'"
        assert csp["frame-ancestors"] == "'none'" and "unsafe" not in h["content-security-policy"]
        assert h["x-content-type-options"] == "nosniff" and h["referrer-policy"] == "no-referrer"
        assert h["x-frame-options"] == "DENY"


def test_static_assets_have_types_and_the_set_is_closed(edge: Any) -> None:
    js = httpx.get(f"{edge.url}/static/view.js", timeout=30)
    css = httpx.get(f"{edge.url}/static/view.css", timeout=30)
    assert js.status_code == css.status_code == 200
    assert js.headers["content-type"].startswith("text/javascript") and css.headers["content-type"].startswith("text/css")
    assert js.headers["x-content-type-options"] == "nosniff"
    assert "innerHTML" not in js.text and "textContent" in js.text
    for name in ("view.html", "../app.py", "..%2Fapp.py", "nope.js"):
        assert httpx.get(f"{edge.url}/static/{name}", timeout=30).status_code == 404
    icon = httpx.get(f"{edge.url}/favicon.ico", timeout=30)  # every browser asks: no 404 in its console
    assert icon.status_code == 200 and icon.headers["content-type"] == "image/png" and icon.content[:4] == b"\x89PNG"


def test_api_responses_carry_nosniff_and_a_deny_all_csp(edge: Any, tokens: Any) -> None:
    for response in (httpx.get(f"{edge.url}/healthz", timeout=30), httpx.get(f"{edge.url}/v1/sessions/x", timeout=30),
                     httpx.get(f"{edge.url}/v1/sessions/x", headers=tokens.headers(), timeout=30)):
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["content-security-policy"] == API_CSP
        assert response.headers["referrer-policy"] == "no-referrer"


def test_an_operator_gets_a_view_link_with_the_token_in_the_fragment(edge: Any, session: str, tokens: Any) -> None:
    reply = httpx.post(f"{edge.url}/v1/sessions/{session}/view-links", headers=tokens.headers(), timeout=30)
    assert reply.status_code == 201, reply.text
    link = reply.json()
    path, _, fragment = link["url"].partition("#")
    assert path == f"/v1/sessions/{session}/view" and fragment == f"token={link['token']}"
    claims = json.loads(_b64(link["token"].split(".")[1]))
    assert claims["kind"] == "viewer" and claims["sessions"] == [session]
    assert claims["exp"] - claims["iat"] <= edge.settings.view_token_ttl_s
    unknown = httpx.post(f"{edge.url}/v1/sessions/nope-{session}/view-links", headers=tokens.headers(), timeout=30)
    assert unknown.status_code == 404


def test_view_links_for_participants_only_of_their_class(edge: Any, session: str, tokens: Any) -> None:
    httpx.post(f"{edge.url}/v1/sessions/{session}/participants", json={"participant": "ann"},
               headers=tokens.headers(), timeout=30).raise_for_status()
    ann = tokens.headers("participant", participant="ann", sessions=[session], ttl_s=600)
    bob = tokens.headers("participant", participant="bob", sessions=[session])
    assert httpx.post(f"{edge.url}/v1/sessions/{session}/view-links", headers=ann, timeout=30).status_code == 201
    assert httpx.post(f"{edge.url}/v1/sessions/{session}/view-links", headers=bob, timeout=30).status_code == 403
    mine = httpx.post(f"{edge.url}/v1/sessions/{session}/view-links", headers=ann, json={"ttl_s": 86400}, timeout=30).json()
    claims = json.loads(_b64(mine["token"].split(".")[1]))
    assert claims["exp"] - claims["iat"] <= 601  # never outlives the participant's own token
    viewer = {"Authorization": f"Bearer {mine['token']}"}
    assert httpx.post(f"{edge.url}/v1/sessions/{session}/view-links", headers=viewer, timeout=30).status_code == 403
    assert httpx.post(f"{edge.url}/v1/sessions/{session}/view-links", headers=tokens.headers("device", device="d", participant="ann", sessions=[session]), timeout=30).status_code == 403


def test_a_viewer_token_watches_one_board_and_does_nothing_else(edge: Any, session: str, tokens: Any, run: Any, unique_id: str) -> None:
    other = f"page-other-{unique_id}"
    httpx.post(f"{edge.url}/v1/sessions", json={"id": other}, headers=tokens.headers(), timeout=30).raise_for_status()
    token = tokens("viewer", sessions=[session])
    bearer = {"Authorization": f"Bearer {token}"}
    assert httpx.get(f"{edge.url}/v1/sessions/{session}", headers=bearer, timeout=30).status_code == 403
    assert httpx.post(f"{edge.url}/v1/sessions/{session}/participants", json={"participant": "x"}, headers=bearer, timeout=30).status_code == 403
    assert httpx.post(f"{edge.url}/v1/sessions/{session}/phase", json={"phase": "live"}, headers=bearer, timeout=30).status_code == 403
    assert httpx.get(f"{edge.url}/v1/leaderboards/any", headers=bearer, timeout=30).status_code == 403

    async def scenario() -> None:
        async with connect(f"{edge.ws_url}/v1/sessions/{session}/board?format=json",
                           subprotocols=["pulseline.v1", f"bearer.{token}"]) as ws:  # type: ignore[list-item]
            assert ws.subprotocol == "pulseline.v1"  # the bearer entry is never echoed
            board = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert board["t"] == "board" and board["session"] == session
        for sid in (other, f"never-{unique_id}"):  # 4403 either way: existence is not revealed
            async with connect(f"{edge.ws_url}/v1/sessions/{sid}/board", subprotocols=["pulseline.v1", f"bearer.{token}"]) as ws:  # type: ignore[list-item]
                with pytest.raises(ConnectionClosed) as closed:
                    await asyncio.wait_for(ws.recv(), 10)
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 4403
        async with connect(f"{edge.ws_url}/v1/devices", subprotocols=["pulseline.v1", f"bearer.{token}"]) as ws:  # type: ignore[list-item]
            await ws.send(pack({"t": "hello", "v": 1, "devices": [{"device": "d", "participant": "p", "session": session}]}))
            frame = msgpack.unpackb(await asyncio.wait_for(ws.recv(), 10))
            assert frame["t"] == "error" and frame["code"] == "forbidden" and frame["fatal"]

    run(scenario())


def test_a_board_token_in_the_subprotocol_or_header_keeps_urls_clean(edge: Any, session: str, tokens: Any, run: Any) -> None:
    operator = tokens("operator")

    async def scenario() -> None:
        async with connect(f"{edge.ws_url}/v1/sessions/{session}/board?format=json",
                           additional_headers={"Authorization": f"Bearer {operator}"}) as ws:
            assert ws.subprotocol is None
            assert json.loads(await asyncio.wait_for(ws.recv(), 10))["t"] == "board"
        async with connect(f"{edge.ws_url}/v1/sessions/{session}/board", subprotocols=["pulseline.v1"]) as ws:  # type: ignore[list-item]
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401

    run(scenario())


def test_a_hub_hello_with_control_characters_is_refused_and_the_hub_may_retry(edge: Any, session: str, tokens: Any, run: Any) -> None:
    hub = tokens("hub", hub="gym", devices=["d1"], sessions=[session])

    async def scenario() -> None:
        async with connect(f"{edge.ws_url}/v1/devices") as ws:
            await ws.send(pack({"t": "hello", "v": 1, "token": hub, "hub": "gym",
                                "devices": [{"device": "d1", "participant": "evil\u202egnp.exe", "session": session}]}))
            frame = msgpack.unpackb(await asyncio.wait_for(ws.recv(), 10))
            assert frame["t"] == "error" and frame["code"] == "bad_field" and frame["fatal"]
            assert "format" in frame["message"] and "\u202e" not in frame["message"]
        async with connect(f"{edge.ws_url}/v1/devices") as ws:
            await ws.send(pack({"t": "hello", "v": 1, "token": hub, "hub": "gym",
                                "devices": [{"device": "d1", "participant": "Rene\u0301e <b>", "session": session}]}))
            assert msgpack.unpackb(await asyncio.wait_for(ws.recv(), 10))["t"] == "welcome"
            await ws.send(pack({"t": "samples", "device": "d1", "samples": [[1, time.time(), 120.0, 200.0, 85.0, 8.0, 10.0]]}))
            while (frame := msgpack.unpackb(await asyncio.wait_for(ws.recv(), 10)))["t"] != "ack":
                pass

    run(scenario())
    deadline = time.monotonic() + 20  # the hello's join reaches the actor on the next tick
    while True:
        state = httpx.get(f"{edge.url}/v1/sessions/{session}", headers=tokens.headers(), timeout=30).json()
        names = [p["participant"] for p in state["participants"]]
        if names or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert names == ["Ren\u00e9e <b>"]  # NFC, markup kept as text


def test_a_title_with_control_characters_is_a_422(edge: Any, unique_id: str, tokens: Any) -> None:
    reply = httpx.post(f"{edge.url}/v1/sessions", json={"id": f"t-{unique_id}", "title": "Spin\u0000"}, headers=tokens.headers(), timeout=30)
    assert reply.status_code == 422 and "control" in reply.text
    ok = httpx.post(f"{edge.url}/v1/sessions", json={"id": f"t2-{unique_id}", "title": "<b>Spin</b> & Climb"}, headers=tokens.headers(), timeout=30)
    assert ok.status_code == 201


def _b64(part: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def test_tokens_in_v1_query_strings_are_redacted_from_uvicorns_log_lines() -> None:
    import logging

    from api.scopes import RedactTokens, redact_tokens

    assert redact_tokens("/v1/devices?token=eyJ.a.b") == "/v1/devices?token=[redacted]"
    assert redact_tokens("/b?rate=2&token=x.y.z&view=all") == "/b?rate=2&token=[redacted]&view=all"
    assert redact_tokens("/b?mytoken=keep") == "/b?mytoken=keep"
    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:1", "GET", "/v1/sessions/s/board?token=secret.jwt.sig", "1.1", 101), None)
    assert RedactTokens().filter(record) and "secret" not in record.getMessage()
