"""Schemathesis against the edge's own OpenAPI spec: no generated request gets a 5xx.

Every operation is exercised anonymously (everything but the public routes must be 401)
and with an operator token (the deepest reach). Examples are bounded so the run stays well
under a minute; operations that start many actors per request (leaderboard creation and
resharding: up to dozens of shard actors each) are left to their own "never 5xx" tests.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

pytestmark = pytest.mark.integration

HEAVY = r"^/v1/leaderboards(/\{name\}/reshard)?$"
PUBLIC = {"/healthz", "/v1/sessions/{session_id}/view"}


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

    assert _fuzz(_operations(edge), 8, check) > 40


def test_anonymous_requests_are_refused_not_crashed(edge: Any) -> None:
    def check(case: Any) -> None:
        response = case.call(timeout=30)
        assert response.status_code < 500, (case.method, case.formatted_path, response.status_code, response.text[:300])
        if case.path not in PUBLIC:
            assert response.status_code in (401, 404, 405, 422), (case.method, case.formatted_path, response.status_code)

    assert _fuzz(_operations(edge), 3, check) > 15
