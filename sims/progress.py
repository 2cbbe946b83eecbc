"""A one-line progress bar on stderr (``\\r``-redrawn on a terminal, a line every 10 s otherwise)."""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress"]


class Progress:
    def __init__(self, total_s: float, *, stream: TextIO | None = None, width: int = 24) -> None:
        self.total_s = max(total_s, 1e-9)
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last_line = 0.0

    def line(self, elapsed_s: float, status: str) -> str:
        frac = min(1.0, max(0.0, elapsed_s / self.total_s))
        done = int(frac * self.width)
        return f"[{'#' * done}{'.' * (self.width - done)}] {elapsed_s:5.0f}/{self.total_s:.0f}s {status}"

    def update(self, elapsed_s: float, status: str) -> None:
        text = self.line(elapsed_s, status)
        if self.tty:
            self.stream.write("\r" + text[:160].ljust(100))
            self.stream.flush()
        elif time.monotonic() - self._last_line >= 10.0:
            self._last_line = time.monotonic()
            self.stream.write(text + "\n")
            self.stream.flush()

    def done(self, status: str) -> None:
        self.stream.write(("\r" if self.tty else "") + self.line(self.total_s, status)[:160].ljust(100) + "\n")
        self.stream.flush()
