"""Per-connection sending: bounded control frames, and a latest-wins board slot.

A connection never makes server memory grow: control frames (welcome, ack, error,
throttle) go through a bounded deque — a client that lets it fill up is closed as too
slow — and boards are kept one deep (a newer board replaces an unsent one), sent at most
at the rate the viewer asked for.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from typing import Any

from starlette.websockets import WebSocket

from api.metrics import BOARDS_OUT
from devices.protocol import CloseCode

log = logging.getLogger(__name__)

BoardEncoder = Callable[[dict[str, Any]], bytes | str]
FLUSH_TIMEOUT_S = 2.0  # what a closing connection may spend sending its last frames
MAX_REASON_BYTES = 120  # a close reason may carry at most 123 bytes of UTF-8


def close_reason(text: str) -> str:
    """``text`` cut to fit a WebSocket close frame (never mid-character)."""
    return text.encode("utf-8", "replace")[:MAX_REASON_BYTES].decode("utf-8", "ignore")


class Outbox:
    def __init__(
        self,
        ws: WebSocket,
        *,
        max_frames: int = 256,
        board_interval_s: float = 0.1,
        encode_board: BoardEncoder | None = None,
    ) -> None:
        self.ws = ws
        self.max_frames = max_frames
        self.board_interval_s = board_interval_s
        self.encode_board = encode_board
        self.frames: collections.deque[bytes] = collections.deque()
        self.board: dict[str, Any] | None = None
        self.boards_sent = 0
        self.boards_skipped = 0
        self._last_board = 0.0
        self._wake = asyncio.Event()
        self.closed = False
        self.close_reason: tuple[int, str] | None = None

    def send(self, frame: bytes) -> None:
        if self.closed:
            return
        if len(self.frames) >= self.max_frames:
            self.close(CloseCode.THROTTLED, "client too slow: send queue full", flush=False)
            return
        self.frames.append(frame)
        self._wake.set()

    def set_board(self, board: dict[str, Any]) -> None:
        if self.board is not None:
            self.boards_skipped += 1
        self.board = board
        self._wake.set()

    def close(self, code: int, reason: str, *, flush: bool = True) -> None:
        """Close after sending what is queued (the error frame that explains the close),
        unless ``flush`` is False (a client that does not read gets nothing more)."""
        if not self.closed:
            self.closed = True
            self.close_reason = (code, close_reason(reason))
            if not flush:
                self.frames.clear()
            self._wake.set()

    async def run(self) -> None:
        """Write until closed; returns when the connection should be closed."""
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

    async def _flush(self) -> None:
        while self.frames:
            await self.ws.send_bytes(self.frames.popleft())

    async def _send_board(self) -> None:
        # 10% slack: boards produced at exactly the viewer's rate must not slip a whole tick
        wait = self._last_board + 0.9 * self.board_interval_s - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)  # newer boards replace this one meanwhile
        board, self.board = self.board, None
        if board is None or self.encode_board is None:
            return
        self._last_board = time.monotonic()
        frame = self.encode_board(board)
        if isinstance(frame, str):
            await self.ws.send_text(frame)
        else:
            await self.ws.send_bytes(frame)
        self.boards_sent += 1
        BOARDS_OUT.inc()
