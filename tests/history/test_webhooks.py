"""Webhooks with real local receivers (one that answers, one that fails and then answers, one
that always fails, one that hangs): signatures, retries with back-off, give-up after the
retry window, delivery records; and through the real edge, a class's events reach a
subscriber while a hanging one costs the class nothing."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from history import results_stream
from history.events import publish_event
from history.webhooks import DeliveryPolicy, WebhookDispatcher, WebhookStore

pytestmark = pytest.mark.integration
HTTP = httpx.Client(timeout=60)  # (the edge answers slowly at load ~50; the default is 5 s)
SECRET = "whsec_test_secret_0123456789"


class Receiver:
    """A real HTTP server on 127.0.0.1: ``answers`` is the status of each request in turn
    (the last repeats); ``hang_s`` makes it wait before answering."""

    def __init__(self, answers: list[int], hang_s: float = 0.0) -> None:
        self.answers, self.hang_s = answers, hang_s
        self.requests: list[dict[str, Any]] = []
        self.open = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                receiver.open += 1
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append({"headers": dict(self.headers), "body": body})
                status = receiver.answers[min(len(receiver.requests) - 1, len(receiver.answers) - 1)]
                time.sleep(receiver.hang_s)
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:
                    pass  # the sender gave up waiting
                receiver.open -= 1

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(r["body"]) for r in self.requests]


def verify(secret: str, header: str, body: bytes, tolerance_s: float = 300) -> bool:
    """What a receiver does (docs/webhooks.md), written here independently of the server."""
    parts = dict(item.split("=", 1) for item in header.split(","))
    expected = hmac.new(secret.encode(), parts["t"].encode() + b"." + body, hashlib.sha256).hexdigest()
    return abs(time.time() - int(parts["t"])) <= tolerance_s and hmac.compare_digest(expected, parts["v1"])


async def until(probe: Callable[[], Any], what: str, timeout_s: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = await probe() if asyncio.iscoroutinefunction(probe) else probe()
        if found:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what} never happened")


@pytest.fixture
def receivers() -> Iterator[dict[str, Receiver]]:
    with Receiver([200]) as ok, Receiver([500, 502, 200]) as flaky, Receiver([503]) as dead, \
            Receiver([200], hang_s=3.0) as hanging:
        yield {"ok": ok, "flaky": flaky, "dead": dead, "hanging": hanging}


def test_deliveries_are_signed_retried_and_recorded(redis_server: Any, unique_id: str,
                                                    receivers: dict[str, Receiver]) -> None:
    from storage.checkpoint import client_for

    prefix = f"wh{unique_id}"
    policy = DeliveryPolicy(timeout_s=0.5, backoff_s=0.1, max_backoff_s=0.4, retry_window_s=1.5, claim_idle_s=30)

    async def scenario() -> None:
        client = client_for(redis_server.url)
        store = WebhookStore(client, prefix=prefix)
        subs = {"ok": await store.create(receivers["ok"].url, ["*"], SECRET)}
        for name in ("flaky", "dead", "hanging"):
            subs[name] = await store.create(receivers[name].url, ["class.live"], None)
        assert subs["flaky"]["secret"].startswith("whsec_")
        dispatcher = WebhookDispatcher(client, prefix=prefix, policy=policy, poll_s=0.05)
        await dispatcher.start()
        try:
            await publish_event(client, prefix, "class.live", "c1", {"session": "c1", "phase": "live"})
            await results_stream.publish(client, prefix, [
                results_stream.entry("record.set", "c1", {"metric": "power_5s_w", "value": 500.0}, rider="ann"),
                results_stream.entry("ride.revised", "c1", {"id": "c1", "rider": "ann", "revision": 2}, rider="ann"),
                results_stream.entry("ride.recorded", "c1", {"id": "c1", "rider": "bob", "revision": 1}, rider="bob"),
            ])
            ok = receivers["ok"]
            await until(lambda: len(ok.requests) >= 3, "three deliveries to the ok receiver")
            await until(lambda: len(receivers["flaky"].requests) >= 3, "the flaky receiver's third try")

            async def settled() -> bool:
                dead, hanging = await store.get(subs["dead"]["id"]), await store.get(subs["hanging"]["id"])
                return dead["last_status"] == "failed" and hanging["last_status"] == "failed"
            await until(settled, "the dead and hanging receivers given up", timeout_s=20)
        finally:
            await dispatcher.stop()
        assert sorted(e["type"] for e in ok.events()) == ["class.live", "record.set", "result.revised"]
        for request in ok.requests:
            assert verify(SECRET, request["headers"]["Pulseline-Signature"], request["body"])
            assert not verify("whsec_some_other_secret_000", request["headers"]["Pulseline-Signature"], request["body"])
            assert request["headers"]["Pulseline-Event"] == json.loads(request["body"])["type"]
        revised = next(e for e in ok.events() if e["type"] == "result.revised")
        assert revised["data"] == {"kind": "ride", "ride": {"id": "c1", "rider": "ann", "revision": 2}}
        flaky = await store.get(subs["flaky"]["id"])
        assert flaky["delivered"] == 1 and flaky["attempts"] == 3 and flaky["last_status"] == "delivered"
        log = await store.deliveries(subs["flaky"]["id"])
        assert [(d["attempt"], d["status"], d["code"]) for d in reversed(log)] == [
            (1, "retrying", 500), (2, "retrying", 502), (3, "delivered", 200)]
        assert len({r["headers"]["Pulseline-Delivery"] for r in receivers["flaky"].requests}) == 1  # one event id
        dead = await store.get(subs["dead"]["id"])
        assert dead["failed"] == 1 and dead["attempts"] >= 3 and dead["last_code"] == 503
        hanging = await store.deliveries(subs["hanging"]["id"])
        assert hanging[0]["status"] == "failed" and "no answer within 0.5 s" in hanging[0]["error"]
        assert await client.zcard(store.retry_key) == 0
        await client.aclose()

    asyncio.run(scenario())


def test_subscriptions_over_http_and_a_class_that_a_hanging_receiver_cannot_slow(
        edge: Any, tokens: Any, unique_id: str, receivers: dict[str, Receiver]) -> None:
    ops = tokens.headers()
    base = f"{edge.url}/v1/webhooks"
    bad = [{"url": "ftp://x/y", "events": ["*"]}, {"url": receivers["ok"].url, "events": ["class.exploded"]},
           {"url": receivers["ok"].url, "events": []}, {"url": receivers["ok"].url, "events": ["*"], "secret": "short"}]
    for body in bad:
        answer = HTTP.post(base, json=body, headers=ops)
        assert answer.status_code == 422, (body, answer.text)
    rider = tokens.headers("participant", participant=f"ann-{unique_id}")
    assert HTTP.post(base, json={"url": receivers["ok"].url, "events": ["*"]}, headers=rider).status_code == 403
    assert HTTP.get(f"{base}/wh_0123456789abcdef", headers=ops).status_code == 404
    mine = HTTP.post(base, json={"url": receivers["ok"].url, "events": ["*"], "secret": SECRET}, headers=ops)
    assert mine.status_code == 201 and mine.json()["secret"] == SECRET
    stuck = HTTP.post(base, json={"url": receivers["hanging"].url, "events": ["*"]}, headers=ops).json()
    assert "secret" not in HTTP.get(f"{base}/{mine.json()['id']}", headers=ops).json()

    sid, ann = f"wh-{unique_id}", f"ann-{unique_id}"
    try:
        HTTP.post(f"{edge.url}/v1/sessions", json={"id": sid}, headers=ops).raise_for_status()
        HTTP.post(f"{edge.url}/v1/sessions/{sid}/participants", json={"participant": ann}, headers=ops).raise_for_status()
        for phase in ("live", "ended"):
            HTTP.post(f"{edge.url}/v1/sessions/{sid}/phase", json={"phase": phase}, headers=ops,
                       timeout=30).raise_for_status()

        def mine_seen() -> list[str]:
            return [e["type"] for e in receivers["ok"].events() if e["data"].get("session") == sid]

        seen = asyncio.run(until(lambda: len(mine_seen()) >= 4 and mine_seen(), "the class's events", 60))
        assert seen == ["class.starting", "rider.joined", "class.live", "class.ended"]
        assert receivers["hanging"].requests  # it was sent events too, and held them
        listed = HTTP.get(base, headers=ops).json()["webhooks"]
        assert mine.json()["id"] in [w["id"] for w in listed]
        deliveries = HTTP.get(f"{base}/{mine.json()['id']}/deliveries?limit=100", headers=ops).json()["deliveries"]
        assert any(d["status"] == "delivered" and d["type"] == "class.ended" for d in deliveries)
    finally:
        for ident in (mine.json()["id"], stuck["id"]):
            assert HTTP.delete(f"{base}/{ident}", headers=ops).status_code == 200
    assert HTTP.delete(f"{base}/{stuck['id']}", headers=ops).status_code == 404


async def _all_delivered_and_acknowledged(client: Any, prefix: str, receiver: Receiver, count: int) -> None:
    from history.events import events_key
    from history.webhooks import GROUP

    async def drained() -> bool:
        pending = await client.xpending(events_key(prefix), GROUP)
        return len(receiver.requests) >= count and pending["pending"] == 0
    await until(drained, "every rider.joined delivered and acknowledged")


def test_a_burst_of_events_is_delivered_once_each_and_left_acknowledged(redis_server: Any, unique_id: str) -> None:
    """A class's start: 230 ``rider.joined`` at once (read 50 at a time, the subscriptions
    once per read): each delivered once, nothing left pending in the group."""
    from history.events import publish_rider_events
    from storage.checkpoint import client_for

    prefix = f"whb{unique_id}"
    riders = [f"r{k:03d}" for k in range(230)]

    async def scenario() -> None:
        client = client_for(redis_server.url)
        store = WebhookStore(client, prefix=prefix)
        with Receiver([200]) as joined, Receiver([200]) as other:
            await store.create(joined.url, ["rider.joined"], None)
            await store.create(other.url, ["class.live"], None)
            dispatcher = WebhookDispatcher(client, prefix=prefix, policy=DeliveryPolicy(max_in_flight=64), poll_s=0.05)
            await dispatcher.start()
            try:
                await publish_rider_events(client, prefix, "rider.joined", "c1", riders)
                await _all_delivered_and_acknowledged(client, prefix, joined, len(riders))
            finally:
                await dispatcher.stop()
            assert sorted(e["data"]["rider"] for e in joined.events()) == riders
            assert other.requests == []
            assert dispatcher.counters["errors"] == 0 and dispatcher.counters["delivered"] == len(riders)
        await client.aclose()

    asyncio.run(scenario())


def test_events_that_trickle_in_are_read_in_batches(redis_server: Any, unique_id: str) -> None:
    """A join surge publishes one ``rider.joined`` per rider as they come: the reader gathers
    them (``GATHER_S``) instead of a read, a subscriptions read and an XACK per event."""
    from history.events import publish_rider_events
    from history.webhooks import GATHER_S
    from storage.checkpoint import client_for

    prefix = f"wht{unique_id}"
    riders = [f"r{k:02d}" for k in range(40)]
    spacing_s = GATHER_S / 10  # ten events per gathering wait

    async def scenario() -> None:
        client = client_for(redis_server.url)
        store = WebhookStore(client, prefix=prefix)
        with Receiver([200]) as joined:
            await store.create(joined.url, ["rider.joined"], None)
            dispatcher = WebhookDispatcher(client, prefix=prefix, policy=DeliveryPolicy(max_in_flight=64), poll_s=0.05)
            await dispatcher.start()
            try:
                for rider in riders:
                    await publish_rider_events(client, prefix, "rider.joined", "c1", [rider])
                    await asyncio.sleep(spacing_s)
                await _all_delivered_and_acknowledged(client, prefix, joined, len(riders))
            finally:
                await dispatcher.stop()
            assert sorted(e["data"]["rider"] for e in joined.events()) == riders
            # ~40 * spacing_s / GATHER_S reads; one per event without the gathering
            assert dispatcher.counters["batches"] <= len(riders) // 2, dispatcher.counters
        await client.aclose()

    asyncio.run(scenario())


def test_a_subscription_whose_url_cannot_be_sent_to_fails_alone(redis_server: Any, unique_id: str) -> None:
    """A stored URL that httpx refuses to build a request for (a NUL, from before the API
    checked for it) is a failed delivery of that subscription only: the entry is still
    acknowledged, so the other subscribers get it once and are not sent it again when
    entries left pending are claimed."""
    from history.events import events_key
    from history.webhooks import GROUP
    from storage.checkpoint import client_for

    prefix = f"whu{unique_id}"
    policy = DeliveryPolicy(timeout_s=0.5, backoff_s=0.1, max_backoff_s=0.1, retry_window_s=0.3, claim_idle_s=0.2)

    async def scenario() -> None:
        client = client_for(redis_server.url)
        store = WebhookStore(client, prefix=prefix)
        with Receiver([200]) as ok:
            await store.create(ok.url, ["class.live"], None)
            ident = (await store.create(ok.url, ["class.live"], None))["id"]
            await client.hset(store.key(ident), "url", ok.url + "\x00")  # type: ignore[misc]
            dispatcher = WebhookDispatcher(client, prefix=prefix, policy=policy, poll_s=0.05)
            await dispatcher.start()
            try:
                await publish_event(client, prefix, "class.live", "c1", {"session": "c1", "phase": "live"})
                await until(lambda: ok.requests, "the delivery to the good subscriber")
                await asyncio.sleep(1.0)  # claims of entries left pending (every 0.1 s)
                assert len(ok.requests) == 1, [r["headers"]["Pulseline-Delivery"] for r in ok.requests]
                assert (await client.xpending(events_key(prefix), GROUP))["pending"] == 0

                async def given_up() -> bool:
                    return (await store.get(ident))["last_status"] == "failed"
                await until(given_up, "the unusable URL given up")
            finally:
                await dispatcher.stop()
            bad = await store.deliveries(ident)
            assert bad[0]["code"] is None and "InvalidURL" in bad[0]["error"], bad
        await client.aclose()

    asyncio.run(scenario())


@pytest.mark.parametrize("url", ["https://example.com/\x00", "http://exa mple.com/", "http://example.com:99999/",
                                 "http://example.com/\n", "http://ex\u00e4mple.com:x/"])
def test_a_url_that_cannot_be_sent_to_is_refused(url: str) -> None:
    from history.webhooks import WebhookError, check_subscription

    with pytest.raises(WebhookError):
        check_subscription(url, ["*"], None)


def test_a_slow_subscriber_does_not_get_the_others_sent_an_event_twice(redis_server: Any, unique_id: str) -> None:
    """A read's entries are acknowledged once every subscription's chain is through them; a
    subscriber that times out on each of them makes that take longer than ``claim_idle_s``.
    The entries must not look abandoned meanwhile: claimed again, they were fanned out again,
    to every subscriber (the fast one got each event twice or more)."""
    from history.events import publish_rider_events
    from storage.checkpoint import client_for

    prefix = f"whs{unique_id}"
    riders = [f"r{k}" for k in range(6)]
    policy = DeliveryPolicy(timeout_s=0.4, backoff_s=30, max_backoff_s=30, retry_window_s=60, claim_idle_s=1.0)

    async def scenario() -> None:
        client = client_for(redis_server.url)
        store = WebhookStore(client, prefix=prefix)
        with Receiver([200]) as fast, Receiver([200], hang_s=1.0) as slow:
            await store.create(fast.url, ["rider.joined"], None)
            await store.create(slow.url, ["rider.joined"], None)
            dispatcher = WebhookDispatcher(client, prefix=prefix, policy=policy, poll_s=0.05)
            await dispatcher.start()
            try:
                await publish_rider_events(client, prefix, "rider.joined", "c1", riders)
                await _all_delivered_and_acknowledged(client, prefix, fast, len(riders))  # (6 x 0.4 s for the slow one)
                await asyncio.sleep(1.5)  # a claim of what looked abandoned would have gone out by now
            finally:
                await dispatcher.stop()
            sent = [e["id"] for e in fast.events()]
            assert len(sent) == len(set(sent)) == len(riders), sorted(sent)
        await client.aclose()

    asyncio.run(scenario())


def test_a_host_that_gets_no_dns_answer_is_looked_up_once_at_a_time_and_then_failed_fast() -> None:
    """A resolver that never answers held a resolver thread per delivery and the edge's
    shutdown waited for all of them: now one lookup per host is in flight, deliveries share
    it, and the host fails at once for ``ttl_s`` after it timed out. IP literals and hosts
    that resolve (the real resolver: localhost) pass."""
    from history.webhooks import HostLookups

    calls: list[tuple[str, int]] = []

    async def silent(host: str, port: int) -> Any:  # a DNS server that never answers
        calls.append((host, port))
        await asyncio.Event().wait()

    async def scenario() -> None:
        lookups = HostLookups(ttl_s=0.5, timeout_s=0.2, resolve=silent)
        answers = await asyncio.gather(*(lookups.check("https://hook.example.com/in") for _ in range(20)))
        assert calls == [("hook.example.com", 443)] and all("no DNS answer" in str(a) for a in answers)
        assert "no DNS answer" in str(await lookups.check("https://hook.example.com/other"))
        assert len(calls) == 1  # remembered: no second lookup
        assert await lookups.check("http://127.0.0.1:9/in") is None and await lookups.check("http://[::1]/in") is None
        await asyncio.sleep(0.6)  # forgotten after ttl_s: looked up again
        await lookups.check("https://hook.example.com/in")
        assert len(calls) == 2
        assert await HostLookups(timeout_s=5).check("http://localhost:9/in") is None

    asyncio.run(scenario())
