"""Limits on an edge configured tight: throttle before disconnect (and nothing lost for a
client that backs off), devices per hub, connections per address, idle timeout, and a
token that expires mid-class (warned, renewed in-band, or closed with 4401)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from tests.api.test_bad_input import expect_close, pack, recv, sample
from tests.conftest import DevTokenFactory, EdgeServer


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def limited_edge(edge_settings: Any) -> Iterator[Callable[..., tuple[EdgeServer, DevTokenFactory]]]:
    """A factory of extra edges (same Ray, Redis and dev secret) with overridden settings."""
    started: list[EdgeServer] = []

    def make(**overrides: Any) -> tuple[EdgeServer, DevTokenFactory]:
        settings = edge_settings.model_copy(update={"port": _free_port(), **overrides})
        server = EdgeServer(settings).start()
        started.append(server)
        return server, DevTokenFactory(settings)

    yield make
    for server in started:
        server.stop()


def _session(server: EdgeServer, tokens: DevTokenFactory, sid: str) -> str:
    httpx.post(f"{server.url}/v1/sessions", json={"id": sid}, headers=tokens.headers(), timeout=30).raise_for_status()
    return sid


async def _open(server: EdgeServer, token: str, *bindings: tuple[str, str, str]) -> tuple[ClientConnection, dict[str, Any]]:
    ws = await connect(f"{server.ws_url}/v1/devices")
    await ws.send(pack({"t": "hello", "v": 1, "token": token,
                        "devices": [{"device": d, "participant": p, "session": s} for d, p, s in bindings]}))
    return ws, await recv(ws)


async def _acked(ws: ClientConnection, device: str, seq: int) -> list[dict[str, Any]]:
    seen = []
    while True:
        frame = await recv(ws, timeout=10)
        seen.append(frame)
        if frame["t"] == "ack" and frame["acks"].get(device, 0) >= seq:
            return seen


def test_over_the_rate_a_client_is_throttled_first_and_loses_nothing_by_backing_off(
    limited_edge: Any, unique_id: str, run: Any
) -> None:
    server, tokens = limited_edge(max_frames_per_s_per_device=5.0, rate_burst_s=1.0, max_throttle_strikes=10)
    sid = _session(server, tokens, f"rate-{unique_id}")
    token = tokens("device", device="fast", participant="ann", sessions=[sid])

    async def scenario() -> int:
        ws, welcome = await _open(server, token, ("fast", "ann", sid))
        assert welcome["t"] == "welcome"
        for seq in range(1, 11):  # ten frames at once: five fit the bucket
            await ws.send(pack({"t": "samples", "device": "fast", "samples": [sample(seq)]}))
        throttle = await recv(ws)
        while throttle["t"] != "throttle":
            throttle = await recv(ws)
        assert throttle["device"] == "fast" and throttle["retry_after_ms"] >= 1000
        await asyncio.sleep(throttle["retry_after_ms"] / 1000)
        # a polite client resends everything unacknowledged (seqs 1-10; the server dedupes)
        await ws.send(pack({"t": "samples", "device": "fast", "samples": [sample(s) for s in range(1, 11)]}))
        frames = await _acked(ws, "fast", 10)
        assert not [f for f in frames if f["t"] == "error"]
        await ws.close()
        return 10

    run(scenario())
    snap = httpx.get(f"{server.url}/v1/sessions/{sid}", headers=tokens.headers()).json()
    assert snap["participants"][0]["samples"] == 10  # lost 0, duplicated 0


def test_a_client_that_ignores_throttle_is_disconnected_with_4429(limited_edge: Any, unique_id: str, run: Any) -> None:
    server, tokens = limited_edge(max_frames_per_s_per_connection=20.0, rate_burst_s=1.0, max_throttle_strikes=5)
    sid = _session(server, tokens, f"flood-{unique_id}")
    token = tokens("device", device="flood", participant="ann", sessions=[sid])

    async def scenario() -> list[str]:
        ws, _ = await _open(server, token, ("flood", "ann", sid))
        kinds = []
        try:
            for _ in range(200):
                await ws.send(b"\xc1garbage")
        except Exception:
            pass  # the server may already have closed
        reason = await expect_close(ws, 4429)
        assert "throttled" in reason
        return kinds

    run(scenario())
    assert httpx.get(f"{server.url}/healthz").json()["ok"] is True


def test_devices_per_hub_and_connections_per_address(limited_edge: Any, unique_id: str, run: Any) -> None:
    server, tokens = limited_edge(max_devices_per_hub=2, max_connections_per_address=3)
    sid = _session(server, tokens, f"hub-{unique_id}")
    hub = tokens("hub", hub="gym", devices=["b1", "b2", "b3"])

    async def scenario() -> None:
        ws, first = await _open(server, hub, ("b1", "ann", sid), ("b2", "bob", sid), ("b3", "cid", sid))
        frames = [first, await recv(ws), await recv(ws)]
        refused = [f for f in frames if f["t"] == "error"]
        assert [(f["code"], f["device"]) for f in refused] == [("too_many_devices", "b3")]
        others = [await connect(f"{server.ws_url}/v1/devices") for _ in range(2)]
        async with connect(f"{server.ws_url}/v1/devices") as extra:  # the fourth from 127.0.0.1
            assert "address" in await expect_close(extra, 4429)
        await asyncio.gather(ws.close(), *(o.close() for o in others))

    run(scenario())


def test_idle_device_connections_are_closed(limited_edge: Any, unique_id: str, run: Any) -> None:
    server, tokens = limited_edge(idle_timeout_s=1.0)
    sid = _session(server, tokens, f"idle-{unique_id}")

    async def scenario() -> str:
        async with connect(f"{server.ws_url}/v1/devices") as ws:
            token = tokens("device", device="d", participant="p", sessions=[sid])
            await ws.send(pack({"t": "hello", "v": 1, "token": token,
                                "devices": [{"device": "d", "participant": "p", "session": sid}]}))
            return await expect_close(ws, 4408, timeout=10)  # welcome, then silence

    assert "idle" in run(scenario())


def test_expiring_token_is_warned_renewed_in_band_or_closed(limited_edge: Any, unique_id: str, run: Any) -> None:
    server, tokens = limited_edge(auth_leeway_s=0.0, auth_expiry_notice_s=2.0)
    sid = _session(server, tokens, f"exp-{unique_id}")

    def short(ttl_s: float) -> str:
        return tokens("device", device="d", participant="p", sessions=[sid], ttl_s=ttl_s)

    async def renewed() -> None:
        ws, warning = await _open(server, short(5), ("d", "p", sid))
        while warning.get("code") != "token_expiring":
            warning = await recv(ws, timeout=10)
        assert warning["fatal"] is False and warning["expires_at"] <= time.time() + 3
        await ws.send(pack({"t": "auth", "token": short(600)}))
        assert (await recv(ws))["t"] == "auth_ok"
        await asyncio.sleep(max(0.0, warning["expires_at"] - time.time()) + 1.0)  # past the old expiry
        await ws.send(pack({"t": "samples", "device": "d", "samples": [sample(1)]}))
        await _acked(ws, "d", 1)
        await ws.close()

    async def expired() -> str:
        ws, _ = await _open(server, short(3), ("d", "p", sid))
        return await expect_close(ws, 4401, timeout=10)

    run(renewed())
    assert "reconnect" in run(expired())


def test_expired_viewer_is_closed_with_4401(limited_edge: Any, unique_id: str, run: Any) -> None:
    server, tokens = limited_edge(auth_leeway_s=0.0)
    sid = _session(server, tokens, f"vexp-{unique_id}")
    token = tokens("operator", ttl_s=2)

    async def scenario() -> str:
        async with connect(f"{server.ws_url}/v1/sessions/{sid}/board?rate=1&token={token}") as ws:
            return await expect_close(ws, 4401, timeout=10)

    assert "expired" in run(scenario())
