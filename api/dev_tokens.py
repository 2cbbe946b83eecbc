"""``POST /v1/dev/tokens``: development tokens for loopback clients (swarms, demos, tests)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from pydantic import BaseModel, Field

from api.auth import TokenKind, dev_secret, mint_token
from api.errors import BadRequest, Forbidden
from api.scopes import peer_of
from cluster.settings import Settings


class DevTokenRequest(BaseModel):
    kind: TokenKind
    sessions: list[str] | None = Field(default=None, max_length=1024)
    participant: str | None = Field(default=None, max_length=128)
    device: str | None = Field(default=None, max_length=128)
    hub: str | None = Field(default=None, max_length=128)
    devices: list[str] | None = Field(default=None, max_length=1024)
    ttl_s: float | None = Field(default=None, gt=0, le=7 * 24 * 3600)


def install(app: FastAPI, settings: Settings) -> None:
    """``POST /v1/dev/tokens``: development mode only, and only for loopback clients —
    how swarms, demos and tests obtain tokens without sharing the secret file."""

    secret = dev_secret(settings)

    @app.post("/v1/dev/tokens", include_in_schema=False)
    async def mint(body: DevTokenRequest, request: Request) -> dict[str, Any]:
        if peer_of(request) not in ("127.0.0.1", "::1"):
            raise Forbidden("loopback_only", "development tokens are minted for loopback clients only")
        ttl_s = settings.dev_token_ttl_s if body.ttl_s is None else body.ttl_s
        try:
            token = mint_token(secret, audience=settings.auth_audience, ttl_s=ttl_s, **body.model_dump(exclude={"ttl_s"}))
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        return {"token": token}
