"""Leaderboard HTTP routes on a real edge (uvicorn + Ray + Redis): auth, idempotent writes,
cursor pages while scores change, ranks, around-me, cohorts, and bad input (never 5xx)."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.integration
T0 = 1_795_000_000.0


@pytest.fixture
def http(edge: Any, tokens: Any) -> Iterator[httpx.Client]:
    # leaderboard writes need an operator token (docs/security.md)
    with httpx.Client(base_url=edge.url, timeout=30, headers=tokens.headers("operator")) as c:
        yield c


@pytest.fixture
def board(http: httpx.Client, edge: Any, unique_id: str) -> Iterator[str]:
    name = f"http-{unique_id}"
    body = {"name": name, "metric": "kj", "operator": "sum", "cohort_keys": ["age"], "shard_count": 2}
    assert http.post("/v1/leaderboards", json=body).status_code == 201
    yield name
    drop(edge, name)


def drop(edge: Any, name: str) -> None:
    """Retire a board's actors and keys (detached actors outlive the test otherwise)."""
    from leaderboards.router import Leaderboards

    async def run() -> None:
        s = edge.settings
        lb = Leaderboards.connect(s.redis_url, prefix=s.prefix, namespace=s.namespace)
        await lb.drop(name)
        await lb.aclose()

    asyncio.run(run())


def score(user: str, source: str, value: float, at: float = T0, **tags: str) -> dict[str, Any]:
    return {"user": user, "source": source, "score": value, "achieved_at": at, "tags": tags or None}


def write(http: httpx.Client, name: str, scores: list[dict[str, Any]]) -> dict[str, Any]:
    r = http.post(f"/v1/leaderboards/{name}/scores", json={"scores": scores})
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def test_create_is_idempotent_and_conflicts_on_another_spec(http: httpx.Client, board: str) -> None:
    same = {"name": board, "metric": "kj", "operator": "sum", "cohort_keys": ["age"], "shard_count": 2}
    r = http.post("/v1/leaderboards", json=same)
    assert r.status_code == 200 and r.json()["created"] is False
    other = {**same, "operator": "best"}
    assert http.post("/v1/leaderboards", json=other).status_code == 409
    got = http.get(f"/v1/leaderboards/{board}").json()
    assert got["spec"]["operator"] == "sum" and got["spec"]["shard_count"] == 2


def test_writes_are_idempotent_per_user_and_source(http: httpx.Client, board: str) -> None:
    batch = [score("ann", "class-1", 10.0), score("ann", "class-2", 5.0), score("bob", "class-1", 12.0)]
    write(http, board, batch)
    write(http, board, batch)  # a retried request counts once
    write(http, board, [score("ann", "class-1", 11.0, T0 + 1)])  # a correction replaces
    ann = http.get(f"/v1/leaderboards/{board}/users/ann/rank").json()
    assert ann == {"rank": 1, "user": "ann", "score": 16.0, "achieved_at": T0 + 1, "tags": {}, "stale_ms": None}
    assert http.get(f"/v1/leaderboards/{board}/users/bob/rank").json()["rank"] == 2


def test_pages_neither_skip_nor_repeat_while_scores_change(http: httpx.Client, board: str) -> None:
    rng = random.Random(7)
    users = [f"u{i:03d}" for i in range(60)]
    write(http, board, [score(u, "s", float(rng.randint(0, 30)), T0 + i) for i, u in enumerate(users)])
    seen: list[str] = []
    changed: set[str] = set()
    cursor = None
    for step in range(100):
        params: dict[str, Any] = {"n": 7}
        if cursor:
            params["cursor"] = cursor
        page = http.get(f"/v1/leaderboards/{board}/top", params=params).json()
        seen += [e["user"] for e in page["entries"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
        moved = rng.sample(users, 3)  # scores go up and down between pages; newcomers arrive
        changed.update(moved)
        write(http, board, [score(u, "s", float(rng.randint(-5, 40)), T0 + 100 + step) for u in moved])
        write(http, board, [score(f"new{step}", "s", float(rng.randint(0, 30)), T0 + 100 + step)])
    assert cursor is None
    assert len(seen) == len(set(seen))  # no repeats
    assert set(users) - changed <= set(seen)  # every unchanged user seen exactly once


def test_rank_around_and_cohorts(http: httpx.Client, board: str) -> None:
    write(http, board, [
        score(f"r{i}", "s", float(100 - i), T0, age="30-39" if i % 2 else "20-29") for i in range(20)
    ])
    r7 = http.get(f"/v1/leaderboards/{board}/users/r7/rank").json()
    assert r7["rank"] == 8 and r7["score"] == 93.0
    cohort = http.get(f"/v1/leaderboards/{board}/users/r7/rank", params={"cohort": "age:30-39"}).json()
    assert cohort["rank"] == 4  # r1, r3, r5 are better in the 30-39 cohort
    around = http.get(f"/v1/leaderboards/{board}/users/r7/around", params={"k": 2}).json()
    assert [e["user"] for e in around["above"]] == ["r5", "r6"]
    assert [e["rank"] for e in around["below"]] == [9, 10] and around["entry"]["rank"] == 8
    around_c = http.get(
        f"/v1/leaderboards/{board}/users/r7/around", params={"k": 1, "cohort": "age:30-39"}
    ).json()
    assert [e["user"] for e in around_c["above"] + around_c["below"]] == ["r5", "r9"]
    top_c = http.get(f"/v1/leaderboards/{board}/top", params={"n": 3, "cohort": "age:20-29"}).json()
    assert [e["user"] for e in top_c["entries"]] == ["r0", "r2", "r4"]
    fresh = http.get(f"/v1/leaderboards/{board}/top", params={"n": 3, "max_age_s": 60}).json()
    cached = http.get(f"/v1/leaderboards/{board}/top", params={"n": 3, "max_age_s": 60}).json()
    assert cached["cached"] is True and cached["age_s"] >= 0 and cached["entries"] == fresh["entries"]


def test_one_call_rank_says_how_old_it_is(http: httpx.Client, board: str) -> None:
    write(http, board, [score(f"r{i}", "s", float(100 - i)) for i in range(30)])
    deadline = time.monotonic() + 30
    while True:  # the peer replicas catch up within a heartbeat or two
        got = http.get(f"/v1/leaderboards/{board}/users/r12/rank", params={"max_stale_ms": 60_000}).json()
        if got["stale_ms"] is not None:
            break
        assert got["rank"] == 13  # not yet from the replicas: the exact two-round answer
        assert time.monotonic() < deadline, got
        time.sleep(0.2)
    assert got["rank"] == 13 and 0 <= got["stale_ms"] < 60_000
    exact = http.get(f"/v1/leaderboards/{board}/users/r12/rank").json()
    assert exact["rank"] == 13 and exact["stale_ms"] is None


def test_a_dropped_period_is_gone_and_only_operators_drop(http: httpx.Client, edge: Any, tokens: Any, unique_id: str) -> None:
    name = f"daily-{unique_id}"
    body = {"name": name, "metric": "kj", "operator": "best", "period": "daily", "timezone": "UTC", "shard_count": 2}
    assert http.post("/v1/leaderboards", json=body).status_code == 201
    try:
        day1, day2 = "2026-11-18", "2026-11-19"
        write(http, name, [score(f"u{i}", "s", float(i), T0 + i) for i in range(10)])  # T0: 2026-11-18 11:06 UTC
        write(http, name, [score(f"u{i}", "s", float(i), T0 + 86_400 + i) for i in range(4)])
        rider = tokens.headers("participant", participant="u1")
        assert http.delete(f"/v1/leaderboards/{name}/periods/{day1}", headers=rider).status_code == 403
        r = http.delete(f"/v1/leaderboards/{name}/periods/{day1}")
        assert r.status_code == 200 and r.json()["dropped_records"] == 10, r.text
        assert http.get(f"/v1/leaderboards/{name}/top", params={"period": day1}).json()["entries"] == []
        kept = http.get(f"/v1/leaderboards/{name}/top", params={"period": day2, "n": 10}).json()["entries"]
        assert [e["user"] for e in kept] == ["u3", "u2", "u1", "u0"]
        assert http.delete(f"/v1/leaderboards/{name}/periods/{day1}").json()["dropped_records"] == 0
    finally:
        drop(edge, name)


def test_bad_input_gets_4xx_never_5xx(http: httpx.Client, board: str, edge: Any, tokens: Any) -> None:
    base = f"/v1/leaderboards/{board}"
    with httpx.Client(base_url=edge.url, timeout=30) as anonymous:
        assert anonymous.post(f"{base}/scores", json={"scores": [score("a", "s", 1.0)]}).status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert anonymous.post(f"{base}/scores", json={"scores": [score("a", "s", 1.0)]}, headers=wrong).status_code == 401
        assert anonymous.post("/v1/leaderboards", json={"name": "x", "metric": "m"}).status_code == 401
        assert anonymous.get(f"{base}/top").status_code == 401
        rider = tokens.headers("participant", participant="ann")
        assert anonymous.get(f"{base}/top", headers=rider).status_code == 200  # reads: any token
        refused = anonymous.post(f"{base}/scores", json={"scores": [score("a", "s", 1.0)]}, headers=rider)
        assert refused.status_code == 403
    cases = [
        ("post", "/v1/leaderboards", {"name": "bad name!", "metric": "m"}, 422),
        ("post", "/v1/leaderboards", {"name": "tz", "metric": "m", "timezone": "Mars/Base"}, 422),
        ("post", "/v1/leaderboards", {"name": "op", "metric": "m", "operator": "max"}, 422),
        ("post", "/v1/leaderboards", {"name": "sh", "metric": "m", "shard_count": 0}, 422),
        ("post", f"{base}/scores", {"scores": []}, 422),
        ("post", f"{base}/scores", {"scores": [{"user": "a", "source": "s"}]}, 422),
        ("post", f"{base}/scores", {"scores": [score("a", "", 1.0)]}, 422),
        ("post", f"{base}/scores", {"scores": [score("a", "s", 1.0, -5.0)]}, 422),
        ("post", f"{base}/scores", {"scores": [{**score("a", "s", 1.0), "tags": {"k": 3}}]}, 422),
        ("post", f"{base}/scores", "not json", 422),
        ("post", "/v1/leaderboards/nope/scores", {"scores": [score("a", "s", 1.0)]}, 404),
        ("get", "/v1/leaderboards/nope/top", None, 404),
        ("get", "/v1/leaderboards/bad%20name/top", None, 404),
        ("get", f"{base}/users/ghost/rank", None, 404),
        ("get", f"{base}/users/ghost/around", None, 404),
        ("get", f"{base}/top?n=0", None, 422),
        ("get", f"{base}/top?n=abc", None, 422),
        ("get", f"{base}/top?cursor=%%%garbage", None, 400),
        ("get", f"{base}/top?cursor=AAAA", None, 400),
        ("get", f"{base}/top?cohort=novalue", None, 400),
        ("get", f"{base}/top?cohort=gender:f", None, 400),
        ("get", f"{base}/users/a/around?k=-1", None, 422),
        ("post", f"{base}/reshard", {"shard_count": 0}, 422),
        ("get", f"{base}/users/a/rank?max_stale_ms=-1", None, 422),
        ("get", f"{base}/users/a/rank?max_stale_ms=nan", None, 422),
        ("delete", "/v1/leaderboards/nope/periods/all", None, 404),
    ]
    for method, url, body, status in cases:
        if method == "post" and isinstance(body, str):
            r = http.post(url, content=body, headers={"Content-Type": "application/json"})
        elif method == "post":
            r = http.post(url, json=body)
        else:
            r = http.request(method.upper(), url)
        assert r.status_code == status, (method, url, body, r.status_code, r.text)
    class_board = f"{board}-class"
    assert http.post("/v1/leaderboards", json={"name": class_board, "metric": "m", "period": "class"}).status_code == 201
    try:
        r = http.post(f"/v1/leaderboards/{class_board}/scores", json={"scores": [score("a", "s", 1.0)]})
        assert r.status_code == 422 and r.json()["error"] == "bad_write"  # no class_id tag
        assert http.get(f"/v1/leaderboards/{class_board}/top").status_code == 400  # period needed
    finally:
        drop(edge, class_board)
