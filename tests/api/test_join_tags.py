"""Joining with tags over HTTP: stored and shown in the session, bad tags a clear 422 that
changes nothing, never a 5xx."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.integration


@pytest.fixture
def http(edge: Any, unique_id: str, tokens: Any) -> httpx.Client:
    client = httpx.Client(base_url=edge.url, headers=tokens.headers("operator"), timeout=30)
    client.post("/v1/sessions", json={"id": f"tags-{unique_id}"}).raise_for_status()
    client.headers["X-Session"] = f"tags-{unique_id}"
    return client


def join(http: httpx.Client, body: Any) -> httpx.Response:
    return http.post(f"/v1/sessions/{http.headers['X-Session']}/participants", json=body)


def roster(http: httpx.Client) -> dict[str, dict[str, str]]:
    snap = http.get(f"/v1/sessions/{http.headers['X-Session']}")
    snap.raise_for_status()
    return {p["participant"]: p["tags"] for p in snap.json()["participants"]}


def test_tags_are_stored_replaced_and_kept(http: httpx.Client) -> None:
    assert join(http, {"participant": "ann", "tags": {"age": "30-39", "gender": "f"}}).status_code == 201
    assert join(http, {"participant": "bob"}).status_code == 201
    assert roster(http) == {"ann": {"age": "30-39", "gender": "f"}, "bob": {}}
    assert join(http, {"participant": "ann"}).status_code == 201  # without tags: kept
    assert join(http, {"participant": "bob", "tags": {"age": "40-49"}}).status_code == 201
    assert roster(http) == {"ann": {"age": "30-39", "gender": "f"}, "bob": {"age": "40-49"}}
    assert join(http, {"participant": "ann", "tags": {"age": "40-49"}}).status_code == 201  # replaced
    assert join(http, {"participant": "bob", "tags": {}}).status_code == 201  # cleared
    assert join(http, {"participant": "cat", "tags": None}).status_code == 201
    assert roster(http) == {"ann": {"age": "40-49"}, "bob": {}, "cat": {}}


BAD_TAGS = [
    ({f"k{i}": "v" for i in range(9)}, "at most 8"),
    ({"bad key": "v"}, "must match"),
    ({"": "v"}, "must match"),
    ({"k" * 33: "v"}, "must match"),
    ({"age": ""}, "1-64 characters"),
    ({"age": "x" * 65}, "1-64 characters"),
    ({"age": "line\nbreak"}, "control"),
    ({"age": "\u0000"}, "control"),
    ({"age": "rtl\u202eevil"}, "format"),
    ({"age": 30}, "string"),
    ({"age": None}, "string"),
    ({"age": {"nested": "x"}}, "string"),
    ({"age": ["30-39"]}, "string"),
    (["age", "30-39"], "dictionary"),
    ("age=30-39", "dictionary"),
    (7, "dictionary"),
]


def test_bad_tags_get_a_clear_422_and_change_nothing(http: httpx.Client) -> None:
    join(http, {"participant": "ann", "tags": {"age": "30-39"}}).raise_for_status()
    for tags, says in BAD_TAGS:
        for who in ("ann", "eve"):  # a member re-joining, and a newcomer
            response = join(http, {"participant": who, "tags": tags})
            assert response.status_code == 422, (tags, response.status_code, response.text)
            assert says in response.text.lower(), (tags, response.text)
    assert roster(http) == {"ann": {"age": "30-39"}}
