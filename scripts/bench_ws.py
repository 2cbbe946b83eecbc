"""Per-frame CPU of three WebSocket server paths on uvloop (issue 12, point 5).

    .venv/bin/python scripts/bench_ws.py [--clients 500] [--seconds 10] [--rate-hz 4] [--report bench-ws.json]

For each transport the server runs in its own process on uvloop, with the smallest app that
does what the edge does per frame at the transport level: every received binary message is
``msgpack.unpackb``-ed; every sent one is a pre-built 250-byte board, a different ``bytes``
object per connection (the edge sends each rider its own frame):

* ``direct``: uvicorn + ``api.directws.DirectProtocol`` (the edge's path today): frames read
  by ``FrameReader`` and handed to the app in ``data_received``; boards written with
  ``DirectChannel.write``;
* ``picows``: picows' Cython server (``ws_create_server``), ``on_ws_frame`` and
  ``transport.send``;
* ``websockets``: the websockets library's asyncio server (``serve``), ``async for`` over
  the connection and ``broadcast([ws], frame)`` (its cheapest non-blocking write).

Two runs per transport: ``recv`` (clients send ``rate-hz`` frames/s each, the server sends
nothing) and ``send`` (the server sends ``rate-hz`` frames/s to each client, clients only
read). The server measures its own CPU (``getrusage``) over the window and divides by the
frames. The clients are raw sockets with pre-masked frames in another process, so their
cost is not counted. Prints JSON; ``--report`` writes it too. CPU time, not wall time, is
measured, but a busy machine still inflates it (cache, scheduler): compare transports
from the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import resource
import socket
import subprocess
import sys
import time
from typing import Any

import msgpack

TRANSPORTS = ("direct", "picows", "websockets")
BOARD = msgpack.packb({"t": "board", "top": [[f"rider-{i:03d}", 1800 - i] for i in range(10)],
                       "me": [7, 1502, 231, 148, 88, 2101, 1763759999.9], "ts": 1763760000.1, "n": 100,
                       "session": "spin-0700", "version": 81234, "phase": "live", "sum": 143522})
SAMPLE = msgpack.packb({"t": "samples", "device": "dev-000123", "samples": [[812, 1763760000.25, 148, 231, 88, 8.1, 6512.0]]})


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Meter:
    """Counts frames and CPU between ``start`` and ``stop``; prints the result and exits."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.connected = 0
        self.frames = 0
        self.counting = False
        self.done = asyncio.get_event_loop().create_future()

    def on_connect(self) -> None:
        self.connected += 1
        if self.connected == self.args.clients:
            asyncio.get_event_loop().call_later(self.args.warmup, self._start)

    def _start(self) -> None:
        self.frames, self.counting, self.began, self.cpu0 = 0, True, time.monotonic(), _cpu()
        asyncio.get_event_loop().call_later(self.args.seconds, self._stop)

    def _stop(self) -> None:
        cpu, wall = _cpu() - self.cpu0, time.monotonic() - self.began
        self.counting = False
        print(json.dumps({"frames": self.frames, "cpu_s": round(cpu, 4), "wall_s": round(wall, 3),
                          "us_per_frame": round(1e6 * cpu / self.frames, 2) if self.frames else None}), flush=True)
        self.done.set_result(None)


# -- servers ---------------------------------------------------------------------------------
async def serve_direct(args: argparse.Namespace, meter: Meter) -> None:
    import uvicorn

    from api.directws import EXTENSION, DirectProtocol

    channels: list[Any] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        channel = scope["extensions"][EXTENSION]
        lost = asyncio.get_running_loop().create_future()

        def on_message(data: bytes | str) -> None:
            msgpack.unpackb(data)
            meter.frames += meter.counting

        channel.attach(on_message, lambda: lost.done() or lost.set_result(None))
        channels.append(channel)
        meter.on_connect()
        await lost

    config = uvicorn.Config(app, host="127.0.0.1", port=args.port, loop="none", ws=DirectProtocol,
                            log_level="warning", ws_per_message_deflate=False, lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.ensure_future(server.serve())
    if args.mode == "send":
        await _sender(args, meter, lambda frame: [c.write(bytes(frame)) for c in channels])
    await meter.done
    server.should_exit = True
    await task


async def serve_picows(args: argparse.Namespace, meter: Meter) -> None:
    import picows

    transports: list[Any] = []

    class Listener(picows.WSListener):  # type: ignore[misc]
        def on_ws_connected(self, transport: Any) -> None:
            transports.append(transport)
            meter.on_connect()

        def on_ws_frame(self, transport: Any, frame: Any) -> None:
            if frame.msg_type == picows.WSMsgType.BINARY:
                msgpack.unpackb(frame.get_payload_as_bytes())
                meter.frames += meter.counting
            elif frame.msg_type == picows.WSMsgType.CLOSE:
                transport.disconnect()

    server = await picows.ws_create_server(lambda _request: Listener(), "127.0.0.1", args.port)
    if args.mode == "send":
        await _sender(args, meter, lambda frame: [t.send(picows.WSMsgType.BINARY, bytes(frame)) for t in transports])
    await meter.done
    server.close()


async def serve_websockets(args: argparse.Namespace, meter: Meter) -> None:
    from websockets.asyncio.server import broadcast, serve

    connections: list[Any] = []

    async def handler(ws: Any) -> None:
        connections.append(ws)
        meter.on_connect()
        async for message in ws:
            msgpack.unpackb(message)
            meter.frames += meter.counting

    async with serve(handler, "127.0.0.1", args.port, compression=None, max_queue=64):
        if args.mode == "send":
            await _sender(args, meter, lambda frame: [broadcast([ws], bytes(frame)) for ws in connections])
        await meter.done


async def _sender(args: argparse.Namespace, meter: Meter, send_all: Any) -> None:
    """Every 1/rate s, one board to every connection (counted while the meter runs)."""
    period = 1.0 / args.rate_hz
    next_at = time.monotonic()
    while not meter.done.done():
        send_all(BOARD)
        meter.frames += meter.counting * meter.connected
        next_at += period
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))


def server_main(args: argparse.Namespace) -> None:
    import uvloop

    async def main() -> None:
        meter = Meter(args)
        await {"direct": serve_direct, "picows": serve_picows, "websockets": serve_websockets}[args.transport](args, meter)

    uvloop.run(main())


# -- clients: raw sockets, pre-masked frames ----------------------------------------------------
def _masked(payload: bytes) -> bytes:
    mask = os.urandom(4)
    head = bytes((0x82, 0x80 | len(payload))) if len(payload) < 126 else bytes((0x82, 0x80 | 126)) + len(payload).to_bytes(2, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class RawClient(asyncio.Protocol):
    def __init__(self, ready: asyncio.Future[None]) -> None:
        self.ready = ready
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(f"GET /v1/devices HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"  # type: ignore[attr-defined]
                        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())

    def data_received(self, data: bytes) -> None:
        if not self.ready.done():
            self.buf += data
            if b"\r\n\r\n" in self.buf:
                self.ready.set_result(None) if b" 101 " in self.buf.split(b"\r\n")[0] else self.ready.set_exception(
                    RuntimeError(self.buf[:80].decode(errors="replace")))


async def clients_main(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    frame = _masked(SAMPLE)
    conns = []
    for _ in range(args.clients):
        ready = loop.create_future()
        transport, _proto = await loop.create_connection(lambda r=ready: RawClient(r), "127.0.0.1", args.port)
        await asyncio.wait_for(ready, 10)
        conns.append(transport)
    end = time.monotonic() + args.warmup + args.seconds + 2
    if args.mode == "recv":
        period = 1.0 / args.rate_hz
        next_at = time.monotonic()
        while time.monotonic() < end:
            for i, t in enumerate(conns):  # spread over the period, like riders at their own phase
                t.write(frame)
                if i % 50 == 49:
                    await asyncio.sleep(0)
            next_at += period
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    else:
        await asyncio.sleep(end - time.monotonic())
    for t in conns:
        t.abort()


# -- driver -----------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_one(args: argparse.Namespace, transport: str, mode: str) -> dict[str, Any]:
    port = _free_port()
    common = ["--clients", str(args.clients), "--seconds", str(args.seconds), "--rate-hz", str(args.rate_hz),
              "--warmup", str(args.warmup), "--port", str(port), "--mode", mode]
    server = subprocess.Popen([sys.executable, __file__, "--role", "server", "--transport", transport, *common],
                              stdout=subprocess.PIPE, text=True)
    time.sleep(1.5)
    clients = subprocess.Popen([sys.executable, __file__, "--role", "clients", *common])
    try:
        out, _ = server.communicate(timeout=args.warmup + args.seconds + 60)
    finally:
        clients.kill()
        clients.wait()
        if server.poll() is None:
            server.kill()
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--role", choices=("driver", "server", "clients"), default="driver")
    p.add_argument("--transport", choices=TRANSPORTS, default="direct")
    p.add_argument("--transports", default=",".join(TRANSPORTS))
    p.add_argument("--mode", choices=("recv", "send"), default="recv")
    p.add_argument("--clients", type=int, default=500)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--rate-hz", type=float, default=4.0)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--report", default=None)
    args = p.parse_args(argv)
    if args.role == "server":
        server_main(args)
        return 0
    if args.role == "clients":
        import uvloop

        uvloop.run(clients_main(args))
        return 0
    result: dict[str, Any] = {"clients": args.clients, "rate_hz": args.rate_hz, "seconds": args.seconds,
                              "load_before": os.getloadavg(), "transports": {}}
    for transport in args.transports.split(","):
        result["transports"][transport] = {mode: run_one(args, transport, mode) for mode in ("recv", "send")}
    result["load_after"] = os.getloadavg()
    text = json.dumps(result, indent=2)
    print(text)
    if args.report:
        with open(args.report, "w") as out:
            out.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
