"""What the multi-node scenarios share: Redis, an edge in a thread, riders with exact
accounting that may be spread over several edges, board recorders, and the result line.

``Riders`` is a small swarm (``devices.client`` streams, one connection per device, each
device sending at ``rate_hz``) that can put its devices on different edges; it keeps the
ground truth (samples sent, rejected, still unacknowledged) and compares it with the
server's per-participant totals, like ``sims.swarm`` does: ``lost`` and ``duplicated`` must
both be 0.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgpack
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from devices.client import DeviceStream, HubClient
from tests.edge_server import EdgeServer

log = logging.getLogger(__name__)
RESULT_PREFIX = "RESULT "


def setup_process() -> None:
    """Environment for a scenario process (before Ray is imported anywhere)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ["RAY_AUTH_MODE"] = "disabled"  # private loopback clusters; edges carry no Ray token
    os.environ.pop("RAY_ADDRESS", None)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def emit(result: dict[str, Any]) -> None:
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scratch_dir(tag: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"pl-{tag}-"))


def edge_settings(redis_url: str, data_dir: Path, *, namespace: str, prefix: str, port: int | None = None) -> Any:
    from cluster.settings import Settings

    return Settings(
        redis_url=redis_url, port=port or free_port(), prefix=prefix, namespace=namespace, data_dir=data_dir,
    )


EdgeThread = EdgeServer  # the same threaded uvicorn edge the fixtures use


def operator_headers(settings: Any) -> dict[str, str]:
    from api.auth import dev_token

    return {"Authorization": f"Bearer {dev_token(settings, kind='operator')}"}


def device_token(settings: Any, stream: DeviceStream) -> str:
    from api.auth import dev_token

    return dev_token(settings, kind="device", sessions=[stream.session], participant=stream.participant,
                     device=stream.device)



class PatientTransport(httpx.AsyncHTTPTransport):
    """Retries a request the edge answered 503 (a dependency is busy: an actor being placed
    or restarted, a Ray call past its time-out) after its ``Retry-After``, for up to
    ``patience_s``, as a well-behaved client does. Requests here are idempotent."""

    def __init__(self, patience_s: float = 120.0) -> None:
        super().__init__()
        self.patience_s = patience_s

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        deadline = time.monotonic() + self.patience_s
        while True:
            response = await super().handle_async_request(request)
            if response.status_code != 503 or time.monotonic() > deadline:
                return response
            await response.aread()
            await response.aclose()
            await asyncio.sleep(min(2.0, float(response.headers.get("retry-after", "1"))))


def patient_client(url: str, headers: dict[str, str]) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, headers=headers, timeout=60, transport=PatientTransport())

@dataclass
class BoardLog:
    """Every board a viewer on one edge received: version -> rows (with their ranks)."""

    edge: str
    boards: dict[int, list[Any]] = field(default_factory=dict)
    frames: int = 0


async def record_boards(ws_url: str, session: str, token: str, log_: BoardLog, stop: asyncio.Event) -> None:
    url = f"{ws_url}/v1/sessions/{session}/board?rate=10&view=all&token={token}"
    while not stop.is_set():
        try:
            async with connect(url, max_size=2**24) as ws:
                while not stop.is_set():
                    try:
                        message = await asyncio.wait_for(ws.recv(), 0.5)
                    except TimeoutError:
                        continue
                    frame = msgpack.unpackb(message, raw=False) if isinstance(message, bytes) else json.loads(message)
                    if frame.get("t") == "board":
                        log_.frames += 1
                        log_.boards[int(frame["version"])] = frame.get("rows", frame.get("top", []))
        except (OSError, ConnectionClosed, TimeoutError):
            await asyncio.sleep(0.2)


class Riders:
    """``devices`` riders per session, device ``i`` on ``edges[i % len(edges)]``."""

    def __init__(self, edges: list[Any], sessions: list[str], devices: int, *, rate_hz: float = 2.0) -> None:
        self.edges = edges  # objects with .url and .settings
        self.sessions = sessions
        self.rate_hz = rate_hz
        self.streams: list[DeviceStream] = []
        self.clients: list[HubClient] = []
        self.truth_rejected = 0
        for sid in sessions:
            for i in range(devices):
                stream = DeviceStream(f"{sid}-d{i}", f"{sid}-p{i}", sid)
                edge = edges[i % len(edges)]
                ws = edge.url.replace("http://", "ws://")
                client = HubClient(f"{ws}/v1/devices", [stream], token_provider=self._tokens(edge, stream))
                self.streams.append(stream)
                self.clients.append(client)

    @staticmethod
    def _tokens(edge: Any, stream: DeviceStream) -> Any:
        async def provide() -> str:
            return device_token(edge.settings, stream)

        return provide

    async def connect(self, timeout_s: float = 60.0) -> None:
        for client in self.clients:
            client.start()
        await asyncio.wait([asyncio.ensure_future(c.ready.wait()) for c in self.clients], timeout=timeout_s)

    async def drive(self, seconds: float) -> None:
        period = 1.0 / self.rate_hz
        began = time.time()
        for k in range(int(seconds * self.rate_hz)):
            due = began + k * period
            await asyncio.sleep(max(0.0, due - time.time()))
            for n, (stream, client) in enumerate(zip(self.streams, self.clients, strict=True)):
                power = 150.0 + (n % 7) * 20.0
                row = stream.new_sample(due, 120.0, power, 85.0, 8.0, 8.0 * (k + 1))
                await client.send_rows(stream, [row])

    async def drain(self, timeout_s: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(not s.unacked for s in self.streams):
                return True
            await asyncio.sleep(0.1)
        return False

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self.clients))

    async def accounting(self, http: httpx.AsyncClient, drained: bool) -> dict[str, Any]:
        server: dict[str, dict[str, Any]] = {}
        for sid in self.sessions:
            snap = (await http.get(f"/v1/sessions/{sid}")).json()
            server.update({p["participant"]: p for p in snap.get("participants", [])})
        sent = applied = lost = duplicated = rejected = unacked = 0
        for s in self.streams:
            truth = s.sent - len(s.rejected_seqs)
            got = int(server.get(s.participant, {}).get("samples", 0))
            sent += s.sent
            rejected += len(s.rejected_seqs)
            unacked += len(s.unacked)
            applied += got
            lost += max(0, truth - got) + len(s.unacked)
            duplicated += max(0, got - truth)
        return {
            "sent": sent, "applied": applied, "rejected": rejected, "unacknowledged": unacked,
            "lost": lost, "duplicated": duplicated, "drained": drained,
            "reconnects": sum(max(0, c.connects - 1) for c in self.clients),
        }


def new_ids(tag: str) -> tuple[str, str]:
    """A fresh (namespace, redis prefix) pair."""
    suffix = uuid.uuid4().hex[:6]
    return f"pl-{tag}-{suffix}", f"{tag}{suffix}"
