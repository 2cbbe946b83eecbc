"""Fixtures of the edge's tests: one headless Chromium (Debian's) per test module for the
browser tests; ``own_edge``, an edge of a test's own with its own settings."""

from __future__ import annotations

import shutil
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.conftest import DevTokenFactory, EdgeServer

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Playwright driving ``/usr/bin/chromium`` (``.ci/run`` installs it); skipped, saying so,
    on a machine without it (Playwright's own browser download does not work here)."""
    if CHROMIUM is None:
        pytest.skip("no chromium on this machine (apt-get install chromium; .ci/run does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        yield chromium
        chromium.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def own_edge(edge_settings: Any) -> Iterator[Callable[..., tuple[EdgeServer, DevTokenFactory]]]:
    """``make(cluster_settings=None, **overrides)``: an edge of the test's own (its settings
    the session's with ``overrides``), stopped after the test."""
    started: list[EdgeServer] = []

    def make(cluster_settings: Any = None, **overrides: Any) -> tuple[EdgeServer, DevTokenFactory]:
        settings = edge_settings.model_copy(update={"port": _free_port(), **overrides})
        server = EdgeServer(settings, cluster_settings=cluster_settings).start()
        started.append(server)
        return server, DevTokenFactory(settings)

    yield make
    for server in started:
        server.stop()
