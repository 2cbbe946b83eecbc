"""Schemathesis against the edge's own OpenAPI spec: no generated request gets a 5xx.

Every operation is exercised anonymously (everything but the public routes must be 401)
and with an operator token (the deepest reach); then every operation with a JSON body gets
its generated bodies with one value replaced by something hostile (NaN, Infinity, 1e400,
lone surrogates in values and keys, huge strings and numbers, deep nesting) sent as raw
bytes — what FastAPI's default validation handler could not encode (500s). Every error
body must be strict JSON. Examples are bounded so the run stays well under a minute
(``scripts/fuzz_openapi.py`` runs the same checks for longer); operations that start many
actors per request (leaderboard creation and resharding: up to dozens of shard actors
each) are left to their own "never 5xx" tests.
"""

from __future__ import annotations

import json
import os
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.integration

HEAVY = r"^/v1/leaderboards(/\{name\}/reshard)?$"
PUBLIC = {"/healthz", "/livez", "/readyz", "/v1/sessions/{session_id}/view"}
SCALE = int(os.environ.get("PULSELINE_FUZZ_SCALE", "1"))  # scripts/fuzz_openapi.py raises it
BUDGET = {"operator": 8 * SCALE, "anonymous": 3 * SCALE, "hostile": 6 * SCALE}

NAN, INF = float("nan"), float("inf")
HOSTILE = st.sampled_from([NAN, INF, -INF, "\ud800", "a\udfffb", "x" * 70_000, 10**400, -(10**30), 1.5e308,
                           {"\ud800": 1}, [[[[[[[[[[[]]]]]]]]]]], "\x00\x1b[31m", True, None, ""])


def inject(body: Any, hostile: Any, path: list[int]) -> Any:
    """``body`` with one value (chosen by ``path``) replaced by ``hostile``, or ``hostile``
    itself for a body that is not a container."""
    if isinstance(body, dict) and body:
        key = sorted(body)[path[0] % len(body)]
        return {**body, key: inject(body[key], hostile, path[1:]) if path[1:] else hostile}
    if isinstance(body, list) and body:
        i = path[0] % len(body)
        return body[:i] + [inject(body[i], hostile, path[1:]) if path[1:] else hostile] + body[i + 1:]
    return hostile


def raw_json(value: Any) -> bytes:
    """What a hostile client sends: Python's non-standard JSON (NaN, Infinity, surrogates)."""
    text = json.dumps(value, allow_nan=True, ensure_ascii=True)
    return text.replace("1" + "0" * 400, "1e400")  # an int that big becomes a float overflow


def _operations(edge: Any) -> list[Any]:
    schema = schemathesis.openapi.from_url(f"{edge.url}/openapi.json")
    schema = schema.exclude(path_regex=HEAVY, method="POST")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8, [op.path for op in operations]
    return operations


def _fuzz(operations: list[Any], examples: int, check: Any) -> int:
    calls = 0
    for operation in operations:

        @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def one(case: Any) -> None:
            nonlocal calls
            calls += 1
            check(case)

        one()
    return calls


def test_operator_requests_never_get_a_5xx(edge: Any, tokens: Any) -> None:
    headers = tokens.headers("operator")

    def check(case: Any) -> None:
        response = case.call(headers=headers, timeout=30)
        assert response.status_code < 500, (case.method, case.formatted_path, response.status_code, response.text[:300])

    assert _fuzz(_operations(edge), BUDGET["operator"], check) > 40


def test_anonymous_requests_are_refused_not_crashed(edge: Any) -> None:
    def check(case: Any) -> None:
        response = case.call(timeout=30)
        assert response.status_code < 500, (case.method, case.formatted_path, response.status_code, response.text[:300])
        if case.path not in PUBLIC:
            assert response.status_code in (401, 404, 405, 422), (case.method, case.formatted_path, response.status_code)

    assert _fuzz(_operations(edge), BUDGET["anonymous"], check) > 15


def check_error_body(response: httpx.Response) -> None:
    if response.status_code >= 400 and response.headers.get("content-type", "").startswith("application/json"):
        body = json.loads(response.content)  # strict: no NaN, valid UTF-8
        assert "error" in body and "message" in body, body


def test_hostile_json_values_never_get_a_5xx(edge: Any, tokens: Any) -> None:
    headers = {**tokens.headers("operator"), "content-type": "application/json"}
    operations = [op for op in _operations(edge) if op.body]
    assert len(operations) >= 4, [op.path for op in operations]
    calls = 0
    with httpx.Client(timeout=30) as client:
        for operation in operations:

            @settings(max_examples=BUDGET["hostile"], deadline=None, database=None, suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(), hostile=HOSTILE, path=st.lists(st.integers(0, 7), min_size=1, max_size=3))
            def one(case: Any, hostile: Any, path: list[int]) -> None:
                nonlocal calls
                calls += 1
                content = raw_json(inject(case.body, hostile, path))
                response = client.request(case.method, f"{edge.url}{case.formatted_path}", params=case.query,
                                          content=content, headers=headers)
                assert response.status_code < 500, (case.method, case.formatted_path, content[:200], response.text[:300])
                check_error_body(response)

            one()
    assert calls > 20
