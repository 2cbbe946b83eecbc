"""Logging for the ``pulseline`` processes: JSON lines in production, readable lines in
development, set by ``PULSELINE_LOG_LEVEL``, ``PULSELINE_LOG_FORMAT`` and
``PULSELINE_ACCESS_LOG`` (docs/operations.md).

The standard library with a small JSON formatter, not structlog: every module already logs
through ``logging.getLogger(__name__)`` with ``%`` arguments (STYLE.md), uvicorn and Ray log
through ``logging`` too, and one formatter on the root handler turns all of them into the
same lines with no new dependency and no change at the call sites.

Every line carries the request (or WebSocket connection) id and the class it belongs to
when there is one (``api.log_context``), and passes through ``redact``: bearer tokens,
JWTs and ``token=`` query values never reach a log (nor does anything of a
``SecretStr`` setting, which prints as ``**********``).
"""

from __future__ import annotations

import json
import logging
import re
import sys
from typing import IO, Any

from api.log_context import REQUEST_ID, SESSION
from api.scopes import RedactTokens, redact_tokens

_BEARER = re.compile(r"(?i)(bearer[ .]+)[A-Za-z0-9._~+/=-]+")
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}
# (ids go first; uvicorn's colour copy of the message and Ray's private fields are noise)
_NOT_FIELDS = {"request_id", "session", "color_message", "context"}


def redact(text: str) -> str:
    """``text`` without bearer tokens, JWTs or ``token=`` query values."""
    return _JWT.sub("[redacted]", _BEARER.sub(r"\1[redacted]", redact_tokens(text)))


class ContextFilter(logging.Filter):
    """Puts ``request_id`` and ``session`` on every record (None outside a request or class)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = REQUEST_ID.get()
        if not hasattr(record, "session"):
            record.session = SESSION.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ``ts`` (ISO 8601, UTC), ``level``, ``logger``, ``msg``, the
    context ids, ``extra=`` fields, and ``exc`` with the traceback."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        for key in ("request_id", "session"):
            if getattr(record, key, None) is not None:
                line[key] = getattr(record, key)
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in line and key not in _NOT_FIELDS and not key.startswith("_"):
                line[key] = value if isinstance(value, int | float | bool | type(None)) else redact(str(value))
        if record.exc_info:
            line["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(line, ensure_ascii=False)


JsonFormatter.converter = __import__("time").gmtime  # type: ignore[assignment]


class ConsoleFormatter(logging.Formatter):
    """``12:00:01.234 WARNING api.ingest [req 1a2b sess abc] message`` for a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s.%(msecs)03d %(levelname)-7s %(name)s%(context)s %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        rid, session = getattr(record, "request_id", None), getattr(record, "session", None)
        parts = [f"req {rid}" if rid else "", f"sess {session}" if session else ""]
        context = " ".join(p for p in parts if p)
        record.context = f" [{context}]" if context else ""
        return redact(super().format(record))


class _Ours(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler ``configure`` installs (so a second call replaces it, not adds one)."""


def configure(*, level: str = "INFO", fmt: str = "auto", stream: IO[str] | None = None) -> logging.Handler:
    """Install the root handler: ``fmt`` json, console, or auto (console on a terminal)."""
    stream = sys.stderr if stream is None else stream
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    handler = _Ours(stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else ConsoleFormatter())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Ours) or type(h) is logging.StreamHandler]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
        if not any(isinstance(f, RedactTokens) for f in logger.filters):
            logger.addFilter(RedactTokens())
    return handler


def configure_from(settings: Any, stream: IO[str] | None = None) -> logging.Handler:
    return configure(level=settings.log_level, fmt=settings.log_format, stream=stream)


def uvicorn_log_options(settings: Any) -> dict[str, Any]:
    """uvicorn leaves logging to ``configure`` (no config of its own); its access log follows
    ``access_log``."""
    return {"log_config": None, "access_log": settings.access_log, "log_level": settings.log_level.lower()}
