"""The edge's exceptions and the one place they map to HTTP statuses.

``EdgeError``
    ``UnknownSession``   404
    ``BadRequest``       400 / 422
    ``Conflict``         409 (e.g. an illegal phase transition)
    ``Unavailable``      503 (the session actor or Redis could not be reached)
    ``Unauthorised``     401 (no token, or a token that does not verify; ``reason`` says why)
    ``Forbidden``        403 (a valid token that does not allow this; ``reason`` says why)

Every error body is ``{"error": code, "message": ..., "reason"?: ...}``.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from actors.errors import PhaseError


class EdgeError(Exception):
    status = 500
    code = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def body(self) -> dict[str, Any]:
        return {"error": self.code, "message": self.message}

    def headers(self) -> dict[str, str] | None:
        return None


class UnknownSession(EdgeError):
    status = 404
    code = "unknown_session"


class BadRequest(EdgeError):
    status = 400
    code = "bad_request"


class Conflict(EdgeError):
    status = 409
    code = "conflict"


class Unavailable(EdgeError):
    status = 503
    code = "unavailable"


class AuthError(EdgeError):
    """Refused by authentication or authorisation; ``reason`` is a stable enum value."""

    def __init__(self, reason: Any, message: str) -> None:
        super().__init__(message)
        self.reason = reason

    def body(self) -> dict[str, Any]:
        return {**super().body(), "reason": getattr(self.reason, "value", str(self.reason))}


class Unauthorised(AuthError):
    status = 401
    code = "unauthorised"

    def headers(self) -> dict[str, str] | None:
        return {"WWW-Authenticate": 'Bearer error="invalid_token"'}


class Forbidden(AuthError):
    status = 403
    code = "forbidden"


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(EdgeError)
    async def _edge(_: Request, exc: EdgeError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers())

    @app.exception_handler(PhaseError)
    async def _phase(_: Request, exc: PhaseError) -> JSONResponse:
        return JSONResponse({"error": "bad_phase", "message": str(exc)}, status_code=409)
