"""Per-connection sending: bounded control frames, and a latest-wins board slot.

A connection never makes server memory grow: control frames (welcome, ack, error,
throttle) go through a bounded deque — a client that lets it fill up is closed as too
slow — and boards are kept one deep (a newer board replaces an unsent one), sent at the
rate the viewer asked for.

With a :class:`~api.directws.DirectChannel` (the edge's default under uvicorn) frames are
written to the transport at once, from the caller, and boards are sent by the session's
pump, which ticks once per period of its fastest viewer and, each tick, offers the new
board to every viewer (``offer``) or lets waiting ones go (``flush_due``): a board goes when
the viewer's slot is at most half a tick away, slots being one period apart on one grid, so
boards go on the first tick of each period and a viewer asking 1 board/s gets 1 board/s.
No timer and no task per connection.
The bounded queue is used only while the transport is paused (the client reads slower
than we write), with the same close when it fills.

Protocol v1.1 (``carries_acks``): a device connection that also receives its board gets
its acks inside the board frames — one frame per board period when nothing else happens.
Acks that found no board for a whole period (a class with nothing new) go alone as ``ack``.

Without a channel (plain ASGI) a writer task sends the frames and the boards itself.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import logging
import time
from collections.abc import Callable
from typing import Any

from starlette.websockets import WebSocket

from api.directws import DirectChannel
from api.metrics import BOARDS_OUT, count_close
from devices.protocol import CloseCode, encode

log = logging.getLogger(__name__)

BoardEncoder = Callable[..., bytes | str]  # (board) or, carrying acks, (board, acks)
SLOT_SLACK_S = 0.01  # ASGI path: a board may go this much before its period is up (at most 10% of it)
ACK_GRACE_S = 0.05  # how long past a board period acks wait for a board before going alone
FLUSH_TIMEOUT_S = 2.0  # what a closing connection may spend sending its last frames
MAX_REASON_BYTES = 120  # a close reason may carry at most 123 bytes of UTF-8


class OutboxState(enum.Enum):
    OPEN = "open"  # frames and boards go out
    CLOSING = "closing"  # closed for new frames; what is queued and the close frame are still to go
    CLOSED = "closed"  # the close frame went (or the connection went away): nothing more


def close_reason(text: str) -> str:
    """``text`` cut to fit a WebSocket close frame (never mid-character)."""
    return text.encode("utf-8", "replace")[:MAX_REASON_BYTES].decode("utf-8", "ignore")


async def close_socket(ws: WebSocket, code: int, reason: str) -> None:
    """Close a socket that has no outbox yet (refused before it served), counted by code."""
    count_close(code)
    await ws.close(code, close_reason(reason))


class Outbox:
    def __init__(
        self,
        ws: WebSocket,
        *,
        max_frames: int = 256,
        board_interval_s: float = 0.1,
        encode_board: BoardEncoder | None = None,
        channel: DirectChannel | None = None,
    ) -> None:
        self.ws = ws
        self.channel = channel
        self.max_frames = max_frames
        self.board_interval_s = board_interval_s
        self.encode_board = encode_board
        self.frames: collections.deque[bytes] = collections.deque()
        self.board: dict[str, Any] | None = None
        self.boards_sent = 0
        self.boards_skipped = 0
        self._next_slot = 0.0  # monotonic time the next board may go
        self.carries_acks = False  # v1.1: acks ride in board frames (``encode_board(board, acks)``)
        self.acks: dict[str, int] = {}
        self._acks_since = 0.0  # monotonic time the oldest waiting ack came
        self._wake = asyncio.Event()
        self.state = OutboxState.OPEN
        self.close_reason: tuple[int, str] | None = None
        self.on_close: Callable[[], None] | None = None  # called once, when the outbox closes

    @property
    def closed(self) -> bool:
        """No new frame is accepted (closing or closed)."""
        return self.state is not OutboxState.OPEN

    def abandon(self) -> None:
        """The connection is gone: accept nothing more and send nothing more."""
        self.state = OutboxState.CLOSED

    def send(self, frame: bytes) -> None:
        if self.closed:
            return
        channel = self.channel
        if channel is not None and not self.frames and channel.can_write:
            channel.write(frame)
            return
        if len(self.frames) >= self.max_frames:
            self.close(CloseCode.THROTTLED, "client too slow: send queue full", flush=False)
            return
        self.frames.append(frame)
        self._wake.set()

    def ack(self, seqs: dict[str, int]) -> None:
        """Acknowledge ``seqs`` ({device: durable seq}): in the next board frame when this
        connection carries its board (direct path), else as an ``ack`` frame now."""
        if self.closed:
            return
        if not self.carries_acks or self.channel is None:
            self.send(encode({"t": "ack", "acks": seqs}))
            return
        if not self.acks:
            self._acks_since = time.monotonic()
        self.acks.update(seqs)

    def set_board(self, board: dict[str, Any]) -> None:
        """A board for this viewer (its first, or a phase change): sent as soon as its slot allows."""
        self.offer(board, time.monotonic(), 0.0)

    def offer(self, board: dict[str, Any], now: float, slack_s: float) -> None:
        """The pump's newest board (latest wins); sent now if this viewer's slot has come.
        ``slack_s``: how much earlier than a whole period the next board may go (half the
        pump's tick, so the tick that ends a period sends it)."""
        if self.board is not None:
            self.boards_skipped += 1
        self.board = board
        if self.channel is not None:
            self.flush_due(now, slack_s)
        else:
            self._wake.set()

    def flush_due(self, now: float, slack_s: float) -> None:
        """Direct path, every pump tick: send the waiting board if its slot is at most
        ``slack_s`` away (half the pump's tick: the tick nearest the slot sends it, whether
        it runs a little early or late), and acks that waited a whole period without a board."""
        channel = self.channel
        if self.closed or channel is None or not channel.open:
            return  # (a closing channel never becomes writable again: do not wake the writer)
        if self.frames or not channel.can_write:
            if self.board is not None or self.acks:
                self._wake.set()  # the writer sends them once the queue has drained
            return
        if self.board is not None and now >= self._next_slot - slack_s:
            frame = self._take_board(now, slack_s)
            if frame is not None:
                channel.write(frame)  # (open and writable: checked above)
        elif self.acks and now - self._acks_since >= self.board_interval_s + ACK_GRACE_S:
            acks, self.acks = self.acks, {}
            channel.write(encode({"t": "ack", "acks": acks}))

    def close(self, code: int, reason: str, *, flush: bool = True) -> None:
        """Close after sending what is queued (the error frame that explains the close),
        unless ``flush`` is False (a client that does not read gets nothing more)."""
        if not self.closed:
            self.state = OutboxState.CLOSING
            self.close_reason = (code, close_reason(reason))
            count_close(code)
            if not flush:
                self.frames.clear()
            self._wake.set()
            if self.channel is not None:
                self._finish_direct(self.channel)  # now: the writer may be waiting on a paused transport
            if self.on_close is not None:
                self.on_close()

    async def run(self) -> None:
        """Write until closed; returns when the connection should be closed."""
        if self.channel is not None:
            await self._run_direct(self.channel)
            return
        while not self.closed:
            await self._wake.wait()
            self._wake.clear()
            while self.frames and not self.closed:
                await self.ws.send_bytes(self.frames.popleft())
            if self.board is not None and self.encode_board is not None and not self.closed:
                await self._send_board()
        if self.close_reason:
            code, reason = self.close_reason
            try:
                await asyncio.wait_for(self._flush(), FLUSH_TIMEOUT_S)
            except TimeoutError:
                pass
            await self.ws.close(code, reason)

    # -- direct writes (api.directws) -----------------------------------------------------
    async def _run_direct(self, channel: DirectChannel) -> None:
        """Only drains what queued up while the transport was paused, then closes."""
        while not self.closed and channel.open:  # a connection going away gets nothing more
            await self._wake.wait()
            self._wake.clear()
            await channel.wait_writable()
            while self.frames and channel.can_write and not self.closed:
                channel.write(self.frames.popleft())
            if not self.frames and not self.closed:
                self.flush_due(time.monotonic(), 0.0)
        self._finish_direct(channel)

    def _finish_direct(self, channel: DirectChannel) -> None:
        """Write what is queued (bounded by ``max_frames``; the transport buffers it even
        while paused) and the close frame, once."""
        if self.close_reason and self.state is not OutboxState.CLOSED:
            self.state = OutboxState.CLOSED
            while self.frames and channel.write(self.frames.popleft()):
                pass
            channel.close(*self.close_reason)

    async def _flush(self) -> None:
        while self.frames:
            await self.ws.send_bytes(self.frames.popleft())

    def _board_wait_s(self) -> float:
        """Seconds until the viewer's next board slot."""
        return self._next_slot - time.monotonic()

    def _take_board(self, now: float | None = None, slack_s: float | None = None) -> bytes | str | None:
        """The waiting board, encoded for this viewer, and counted as sent (None: nothing to
        send). The next slot is the one after this board's slot (slots keep one grid, so a
        board sent a little late — a tick late on a busy loop — does not push every later
        one back: a rider asking 1 board/s gets 1 a second), at least half a period from now;
        after a gap (no board for over a period) it is one period from now. On the direct
        path (``slack_s`` given) the pump's tick may send it up to ``slack_s`` (half a tick)
        before its slot (``flush_due``); the ASGI writer (``slack_s`` None) sleeps until the
        slot, which after a gap is 10% of a period early, at most 10 ms."""
        board, self.board = self.board, None
        if board is None or self.encode_board is None:
            return None
        interval = self.board_interval_s
        now = time.monotonic() if now is None else now
        slot = self._next_slot
        if slot and now - slot < interval:
            self._next_slot = max(slot + interval, now + interval / 2)
        else:
            self._next_slot = now + interval - (min(0.1 * interval, SLOT_SLACK_S) if slack_s is None else 0.0)
        self.boards_sent += 1
        BOARDS_OUT.inc()
        if self.carries_acks:
            acks, self.acks = self.acks, {}
            return self.encode_board(board, acks)
        return self.encode_board(board)

    async def _send_board(self) -> None:
        wait = self._board_wait_s()
        if wait > 0:
            await asyncio.sleep(wait)  # newer boards replace this one meanwhile
        frame = self._take_board()
        if isinstance(frame, str):
            await self.ws.send_text(frame)
        elif frame is not None:
            await self.ws.send_bytes(frame)
