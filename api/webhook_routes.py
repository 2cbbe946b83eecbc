"""The edge's HTTP routes for webhook subscriptions (``history.webhooks``; docs/webhooks.md),
and the dispatcher each edge runs.

====================================  ===========================================================
``POST /v1/webhooks``                 subscribe: ``{"url", "events": [...] or ["*"], "secret"?}``;
                                      201 with the subscription and its ``secret`` (shown once;
                                      generated as ``whsec_...`` when not given)
``GET /v1/webhooks``                  every subscription with its delivery counters and last status
``GET /v1/webhooks/{id}``             one subscription
``GET /v1/webhooks/{id}/deliveries``  its last attempts, newest first (``limit`` 1-100)
``DELETE /v1/webhooks/{id}``          unsubscribe
====================================  ===========================================================

Operators only. A bad URL, event type or secret is 422 naming it; an unknown id is 404
``unknown_webhook``.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import FastAPI, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator

from api.edge import edge_of
from api.scopes import Operator
from cluster.settings import Settings
from history.webhooks import DeliveryPolicy, WebhookDispatcher, WebhookStore, check_subscription
from storage.redis_url import AsyncRedis

WebhookId = Annotated[str, Path(pattern=r"^wh_[0-9a-f]{16}$", description="a subscription id")]


class Subscribe(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(max_length=2048, description="where events are POSTed (http or https)")
    events: list[str] = Field(min_length=1, max_length=16, description="event types, or ['*'] for all")
    secret: str | None = Field(default=None, min_length=16, max_length=256,
                               description="the HMAC key (default: one is generated and returned once)")

    @field_validator("events")
    @classmethod
    def _known(cls, events: list[str]) -> list[str]:
        check_subscription("http://x", events, "0" * 16)  # WebhookError is a ValueError: 422
        return events

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        check_subscription(url, ["*"], "0" * 16)
        return url


def webhook_dispatcher(client: AsyncRedis, settings: Settings) -> WebhookDispatcher | None:
    if not settings.webhooks:
        return None
    policy = DeliveryPolicy(timeout_s=settings.webhook_timeout_s, backoff_s=settings.webhook_backoff_s,
                            max_backoff_s=settings.webhook_max_backoff_s,
                            retry_window_s=settings.webhook_retry_window_s,
                            max_in_flight=settings.webhook_max_in_flight)
    return WebhookDispatcher(client, prefix=settings.prefix, policy=policy)


def install(app: FastAPI, settings: Settings) -> None:
    def store(request: Request) -> WebhookStore:
        return WebhookStore(edge_of(request).directory.redis, prefix=settings.prefix)

    @app.post("/v1/webhooks", status_code=201)
    async def subscribe(body: Subscribe, who: Operator, request: Request) -> dict[str, Any]:
        return await store(request).create(body.url, body.events, body.secret)

    @app.get("/v1/webhooks")
    async def subscriptions(who: Operator, request: Request) -> dict[str, Any]:
        return {"webhooks": await store(request).views()}

    @app.get("/v1/webhooks/{ident}")
    async def subscription(ident: WebhookId, who: Operator, request: Request) -> dict[str, Any]:
        return await store(request).get(ident)

    @app.get("/v1/webhooks/{ident}/deliveries")
    async def deliveries(ident: WebhookId, who: Operator, request: Request,
                         limit: Annotated[int, Query(ge=1, le=100)] = 20) -> dict[str, Any]:
        return {"id": ident, "deliveries": await store(request).deliveries(ident, limit=limit)}

    @app.delete("/v1/webhooks/{ident}")
    async def unsubscribe(ident: WebhookId, who: Operator, request: Request) -> dict[str, Any]:
        if not await store(request).delete(ident):
            await store(request).get(ident)  # UnknownWebhook: 404
        return {"id": ident, "deleted": True}
