"""Webhooks: subscriptions, signed deliveries with retries, and their records (docs/webhooks.md).

A subscription is a URL, the event types it wants (``history.events.EVENT_TYPES`` or
``"*"``) and a secret. The ``WebhookDispatcher`` runs at the edge (never in a session
actor): it reads the platform events stream (``history.events``) and the results stream
(``history.results_stream``: ``record.set``; ``ride.revised`` and a revised ``class.result``
become ``result.revised``) in the consumer group ``webhooks`` (several edges share the
work), and POSTs each event to every subscription that wants it.

Delivery: the body is the JSON event ``{"id", "type", "created", "data"}``; headers
``Pulseline-Event`` (type), ``Pulseline-Delivery`` (the event id: the same on every retry,
dedupe on it) and ``Pulseline-Signature: t=<unix s>,v1=<hex>`` where ``v1`` is
HMAC-SHA256 over ``f"{t}.{body}"`` with the secret (as Stripe signs). A 2xx answer
within ``timeout_s`` is delivered; anything else is retried after ``backoff_s * 2**n``
(capped at ``max_backoff_s``) while the first attempt is less than ``retry_window_s`` old,
then given up. Retries wait in a sorted set in Redis, so they survive an edge restart; a
stream entry is acknowledged once each of its deliveries succeeded, failed for good or was
queued for retry (an edge that dies before that leaves it pending: another edge claims it
after ``claim_idle_s``, so delivery is at least once; an edge still delivering a batch keeps
its entries claimed, however slow a subscriber is, so they are not sent twice meanwhile).

Redis (prefix ``pl``; ``{id}`` hash tags):

=================================  =====  ======================================================
key                                type   content
=================================  =====  ======================================================
``{p}:webhooks``                   set    subscription ids
``{p}:webhook:{{id}}``             hash   ``url``, ``events`` (JSON), ``secret``, ``created_at``,
                                          ``attempts``, ``delivered``, ``failed``,
                                          ``last_status``, ``last_code``, ``last_error``,
                                          ``last_attempt_at``
``{p}:webhook:{{id}}:deliveries``  list   the last ``KEEP_DELIVERIES`` attempts (JSON), newest first
``{p}:webhooks:{retry}``           zset   member: a delivery (JSON), score: when to try again
=================================  =====  ======================================================
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from history import results_stream
from history.errors import HistoryError
from history.events import EVENT_TYPES, events_key
from storage.checkpoint import key_base
from storage.redis_url import AsyncRedis

log = logging.getLogger(__name__)

GROUP = "webhooks"
KEEP_DELIVERIES = 100
READ_COUNT = 50  # events per read (and per subscriptions read and XACK)
GATHER_S = 0.1  # after a read of fewer than READ_COUNT: wait this long for more before the next
MAX_URL_CHARS = 2048
SIGNATURE_HEADER = "Pulseline-Signature"


class WebhookError(HistoryError, ValueError):
    """A subscription that breaks a rule (the message says which)."""


class UnknownWebhook(HistoryError, LookupError):
    def __init__(self, ident: str) -> None:
        super().__init__(f"no webhook subscription {ident!r}")
        self.ident = ident


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``Pulseline-Signature`` header value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def check_subscription(url: str, events: Sequence[str], secret: str | None) -> tuple[str, list[str], str]:
    """``(url, events, secret)`` validated; a missing secret is generated (``whsec_...``)."""
    if not isinstance(url, str) or len(url) > MAX_URL_CHARS:
        raise WebhookError(f"url must be a string of at most {MAX_URL_CHARS} characters")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookError("url must be an absolute http:// or https:// URL")
    _check_sendable(url)
    wanted = list(dict.fromkeys(events))
    if not wanted:
        raise WebhookError("events must name at least one event type (or '*')")
    unknown = [e for e in wanted if e != "*" and e not in EVENT_TYPES]
    if unknown:
        raise WebhookError(f"unknown event type(s) {', '.join(map(repr, unknown))}; known: {', '.join(EVENT_TYPES)}")
    if secret is None:
        secret = "whsec_" + secrets.token_urlsafe(24)
    elif not 16 <= len(secret) <= 256:
        raise WebhookError("secret must be 16 to 256 characters")
    return url, wanted, secret


def _check_sendable(url: str) -> None:
    """A URL the HTTP client can send to: no white space or control characters (``urlsplit``
    lets them through; httpx refuses some at every delivery and quotes others into the host),
    a port in range."""
    if any(c.isspace() or not c.isprintable() for c in url):
        raise WebhookError("url must not contain white space or control characters")
    try:
        httpx.URL(url)
        urlsplit(url).port  # (a ValueError out of 0-65535)
    except (httpx.InvalidURL, ValueError) as exc:
        raise WebhookError(f"url is not a valid URL: {exc}") from None


_SUBSCRIPTION_FIELDS = ["url", "events", "secret"]


def _subscription(ident: str, raw: list[Any]) -> Subscription | None:
    if raw[0] is None:
        return None
    return Subscription(ident, _text(raw[0]), tuple(json.loads(raw[1])), _text(raw[2]))


def _text(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


@dataclass(frozen=True, slots=True)
class Subscription:
    id: str
    url: str
    events: tuple[str, ...]
    secret: str

    def wants(self, kind: str) -> bool:
        return "*" in self.events or kind in self.events


class WebhookStore:
    """Subscriptions and their delivery records (see the module docstring)."""

    def __init__(self, client: AsyncRedis, *, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self.index_key = f"{prefix}:webhooks"
        self.retry_key = key_base(prefix, "webhooks", "retry")

    def key(self, ident: str) -> str:
        return key_base(self.prefix, "webhook", ident)

    async def create(self, url: str, events: Sequence[str], secret: str | None) -> dict[str, Any]:
        url, wanted, secret = check_subscription(url, events, secret)
        ident = "wh_" + uuid.uuid4().hex[:16]
        await self.client.hset(self.key(ident), mapping={  # type: ignore[misc]
            "url": url, "events": json.dumps(wanted), "secret": secret, "created_at": f"{time.time():.3f}"})
        await self.client.sadd(self.index_key, ident)  # type: ignore[misc]
        return {**await self.get(ident), "secret": secret}  # (the secret is shown once, on creation)

    async def get(self, ident: str) -> dict[str, Any]:
        raw = await self.client.hgetall(self.key(ident))  # type: ignore[misc]
        if not raw:
            raise UnknownWebhook(ident)
        return _view(ident, {_text(k): _text(v) for k, v in raw.items()})

    async def delete(self, ident: str) -> bool:
        removed = int(await self.client.srem(self.index_key, ident))  # type: ignore[misc]
        await self.client.delete(self.key(ident), f"{self.key(ident)}:deliveries")
        return removed > 0

    async def ids(self) -> list[str]:
        return sorted(_text(i) for i in await self.client.smembers(self.index_key))  # type: ignore[misc]

    async def views(self) -> list[dict[str, Any]]:
        return [view for view in [await self._maybe(i) for i in await self.ids()] if view is not None]

    async def _maybe(self, ident: str) -> dict[str, Any] | None:
        try:
            return await self.get(ident)
        except UnknownWebhook:
            return None

    async def subscriptions(self) -> list[Subscription]:
        """Every subscription with its secret, in one pipelined round trip."""
        ids = await self.ids()
        async with self.client.pipeline(transaction=False) as pipe:
            for ident in ids:
                pipe.hmget(self.key(ident), _SUBSCRIPTION_FIELDS)
            replies = await pipe.execute()
        return [sub for ident, raw in zip(ids, replies, strict=True) if (sub := _subscription(ident, raw)) is not None]

    async def subscription(self, ident: str) -> Subscription | None:
        """The subscription with its secret (None: deleted), for a delivery."""
        return _subscription(ident, await self.client.hmget(self.key(ident), _SUBSCRIPTION_FIELDS))  # type: ignore[misc]

    async def deliveries(self, ident: str, *, limit: int = 20) -> list[dict[str, Any]]:
        await self.get(ident)
        raw = await self.client.lrange(f"{self.key(ident)}:deliveries", 0, limit - 1)  # type: ignore[misc]
        return [json.loads(r) for r in raw]

    async def record(self, ident: str, attempt: dict[str, Any]) -> None:
        key = self.key(ident)
        status = attempt["status"]
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.exists(key)
            pipe.hincrby(key, "attempts", 1)
            if status in ("delivered", "failed"):
                pipe.hincrby(key, status, 1)
            pipe.hset(key, mapping={"last_status": status, "last_code": str(attempt.get("code") or ""),
                                    "last_error": attempt.get("error") or "", "last_attempt_at": f"{attempt['at']:.3f}"})
            pipe.lpush(f"{key}:deliveries", json.dumps(attempt))
            pipe.ltrim(f"{key}:deliveries", 0, KEEP_DELIVERIES - 1)
            replies = await pipe.execute()
        if not replies[0]:  # deleted meanwhile: do not leave a half-made record behind
            await self.client.delete(key, f"{key}:deliveries")


def _view(ident: str, raw: Mapping[str, str]) -> dict[str, Any]:
    return {
        "id": ident, "url": raw["url"], "events": json.loads(raw["events"]), "created_at": float(raw["created_at"]),
        "attempts": int(raw.get("attempts", 0)), "delivered": int(raw.get("delivered", 0)),
        "failed": int(raw.get("failed", 0)), "last_status": raw.get("last_status") or None,
        "last_code": int(raw["last_code"]) if raw.get("last_code") else None,
        "last_error": raw.get("last_error") or None,
        "last_attempt_at": float(raw["last_attempt_at"]) if raw.get("last_attempt_at") else None,
    }


def webhook_event(fields: Mapping[Any, Any], stream_id: str) -> dict[str, Any] | None:
    """A stream entry as the event a webhook receives (None: not a webhook event)."""
    text = {_text(k): _text(v) for k, v in fields.items()}
    kind, data = text.get("type", ""), json.loads(text.get("data") or "null")
    if kind == "ride.revised":
        kind, data = "result.revised", {"kind": "ride", "ride": data}
    elif kind == "class.result":
        if not data.get("revised"):
            return None
        kind, data = "result.revised", {"kind": "class", "result": data}
    if kind not in EVENT_TYPES:
        return None
    return {"id": f"evt_{text.get('at', '0')}_{stream_id}", "type": kind, "created": int(text.get("at", "0")) / 1000,
            "data": data}


@dataclass(frozen=True, slots=True)
class DeliveryPolicy:
    timeout_s: float = 10.0
    backoff_s: float = 2.0
    max_backoff_s: float = 3600.0
    retry_window_s: float = 3 * 86400.0
    max_in_flight: int = 100
    claim_idle_s: float = 300.0

    def next_delay(self, attempt: int) -> float:
        return float(min(self.backoff_s * 2 ** max(attempt - 1, 0), self.max_backoff_s))


class HostLookups:
    """One DNS lookup per host at a time, its answer remembered for ``ttl_s``.

    httpx resolves a receiver's host name on every request, in the event loop's few resolver
    threads (uvloop: libuv's pool of 4). A resolver that never answers then holds each of them
    for its whole time-out, new deliveries queue behind them, and closing the loop waits for
    them all: an edge whose webhook host got no DNS answer did not exit on SIGTERM (QA, 7 Dec
    2026). So a delivery first asks here: a lookup already running is shared, a host that did
    not resolve fails its deliveries at once for ``ttl_s``, and at most one lookup per host is
    ever in flight (an IP literal needs none)."""

    def __init__(self, *, ttl_s: float = 30.0, timeout_s: float = 10.0,
                 resolve: Callable[[str, int], Awaitable[Any]] | None = None) -> None:
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self._resolve = resolve
        self._known: dict[tuple[str, int], tuple[float, str | None]] = {}  # (host, port) -> (when, error)
        self._running: dict[tuple[str, int], asyncio.Future[str | None]] = {}

    async def check(self, url: str) -> str | None:
        """None when the URL's host resolves (or needs no lookup); else why not."""
        parsed = httpx.URL(url)
        host, port = parsed.host, parsed.port or (443 if parsed.scheme == "https" else 80)
        if not host or _is_ip(host):
            return None
        key = (host, port)
        known = self._known.get(key)
        if known is not None and time.monotonic() - known[0] < self.ttl_s:
            return known[1]
        running = self._running.get(key)
        if running is None:
            running = self._running[key] = asyncio.ensure_future(self._lookup(host, port))
            running.add_done_callback(lambda _: self._running.pop(key, None))
        return await asyncio.shield(running)

    async def _lookup(self, host: str, port: int) -> str | None:
        resolve = self._resolve or asyncio.get_running_loop().getaddrinfo
        try:
            await asyncio.wait_for(resolve(host, port), self.timeout_s)
            error = None
        except TimeoutError:
            error = f"no DNS answer for {host} within {self.timeout_s:g} s"
        except OSError as exc:
            error = f"{host} does not resolve: {exc}"[:300]
        if len(self._known) >= 1024:
            self._known.clear()  # (bounded: a thousand receivers' hosts)
        self._known[(host, port)] = (time.monotonic(), error)
        return error


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


class WebhookDispatcher:
    """Reads events, delivers them, retries (see the module docstring). One per edge:
    ``start`` / ``stop``; its loops log and go on, never die."""

    def __init__(self, client: AsyncRedis, *, prefix: str, policy: DeliveryPolicy | None = None,
                 http: httpx.AsyncClient | None = None, poll_s: float = 0.5) -> None:
        self.client = client
        self.prefix = prefix
        self.store = WebhookStore(client, prefix=prefix)
        self.policy = policy or DeliveryPolicy()
        self.http = http or httpx.AsyncClient(timeout=self.policy.timeout_s, follow_redirects=False)
        self._owns_http = http is None
        self.lookups = HostLookups(timeout_s=self.policy.timeout_s)
        self.consumer = f"edge-{uuid.uuid4().hex[:8]}"
        self.streams = (events_key(prefix), results_stream.stream_key(prefix))
        self.poll_s = poll_s
        self._slots = asyncio.Semaphore(self.policy.max_in_flight)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loops: list[asyncio.Task[None]] = []
        self._left_behind: set[asyncio.Future[Any]] = set()  # (a reference, so they are not collected)
        self.counters = {"delivered": 0, "failed": 0, "retried": 0, "errors": 0, "batches": 0}

    async def start(self) -> None:
        for stream in self.streams:
            try:
                await self.client.xgroup_create(stream, GROUP, id="$", mkstream=True)
            except Exception as exc:  # BUSYGROUP: another edge (or an earlier run) made it
                if "BUSYGROUP" not in str(exc):
                    raise
        loop = asyncio.get_running_loop()
        self._loops = [loop.create_task(self._read_loop(s)) for s in self.streams]
        self._loops.append(loop.create_task(self._retry_loop()))

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Stop reading, give deliveries in flight ``timeout_s`` to finish, cancel the rest.
        Every step is bounded: a cancelled request that will not unwind (seen with a
        receiver that hangs) is logged and left behind, never a hang of the edge's shutdown."""
        for task in self._loops:
            task.cancel()
        await self._bounded(asyncio.gather(*self._loops, return_exceptions=True), "reading loops", timeout_s)
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=timeout_s)
            for task in self._tasks:
                task.cancel()
            await self._bounded(asyncio.gather(*self._tasks, return_exceptions=True), "deliveries", timeout_s)
        if self._owns_http:
            await self._bounded(self.http.aclose(), "the HTTP client", timeout_s)

    async def _bounded(self, step: Any, what: str, timeout_s: float) -> None:
        task = asyncio.ensure_future(step)
        done, _ = await asyncio.wait({task}, timeout=timeout_s)  # (wait_for would wait out the cancel too)
        if not done:
            self._left_behind.add(task)
            log.warning("webhooks: %s did not stop within %.1f s; left behind", what, timeout_s)

    # -- reading -----------------------------------------------------------------------
    async def _read_loop(self, stream: str) -> None:
        claim_at = 0.0
        while True:
            try:
                if time.monotonic() >= claim_at:  # entries a dead edge left pending
                    claim_at = time.monotonic() + self.policy.claim_idle_s / 2
                    claimed: Any = await self.client.xautoclaim(stream, GROUP, self.consumer,
                                                           int(self.policy.claim_idle_s * 1000), "0-0", count=100)
                    self._take(stream, claimed[1])
                got: Any = await self.client.xreadgroup(GROUP, self.consumer, {stream: ">"}, count=READ_COUNT,
                                                   block=int(self.poll_s * 1000))
                taken = 0
                for _, entries in got or []:
                    self._take(stream, entries)
                    taken += len(entries)
                if 0 < taken < READ_COUNT:
                    # events trickling in (a join surge: one per rider): gather a few before the
                    # next read, so a burst costs a read (and a subscriptions read, and an XACK)
                    # per GATHER_S, not per event
                    await asyncio.sleep(GATHER_S)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.counters["errors"] += 1
                log.warning("webhooks: reading %s failed: %r", stream, exc)
                await asyncio.sleep(1.0)

    def _take(self, stream: str, entries: Sequence[Any]) -> None:
        batch = [(_text(stream_id), fields) for stream_id, fields in entries if fields is not None]
        if batch:
            self.counters["batches"] += 1
            self._spawn(self._fan_out(stream, batch))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _fan_out(self, stream: str, batch: Sequence[tuple[str, Mapping[Any, Any]]]) -> None:
        """Deliver one read's entries, holding them as ours until they are acknowledged."""
        hold = asyncio.get_running_loop().create_task(self._hold(stream, [stream_id for stream_id, _ in batch]))
        try:
            await self._deliver(stream, batch)
        finally:
            hold.cancel()
            await asyncio.gather(hold, return_exceptions=True)

    async def _hold(self, stream: str, ids: list[Any]) -> None:
        """Reset the idle time of a batch in flight every third of ``claim_idle_s``
        (``XCLAIM ... JUSTID`` to this consumer): a subscriber that times out on each event
        makes a batch take longer than that, and entries that looked abandoned were claimed
        (by this edge or another) and sent again to every subscriber."""
        while True:
            await asyncio.sleep(self.policy.claim_idle_s / 3)
            try:
                await self.client.xclaim(stream, GROUP, self.consumer, 0, ids, justid=True)
            except Exception as exc:  # (the next try may work; a claim elsewhere is only a duplicate)
                log.warning("webhooks: holding entries %s..%s of %s failed: %r", ids[0], ids[-1], stream, exc)

    async def _deliver(self, stream: str, batch: Sequence[tuple[str, Mapping[Any, Any]]]) -> None:
        """One read's entries (up to 50): the subscriptions are read once for all of them (a
        class's start publishes thousands of ``rider.joined`` at once); each subscription
        gets its events in stream order, one after the other (subscriptions side by side),
        then the entries are acknowledged in one ``XACK``."""
        try:
            subscriptions = await self.store.subscriptions()
            now = time.time()
            chains: dict[str, list[tuple[str, dict[str, Any]]]] = {}  # subscription -> (stream id, delivery)
            for stream_id, fields in batch:
                event = webhook_event(fields, stream_id)
                if event is None:
                    continue
                for sub in subscriptions:
                    if sub.wants(event["type"]):
                        chains.setdefault(sub.id, []).append((stream_id, {
                            "delivery": "dlv_" + uuid.uuid4().hex[:16], "subscription": sub.id,
                            "event": event, "attempt": 1, "first_at": now}))
            failed: dict[str, BaseException] = {}

            async def in_order(chain: list[tuple[str, dict[str, Any]]]) -> None:
                for stream_id, delivery in chain:
                    try:
                        await self._attempt(delivery)
                    except Exception as exc:  # this entry stays pending; the next ones still go
                        failed.setdefault(stream_id, exc)

            await asyncio.gather(*(in_order(chain) for chain in chains.values()))
            done = [stream_id for stream_id, _ in batch if stream_id not in failed]
            if done:
                await self.client.xack(stream, GROUP, *done)
            for stream_id, exc in failed.items():  # it stays pending: claimed again later
                self.counters["errors"] += 1
                log.warning("webhooks: entry %s of %s not handled: %r", stream_id, stream, exc)
        except Exception as exc:  # they all stay pending: claimed again later
            self.counters["errors"] += 1
            log.warning("webhooks: entries %s..%s of %s not handled: %r", batch[0][0], batch[-1][0], stream, exc)

    # -- delivering -----------------------------------------------------------------------
    async def _attempt(self, delivery: dict[str, Any]) -> None:
        sub = await self.store.subscription(delivery["subscription"])  # (one read: not every subscription's)
        if sub is None:
            return  # deleted meanwhile
        async with self._slots:
            code, error = await self._post(sub, delivery["event"])
        now = time.time()
        ok = code is not None and 200 <= code < 300
        attempt = delivery["attempt"]
        delay = self.policy.next_delay(attempt)
        retry = not ok and now + delay - delivery["first_at"] <= self.policy.retry_window_s
        status = "delivered" if ok else "retrying" if retry else "failed"
        await self.store.record(sub.id, {"delivery": delivery["delivery"], "event": delivery["event"]["id"],
                                         "type": delivery["event"]["type"], "attempt": attempt, "status": status,
                                         "code": code, "error": error, "at": now})
        if ok:
            self.counters["delivered"] += 1
        elif retry:
            self.counters["retried"] += 1
            await self.client.zadd(self.store.retry_key, {json.dumps({**delivery, "attempt": attempt + 1}): now + delay})
        else:
            self.counters["failed"] += 1

    async def _post(self, sub: Subscription, event: dict[str, Any]) -> tuple[int | None, str | None]:
        body = json.dumps(event, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json", "User-Agent": "pulseline-webhooks/1",
                   "Pulseline-Event": event["type"], "Pulseline-Delivery": event["id"],
                   SIGNATURE_HEADER: sign(sub.secret, int(time.time()), body)}
        try:
            unresolved = await self.lookups.check(sub.url)
            if unresolved is not None:
                return None, unresolved
            answer = await asyncio.wait_for(self.http.post(sub.url, content=body, headers=headers),
                                            self.policy.timeout_s)
            return answer.status_code, None if answer.is_success else f"HTTP {answer.status_code}"
        except (TimeoutError, httpx.TimeoutException):
            return None, f"no answer within {self.policy.timeout_s:g} s"
        except (httpx.HTTPError, httpx.InvalidURL) as exc:  # (InvalidURL: stored before check_subscription refused it)
            return None, f"{type(exc).__name__}: {exc}"[:300]

    async def _retry_loop(self) -> None:
        while True:
            try:
                due: list[Any] = await self.client.zrangebyscore(self.store.retry_key, "-inf", time.time(), start=0, num=50)
                for member in due:
                    if await self.client.zrem(self.store.retry_key, member):  # (claimed by this edge only)
                        self._spawn(self._attempt(json.loads(member)))
                await asyncio.sleep(self.poll_s)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.counters["errors"] += 1
                log.warning("webhooks: retry queue failed: %r", exc)
                await asyncio.sleep(1.0)
