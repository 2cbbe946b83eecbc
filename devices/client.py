"""The device side of protocol v1: what a phone, a bridge or a simulated device runs.

``DeviceStream`` is one device's sending state with no I/O: it numbers samples (seq from
1, +1 each), keeps every sample until the server says it is durable (``ack``) or rejected
(``error`` with ``seqs``), and after a (re)``welcome`` returns what must be resent.

``HubClient`` carries one or more streams over one WebSocket to ``/v1/devices``, and
reconnects with jittered exponential backoff: on every connect it says ``hello`` for all
its devices, and resends from where each ``welcome`` says the server is. Given several edge
URLs it fails over: a connection that cannot be opened or that breaks moves it to the next
URL (round robin), so a dead edge costs one back-off, and nothing unacknowledged is lost
(every edge serves every session). It authenticates with
``token`` or, better, a ``token_provider`` (an async callable returning a fresh token):
asked on every connect, and again when the server warns ``token_expiring`` (the fresh token
goes in an in-band ``auth`` frame, so a long class never drops). ``DevTokens`` obtains
development tokens from a dev-mode edge (see ``docs/security.md``), trying each of its
edge URLs in turn. ``on_frame`` lets a
caller observe server frames (the swarm counts them).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import msgpack
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from devices.protocol import MAX_DEVICES_PER_HELLO, encode
from devices.errors import DevicesError

log = logging.getLogger(__name__)


class DeviceStream:
    def __init__(self, device: str, participant: str, session: str) -> None:
        self.device = device
        self.participant = participant
        self.session = session
        self.next_seq = 1
        self.unacked: dict[int, list[Any]] = {}
        self.acked = 0
        self.rejected: Counter[str] = Counter()
        self.rejected_seqs: set[int] = set()
        self.sent = 0

    def new_sample(self, ts: float, *metrics: float | None) -> list[Any]:
        row = [self.next_seq, ts, *metrics]
        self.unacked[self.next_seq] = row
        self.next_seq += 1
        self.sent += 1
        return row

    def on_ack(self, seq: int) -> None:
        if seq > self.acked:
            self.acked = seq
            for s in [s for s in self.unacked if s <= seq]:
                del self.unacked[s]

    def on_welcome(self, seq: int) -> list[list[Any]]:
        """The server is durable up to ``seq``: returns every kept sample after it."""
        self.on_ack(seq)
        return [self.unacked[s] for s in sorted(self.unacked)]

    def pending_rows(self) -> list[list[Any]]:
        """Every kept sample, oldest first (what a ``throttle`` makes the hub resend)."""
        return [self.unacked[s] for s in sorted(self.unacked)]

    def on_rejected(self, seqs: Iterable[int], reason: str) -> None:
        for seq in seqs:
            if self.unacked.pop(seq, None) is not None:
                self.rejected[reason] += 1
                self.rejected_seqs.add(seq)

    def binding(self) -> dict[str, str]:
        return {"device": self.device, "participant": self.participant, "session": self.session}


FrameObserver = Callable[[dict[str, Any]], None]
TokenSource = Callable[[], Awaitable[str]]


class DevTokens:
    """Development tokens from a dev-mode edge's ``POST /v1/dev/tokens`` (loopback only).

    ``await tokens(kind="device", sessions=[s], participant=p, device=d)``; production
    clients get their tokens from the identity provider instead.
    """

    def __init__(self, base_url: str | Sequence[str], *, ttl_s: float | None = None, timeout_s: float = 30.0) -> None:
        urls = [base_url] if isinstance(base_url, str) else list(base_url)
        if not urls:
            raise ValueError("DevTokens needs at least one edge URL")
        self.base_urls = [u.rstrip("/").replace("ws://", "http://").replace("wss://", "https://") for u in urls]
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self._next = 0
        # one HTTP client (kept-alive connections) per event loop: a client per token cost a
        # TLS context and a TCP connection each — tens of ms of CPU per token, which starved a
        # swarm of a few thousand joiners
        self._http: tuple[Any, Any] | None = None

    def _client(self) -> Any:
        import httpx

        loop = asyncio.get_running_loop()
        if self._http is None or self._http[0] is not loop or self._http[1].is_closed:
            self._http = (loop, httpx.AsyncClient(timeout=self.timeout_s,
                                                  limits=httpx.Limits(max_connections=32, max_keepalive_connections=32)))
        return self._http[1]

    async def aclose(self) -> None:
        if self._http is not None and self._http[0] is asyncio.get_running_loop():
            await self._http[1].aclose()
        self._http = None

    @property
    def base_url(self) -> str:
        return self.base_urls[self._next]

    async def __call__(self, **claims: Any) -> str:
        """A token from the first edge that answers; the last failure is raised when none does."""
        import httpx

        body = {k: v for k, v in claims.items() if v is not None}
        if self.ttl_s is not None:
            body.setdefault("ttl_s", self.ttl_s)
        failure: Exception | None = None
        for _ in range(len(self.base_urls)):
            try:
                response = await self._client().post(f"{self.base_url}/v1/dev/tokens", json=body)
                response.raise_for_status()
                return str(response.json()["token"])
            except httpx.HTTPError as exc:  # down, refused, 5xx: the next edge
                failure = exc
                self._next = (self._next + 1) % len(self.base_urls)
        assert failure is not None
        raise failure


def stream_token_source(tokens: Callable[..., Awaitable[str]], streams: list[DeviceStream], hub: str | None = None) -> TokenSource:
    """Fresh tokens for a connection: a device token for one stream, a hub token (its devices
    registered in the token) for several. ``tokens(**claims)`` mints or fetches one."""
    if len(streams) == 1 and hub is None:
        s = streams[0]
        return lambda: tokens(kind="device", device=s.device, participant=s.participant, sessions=[s.session])
    devices = sorted(s.device for s in streams)
    sessions = sorted({s.session for s in streams})
    return lambda: tokens(kind="hub", hub=hub or f"hub-{devices[0]}", devices=devices, sessions=sessions)


class TokenUnavailable(DevicesError):
    """The token provider failed; the client backs off and asks again."""


STALL_S = 5.0  # samples unanswered this long, then a ping unanswered as long: the edge is frozen


class HubClient:
    """One WebSocket carrying ``streams``; reconnects until ``close()``."""

    def __init__(
        self,
        url: str | Sequence[str],
        streams: Iterable[DeviceStream],
        *,
        on_frame: FrameObserver | None = None,
        token: str | None = None,
        token_provider: TokenSource | None = None,
        max_backoff_s: float = 5.0,
        chunk: int = 500,
        hub: str | None = None,
        board: dict[str, Any] | None = None,
        stall_s: float = STALL_S,
    ) -> None:
        self.urls = [url] if isinstance(url, str) else list(url)
        if not self.urls:
            raise ValueError("HubClient needs at least one edge URL")
        self._url_index = 0
        self.failovers = 0  # moves to another URL after a failed or broken connection
        self.board = board  # protocol v1.1: {"rate": Hz, "participant"?: ...}; boards carry the acks
        self.streams = {s.device: s for s in streams}
        self.on_frame = on_frame
        self.token = token
        self.token_provider = token_provider
        self.max_backoff_s = max_backoff_s
        self.chunk = chunk
        self.hub = hub
        self.ws: ClientConnection | None = None
        self.ready = asyncio.Event()
        self.welcomed_at: float | None = None  # monotonic time of the first full welcome
        # seats and admission: the class queued a device of ours (it waits, keeping its
        # samples, until its welcome); the first position told, the latest, frames seen
        self.queue_first: int | None = None
        self.queue_position: int | None = None
        self.queue_frames = 0
        self.queued_at: float | None = None  # monotonic time of the first queue frame
        self.connects = 0
        # an edge that holds the connection but answers nothing (frozen, SIGSTOPped): samples
        # sent and nothing heard for ``stall_s``, and no pong within it either: reconnect,
        # to the next URL (the server acks at least once a second while samples flow)
        self.stall_s = stall_s
        self._unheard_since: float | None = None  # monotonic: the first send since the edge last said anything
        self.stalls = 0
        self.errors: Counter[str] = Counter()
        self._welcomed: set[str] = set()
        self._closing = False
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        """The edge URL this client uses now (or tries next)."""
        return self.urls[self._url_index]

    def _fail_over(self) -> None:
        if len(self.urls) > 1:
            self._url_index = (self._url_index + 1) % len(self.urls)
            self.failovers += 1

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self, *, bye: bool = False, timeout_s: float = 10.0) -> None:
        """Hang up; with ``bye``, say so first (the rider leaves: its seat goes to the next
        rider sooner, docs/protocol.md#seats-and-admission) and let the server close."""
        self._closing = True
        self._stop.set()  # cuts a reconnect backoff short
        ws = self.ws
        if bye and ws is not None:
            try:
                await ws.send(encode({"t": "bye"}))
                await asyncio.wait_for(ws.wait_closed(), timeout_s)
            except (ConnectionClosed, TimeoutError):
                pass
        if self.ws is not None:
            await self.ws.close()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    async def add_stream(self, stream: DeviceStream) -> None:
        """Carry one more device; says ``hello`` for it now if connected (else on connect)."""
        self.streams[stream.device] = stream
        self.ready.clear()
        ws = self.ws
        if ws is None:
            return
        try:
            await ws.send(encode(self._hello_frame([stream])))
        except ConnectionClosed:
            pass  # the reconnect says hello for every stream

    def _hello_frame(self, streams: Iterable[DeviceStream]) -> dict[str, Any]:
        frame: dict[str, Any] = {"t": "hello", "v": 1, "devices": [s.binding() for s in streams]}
        if self.board is not None:
            frame["v"] = 1.1
            frame["board"] = self.board
        if self.token:
            frame["token"] = self.token
        if self.hub:
            frame["hub"] = self.hub
        return frame

    async def send_rows(self, stream: DeviceStream, rows: list[list[Any]]) -> bool:
        """Send now if connected and welcomed; otherwise the rows wait in ``unacked``."""
        ws = self.ws
        if ws is None or stream.device not in self._welcomed:
            return False
        try:
            for i in range(0, len(rows), self.chunk):
                await ws.send(encode({"t": "samples", "device": stream.device, "samples": rows[i : i + self.chunk]}))
        except ConnectionClosed:
            return False
        if rows and self._unheard_since is None:
            self._unheard_since = time.monotonic()
        return True

    async def _run(self) -> None:
        backoff = 0.1
        while not self._closing:
            if await self._held_offline():
                continue
            try:
                if self.token_provider is not None:
                    self.token = await self._fresh_token()
                async with connect(self.url, max_size=2**22, open_timeout=10) as ws:
                    self.ws = ws
                    self.connects += 1
                    backoff = 0.1
                    self._unheard_since = None
                    watch = asyncio.get_running_loop().create_task(self._watch(ws))
                    try:
                        streams = list(self.streams.values())
                        for i in range(0, len(streams), MAX_DEVICES_PER_HELLO):
                            await ws.send(encode(self._hello_frame(streams[i : i + MAX_DEVICES_PER_HELLO])))
                        async for message in ws:
                            self._unheard_since = None
                            await self._handle(msgpack.unpackb(message, raw=False) if isinstance(message, bytes) else {})
                    finally:
                        watch.cancel()
            except (OSError, ConnectionClosed, TimeoutError, TokenUnavailable, InvalidHandshake) as exc:
                # (InvalidHandshake: a refused upgrade, or a server that closed the connection
                # before its answer — a loaded edge's head timeout — InvalidMessage: try again)
                self.errors[type(exc).__name__] += 1
                if not self._closing:
                    self._fail_over()
            except Exception as exc:  # anything else: counted and logged, never the end of the client
                self.errors[type(exc).__name__] += 1
                log.warning("device connection to %s failed: %r; reconnecting", self.url, exc)
                if not self._closing:
                    self._fail_over()
            finally:
                self.ws = None
                self._welcomed.clear()
                self.ready.clear()
            if not self._closing:
                try:
                    await asyncio.wait_for(self._stop.wait(), backoff * (0.5 + random.random()))
                except TimeoutError:
                    pass
                backoff = min(backoff * 2, self.max_backoff_s)

    async def _watch(self, ws: ClientConnection) -> None:
        """Drop a connection whose edge stopped answering: samples went out ``stall_s`` ago
        and nothing came back since, and a ping gets no pong within ``stall_s`` either (an
        edge that is only slow to ack, e.g. while Redis is away, answers the ping and
        keeps its riders). The reconnect goes to the next URL and resends what was not
        acknowledged."""
        while True:
            await asyncio.sleep(min(1.0, self.stall_s / 4))
            since = self._unheard_since
            if since is None or time.monotonic() - since < self.stall_s:
                continue
            try:
                await asyncio.wait_for(await ws.ping(), self.stall_s)
                self._unheard_since = time.monotonic()  # alive: wait another stall_s
            except (TimeoutError, ConnectionClosed):
                self.stalls += 1
                log.warning("edge %s answered nothing for %.0f s: reconnecting", self.url, time.monotonic() - since)
                ws.transport.abort()
                return

    async def _held_offline(self) -> bool:
        """Hook for subclasses that go offline on purpose: wait and return True to skip a
        connect attempt. A real client is never held."""
        return False

    async def _handle(self, frame: dict[str, Any]) -> None:
        if self.on_frame is not None:
            self.on_frame(frame)
        kind = frame.get("t")
        if kind == "ack" or (kind == "board" and "acks" in frame):
            for device, seq in frame["acks"].items():
                if device in self.streams:
                    self.streams[device].on_ack(seq)
        elif kind == "welcome":
            for device, seq in frame["devices"].items():
                stream = self.streams.get(device)
                if stream is not None:
                    self._welcomed.add(device)
                    await self.send_rows(stream, stream.on_welcome(seq))
            if len(self._welcomed) == len(self.streams):
                self.ready.set()
                if self.welcomed_at is None:
                    self.welcomed_at = time.monotonic()
        elif kind == "queue":  # waiting for a seat: nothing to do but wait (the welcome follows)
            self.queue_frames += 1
            self.queue_position = frame.get("position")
            if self.queue_first is None:
                self.queue_first = self.queue_position
                self.queued_at = time.monotonic()
        elif kind == "error" and frame.get("code") == "token_expiring":
            await self._renew()
        elif kind == "error":
            stream = self.streams.get(frame.get("device", ""))
            if stream is not None and frame.get("seqs"):
                stream.on_rejected(frame["seqs"], frame["code"])
            else:
                self.errors[frame.get("code", "error")] += 1
        elif kind == "throttle":
            await asyncio.sleep(frame.get("retry_after_ms", 1000) / 1000)
            stream = self.streams.get(frame.get("device", ""))
            if stream is not None:
                await self.send_rows(stream, stream.pending_rows())

    async def _fresh_token(self) -> str:
        assert self.token_provider is not None
        try:
            return await self.token_provider()
        except Exception as exc:  # any provider (HTTP, file, IdP): back off and retry
            raise TokenUnavailable(f"{type(exc).__name__}: {exc}") from exc

    async def _renew(self) -> None:
        """Send a fresh token in-band; without a provider the server closes (4401) at expiry
        and the reconnect says hello again."""
        ws = self.ws
        if self.token_provider is None or ws is None:
            return
        try:
            self.token = await self._fresh_token()
            await ws.send(encode({"t": "auth", "token": self.token}))
        except (ConnectionClosed, TokenUnavailable) as exc:  # the reconnect after expiry retries
            self.errors[type(exc).__name__] += 1
