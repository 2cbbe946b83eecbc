"""The edge's direct WebSocket path (``api/directws.py``) at the byte level, and plain ASGI.

A raw socket client speaks RFC 6455 itself here, so the tests can send what a library
client never would: several frames in one TCP write, fragments, pings, unmasked frames,
invalid UTF-8. The rest of the suite drives the same path through ordinary clients.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import time
from typing import Any

import httpx
import msgpack
import pytest

from api.directws import DirectProtocol, frame_header


def pack(frame: Any) -> bytes:
    return msgpack.packb(frame, use_bin_type=True)


class RawClient:
    """A blocking RFC 6455 client over a plain socket (client frames masked unless told not to)."""

    def __init__(self, ws_url: str, path: str) -> None:
        host, port = ws_url.removeprefix("ws://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            self._more()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101"), head

    def _more(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError("connection closed")
        self.buf += chunk

    @staticmethod
    def frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bool = True) -> bytes:
        first = (0x80 if fin else 0) | opcode
        size = len(payload)
        if size < 126:
            head = bytes((first, (0x80 if mask else 0) | size))
        elif size < 1 << 16:
            head = struct.pack("!BBH", first, (0x80 if mask else 0) | 126, size)
        else:
            head = struct.pack("!BBQ", first, (0x80 if mask else 0) | 127, size)
        if not mask:
            return head + payload
        key = os.urandom(4)
        return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))

    def send(self, *frames: bytes) -> None:
        self.sock.sendall(b"".join(frames))  # one TCP write for all of them

    def recv(self) -> tuple[int, bytes]:
        """(opcode, payload) of the next server frame (servers never mask, never fragment here)."""
        while len(self.buf) < 2:
            self._more()
        first, second = self.buf[0], self.buf[1]
        assert not second & 0x80, "a server frame must not be masked"
        size, offset = second & 0x7F, 2
        if size == 126:
            while len(self.buf) < 4:
                self._more()
            size, offset = struct.unpack("!H", self.buf[2:4])[0], 4
        elif size == 127:
            while len(self.buf) < 10:
                self._more()
            size, offset = struct.unpack("!Q", self.buf[2:10])[0], 10
        while len(self.buf) < offset + size:
            self._more()
        payload, self.buf = self.buf[offset:offset + size], self.buf[offset + size:]
        return first & 0x0F, payload

    def recv_message(self) -> dict[str, Any]:
        while True:
            opcode, payload = self.recv()
            if opcode == 0x2:
                return msgpack.unpackb(payload, raw=False)  # type: ignore[no-any-return]
            assert opcode in (0x9, 0xA), f"unexpected opcode {opcode}"

    def recv_close(self) -> tuple[int, str]:
        while True:
            opcode, payload = self.recv()
            if opcode == 0x8:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                return code, payload[2:].decode()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def session(edge: Any, unique_id: str, tokens: Any) -> str:
    sid = f"direct-{unique_id}"
    httpx.post(f"{edge.url}/v1/sessions", json={"id": sid}, headers=tokens.headers()).raise_for_status()
    return sid


def _hello(tokens: Any, sid: str, device: str = "dev") -> dict[str, Any]:
    token = tokens("device", device=device, participant="p", sessions=[sid])
    return {"t": "hello", "v": 1, "token": token, "devices": [{"device": device, "participant": "p", "session": sid}]}


def _rows(first: int, last: int) -> list[list[Any]]:
    now = time.time()
    return [[seq, now - (last - seq) * 0.01, 120.0, 200.0] for seq in range(first, last + 1)]


def _acked_up_to(client: RawClient, device: str, seq: int) -> dict[str, Any]:
    """Frames until ``device`` is acknowledged up to ``seq`` (the welcome counts)."""
    seen: dict[str, Any] = {}
    while True:
        frame = client.recv_message()
        seen.setdefault(frame["t"], []).append(frame)
        got = (frame.get("acks") or frame.get("devices") or {}).get(device, -1)
        if frame["t"] in ("ack", "welcome") and got >= seq:
            return seen


def test_the_edge_serves_devices_on_the_direct_path(edge: Any, session: str, tokens: Any) -> None:
    client = RawClient(edge.ws_url, "/v1/devices")
    try:
        # hello and two samples frames in ONE write, before any welcome: the samples wait
        # for the hello (which needs I/O: the session lookup) and are then taken in order
        client.send(
            RawClient.frame(0x2, pack(_hello(tokens, session))),
            RawClient.frame(0x2, pack({"t": "samples", "device": "dev", "samples": _rows(1, 5)})),
            RawClient.frame(0x2, pack({"t": "samples", "device": "dev", "samples": _rows(6, 10)})),
        )
        seen = _acked_up_to(client, "dev", 10)
        assert seen["welcome"][0]["devices"] == {"dev": 0}
        assert "error" not in seen, seen["error"]
        protocols = [p for p in edge.server.server_state.connections if isinstance(p, DirectProtocol)]
        assert any(p._on_message is not None for p in protocols), "no connection took the direct path"
    finally:
        client.close()
    snap = httpx.get(f"{edge.url}/v1/sessions/{session}", headers=tokens.headers()).json()
    assert snap["participants"][0]["samples"] == 10


def test_fragments_pings_and_text_frames_on_the_direct_path(edge: Any, session: str, tokens: Any) -> None:
    client = RawClient(edge.ws_url, "/v1/devices")
    try:
        hello = pack(_hello(tokens, session))
        client.send(RawClient.frame(0x2, hello[:10], fin=False), RawClient.frame(0x0, hello[10:]))  # fragmented
        assert client.recv_message()["t"] == "welcome"
        client.send(RawClient.frame(0x9, b"are you there"))
        opcode, payload = client.recv()
        assert (opcode, payload) == (0xA, b"are you there")  # pong echoes the ping
        text = json.dumps({"t": "samples", "device": "dev", "samples": _rows(1, 3)}).encode()
        client.send(RawClient.frame(0x1, text))  # JSON in a text frame
        seen = _acked_up_to(client, "dev", 3)
        assert "error" not in seen, seen["error"]
        client.send(RawClient.frame(0x1, json.dumps({"t": "launch"}).encode()))
        error = client.recv_message()
        assert error["t"] == "error" and error["code"] == "unknown_type" and error["fatal"] is False
        client.send(RawClient.frame(0x8, struct.pack("!H", 1000)))
        assert client.recv_close()[0] == 1000  # the close handshake completes
    finally:
        client.close()


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (RawClient.frame(0x1, b"\xff\xfe not utf-8"), 1007),
        (RawClient.frame(0x2, b"unmasked", mask=False), 1002),
        # only the head of the oversized frame: the size is refused from its header, and a
        # client still writing a megabyte after the close got EPIPE/RST under load (CI flake)
        (RawClient.frame(0x2, b"x" * ((1 << 20) + 1))[:64], 1009),
    ],
    ids=["invalid-utf8", "unmasked", "over-1MiB"],
)
def test_transport_violations_close_with_the_rfc_code_and_spare_other_devices(
    edge: Any, session: str, tokens: Any, frame: bytes, code: int
) -> None:
    from prometheus_client import REGISTRY

    def closes() -> float:  # (the test edge runs in this process: its counters are these)
        return REGISTRY.get_sample_value("pulseline_closes_total", {"code": str(code)}) or 0.0

    bystander = RawClient(edge.ws_url, "/v1/devices")
    offender = RawClient(edge.ws_url, "/v1/devices")
    try:
        bystander.send(RawClient.frame(0x2, pack(_hello(tokens, session, "calm"))))
        assert bystander.recv_message()["t"] == "welcome"
        offender.send(RawClient.frame(0x2, pack(_hello(tokens, session, "rude"))))
        assert offender.recv_message()["t"] == "welcome"
        before = closes()
        offender.send(frame)
        assert offender.recv_close()[0] == code
        assert closes() == before + 1  # pulseline_closes_total counts the edge's transport closes too
        bystander.send(RawClient.frame(0x2, pack({"t": "samples", "device": "calm", "samples": _rows(1, 4)})))
        assert "error" not in _acked_up_to(bystander, "calm", 4)
    finally:
        bystander.close()
        offender.close()


def test_frame_header_sizes() -> None:
    assert frame_header(0x2, 5) == b"\x82\x05"
    assert frame_header(0x2, 125) == b"\x82\x7d"
    assert frame_header(0x2, 126) == b"\x82\x7e\x00\x7e"
    assert frame_header(0x1, 65535) == b"\x81\x7e\xff\xff"
    assert frame_header(0x2, 65536) == b"\x82\x7f" + (65536).to_bytes(8, "big")


def test_plain_asgi_still_serves_devices_and_boards(edge_settings: Any, unique_id: str, tokens: Any) -> None:
    """``PULSELINE_DIRECT_WS=false``: uvicorn's own protocol, every frame through ASGI."""
    from tests.conftest import EdgeServer, _free_port

    settings = edge_settings.model_copy(update={"port": _free_port(), "direct_ws": False})
    server = EdgeServer(settings).start()
    sid = f"asgi-{unique_id}"
    try:
        httpx.post(f"{server.url}/v1/sessions", json={"id": sid}, headers=tokens.headers()).raise_for_status()
        client = RawClient(server.ws_url, "/v1/devices")
        viewer = RawClient(server.ws_url, f"/v1/sessions/{sid}/board?rate=10&participant=p&token={tokens('operator')}")
        try:
            client.send(
                RawClient.frame(0x2, pack(_hello(tokens, sid))),
                RawClient.frame(0x2, pack({"t": "samples", "device": "dev", "samples": _rows(1, 6)})),
            )
            seen = _acked_up_to(client, "dev", 6)
            assert "error" not in seen
            assert not any(isinstance(p, DirectProtocol) for p in server.server.server_state.connections)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                board = viewer.recv_message()
                if board.get("you") and board["you"][0] == "p":
                    break
            else:
                raise AssertionError("no board with the participant's own row")
        finally:
            client.close()
            viewer.close()
    finally:
        server.stop()


# -- FrameReader on byte vectors -------------------------------------------------------------


def _feed_all(reader: Any, data: bytes, step: int) -> list[tuple[int, Any]]:
    out: list[tuple[int, Any]] = []
    for at in range(0, len(data), step):
        out += reader.feed(data[at:at + step])
    return out


@pytest.mark.parametrize("step", [1, 2, 3, 7, 1000000])
def test_frame_reader_yields_the_same_messages_however_the_bytes_are_split(step: int) -> None:
    from api.directws import FrameReader

    big = os.urandom(70000)  # a 64-bit length
    mid = os.urandom(300)  # a 16-bit length
    stream = b"".join([
        RawClient.frame(0x2, b"small"),
        RawClient.frame(0x1, "héllo".encode()),
        RawClient.frame(0x2, mid[:100], fin=False),
        RawClient.frame(0x9, b"ping in the middle"),  # control frames may interleave fragments
        RawClient.frame(0x0, mid[100:250], fin=False),
        RawClient.frame(0x0, mid[250:]),
        RawClient.frame(0x2, big),
        RawClient.frame(0x2, b""),
        RawClient.frame(0xA, b""),
    ])
    got = _feed_all(FrameReader(1 << 20), stream, step)
    assert got == [(0x2, b"small"), (0x1, "héllo"), (0x9, b"ping in the middle"), (0x2, mid), (0x2, big),
                   (0x2, b""), (0xA, b"")]


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (bytes([0x82 | 0x40, 0x80]) + b"mask", 1002),  # RSV1 without an extension
        (RawClient.frame(0x3, b"x"), 1002),  # reserved data opcode
        (RawClient.frame(0xB, b"x"), 1002),  # reserved control opcode
        (RawClient.frame(0x9, b"x", fin=False), 1002),  # fragmented control frame
        (RawClient.frame(0x9, b"x" * 126), 1002),  # control frame over 125 bytes
        (RawClient.frame(0x0, b"x"), 1002),  # continuation of nothing
        (RawClient.frame(0x2, b"a", fin=False) + RawClient.frame(0x2, b"b"), 1002),  # new message mid-fragments
        (RawClient.frame(0x2, b"x", mask=False), 1002),
        (RawClient.frame(0x2, b"x" * 600, fin=False) + RawClient.frame(0x0, b"x" * 600), 1009),  # over max in total
        (RawClient.frame(0x1, b"\xc3"), 1007),  # truncated UTF-8
    ],
)
def test_frame_reader_refuses_what_a_client_may_not_send(data: bytes, code: int) -> None:
    from api.directws import FrameReader, Violation

    with pytest.raises(Violation) as refused:
        _feed_all(FrameReader(1000), data, 1)
    assert refused.value.code == code


def test_a_board_viewer_gets_pongs_and_a_close_echo_on_the_direct_protocol(
    edge: Any, session: str, tokens: Any
) -> None:
    viewer = RawClient(edge.ws_url, f"/v1/sessions/{session}/board?rate=1&token={tokens('operator')}")
    try:
        viewer.send(RawClient.frame(0x9, b"still there?"))
        while True:
            opcode, payload = viewer.recv()
            if opcode == 0xA:
                break
            assert opcode == 0x2  # boards may come first
        assert payload == b"still there?"
        viewer.send(RawClient.frame(0x8, struct.pack("!H", 1001) + b"going away"))
        assert viewer.recv_close() == (1001, "going away")
    finally:
        viewer.close()


class _GoneChannel:
    """The DirectChannel surface of a connection that is going away (the peer vanished)."""

    open = False
    can_write = False

    async def wait_writable(self) -> None:
        return None  # a lost transport is "writable": nothing will ever wait for it

    def write(self, frame: Any) -> bool:
        return False

    def close(self, code: int, reason: str) -> None:
        pass


def test_an_outbox_whose_connection_went_away_stops_instead_of_spinning() -> None:
    """A board arriving for a viewer whose transport is closing once made the writer loop
    forever without yielding (the capacity bench hung); now the writer just ends."""
    import asyncio
    import threading

    from api.outbox import Outbox

    async def scenario() -> int:
        outbox = Outbox(None, board_interval_s=0.1, encode_board=lambda b: b"board", channel=_GoneChannel())  # type: ignore[arg-type]
        writer = asyncio.create_task(outbox.run())
        await asyncio.sleep(0)
        outbox.set_board({"version": 1})
        outbox.send(b"ack")
        await asyncio.wait_for(writer, 5)
        return outbox.boards_sent

    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(asyncio.run(scenario())), daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "the outbox writer is spinning"
    assert result == [0]


class _PausedChannel(_GoneChannel):
    """An open connection whose client stopped reading: the transport stays paused."""

    open = True

    def __init__(self) -> None:
        import asyncio

        self.written: list[Any] = []
        self.closed_with: tuple[int, str] | None = None
        self.writable = asyncio.Event()

    async def wait_writable(self) -> None:
        await self.writable.wait()

    @property
    def can_write(self) -> bool:  # type: ignore[override]
        return self.writable.is_set()

    def write(self, frame: Any) -> bool:
        self.written.append(frame)
        return True

    def close(self, code: int, reason: str) -> None:
        self.closed_with = (code, reason)
        self.open = False  # type: ignore[misc]


def test_a_direct_outbox_queues_while_paused_keeps_order_and_closes_a_client_that_never_reads() -> None:
    import asyncio

    from api.outbox import Outbox

    async def scenario() -> tuple[list[Any], list[Any], tuple[int, str] | None]:
        slow, stuck = _PausedChannel(), _PausedChannel()
        drained = Outbox(None, max_frames=8, channel=slow)  # type: ignore[arg-type]
        closed = Outbox(None, max_frames=8, channel=stuck)  # type: ignore[arg-type]
        writers = [asyncio.create_task(drained.run()), asyncio.create_task(closed.run())]
        for n in range(5):
            drained.send(b"%d" % n)
        await asyncio.sleep(0.01)
        assert slow.written == []  # nothing written while paused
        slow.writable.set()
        await asyncio.sleep(0.01)
        drained.send(b"5")  # after the queue drained: written at once, in order
        for n in range(9):  # one over max_frames while paused
            closed.send(b"%d" % n)
        assert stuck.closed_with is not None  # at once, though the writer waits on the transport
        stuck.writable.set()  # the transport closes (close_timeout or the peer's echo)
        await asyncio.wait_for(writers[1], 5)
        drained.close(1000, "bye")
        await asyncio.wait_for(writers[0], 5)
        return slow.written, stuck.written, stuck.closed_with

    written, stuck_written, closed_with = asyncio.run(scenario())
    assert written == [b"0", b"1", b"2", b"3", b"4", b"5"]
    assert stuck_written == [] and closed_with is not None and closed_with[0] == 4429


def test_a_flood_of_hellos_in_one_write_is_answered_in_order(edge: Any, session: str, tokens: Any) -> None:
    """A hub sends 40 hellos (one device each) and then a samples frame per device, all in
    one write: the hellos wait in the connection's backlog (reading pauses at 16) and the
    samples behind them are taken only after their device's hello (else unknown_device)."""
    devices = [f"bike-{n}" for n in range(40)]
    token = tokens("hub", hub="studio", devices=devices, sessions=[session])
    client = RawClient(edge.ws_url, "/v1/devices")
    try:
        hellos = [
            RawClient.frame(0x2, pack({"t": "hello", "v": 1, "token": token, "hub": "studio",
                                       "devices": [{"device": d, "participant": f"p-{d}", "session": session}]}))
            for d in devices
        ]
        samples = [RawClient.frame(0x2, pack({"t": "samples", "device": d, "samples": _rows(1, 2)})) for d in devices]
        client.send(*hellos, *samples)
        welcomed: set[str] = set()
        acked: dict[str, int] = {}
        deadline = time.monotonic() + 30
        while (len(welcomed) < 40 or any(acked.get(d, 0) < 2 for d in devices)) and time.monotonic() < deadline:
            frame = client.recv_message()
            assert frame["t"] in ("welcome", "ack", "auth_ok"), frame  # (a later hello's token renews)
            if frame["t"] == "welcome":
                welcomed |= set(frame["devices"])
            elif frame["t"] == "ack":
                acked.update(frame["acks"])
        assert welcomed == set(devices)
        assert all(acked.get(d) == 2 for d in devices), acked
    finally:
        client.close()


@pytest.mark.integration
def test_a_connection_that_sends_messages_is_not_pinged_a_silent_one_is(own_edge: Any, unique_id: str) -> None:
    """Keepalive pings go only to connections that sent no message for an interval: a device
    streaming samples shows it is alive by them."""
    edge, tokens = own_edge(ws_ping_interval_s=0.3, ws_ping_timeout_s=5.0)
    sid = f"ping-{unique_id}"
    httpx.post(f"{edge.url}/v1/sessions", json={"id": sid}, headers=tokens.headers()).raise_for_status()
    clients = {"chatty": RawClient(edge.ws_url, "/v1/devices"), "silent": RawClient(edge.ws_url, "/v1/devices")}
    pings = {"chatty": 0, "silent": 0}

    def read(name: str, wait_s: float) -> list[dict[str, Any]]:
        """Messages that come within ``wait_s``; pings are counted and answered."""
        client, got = clients[name], []
        client.sock.settimeout(wait_s)
        try:
            while True:
                opcode, payload = client.recv()
                if opcode == 0x9:
                    pings[name] += 1
                    client.send(RawClient.frame(0xA, payload))  # the pong
                elif opcode == 0x2:
                    got.append(msgpack.unpackb(payload, raw=False))
        except TimeoutError:
            return got

    try:
        for name, client in clients.items():
            client.send(RawClient.frame(0x2, pack(_hello(tokens, sid, name))))
        welcomed: set[str] = set()
        deadline = time.monotonic() + 30
        while welcomed != set(clients) and time.monotonic() < deadline:
            welcomed |= {name for name in clients if any(m["t"] == "welcome" for m in read(name, 0.05))}
        assert welcomed == set(clients)
        seq = 0

        def stream(seconds: float) -> None:
            nonlocal seq
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                seq += 1  # a message every ~0.1 s: more often than the interval
                clients["chatty"].send(RawClient.frame(0x2, pack({"t": "samples", "device": "chatty", "samples": _rows(seq, seq)})))
                read("chatty", 0.05)
                read("silent", 0.05)

        stream(1.0)  # (a ping sent while the welcome was awaited is answered by now)
        pings = {"chatty": 0, "silent": 0}
        stream(2.5)  # ~8 ping intervals
        assert pings["chatty"] == 0 and pings["silent"] >= 3, pings
    finally:
        for client in clients.values():
            client.close()
