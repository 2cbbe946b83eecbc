"""Errors mapped in one place: bad input is a 4xx with a body that always encodes, a
dependency that is down is a 503 with ``Retry-After``, no body carries internals.

The Redis faults run on a private redis-server and a private edge on it (never the shared
one): SIGSTOP (calls hang: the time-outs must answer) and SIGKILL (connections refused).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgpack
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.conftest import DevTokenFactory, EdgeServer

pytestmark = pytest.mark.integration

INTERNALS = re.compile(r"\x1b\[|pid=|ip=|Traceback|ray\.|RayTaskError|ActorID|\b\d{1,3}(\.\d{1,3}){3}\b")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _json(response: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(response.content)  # strict: the body must be valid JSON
    return body


def _session(edge: Any, tokens: Any, sid: str) -> str:
    httpx.post(f"{edge.url}/v1/sessions", json={"id": sid}, headers=tokens.headers(), timeout=30).raise_for_status()
    return sid


# -- bad input ---------------------------------------------------------------------------------

HOSTILE_BODIES = {
    "nan": b'{"participant": NaN}',
    "infinity": b'{"participant": "p", "tags": {"a": Infinity}}',
    "minus-infinity": b'{"board_size": -Infinity}',
    "overflow-float": b'{"board_size": 1e400}',
    "lone-surrogate-value": b'{"participant": "\\ud800"}',
    "lone-surrogate-key": b'{"participant": "p", "tags": {"\\udfff": "x"}}',
    "surrogate-in-bad-id": b'{"id": "\\ud800 not an id"}',
    "deep-nesting": b'{"participant": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "huge-int": b'{"board_size": ' + b"9" * 5000 + b"}",
    "not-utf8": b'{"participant": "\xff\xfe"}',
    "truncated": b'{"participant": "p"',
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", sorted(HOSTILE_BODIES))
def test_hostile_json_bodies_get_a_4xx_that_encodes(edge: Any, tokens: Any, unique_id: str, name: str) -> None:
    sid = _session(edge, tokens, f"err-{unique_id}")
    headers = {**tokens.headers(), "content-type": "application/json"}
    for path in ("/v1/sessions", f"/v1/sessions/{sid}/participants", f"/v1/sessions/{sid}/phase"):
        reply = httpx.post(f"{edge.url}{path}", content=HOSTILE_BODIES[name], headers=headers, timeout=30)
        assert 400 <= reply.status_code < 500, (path, reply.status_code, reply.text[:300])
        body = _json(reply)
        assert body["error"] in ("bad_json", "invalid_request", "bad_request"), body
        assert len(reply.content) < 8192  # the input is never echoed back


@pytest.mark.timeout(60)
def test_validation_errors_do_not_echo_the_input(edge: Any, tokens: Any, unique_id: str) -> None:
    """Valid JSON that fails validation: a 422 naming the field, without the value."""
    secret = "x" * 5000
    reply = httpx.post(f"{edge.url}/v1/sessions", json={"id": secret}, headers=tokens.headers(), timeout=30)
    assert reply.status_code == 422
    body = _json(reply)
    assert body["error"] == "invalid_request" and "id" in body["message"]
    assert secret not in reply.text and body["details"][0]["loc"] == ["body", "id"]


@pytest.mark.timeout(60)
def test_a_body_over_the_limit_is_413_before_it_is_read(edge: Any, tokens: Any) -> None:
    big = b'{"id": "' + b"a" * (edge.settings.max_http_body_bytes + 10) + b'"}'
    reply = httpx.post(f"{edge.url}/v1/sessions", content=big,
                       headers={**tokens.headers(), "content-type": "application/json"}, timeout=30)
    assert reply.status_code == 413 and _json(reply)["error"] == "too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while it streams in
        yield b'{"id": "'
        for _ in range(edge.settings.max_http_body_bytes // 65536 + 2):
            yield b"a" * 65536
        yield b'"}'

    reply = httpx.post(f"{edge.url}/v1/sessions", content=chunks(),
                       headers={**tokens.headers(), "content-type": "application/json"}, timeout=30)
    assert reply.status_code == 413


@pytest.mark.timeout(60)
def test_an_illegal_phase_change_is_409_with_a_clear_reason(edge: Any, tokens: Any, unique_id: str) -> None:
    sid = _session(edge, tokens, f"ph-{unique_id}")
    for phase in ("lobby", "live"):
        assert httpx.post(f"{edge.url}/v1/sessions/{sid}/phase", json={"phase": phase},
                          headers=tokens.headers(), timeout=30).status_code == 200
    reply = httpx.post(f"{edge.url}/v1/sessions/{sid}/phase", json={"phase": "scheduled"},
                       headers=tokens.headers(), timeout=30)
    assert reply.status_code == 409
    body = _json(reply)
    assert body["error"] == "bad_phase"
    assert body["message"].startswith("cannot go from phase 'live' to 'scheduled'"), body
    assert not INTERNALS.search(reply.text), reply.text


@pytest.mark.timeout(60)
def test_unknown_routes_and_methods_use_the_same_body(edge: Any) -> None:
    reply = httpx.get(f"{edge.url}/no/such/route", timeout=30)
    assert reply.status_code == 404 and _json(reply)["error"] == "not_found"
    reply = httpx.put(f"{edge.url}/livez", timeout=30)
    assert reply.status_code == 405 and _json(reply)["error"] == "method_not_allowed"


@pytest.mark.timeout(120)
def test_an_unexpected_exception_is_a_500_with_our_body_and_the_connection_stays(own_edge: Any) -> None:
    """A bug in a route (any exception nothing classifies) answers 500 with an incident id and
    no internals, on a connection that stays usable (it used to be reset after the answer)."""
    server, _ = own_edge()

    async def broken() -> None:
        raise RuntimeError("internal detail pid=4242 ip=10.1.2.3")

    server.config.app.add_api_route("/v1/broken-on-purpose", broken, include_in_schema=False)  # type: ignore[union-attr]
    ports = set()  # the client's local address of each answer's connection
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for _ in range(3):
            reply = client.get("/v1/broken-on-purpose")
            assert reply.status_code == 500, reply.text
            body = _json(reply)
            assert body["error"] == "internal" and "incident" in body["message"], body
            assert not INTERNALS.search(reply.text) and "internal detail" not in reply.text, reply.text
            assert reply.headers.get("x-request-id"), reply.headers
            ports.add(reply.extensions["network_stream"].get_extra_info("client_addr"))
        assert client.get("/livez").status_code == 200
    assert len(ports) == 1, ports  # one keep-alive connection served all three answers



@pytest.mark.timeout(60)
def test_bad_sample_names_the_offending_seqs(edge: Any, tokens: Any, unique_id: str, run: Any) -> None:
    sid = _session(edge, tokens, f"seq-{unique_id}")
    token = tokens("device", device="d", participant="p", sessions=[sid])
    now = time.time()

    async def scenario() -> dict[str, Any]:
        async with connect(f"{edge.ws_url}/v1/devices") as ws:
            await ws.send(msgpack.packb({"t": "hello", "v": 1, "token": token,
                                         "devices": [{"device": "d", "participant": "p", "session": sid}]}))
            assert msgpack.unpackb(await asyncio.wait_for(ws.recv(), 10))["t"] == "welcome"
            rows = [[1, now, 120.0], [0, now, 120.0], [-5, now], ["x", now], [2**63, now], [], [2, now, 121.0]]
            await ws.send(msgpack.packb({"t": "samples", "device": "d", "samples": rows}))
            while True:
                frame: dict[str, Any] = msgpack.unpackb(await asyncio.wait_for(ws.recv(), 10))
                if frame["t"] == "error":
                    return frame

    frame = run(scenario())
    assert frame["code"] == "bad_sample" and frame["fatal"] is False
    assert frame["rows"] == [1, 2, 3, 4, 5]
    assert frame["bad_seqs"] == [0, -5, "'x'", 2**63, None]
    assert "0, -5, 'x'" in frame["message"]
    assert "seqs" not in frame  # the usable rows are not settled by this error


# -- dependencies down -------------------------------------------------------------------------


@pytest.fixture
def private_stack(edge_settings: Any, tmp_path: Path) -> Iterator[tuple[Any, EdgeServer, DevTokenFactory]]:
    """A redis-server of this test's own and an edge on it (same Ray, same dev secret)."""
    from cluster.redis_server import EmbeddedRedis

    redis = EmbeddedRedis(tmp_path / "redis").start()
    settings = edge_settings.model_copy(update={
        "port": _free_port(), "redis_url": redis.url, "redis_timeout_s": 0.5, "ray_call_timeout_s": 5.0,
        "readiness_timeout_s": 0.5,
    })
    server = EdgeServer(settings).start()
    try:
        yield redis, server, DevTokenFactory(settings)
    finally:
        if redis.pid is not None:
            try:
                os.kill(redis.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        server.stop()
        _kill_sessions(server)
        redis.stop()


def _kill_sessions(server: EdgeServer) -> None:
    import ray

    from actors.session_actor import actor_name

    edge = server.config.app.state.edge  # type: ignore[union-attr]
    for sid in list(edge.pumps) + list(edge.directory._known):
        try:
            ray.kill(ray.get_actor(actor_name(sid), namespace=server.settings.namespace), no_restart=True)
        except ValueError:
            pass


def _wait_status(url: str, status: int, headers: dict[str, str] | None = None, timeout_s: float = 30) -> httpx.Response:
    deadline = time.monotonic() + timeout_s
    while True:
        reply = httpx.get(url, headers=headers, timeout=10)
        if reply.status_code == status or time.monotonic() > deadline:
            return reply
        time.sleep(0.2)


@pytest.mark.timeout(120)
def test_a_stopped_redis_gives_503_and_not_ready_then_recovers(private_stack: Any, unique_id: str) -> None:
    redis, server, tokens = private_stack
    sid = _session(server, tokens, f"stop-{unique_id}")
    url = f"{server.url}/v1/sessions/{sid}"
    assert httpx.get(url, headers=tokens.headers(), timeout=30).status_code == 200
    assert httpx.get(f"{server.url}/readyz", timeout=10).status_code == 200
    os.kill(redis.pid, signal.SIGSTOP)
    try:
        reply = httpx.get(url, headers=tokens.headers(), timeout=20)  # hung forever before
        assert reply.status_code == 503, reply.text
        assert reply.headers["retry-after"] and _json(reply)["error"] == "unavailable"
        assert "redis" in _json(reply)["message"].lower() and not INTERNALS.search(reply.text)
        ready = _wait_status(f"{server.url}/readyz", 503)
        assert ready.status_code == 503 and ready.json()["checks"]["redis"]["ok"] is False
        assert ready.headers["retry-after"]
        assert httpx.get(f"{server.url}/livez", timeout=10).status_code == 200  # alive, just not ready
    finally:
        os.kill(redis.pid, signal.SIGCONT)
    assert _wait_status(f"{server.url}/readyz", 200).status_code == 200
    assert _wait_status(url, 200, tokens.headers()).status_code == 200


async def _hello_closed(server: EdgeServer, tokens: DevTokenFactory, sid: str) -> Any:
    token = tokens("device", device="d", participant="p", sessions=[sid])
    async with connect(f"{server.ws_url}/v1/devices") as ws:
        await ws.send(msgpack.packb({"t": "hello", "v": 1, "token": token,
                                     "devices": [{"device": "d", "participant": "p", "session": sid}]}))
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await asyncio.wait_for(ws.recv(), 20)
    assert closed.value.rcvd is not None
    return closed.value.rcvd


async def _board_closed(server: EdgeServer, tokens: DevTokenFactory, sid: str) -> Any:
    """A board socket's close frame (its handshake looks the class up in Redis)."""
    with pytest.raises(ConnectionClosed) as closed:
        async with connect(f"{server.ws_url}/v1/sessions/{sid}/board?token={tokens('viewer', sessions=[sid])}") as ws:
            while True:
                await asyncio.wait_for(ws.recv(), 20)
    assert closed.value.rcvd is not None, "closed without a close frame (an unhandled error: 1006)"
    return closed.value.rcvd


@pytest.mark.timeout(120)
def test_a_dead_redis_gives_503_never_500(private_stack: Any, unique_id: str, run: Any) -> None:
    redis, server, tokens = private_stack
    sid = _session(server, tokens, f"dead-{unique_id}")
    redis.kill()
    for method, path, body in (
        ("GET", f"/v1/sessions/{sid}", None),
        ("POST", "/v1/sessions", {"id": f"new-{unique_id}"}),
        ("GET", f"/v1/sessions/never-{unique_id}", None),
    ):
        reply = httpx.request(method, f"{server.url}{path}", json=body, headers=tokens.headers(), timeout=20)
        assert reply.status_code == 503, (path, reply.status_code, reply.text)
        assert reply.headers["retry-after"] and not INTERNALS.search(reply.text)
    assert _wait_status(f"{server.url}/healthz", 503).status_code == 503  # /healthz is /readyz
    closed = run(_hello_closed(server, tokens, f"unseen-{unique_id}"))
    assert closed.code == 1013 and "redis" in closed.reason.lower() and not INTERNALS.search(closed.reason)
    closed = run(_board_closed(server, tokens, f"unseen-{unique_id}"))  # (an unhandled error before: 1006)
    assert closed.code == 1013 and "redis" in closed.reason.lower() and not INTERNALS.search(closed.reason)
    redis.start()  # same port, same data dir: the AOF brings the session back
    assert _wait_status(f"{server.url}/readyz", 200).status_code == 200
    assert _wait_status(f"{server.url}/v1/sessions/{sid}", 200, tokens.headers()).status_code == 200


# -- a class's first calls while its actor process starts ------------------------------------


@pytest.fixture
def impatient_edge(edge_settings: Any) -> Iterator[tuple[EdgeServer, DevTokenFactory]]:
    """An edge whose calls to a running actor are bounded at 1 ms — far less than any actor
    process takes to start — and whose calls to a new actor wait for it as by default."""
    settings = edge_settings.model_copy(update={
        "port": _free_port(), "ray_call_timeout_s": 0.001, "actor_start_timeout_s": 60.0,
    })
    server = EdgeServer(settings).start()
    try:
        yield server, DevTokenFactory(settings)
    finally:
        server.stop()
        _kill_sessions(server)


@pytest.mark.timeout(120)
def test_the_first_join_waits_for_a_new_actor_instead_of_503(impatient_edge: Any, unique_id: str) -> None:
    """A burst of class starts on busy cores used to answer a class's first joins 503 when its
    new process took longer than ``ray_call_timeout_s`` to start (the 3,000-rider sweep in
    docs/benchmarks.md): the first call is bounded by ``actor_start_timeout_s`` instead."""
    server, tokens = impatient_edge
    sid = _session(server, tokens, f"start-{unique_id}")
    reply = httpx.post(f"{server.url}/v1/sessions/{sid}/participants", json={"participant": "p1"},
                       headers=tokens.headers(), timeout=90)
    assert reply.status_code == 201, reply.text
    assert reply.json()["participant"] == "p1"
