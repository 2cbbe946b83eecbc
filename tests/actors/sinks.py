"""Results sinks for tests, imported by session actors by their import path
(``"tests.actors.sinks:failing"``): Ray workers have the driver's working directory on
their path, and the tests run from the repository root."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


async def failing(settings: Mapping[str, Any], snapshot: Mapping[str, Any]) -> None:
    """A sink whose backend is down: every call raises."""
    raise RuntimeError(f"results backend down (session {snapshot.get('session')})")


RECORDED: list[dict[str, Any]] = []  # what ``recording`` was given, in this process


async def recording(settings: Mapping[str, Any], snapshot: Mapping[str, Any]) -> None:
    """A sink that keeps every snapshot (for cells run in the test process)."""
    RECORDED.append(dict(snapshot))
