"""A class's pace is set by its fastest viewer on any edge: an edge that carries only riders'
phones (1 Hz boards, or none) ticks at a 10 Hz screen's pace while that screen watches from
another edge, so the phones' samples reach the screen within ~0.1 s, not within a second;
once the screen is gone the phones' edge goes back to its own pace. While both tick, the
phones' edge ticks on the beat the class gives it, just before the screen's edge."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import msgpack
import pytest
from websockets.asyncio.client import connect

from actors.session_cell import PERIOD_HELD_S
from tests.api.test_bad_input import recv


async def _until(condition: Any, send: Any, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        await send()
        await asyncio.sleep(0.2)
    return bool(condition())


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_an_edge_of_phones_ticks_at_the_pace_of_a_screen_on_another_edge(own_edge: Any, unique_id: str, run: Any) -> None:
    studio, tokens = own_edge()
    phones, _ = own_edge()
    sid = f"pace-{unique_id}"
    ops = tokens.headers()
    httpx.post(f"{studio.url}/v1/sessions", json={"id": sid}, headers=ops).raise_for_status()
    httpx.post(f"{studio.url}/v1/sessions/{sid}/phase", json={"phase": "live"}, headers=ops).raise_for_status()
    screen_url = f"{studio.ws_url}/v1/sessions/{sid}/board?rate=10&token={tokens('viewer', sessions=[sid])}"
    seq = 0

    async def scenario() -> None:
        async with connect(f"{phones.ws_url}/v1/devices") as phone:
            await phone.send(msgpack.packb({"t": "hello", "v": 1, "token": tokens("device", device="bike", participant="ann", sessions=[sid]),
                                            "devices": [{"device": "bike", "participant": "ann", "session": sid}]}))
            assert (await recv(phone, timeout=20))["t"] == "welcome"
            pump = phones.config.app.state.edge.pumps[sid]

            async def ride() -> None:
                nonlocal seq
                seq += 1
                await phone.send(msgpack.packb({"t": "samples", "device": "bike", "samples": [[seq, time.time(), 120, 200.0, 85]]}))

            await _until(lambda: pump.ticks >= 3, ride, 20)
            assert pump.interval_s == pytest.approx(pump.max_tick_interval_s)  # no viewer anywhere: its own slow pace
            async with connect(screen_url) as screen:
                assert (await recv(screen, timeout=20))["t"] == "board"
                assert await _until(lambda: pump.interval_s == pytest.approx(pump.tick_interval_s), ride, 20), pump.interval_s
                # and in step with it: the phones' edge ticks on the beat the class gives it,
                # just before the screen's edge, which leads (it gets none)
                screen_pump = studio.config.app.state.edge.pumps[sid]
                assert await _until(lambda: pump._beat_at is not None and pump._edges == 2, ride, 20)
                assert screen_pump._beat_at is None and screen_pump._edges == 2
            # the screen is gone: once the class no longer holds its period, the phones' edge slows down again
            assert await _until(lambda: pump.interval_s == pytest.approx(pump.max_tick_interval_s), ride, PERIOD_HELD_S + 15), pump.interval_s

    run(scenario())
