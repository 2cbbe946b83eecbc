"""Every kind of malformed input gets a clear error and disturbs nothing else.

Every request carries a valid development token (the edge authenticates everything, see
docs/security.md), so what is tested here is the input, not the credentials.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import msgpack
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from devices.protocol import MAX_FRAME_BYTES, MAX_SAMPLES_PER_FRAME


def pack(frame: Any) -> bytes:
    return msgpack.packb(frame, use_bin_type=True)


async def recv(ws: ClientConnection, timeout: float = 5.0) -> dict[str, Any]:
    return msgpack.unpackb(await asyncio.wait_for(ws.recv(), timeout), raw=False)  # type: ignore[no-any-return]


async def expect_close(ws: ClientConnection, code: int, timeout: float = 5.0) -> str:
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            await asyncio.wait_for(ws.recv(), timeout)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == code, closed.value
    return closed.value.rcvd.reason


@pytest.fixture
def session(edge: Any, unique_id: str, tokens: Any) -> str:
    sid = f"bad-{unique_id}"
    httpx.post(f"{edge.url}/v1/sessions", json={"id": sid}, headers=tokens.headers()).raise_for_status()
    return sid


@pytest.fixture(autouse=True)
def _tokens(tokens: Any) -> None:
    global TOKENS
    TOKENS = tokens


TOKENS: Any = None


def hello(sid: str, device: str = "dev", participant: str = "p") -> bytes:
    token = TOKENS("device", device=device, participant=participant, sessions=[sid])
    return pack({"t": "hello", "v": 1, "token": token,
                 "devices": [{"device": device, "participant": participant, "session": sid}]})


def sample(seq: int, **over: Any) -> list[Any]:
    row = [seq, time.time(), 120.0, 200.0, 85.0, 8.0, 10.0 * seq]
    for index, value in over.items():
        row[int(index[1:])] = value
    return row


async def welcomed(url: str, sid: str, device: str = "dev") -> ClientConnection:
    ws = await connect(f"{url}/v1/devices")
    await ws.send(hello(sid, device))
    frame = await recv(ws)
    assert frame["t"] == "welcome" and frame["devices"] == {device: 0}
    return ws


def test_non_fatal_garbage_gets_error_frames_and_the_stream_goes_on(edge: Any, session: str, run: Any) -> None:
    async def scenario() -> None:
        ws = await welcomed(edge.ws_url, session)
        cases = [
            (b"\xc1\xff not msgpack", "bad_frame"),
            (pack([1, 2, 3]), "bad_frame"),
            (pack({"t": "launch"}), "unknown_type"),
            (pack({"t": "samples", "device": "ghost", "samples": [sample(1)]}), "unknown_device"),
            (pack({"t": "samples", "device": "dev", "samples": "nope"}), "bad_field"),
            (pack({"t": "samples", "device": 7, "samples": []}), "bad_field"),
            (b"\x00" * (MAX_FRAME_BYTES + 1), "too_large"),
            (pack({"t": "samples", "device": "dev", "samples": [sample(1)] * (MAX_SAMPLES_PER_FRAME + 1)}), "too_many_samples"),
            (pack({"t": "samples", "device": "dev", "samples": [["x"], "row"]}), "bad_sample"),
        ]
        for data, code in cases:
            await ws.send(data)
            frame = await recv(ws)
            assert frame["t"] == "error" and frame["code"] == code and frame["fatal"] is False, frame
        await ws.send('{"t": "nonsense"}')  # JSON text frames are understood too
        assert (await recv(ws))["code"] == "unknown_type"
        # per-sample rejections name the seqs; the valid samples of the same frame apply
        rows = [sample(1), sample(2, i2=400.0), sample(3, i1=time.time() + 3600), sample(4, i3=float("nan")), sample(5)]
        await ws.send(pack({"t": "samples", "device": "dev", "samples": rows}))
        reasons: dict[str, list[int]] = {}
        acked = 0
        while acked < 5:
            frame = await recv(ws)
            if frame["t"] == "error":
                reasons[frame["code"]] = frame["seqs"]
            elif frame["t"] == "ack":
                acked = frame["acks"]["dev"]
        assert reasons == {"out_of_range": [2], "bad_timestamp": [3], "bad_sample": [4]}
        await ws.close()

    run(scenario())
    snap = httpx.get(f"{edge.url}/v1/sessions/{session}", headers=TOKENS.headers()).json()
    assert snap["participants"][0]["samples"] == 2 and snap["participants"][0]["rejected"] == 3


@pytest.mark.parametrize(
    ("first", "code"),  # None: built at run time (it needs a token)
    [
        (pack({"t": "samples", "device": "dev", "samples": [[1, 1.0]]}), 4400),
        (pack({"t": "hello", "v": 9, "devices": [{"device": "d", "participant": "p", "session": "x"}]}), 4400),
        (pack({"t": "hello", "v": 1, "devices": []}), 4400),
        (None, 4404),  # a valid hello for a session that was never created
    ],
    ids=["samples-before-hello", "bad-version", "no-devices", "unknown-session"],
)
def test_fatal_frames_close_with_a_reason(edge: Any, first: bytes, code: int, run: Any) -> None:
    async def scenario() -> None:
        async with connect(f"{edge.ws_url}/v1/devices") as ws:
            await ws.send(first if first is not None else hello("no-such", "d"))
            assert await expect_close(ws, code)

    run(scenario())


def test_silence_after_connect_hits_the_handshake_timeout(edge: Any, run: Any) -> None:
    async def scenario() -> None:
        async with connect(f"{edge.ws_url}/v1/devices") as ws:
            assert "hello" in await expect_close(ws, 4408, timeout=10)

    run(scenario())


def test_frames_over_the_transport_limit_close_with_1009(edge: Any, session: str, run: Any) -> None:
    async def scenario() -> None:
        ws = await welcomed(edge.ws_url, session)
        with pytest.raises(ConnectionClosed) as closed:
            await ws.send(b"\x00" * (2 << 20))
            while True:
                await asyncio.wait_for(ws.recv(), 5.0)
        # The edge stops reading at the header and closes with 1009. The rest of the 2 MiB is
        # still unread in its socket, so the kernel may answer with a TCP reset, and a reset
        # makes the client's kernel drop the close frame it had not read yet: then the client
        # sees the connection die without a code. Any code it does see must be 1009.
        if closed.value.rcvd is not None:
            assert closed.value.rcvd.code == 1009, closed.value
        again = await welcomed(edge.ws_url, session, device="after-1009")  # the edge serves on
        await again.close()

    run(scenario())


def test_board_viewers_get_close_codes_for_bad_requests(edge: Any, session: str, run: Any, tokens: Any) -> None:
    token = tokens("operator")

    async def scenario() -> None:
        for query, sid, code in (("rate=50", session, 4400), ("rate=0.2", session, 4400), ("view=x", session, 4400),
                                 ("rate=abc", session, 4400), ("rate=nan", session, 4400), ("view=all&page=x", session, 4400),
                                 ("view=all&page_size=1e3", session, 4400), ("rate=5", "nope", 4404)):
            async with connect(f"{edge.ws_url}/v1/sessions/{sid}/board?{query}&token={token}") as ws:
                await expect_close(ws, code)

    run(scenario())


def test_http_errors_are_clear(edge: Any, session: str, tokens: Any) -> None:
    http = httpx.Client(base_url=edge.url, headers=tokens.headers())
    assert http.get("/v1/sessions/nope").status_code == 404
    assert http.get("/v1/sessions/nope").json()["error"] == "unknown_session"
    assert http.post("/v1/sessions", json={"id": "has space"}).status_code == 422
    assert http.post("/v1/sessions", content=b"{not json").status_code == 422
    assert http.post(f"/v1/sessions/{session}/participants", json={}).status_code == 422
    assert http.post(f"/v1/sessions/{session}/phase", json={"phase": "ended"}).status_code == 200
    bad = http.post(f"/v1/sessions/{session}/phase", json={"phase": "live"})
    assert bad.status_code == 409 and bad.json()["error"] == "bad_phase"


def test_a_hostile_neighbour_does_not_disturb_a_normal_device(edge: Any, session: str, run: Any) -> None:
    async def hostile() -> None:
        for _ in range(20):
            try:
                async with connect(f"{edge.ws_url}/v1/devices") as ws:
                    await ws.send(b"\xff" * 100)
                    await ws.send(pack({"t": "samples", "device": "x", "samples": [[1]]}))
                    await asyncio.wait_for(ws.recv(), 2)
                    await asyncio.wait_for(ws.recv(), 2)
            except (ConnectionClosed, TimeoutError):
                pass

    async def normal() -> int:
        ws = await welcomed(edge.ws_url, session, device="good")
        for seq in range(1, 21):
            await ws.send(pack({"t": "samples", "device": "good", "samples": [sample(seq)]}))
            await asyncio.sleep(0.02)
        acked = 0
        while acked < 20:
            frame = await recv(ws)
            if frame["t"] == "ack":
                acked = frame["acks"]["good"]
        await ws.close()
        return acked

    async def scenario() -> int:
        _, acked = await asyncio.gather(hostile(), normal())
        return acked

    assert run(scenario()) == 20
    assert httpx.get(f"{edge.url}/healthz").json()["ok"] is True
