"""Close HTTP connections that do not send a complete request head in time (slowloris).

uvicorn arms its keep-alive timer only after a response; a TCP connection that never sends
a byte, or sends half a request line and stops, stays open for ever — a cheap way to use
up file descriptors. ``head_timeout_protocol(timeout_s)`` is uvicorn's httptools protocol
with one more timer: armed when the connection opens and when a request begins, disarmed
when the request's head (request line and headers) is complete; if it fires first, the
connection is closed. Bodies, responses, keep-alive and WebSocket upgrades are untouched
(the upgrade disarms it before the WebSocket protocol takes the transport over).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger(__name__)


class HeadTimeoutProtocol(HttpToolsProtocol):
    head_timeout_s = 5.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        transport = self.transport
        if transport.is_closing() or transport.get_protocol() is not self:
            return
        log.info("closing a connection from %s: no complete request head in %.1f s",
                 self.client[0] if self.client else "?", self.head_timeout_s)
        transport.close()


def head_timeout_protocol(timeout_s: float) -> type[HeadTimeoutProtocol]:
    """The protocol class for ``uvicorn.Config(http=...)`` with this time-out."""
    return type("HeadTimeoutProtocol", (HeadTimeoutProtocol,), {"head_timeout_s": timeout_s})
