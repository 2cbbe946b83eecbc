"""Privacy of the board socket: a participant's token sees every rider's output but no other
rider's heart rate, in ``top`` and in ``view=all`` alike, and may not ask for another rider's
``you`` row; an operator's token sees everything. (Unit level: ``public_board`` blanks the
private columns once per board and keeps the viewer's own row whole.)"""

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

from api.viewer import board_encoder, public_board
from devices.client import DevTokens, DeviceStream, HubClient, stream_token_source


def _board() -> dict[str, Any]:
    cols = ["participant", "rank", "energy_kj", "hr_bpm", "power_w"]
    rows = [["ann", 1, 12.5, 140.0, 250.0], ["bob", 2, 10.0, 151.0, 200.0]]
    return {"session": "s", "version": 1, "phase": "live", "n": 2, "cols": cols, "top": rows[:1], "rows": rows}


def test_a_participants_frame_has_no_other_riders_heart_rate() -> None:
    board = _board()
    frame = msgpack.unpackb(board_encoder("bob", everyone=True, private=True)(board), raw=False)
    assert frame["top"] == [["ann", 1, 12.5, None, 250.0]]
    assert [row[3] for row in frame["rows"]] == [None, None]
    assert frame["you"] == ["bob", 2, 10.0, 151.0, 200.0]  # its own row stays whole
    assert json.loads(board_encoder(None, everyone=True, as_json=True, private=True)(board))["rows"][1][3] is None  # type: ignore[arg-type]
    whole = msgpack.unpackb(board_encoder(None, everyone=True)(board), raw=False)
    assert [row[3] for row in whole["rows"]] == [140.0, 151.0]  # the board itself is untouched
    assert public_board(board) is public_board(board)  # built once per board


def test_rows_are_blanked_only_when_a_view_all_viewer_asks_and_then_blanked_too() -> None:
    board = _board()
    frame = msgpack.unpackb(board_encoder("bob", everyone=False, private=True)(board), raw=False)
    assert frame["top"] == [["ann", 1, 12.5, None, 250.0]] and frame["you"][3] == 151.0
    assert "rows" not in board["_public"]  # a rider's own board: no row but its own was needed
    frame = msgpack.unpackb(board_encoder("bob", everyone=True, private=True)(board), raw=False)
    assert [row[3] for row in frame["rows"]] == [None, None] and frame["you"][3] == 151.0


async def _ride(edge: Any, sid: str, rider: str, hr: float) -> None:
    stream = DeviceStream(f"{rider}-strap", rider, sid)
    client = HubClient(f"{edge.ws_url}/v1/devices", [stream],
                       token_provider=stream_token_source(DevTokens(edge.url), [stream]), max_backoff_s=1.0)
    client.start()
    try:
        rows = [stream.new_sample(time.time() - 5 + i * 0.5, hr, 200.0, 85.0, 8.0, float(i)) for i in range(5)]
        await client.send_rows(stream, rows)
        while stream.acked < 5:
            await asyncio.sleep(0.1)
    finally:
        await client.close()


async def _frame_with_data(url: str, headers: dict[str, str]) -> dict[str, Any]:
    async with connect(url, additional_headers=headers) as ws:
        while True:  # boards from before the samples arrived may come first
            frame: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 30))
            rows = frame.get("rows", frame["top"])
            if frame["n"] == 2 and all(row[frame["cols"].index("samples")] == 5 for row in rows):
                return frame


async def _close_code(url: str, headers: dict[str, str]) -> int | None:
    async with connect(url, additional_headers=headers) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 30)
    return closed.value.rcvd.code if closed.value.rcvd else None


@pytest.mark.integration
def test_the_board_socket_hides_other_riders_heart_rate_from_a_participant(edge: Any, tokens: Any, unique_id: str,
                                                                          run: Any) -> None:
    sid = f"bpriv-{unique_id}"
    httpx.post(f"{edge.url}/v1/sessions", json={"id": sid}, headers=tokens.headers(), timeout=30).raise_for_status()
    for rider in ("ann", "bob"):
        httpx.post(f"{edge.url}/v1/sessions/{sid}/participants", json={"participant": rider},
                   headers=tokens.headers(), timeout=30).raise_for_status()
    async def ride_both() -> None:
        await asyncio.gather(_ride(edge, sid, "ann", 140.0), _ride(edge, sid, "bob", 151.0))

    run(ride_both())

    base = f"{edge.ws_url}/v1/sessions/{sid}/board?format=json"
    ann = tokens.headers("participant", participant="ann", sessions=[sid])
    seen = run(_frame_with_data(f"{base}&view=all&participant=ann", ann))
    hr = seen["cols"].index("hr_bpm")
    assert [row[hr] for row in seen["rows"]] == [None, None] and all(row[hr] is None for row in seen["top"])
    assert seen["you"][0] == "ann" and seen["you"][hr] == 140.0  # its own heart rate, whole
    assert run(_close_code(f"{base}&participant=bob", ann)) == 4403  # not another rider's row

    everything = run(_frame_with_data(f"{base}&view=all", tokens.headers()))
    assert sorted(row[hr] for row in everything["rows"]) == [140.0, 151.0]
