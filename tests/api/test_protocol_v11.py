"""Protocol v1.1: one connection per rider — the device socket also carries the rider's
compact board, with the acks inside it; v1 clients are unaffected (issue 12, points 3-4)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import msgpack
import pytest
from websockets.asyncio.client import ClientConnection, connect

from api.outbox import Outbox
from api.viewer import CompactBoard
from devices.protocol import BoardRequest, ErrorCode, ProtocolError, decode_device_frame

COLS = ["participant", "rank", "energy_kj", "hr_bpm", "power_w", "cadence_rpm", "speed_mps", "distance_m", "last_ts", "samples"]


def _board(riders: int, top: int = 10) -> dict[str, Any]:
    rows = [[f"rider-{i:04d}", i + 1, 412.37 - i * 1.37, 151.0, 262.4, 91.0, 9.1, 10412.0, time.time(), 2101]
            for i in range(riders)]
    return {"session": "spin-0700", "version": 81234, "phase": "live", "n": riders, "cols": COLS,
            "top": rows[:top], "rows": rows, "ts": time.time()}


def test_a_100_rider_board_with_own_row_and_acks_fits_in_300_bytes() -> None:
    board = _board(100)
    frame = CompactBoard("rider-0042")(board, {"rider-0042-strap": 81234})
    assert len(frame) <= 300, len(frame)
    decoded = msgpack.unpackb(frame)
    assert decoded["t"] == "board" and decoded["n"] == 100 and len(decoded["top"]) == 10
    me = board["rows"][42]
    assert decoded["top"][0] == ["rider-0000", 4124]
    assert decoded["me"] == [43, round(10 * (412.37 - 42 * 1.37)), 262, 151, 91, 2101, me[8]]
    assert decoded["ts"] == board["ts"]
    assert decoded["sum"] == round(10 * sum(r[2] for r in board["rows"]))
    assert decoded["acks"] == {"rider-0042-strap": 81234}
    assert "acks" not in msgpack.unpackb(CompactBoard("rider-0042")(board))
    assert "me" not in msgpack.unpackb(CompactBoard("nobody")(board))  # not on the board yet


def test_board_requests_are_validated_in_the_hello() -> None:
    def hello(board: Any, v: Any = 1.1) -> bytes:
        return msgpack.packb({"t": "hello", "v": v, "board": board,
                              "devices": [{"device": "d", "participant": "p", "session": "s"}]})

    assert decode_device_frame(hello({"rate": 2})).board == BoardRequest(2.0)  # type: ignore[union-attr]
    assert decode_device_frame(hello(True, v=1)).board == BoardRequest()  # type: ignore[union-attr]
    assert decode_device_frame(hello({"rate": 1, "participant": "p", "session": "s"})).board == BoardRequest(1.0, "s", "p")  # type: ignore[union-attr]
    for bad in ({"rate": 0}, {"rate": 11}, {"rate": "1"}, {"rate": True}, [1], {"participant": "x\x00"}):
        with pytest.raises(ProtocolError) as refused:
            decode_device_frame(hello(bad))
        assert refused.value.code is ErrorCode.BAD_FIELD and refused.value.fatal
    with pytest.raises(ProtocolError) as refused:
        decode_device_frame(hello(None, v=2))
    assert refused.value.code is ErrorCode.BAD_VERSION


def test_a_board_slot_is_one_period_less_a_small_slack() -> None:
    """1 board/s asked means 1 board/s (the old 10% slack gave ~1.1 at 1 Hz)."""
    for rate in (1.0, 2.0, 10.0):
        outbox = Outbox(None, board_interval_s=1.0 / rate, encode_board=lambda b: b"x")  # type: ignore[arg-type]
        outbox.set_board({"v": 1})
        assert outbox._take_board() == b"x"
        wait = outbox._board_wait_s()
        assert 1.0 / rate - min(0.1 / rate, 0.01) - 0.005 < wait <= 1.0 / rate - min(0.1 / rate, 0.01)


async def _frames(ws: ClientConnection, seconds: float) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            out.append(msgpack.unpackb(await asyncio.wait_for(ws.recv(), left)))
        except TimeoutError:
            break
    return out


@pytest.mark.integration
def test_one_socket_carries_samples_the_board_and_acks(edge: Any, tokens: Any, unique_id: str, run: Any) -> None:
    sid = f"v11-{unique_id}"
    httpx.post(f"{edge.url}/v1/sessions", json={"id": sid}, headers=tokens.headers()).raise_for_status()
    token = tokens("device", device="ann-strap", participant="ann", sessions=[sid])

    async def scenario() -> None:
        async with connect(f"{edge.ws_url}/v1/devices", additional_headers={"Authorization": f"Bearer {token}"}) as ws:
            await ws.send(msgpack.packb({"t": "hello", "v": 1.1, "board": {"rate": 2},
                                         "devices": [{"device": "ann-strap", "participant": "ann", "session": sid}]}))
            assert msgpack.unpackb(await asyncio.wait_for(ws.recv(), 10))["t"] == "welcome"
            start = time.time() - 10
            frames: list[dict[str, Any]] = []
            for seq in range(1, 9):  # 4 s of samples at 2 Hz
                await ws.send(msgpack.packb({"t": "samples", "device": "ann-strap",
                                             "samples": [[seq, start + seq, 140.0, 200.0, 88.0, 8.0, 10.0 * seq]]}))
                frames += await _frames(ws, 0.5)
            frames += await _frames(ws, 2.5)
        kinds = [f["t"] for f in frames]
        boards = [f for f in frames if f["t"] == "board"]
        assert set(kinds) <= {"board", "ack"}, kinds
        assert 8 <= len(boards) <= 15, len(boards)  # ~2 per second for ~6.5 s
        assert kinds.count("ack") <= 2  # acks ride in the boards
        acked = max(max((f.get("acks") or {}).get("ann-strap", 0) for f in boards), *(f["acks"]["ann-strap"] for f in frames if f["t"] == "ack"), 0)
        assert acked == 8
        last = boards[-1]
        assert last["session"] == sid and last["n"] == 1 and last["top"][0][0] == "ann"
        assert last["me"][:4] == [1, last["top"][0][1], 200, 140] and last["me"][5] == 8
        assert last["me"][6] == pytest.approx(start + 8) and last["ts"] > start
        assert all(len(msgpack.packb(f)) < 300 for f in boards)

    run(scenario())


@pytest.mark.integration
def test_a_board_request_the_connection_cannot_see_is_refused_and_samples_go_on(edge: Any, tokens: Any, unique_id: str, run: Any) -> None:
    sid = f"v11b-{unique_id}"
    httpx.post(f"{edge.url}/v1/sessions", json={"id": sid}, headers=tokens.headers()).raise_for_status()
    token = tokens("device", device="bob-pod", participant="bob", sessions=[sid])

    async def scenario() -> None:
        async with connect(f"{edge.ws_url}/v1/devices") as ws:
            await ws.send(msgpack.packb({"t": "hello", "v": 1.1, "token": token, "board": {"participant": "ann"},
                                         "devices": [{"device": "bob-pod", "participant": "bob", "session": sid}]}))
            frames = {f["t"]: f for f in [msgpack.unpackb(await asyncio.wait_for(ws.recv(), 10)) for _ in range(2)]}
            assert set(frames) == {"welcome", "error"}  # the error at once, the welcome on the next tick
            assert frames["error"]["code"] == "bad_field" and not frames["error"]["fatal"]
            await ws.send(msgpack.packb({"t": "samples", "device": "bob-pod", "samples": [[1, time.time(), 120.0]]}))
            rest = await _frames(ws, 3.0)
            assert [f["t"] for f in rest] == ["ack"] and rest[0]["acks"] == {"bob-pod": 1}  # v1 behaviour: no board

    run(scenario())
