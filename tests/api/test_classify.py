"""``api.errors.classify``: the one place an exception becomes what a client is told."""

from __future__ import annotations

import json

import pytest
import redis.exceptions as redis_errors
from ray import exceptions as ray_errors

from actors.errors import CheckpointError, PhaseError, StaleInstance
from api.errors import Conflict, Internal, Unavailable, classify, encodable

RAY_TRACE = "\x1b[36mray::SessionActor.set_phase()\x1b[39m (pid=4242, ip=10.1.2.3, actor_id=abc)\nTraceback ..."


def _wrapped(cause: BaseException) -> BaseException:
    return ray_errors.RayTaskError("set_phase", RAY_TRACE, cause).as_instanceof_cause()  # type: ignore[no-any-return]


@pytest.mark.timeout(30)
def test_a_phase_error_inside_ray_is_a_clean_409() -> None:
    error = classify(_wrapped(PhaseError("live", "scheduled")))
    assert isinstance(error, Conflict) and error.status == 409 and error.code == "bad_phase"
    assert error.message.startswith("cannot go from phase 'live' to 'scheduled'")
    for internal in ("pid=", "ip=", "\x1b", "Traceback", "actor_id"):
        assert internal not in json.dumps(error.body())


@pytest.mark.timeout(30)
@pytest.mark.parametrize("exc", [
    redis_errors.ConnectionError("Error 111 connecting to 127.0.0.1:6379"), redis_errors.TimeoutError("Timeout reading"),
    redis_errors.BusyLoadingError(), TimeoutError(), StaleInstance(3, 4),
    ray_errors.GetTimeoutError(), ray_errors.ActorUnavailableError("gone", b"\x00" * 16),
])
def test_dependencies_down_are_503_with_retry_after_and_no_internals(exc: BaseException) -> None:
    for raised in (exc, _wrapped(exc)):
        error = classify(raised)
        assert isinstance(error, Unavailable) and error.status == 503
        assert int((error.headers() or {})["Retry-After"]) >= 1
        assert "127.0.0.1" not in error.message and "pid" not in error.message


@pytest.mark.timeout(30)
def test_anything_else_is_a_500_that_says_only_its_incident() -> None:
    for exc in (ValueError("secret detail /etc/passwd"), CheckpointError("bad bytes"), _wrapped(KeyError("k"))):
        error = classify(exc)
        assert isinstance(error, Internal) and error.status == 500
        assert error.incident in error.message and "secret" not in error.message and "bad bytes" not in error.message


@pytest.mark.timeout(30)
def test_bodies_always_encode() -> None:
    body = encodable({"a": float("nan"), "b": [float("inf"), "\ud800x", "y" * 10_000], "\udfff": {"n": 1}})
    text = json.dumps(body, allow_nan=False, ensure_ascii=False).encode("utf-8")
    assert b"NaN" not in text and len(text) < 2000
