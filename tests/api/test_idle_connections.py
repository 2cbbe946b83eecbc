"""Connections that never send a complete HTTP request are closed (slowloris), against a
real uvicorn with raw sockets; a slow but complete client and WebSockets are not hurt."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import msgpack
import pytest
from websockets.asyncio.client import connect

from tests.conftest import DevTokenFactory, EdgeServer, create_retrying

pytestmark = pytest.mark.integration

HEAD_TIMEOUT_S = 1.5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def strict_edge(edge_settings: Any) -> Iterator[tuple[EdgeServer, DevTokenFactory]]:
    settings = edge_settings.model_copy(update={"port": _free_port(), "http_head_timeout_s": HEAD_TIMEOUT_S})
    server = EdgeServer(settings).start()
    yield server, DevTokenFactory(settings)
    server.stop()


def _closed_by_server(sock: socket.socket, within_s: float) -> bool:
    """True when the server closes ``sock`` (EOF or reset) within ``within_s``."""
    sock.settimeout(within_s)
    try:
        while True:
            data = sock.recv(4096)
            if not data:
                return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


@pytest.mark.timeout(60)
def test_silent_and_half_request_connections_are_closed(strict_edge: Any) -> None:
    server, _ = strict_edge
    silent = [socket.create_connection(("127.0.0.1", server.settings.port)) for _ in range(50)]
    half = [socket.create_connection(("127.0.0.1", server.settings.port)) for _ in range(10)]
    for sock in half:
        sock.sendall(b"GET /livez HT")  # half a request line, then nothing
    try:
        deadline = HEAD_TIMEOUT_S + 10  # generous: the machine is shared; they stayed open for ever before
        assert all(_closed_by_server(sock, deadline) for sock in silent + half)
    finally:
        for sock in silent + half:
            sock.close()
    assert httpx.get(f"{server.url}/livez", timeout=10).status_code == 200


@pytest.mark.timeout(60)
def test_a_slowloris_dripping_headers_is_closed_at_the_deadline(strict_edge: Any) -> None:
    server, _ = strict_edge
    with socket.create_connection(("127.0.0.1", server.settings.port)) as sock:
        sock.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\n")
        closed = False
        for i in range(40):  # one header every 0.25 s: never complete, always "active"
            try:
                sock.sendall(f"X-Drip-{i}: y\r\n".encode())
            except OSError:
                closed = True
                break
            time.sleep(0.25)
        assert closed or _closed_by_server(sock, 5)


@pytest.mark.timeout(150)
def test_complete_requests_keep_alive_and_websockets_are_untouched(strict_edge: Any, unique_id: str, run: Any) -> None:
    server, tokens = strict_edge
    with socket.create_connection(("127.0.0.1", server.settings.port)) as sock:
        time.sleep(HEAD_TIMEOUT_S / 3)  # slow, but within the deadline
        sock.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.settimeout(10)
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
    sid = f"idle-{unique_id}"
    with httpx.Client(base_url=server.url, headers=tokens.headers(), timeout=30) as http:
        create_retrying(http, {"id": sid}).raise_for_status()  # (a 503 on a loaded box: retried)
    token = tokens("device", device="d", participant="p", sessions=[sid])

    async def scenario() -> str:
        async with connect(f"{server.ws_url}/v1/devices") as ws:
            await ws.send(msgpack.packb({"t": "hello", "v": 1, "token": token,
                                         "devices": [{"device": "d", "participant": "p", "session": sid}]}))
            assert msgpack.unpackb(await asyncio.wait_for(ws.recv(), 10))["t"] == "welcome"
            await asyncio.sleep(HEAD_TIMEOUT_S * 2)  # past the head deadline: the socket stays
            await ws.send(msgpack.packb({"t": "samples", "device": "d", "samples": [[1, time.time(), 120.0]]}))
            while True:
                frame = msgpack.unpackb(await asyncio.wait_for(ws.recv(), 10))
                if frame["t"] == "ack":
                    return str(frame["t"])

    assert run(scenario()) == "ack"
