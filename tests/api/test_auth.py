"""The authorisation matrix: every token kind against every endpoint and frame.

Bad credentials (none, forged signature, wrong audience, wrong issuer, expired, ``alg:
none``) are 401 / close 4401; valid tokens used beyond their scope (a device writing for
another participant, a participant reading a class it did not join, ...) are 403 / close
4403 or a ``forbidden`` error frame. Runs against the shared development-mode edge.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import jwt
import pytest
from websockets.asyncio.client import connect

from api.auth import DEV_ISSUER, dev_secret, mint_token
from tests.api.test_bad_input import expect_close, pack, recv, sample


@pytest.fixture
def world(edge: Any, tokens: Any, unique_id: str) -> dict[str, Any]:
    """Two sessions; ``ann`` joined ``a``, ``bob`` joined ``b``."""
    http = httpx.Client(base_url=edge.url, headers=tokens.headers("operator"), timeout=30)
    a, b = f"auth-a-{unique_id}", f"auth-b-{unique_id}"
    for sid, who in ((a, "ann"), (b, "bob")):
        http.post("/v1/sessions", json={"id": sid}).raise_for_status()
        http.post(f"/v1/sessions/{sid}/participants", json={"participant": who}).raise_for_status()
    return {"a": a, "b": b, "http": http}


def bad_tokens(settings: Any, sid: str) -> dict[str, str]:
    """Tokens that must all be refused with 401, whatever they claim."""
    secret = dev_secret(settings)
    claims = {"kind": "operator"}
    now = time.time()
    payload = {"iss": DEV_ISSUER, "aud": "pulseline", "exp": int(now + 600), "sub": "operator:x", "kind": "operator"}
    return {
        "forged": mint_token(b"not-the-edge-secret-" * 3, **claims),
        "wrong_audience": mint_token(secret, audience="someone-else", **claims),
        "expired": mint_token(secret, now=now - 7200, ttl_s=60, **claims),
        "wrong_issuer": jwt.encode({**payload, "iss": "https://evil.example"}, secret, algorithm="HS256"),
        "alg_none": jwt.encode(payload, None, algorithm="none"),
        "garbage": "not.a.jwt",
        "bad_claims": jwt.encode({**payload, "kind": "superuser"}, secret, algorithm="HS256"),
    }


# -- HTTP ------------------------------------------------------------------------------------
def test_http_refuses_missing_and_bad_credentials_with_401(edge: Any, world: dict[str, Any]) -> None:
    sid = world["a"]
    requests = [
        ("POST", "/v1/sessions", {"id": f"{sid}-x"}), ("GET", f"/v1/sessions/{sid}", None),
        ("POST", f"/v1/sessions/{sid}/participants", {"participant": "ann"}),
        ("DELETE", f"/v1/sessions/{sid}/participants/ann", None),
        ("POST", f"/v1/sessions/{sid}/phase", {"phase": "lobby"}), ("POST", f"/v1/sessions/{sid}/flush", None),
        ("GET", "/metrics", None),
    ]
    credentials = {"none": None, **bad_tokens(edge.settings, sid)}
    for name, token in credentials.items():
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        for method, path, body in requests:
            response = httpx.request(method, f"{edge.url}{path}", json=body, headers=headers)
            assert response.status_code == 401, (name, method, path, response.text)
            assert response.json()["error"] == "unauthorised"
            assert response.headers["www-authenticate"].startswith("Bearer")
    reasons = {
        name: httpx.get(f"{edge.url}/v1/sessions/{sid}", headers={"Authorization": f"Bearer {t}"}).json()["reason"]
        for name, t in credentials.items() if t
    }
    assert reasons == {
        "forged": "bad_signature", "wrong_audience": "wrong_audience", "expired": "expired",
        "wrong_issuer": "wrong_issuer", "alg_none": "bad_algorithm", "garbage": "malformed_token",
        "bad_claims": "bad_claims",
    }
    assert httpx.get(f"{edge.url}/healthz").status_code == 200  # liveness stays public


def test_http_scopes_by_token_kind(edge: Any, tokens: Any, world: dict[str, Any]) -> None:
    a, b = world["a"], world["b"]
    kinds = {
        "operator": tokens.headers("operator"),
        "participant": tokens.headers("participant", participant="ann"),
        "device": tokens.headers("device", device="strap", participant="ann", sessions=[a]),
        "hub": tokens.headers("hub", hub="studio", devices=["strap"], sessions=[a]),
    }
    expected: list[tuple[str, str, Any, dict[str, int]]] = [
        ("POST", "/v1/sessions", {"id": f"{a}-new"}, {"operator": 201, "participant": 403, "device": 403, "hub": 403}),
        ("GET", f"/v1/sessions/{a}", None, {"operator": 200, "participant": 200, "device": 403, "hub": 403}),
        # a participant reading a class it did not join
        ("GET", f"/v1/sessions/{b}", None, {"operator": 200, "participant": 403, "device": 403, "hub": 403}),
        # joining itself is fine, joining someone else is not
        ("POST", f"/v1/sessions/{b}/participants", {"participant": "ann"}, {"operator": 201, "participant": 201, "device": 403, "hub": 403}),
        ("POST", f"/v1/sessions/{b}/participants", {"participant": "eve"}, {"operator": 201, "participant": 403, "device": 403, "hub": 403}),
        ("DELETE", f"/v1/sessions/{b}/participants/eve", None, {"operator": 200, "participant": 403, "device": 403, "hub": 403}),
        ("POST", f"/v1/sessions/{a}/flush", None, {"operator": 200, "participant": 403, "device": 403, "hub": 403}),
        ("GET", "/metrics", None, {"operator": 200, "participant": 403, "device": 403, "hub": 403}),
        ("POST", f"/v1/sessions/{a}/phase", {"phase": "lobby"}, {"operator": 200, "participant": 403, "device": 403, "hub": 403}),
    ]
    for method, path, body, statuses in expected:
        for kind in ("participant", "device", "hub", "operator"):  # the operator last: it changes state
            response = httpx.request(method, f"{edge.url}{path}", json=body, headers=kinds[kind], timeout=30)
            assert response.status_code == statuses[kind], (kind, method, path, response.text)
            if response.status_code == 403:
                assert response.json()["error"] == "forbidden" and response.json()["reason"]


def test_participant_token_limited_to_its_sessions(edge: Any, tokens: Any, world: dict[str, Any]) -> None:
    a, b = world["a"], world["b"]
    only_a = tokens.headers("participant", participant="bob", sessions=[a])
    joined = httpx.post(f"{edge.url}/v1/sessions/{b}/participants", json={"participant": "bob"}, headers=only_a)
    assert joined.status_code == 403 and joined.json()["reason"] == "wrong_session"
    # bob is on b's roster, but this token was not issued for b
    read = httpx.get(f"{edge.url}/v1/sessions/{b}", headers=only_a)
    assert read.status_code == 403 and read.json()["reason"] == "wrong_session"


# -- device WebSocket ------------------------------------------------------------------------
def _hello(token: str | None, *bindings: tuple[str, str, str], hub: str | None = None) -> bytes:
    frame: dict[str, Any] = {"t": "hello", "v": 1,
                             "devices": [{"device": d, "participant": p, "session": s} for d, p, s in bindings]}
    if token is not None:
        frame["token"] = token
    if hub is not None:
        frame["hub"] = hub
    return pack(frame)


def test_device_socket_refuses_bad_credentials_with_4401(edge: Any, world: dict[str, Any], run: Any) -> None:
    a = world["a"]
    credentials: dict[str, str | None] = {"none": None, **bad_tokens(edge.settings, a)}

    async def scenario() -> dict[str, tuple[str, str]]:
        seen = {}
        for name, token in credentials.items():
            async with connect(f"{edge.ws_url}/v1/devices") as ws:
                await ws.send(_hello(token, ("strap", "ann", a)))
                error = await recv(ws)
                assert error["t"] == "error" and error["code"] == "unauthorised" and error["fatal"] is True, error
                seen[name] = (error["reason"], await expect_close(ws, 4401))
        return seen

    seen = run(scenario())
    assert seen["none"][0] == "missing_token" and seen["forged"][0] == "bad_signature"
    assert seen["expired"][0] == "expired" and seen["wrong_audience"][0] == "wrong_audience"
    assert all(reason.startswith(code) for code, reason in seen.values()), seen  # the close says why


def test_device_socket_scopes(edge: Any, tokens: Any, world: dict[str, Any], run: Any) -> None:
    a, b = world["a"], world["b"]
    device = tokens("device", device="strap", participant="ann", sessions=[a])
    refused = {
        "another participant": (device, ("strap", "bob", a), "wrong_participant"),
        "another session": (device, ("strap", "ann", b), "wrong_session"),
        "another device": (device, ("power", "ann", a), "wrong_device"),
        "participant token": (tokens("participant", participant="ann"), ("strap", "ann", a), "wrong_kind"),
        "operator token": (tokens("operator"), ("strap", "ann", a), "wrong_kind"),
        "unregistered hub device": (tokens("hub", hub="studio", devices=["bike-1"]), ("bike-2", "ann", a), "wrong_device"),
    }

    async def scenario() -> None:
        for name, (token, binding, reason) in refused.items():
            async with connect(f"{edge.ws_url}/v1/devices") as ws:
                await ws.send(_hello(token, binding))
                error = await recv(ws)
                assert (error["code"], error["reason"], error["device"]) == ("forbidden", reason, binding[0]), (name, error)
                assert (await expect_close(ws, 4403)).startswith(reason)
        async with connect(f"{edge.ws_url}/v1/devices") as ws:  # the right token is welcome
            await ws.send(_hello(device, ("strap", "ann", a)))
            assert (await recv(ws))["t"] == "welcome"

    run(scenario())


def test_hub_writes_only_for_its_registered_devices(edge: Any, tokens: Any, world: dict[str, Any], run: Any) -> None:
    a = world["a"]
    hub = tokens("hub", hub="studio-1", devices=["bike-1", "bike-2"], sessions=[a])

    async def scenario() -> None:
        async with connect(f"{edge.ws_url}/v1/devices") as ws:
            await ws.send(_hello(hub, ("bike-1", "ann", a), ("bike-9", "bob", a), hub="studio-1"))
            frames = [await recv(ws), await recv(ws)]
            error = next(f for f in frames if f["t"] == "error")
            assert (error["device"], error["reason"], error["fatal"]) == ("bike-9", "wrong_device", False)
            assert next(f for f in frames if f["t"] == "welcome")["devices"] == {"bike-1": 0}
            # samples for the refused device are refused too; the registered one streams
            await ws.send(pack({"t": "samples", "device": "bike-9", "samples": [sample(1)]}))
            assert (await recv(ws))["code"] == "unknown_device"
            await ws.send(pack({"t": "samples", "device": "bike-1", "samples": [sample(1)]}))
            frame = await recv(ws)
            while frame["t"] != "ack":
                frame = await recv(ws)
            assert frame["acks"] == {"bike-1": 1}
        async with connect(f"{edge.ws_url}/v1/devices") as ws:  # the token names another hub
            await ws.send(_hello(hub, ("bike-1", "ann", a), hub="studio-2"))
            assert (await recv(ws))["reason"] == "wrong_hub"
            await expect_close(ws, 4403)

    run(scenario())


def test_token_may_come_in_the_upgrade_header(edge: Any, tokens: Any, world: dict[str, Any], run: Any) -> None:
    a = world["a"]
    token = tokens("device", device="hdr", participant="ann", sessions=[a])

    async def scenario() -> dict[str, Any]:
        async with connect(f"{edge.ws_url}/v1/devices", additional_headers={"Authorization": f"Bearer {token}"}) as ws:
            await ws.send(_hello(None, ("hdr", "ann", a)))
            return await recv(ws)

    assert run(scenario())["t"] == "welcome"


def test_auth_frame_renews_in_band_and_refuses_another_subject(edge: Any, tokens: Any, world: dict[str, Any], run: Any) -> None:
    a = world["a"]

    async def scenario() -> None:
        async with connect(f"{edge.ws_url}/v1/devices") as ws:
            await ws.send(_hello(tokens("device", device="renew", participant="ann", sessions=[a], ttl_s=600), ("renew", "ann", a)))
            assert (await recv(ws))["t"] == "welcome"
            fresh = tokens("device", device="renew", participant="ann", sessions=[a], ttl_s=7200)
            await ws.send(pack({"t": "auth", "token": fresh}))
            ok = await recv(ws)
            assert ok["t"] == "auth_ok" and ok["expires_at"] > time.time() + 3600
            other = tokens("device", device="other", participant="ann", sessions=[a])
            await ws.send(pack({"t": "auth", "token": other}))
            refused = await recv(ws)
            assert (refused["code"], refused["reason"], refused["fatal"]) == ("forbidden", "not_same_principal", False)
            await ws.send(pack({"t": "auth", "token": "forged.token.here"}))
            assert (await recv(ws))["code"] == "unauthorised"
            # still streaming under the renewed token
            await ws.send(pack({"t": "samples", "device": "renew", "samples": [sample(1)]}))
            frame = await recv(ws)
            while frame["t"] != "ack":
                frame = await recv(ws)
            assert frame["acks"] == {"renew": 1}

    run(scenario())


# -- board WebSocket --------------------------------------------------------------------------
def test_board_needs_a_member_or_an_operator(edge: Any, tokens: Any, world: dict[str, Any], run: Any) -> None:
    a, b = world["a"], world["b"]
    cases = [
        (None, a, 4401),
        (bad_tokens(edge.settings, a)["forged"], a, 4401),
        (tokens("participant", participant="ann"), b, 4403),  # did not join b
        (tokens("device", device="strap", participant="ann", sessions=[a]), a, 4403),
        (tokens("hub", hub="h", devices=["x"]), a, 4403),
    ]

    async def scenario() -> None:
        for token, sid, code in cases:
            query = f"?rate=5&token={token}" if token else "?rate=5"
            async with connect(f"{edge.ws_url}/v1/sessions/{sid}/board{query}") as ws:
                await expect_close(ws, code)
        for token in (tokens("participant", participant="ann"), tokens("operator")):
            async with connect(f"{edge.ws_url}/v1/sessions/{a}/board?rate=5&token={token}") as ws:
                board = await recv(ws, timeout=10)
                assert board["t"] == "board" and board["session"] == a

    run(scenario())


def test_dev_token_route_mints_usable_tokens_and_refuses_nonsense(edge: Any, world: dict[str, Any], run: Any) -> None:
    a = world["a"]
    minted = httpx.post(f"{edge.url}/v1/dev/tokens", json={"kind": "participant", "participant": "ann"})
    assert minted.status_code == 200
    assert httpx.get(f"{edge.url}/v1/sessions/{a}", headers={"Authorization": f"Bearer {minted.json()['token']}"}).status_code == 200
    assert httpx.post(f"{edge.url}/v1/dev/tokens", json={"kind": "device"}).status_code == 400  # no device/sessions
    assert httpx.post(f"{edge.url}/v1/dev/tokens", json={"kind": "root"}).status_code == 422
    assert "/v1/dev/tokens" not in httpx.get(f"{edge.url}/openapi.json").text


def test_refusals_are_counted(edge: Any, tokens: Any) -> None:
    metrics = httpx.get(f"{edge.url}/metrics", headers=tokens.headers()).text
    httpx.get(f"{edge.url}/metrics")
    after = httpx.get(f"{edge.url}/metrics", headers=tokens.headers()).text

    def count(text: str) -> float:
        line = next((l for l in text.splitlines() if l.startswith('pulseline_auth_refusals_total{reason="missing_token",status="401"}')), None)
        return float(line.rsplit(" ", 1)[1]) if line else 0.0

    assert count(after) == count(metrics) + 1


def test_concurrent_connections_with_one_token_are_capped(edge: Any, tokens: Any, world: dict[str, Any], run: Any) -> None:
    a = world["a"]
    token = tokens("device", device="capped", participant="ann", sessions=[a])
    limit = edge.settings.max_connections_per_token

    async def scenario() -> None:
        sockets = []
        for _ in range(limit):
            ws = await connect(f"{edge.ws_url}/v1/devices")
            await ws.send(_hello(token, ("capped", "ann", a)))
            assert (await recv(ws))["t"] == "welcome"
            sockets.append(ws)
        async with connect(f"{edge.ws_url}/v1/devices") as extra:
            await extra.send(_hello(token, ("capped", "ann", a)))
            assert "token" in await expect_close(extra, 4429)
        await asyncio.gather(*(ws.close() for ws in sockets))

    run(scenario())
