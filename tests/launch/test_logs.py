"""Logs (``launch/logs.py``): JSON lines with the request and class ids on a real edge, the
access log on and off, a readable console form, and no token or secret in any line."""

from __future__ import annotations

import io
import json
import logging
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from launch.logs import configure, configure_from, uvicorn_log_options
from tests.edge_server import EdgeServer

FAKE_JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJzZWNyZXQtcmlkZXIifQ.c2lnbmF0dXJlLXNlY3JldA"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """The root logger's handlers and level, restored after the test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    buffer = io.StringIO()
    yield buffer
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def _lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines() if line.strip()]


def _serve(edge_settings: Any, **update: Any) -> EdgeServer:
    settings = edge_settings.model_copy(update={"port": _free_port(), **update})
    return EdgeServer(settings, log_options=uvicorn_log_options(settings)).start()


def test_json_lines_carry_request_and_session_ids_and_no_secret(edge_settings: Any, captured: io.StringIO,
                                                                 tokens: Any, unique_id: str) -> None:
    settings = edge_settings.model_copy(update={"log_level": "INFO", "log_format": "json"})
    configure_from(settings, stream=captured)
    server = _serve(settings)
    try:
        sid = f"log-{unique_id}"
        refused = httpx.get(f"{server.url}/v1/sessions/{sid}?token=SECRET-IN-QUERY",
                            headers={"Authorization": f"Bearer {FAKE_JWT}", "X-Request-ID": f"req-{unique_id}"}, timeout=30)
        assert refused.status_code == 401 and refused.headers["x-request-id"] == f"req-{unique_id}"
        fresh = httpx.get(f"{server.url}/livez", headers={"X-Request-ID": "not valid!"}, timeout=30)
        assert fresh.headers["x-request-id"] != "not valid!" and len(fresh.headers["x-request-id"]) == 16
        logging.getLogger("tests.logs").warning("a line with %s", f"Bearer {FAKE_JWT}", extra={"rider": "r1"})
    finally:
        server.stop()
    text = captured.getvalue()
    assert "SECRET-IN-QUERY" not in text and FAKE_JWT not in text and "c2lnbmF0dXJl" not in text
    lines = _lines(captured)
    access = [l for l in lines if l["logger"] == "uvicorn.access" and sid in l["msg"]]
    assert access and access[0]["request_id"] == f"req-{unique_id}" and access[0]["session"] == sid
    assert "token=[redacted]" in access[0]["msg"] and access[0]["level"] == "info"
    refusal = [l for l in lines if l["logger"].startswith("api.") and l.get("request_id") == f"req-{unique_id}"]
    assert refusal and all(l["session"] == sid for l in refusal), lines
    mine = next(l for l in lines if l["logger"] == "tests.logs")
    assert mine["msg"] == "a line with Bearer [redacted]" and mine["rider"] == "r1" and mine["ts"].endswith("Z")


def test_access_log_can_be_turned_off(edge_settings: Any, captured: io.StringIO) -> None:
    settings = edge_settings.model_copy(update={"log_level": "INFO", "log_format": "json", "access_log": False})
    configure_from(settings, stream=captured)
    server = _serve(settings)
    try:
        assert httpx.get(f"{server.url}/livez", timeout=30).status_code == 200
    finally:
        server.stop()
    lines = _lines(captured)
    assert lines, "the edge logged nothing at INFO"
    assert not [l for l in lines if l["logger"] == "uvicorn.access"]


def test_console_lines_are_readable_and_redacted(captured: io.StringIO) -> None:
    configure(level="DEBUG", fmt="console", stream=captured)
    from api.log_context import REQUEST_ID, SESSION

    REQUEST_ID.set("abc123")
    SESSION.set("spin-7")
    try:
        logging.getLogger("api.ingest").info("hello from %s with token=%s", "rider", FAKE_JWT)
    finally:
        REQUEST_ID.set(None)
        SESSION.set(None)
    line = captured.getvalue().strip()
    assert " INFO    api.ingest [req abc123 sess spin-7] hello from rider with token=[redacted]" in line
    assert not line.startswith("{")


def test_a_level_hides_what_is_below_it(captured: io.StringIO) -> None:
    configure(level="WARNING", fmt="json", stream=captured)
    logging.getLogger("api.pump").info("not shown")
    logging.getLogger("api.pump").warning("shown")
    assert [l["msg"] for l in _lines(captured)] == ["shown"]
