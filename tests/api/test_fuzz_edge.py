"""A storm of hostile frames against the running edge while a normal class runs beside it.

Many connections send malformed, truncated, oversized and random frames — unauthenticated,
with forged tokens, and with valid tokens followed by garbage and floods — while a Swarm
runs a class. The class's accounting stays exact (lost 0, duplicated 0) and the edge
stays up and answers.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import httpx
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from devices.protocol import MAX_FRAME_BYTES, encode
from sims.swarm import Swarm, SwarmConfig
from tests.api.test_e2e import _assert_exact


def _garbage(rng: random.Random, sid: str, token: str) -> bytes | str:
    now = time.time()
    good_hello = encode({"t": "hello", "v": 1, "token": token,
                         "devices": [{"device": "storm", "participant": "storm", "session": sid}]})
    good_samples = encode({"t": "samples", "device": "storm", "samples": [[1, now, 120, 200, 80, 8, 10]]})
    choices: list[Any] = [
        lambda: rng.randbytes(rng.randint(0, 300)),
        lambda: good_hello[: rng.randrange(len(good_hello))],  # truncated
        lambda: good_samples[: rng.randrange(len(good_samples))],
        lambda: bytes(b ^ (1 << rng.randrange(8)) if rng.random() < 0.05 else b for b in good_samples),  # bit flips
        lambda: b"\x00" * (MAX_FRAME_BYTES + rng.randint(1, 1000)),  # oversized frame
        lambda: encode({"t": "samples", "device": "storm", "samples": [[rng.randint(-5, 2**63), rng.random() * 1e12,
                                                                        "x", None, float("inf")]] * rng.randint(1, 1200)}),
        lambda: encode({"t": "hello", "v": 1, "token": "e30.e30.forged",
                        "devices": [{"device": "storm", "participant": "storm", "session": sid}]}),
        lambda: encode({"t": "auth", "token": "a" * rng.randint(1, 9000)}),
        lambda: encode({"t": rng.choice(["bye", "hello", "samples", "auth", "?"]), "devices": rng.randbytes(8)}),
        lambda: '{"t": "samples", "device": ' + "[" * rng.randint(1, 5000),  # deep JSON
        lambda: "".join(chr(rng.randint(0, 0x10FFFF)) for _ in range(rng.randint(0, 64))).encode("utf-8", "replace"),
    ]
    return rng.choice(choices)()  # type: ignore[no-any-return]


async def _hostile(url: str, seed: int, sid: str, token: str, deadline: float, stats: dict[str, int]) -> None:
    rng = random.Random(seed)
    while time.monotonic() < deadline:
        try:
            async with connect(f"{url}/v1/devices", max_size=2**22, open_timeout=10) as ws:
                stats["connections"] += 1
                if rng.random() < 0.5:  # half the storm authenticates first, then misbehaves
                    await ws.send(encode({"t": "hello", "v": 1, "token": token,
                                          "devices": [{"device": "storm", "participant": "storm", "session": sid}]}))
                for _ in range(rng.randint(1, 60)):
                    await ws.send(_garbage(rng, sid, token))
                    stats["frames"] += 1
                    if rng.random() < 0.1:
                        await asyncio.sleep(0.01)
                if rng.random() < 0.2:
                    await ws.send(b"\x00" * (2 << 20))  # over the transport limit: 1009
                await asyncio.sleep(rng.random() * 0.1)
        except (ConnectionClosed, OSError, TimeoutError, InvalidStatus):
            stats["closed"] += 1


def test_a_storm_of_bad_frames_does_not_disturb_a_class(edge: Any, run: Any, unique_id: str, tokens: Any) -> None:
    storm_sid = f"storm-{unique_id}"
    httpx.post(f"{edge.url}/v1/sessions", json={"id": storm_sid}, headers=tokens.headers(), timeout=30).raise_for_status()
    storm_token = tokens("device", device="storm", participant="storm", sessions=[storm_sid])
    config = SwarmConfig(base_url=edge.url, sessions=2, devices=10, seconds=8, board_hz=10,
                         session_prefix=f"calm-{unique_id}", dup_rate=0.1)
    swarm = Swarm(config)
    stats = {"connections": 0, "frames": 0, "closed": 0}

    async def scenario() -> dict[str, Any]:
        deadline = time.monotonic() + 12
        storm = [_hostile(edge.ws_url, seed, storm_sid, storm_token, deadline, stats) for seed in range(24)]
        result, *_ = await asyncio.gather(swarm.run(), *storm)
        return result  # type: ignore[no-any-return]

    result = run(scenario(), timeout=180)
    _assert_exact(result)
    assert result["sent"] == 10 * 8
    assert stats["connections"] >= 24 and stats["frames"] > 1000, stats
    health = httpx.get(f"{edge.url}/healthz", timeout=10)
    assert health.status_code == 200 and health.json()["ok"] is True
    # and it still serves a fresh client normally
    snap = httpx.get(f"{edge.url}/v1/sessions/{swarm.sessions[0]}", headers=tokens.headers(), timeout=30)
    assert snap.status_code == 200 and len(snap.json()["participants"]) == 5
