"""The edge's exceptions and the one place they map to HTTP statuses.

``EdgeError``
    ``UnknownSession``   404
    ``BadRequest``       400 / 422
    ``Conflict``         409 (e.g. an illegal phase transition)
    ``Unavailable``      503 (the session actor or Redis could not be reached)
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from actors.errors import PhaseError


class EdgeError(Exception):
    status = 500
    code = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


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


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(EdgeError)
    async def _edge(_: Request, exc: EdgeError) -> JSONResponse:
        return JSONResponse({"error": exc.code, "message": exc.message}, status_code=exc.status)

    @app.exception_handler(PhaseError)
    async def _phase(_: Request, exc: PhaseError) -> JSONResponse:
        return JSONResponse({"error": "bad_phase", "message": str(exc)}, status_code=409)
