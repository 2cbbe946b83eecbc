"""The device frame decoder is total: any input gives a frame or a ``ProtocolError``.

Hypothesis explores structure (arbitrary bytes and text, msgpack/JSON maps that are almost
frames); a plain seeded loop feeds 100,000 random and mutated frames through the decoder
(what CI runs every time, in a few seconds).
"""

from __future__ import annotations

import json
import random
import time
from typing import Any

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devices.protocol import (
    MAX_FRAME_BYTES,
    Auth,
    Bye,
    ErrorCode,
    FrameLimits,
    Hello,
    ProtocolError,
    Samples,
    decode_device_frame,
    encode,
    validate_sample,
)

FRAME_TYPES = (Hello, Samples, Bye, Auth)


def decode_or_error(data: bytes | str, limits: FrameLimits | None = None) -> Any:
    """The contract: a typed frame, or a ProtocolError with a client-facing code."""
    try:
        frame = decode_device_frame(data) if limits is None else decode_device_frame(data, limits)
    except ProtocolError as exc:
        assert exc.code is not ErrorCode.INTERNAL, exc  # INTERNAL would mean a decoder bug
        assert isinstance(exc.message, str) and len(exc.message) < 400
        encode(exc.frame())  # the error frame itself always encodes
        return exc
    assert isinstance(frame, FRAME_TYPES)
    if isinstance(frame, Samples):
        for row in frame.rows:
            validate_sample(row, time.time())  # total too: returns a reason or None
    if isinstance(frame, Hello):
        for binding in frame.devices:  # ids survive re-encoding (no lone surrogates)
            encode({"device": binding.device, "participant": binding.participant, "session": binding.session})
    return frame


# -- hypothesis: structure ------------------------------------------------------------------
ids = st.one_of(st.text(max_size=140), st.integers(min_value=-(2**63), max_value=2**64 - 1), st.none(), st.binary(max_size=8), st.booleans())
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20), st.binary(max_size=20),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=6), inner, max_size=6), max_leaves=30)
rows = st.lists(st.one_of(st.lists(scalars, max_size=9), values), max_size=20)
bindings = st.lists(st.one_of(st.fixed_dictionaries({"device": ids, "participant": ids, "session": ids}), values), max_size=5)
frames = st.one_of(
    st.fixed_dictionaries({"t": st.just("samples"), "device": ids, "samples": st.one_of(rows, values)}),
    st.fixed_dictionaries(
        {"t": st.just("hello"), "devices": st.one_of(bindings, values)},
        optional={"v": st.one_of(st.just(1), values), "token": ids, "hub": ids},
    ),
    st.fixed_dictionaries({"t": st.sampled_from(["bye", "auth", "launch", ""])}, optional={"device": ids, "token": ids}),
    st.dictionaries(st.text(max_size=4), values, max_size=5),
    values,
)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_any_bytes_decode_to_a_frame_or_a_protocol_error(data: bytes) -> None:
    decode_or_error(data)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=1024))
def test_any_text_decodes_to_a_frame_or_a_protocol_error(text: str) -> None:
    decode_or_error(text)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames)
def test_almost_frames_in_msgpack_decode_or_fail_cleanly(frame: Any) -> None:
    decode_or_error(msgpack.packb(frame, use_bin_type=True))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames)
def test_almost_frames_in_json_decode_or_fail_cleanly(frame: Any) -> None:
    try:
        text = json.dumps(frame)
    except (TypeError, ValueError):
        return  # bytes or NaN-free JSON is not representable: nothing to send
    decode_or_error(text)


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=1, max_value=4096), st.integers(min_value=0, max_value=50), st.integers(min_value=1, max_value=8))
def test_configured_limits_are_enforced(max_bytes: int, n_rows: int, max_samples: int) -> None:
    limits = FrameLimits(max_frame_bytes=max_bytes, max_samples_per_frame=max_samples, max_devices_per_hello=2)
    data = encode({"t": "samples", "device": "d", "samples": [[i + 1, 1.0] for i in range(n_rows)]})
    result = decode_or_error(data, limits)
    if len(data) > max_bytes:
        assert isinstance(result, ProtocolError) and result.code is ErrorCode.TOO_LARGE
    elif n_rows > max_samples:
        assert isinstance(result, ProtocolError) and result.code is ErrorCode.TOO_MANY_SAMPLES
    else:
        assert isinstance(result, Samples) and len(result.rows) == n_rows


def test_multibyte_text_is_measured_in_bytes() -> None:
    text = json.dumps({"t": "bye", "x": "€" * (MAX_FRAME_BYTES // 3)}, ensure_ascii=False)
    assert len(text) < MAX_FRAME_BYTES < len(text.encode())
    result = decode_or_error(text)
    assert isinstance(result, ProtocolError) and result.code is ErrorCode.TOO_LARGE


# -- the 100,000-frame loop ---------------------------------------------------------------------
def _seeds() -> list[bytes]:
    now = time.time()
    return [
        encode({"t": "hello", "v": 1, "token": "a.b.c", "hub": "h",
                "devices": [{"device": f"d{i}", "participant": f"p{i}", "session": "s"} for i in range(3)]}),
        encode({"t": "samples", "device": "d0", "samples": [[i, now, 120.0, 200.0, 85.0, 8.0, 10.0 * i] for i in range(1, 30)]}),
        encode({"t": "bye", "device": "d0"}),
        encode({"t": "auth", "token": "x.y.z"}),
    ]


def _mutate(rng: random.Random, seed: bytes) -> bytes:
    data = bytearray(seed)
    for _ in range(rng.randint(1, 8)):
        op = rng.random()
        if op < 0.4 and data:
            data[rng.randrange(len(data))] = rng.randrange(256)
        elif op < 0.6 and data:
            del data[rng.randrange(len(data)):][: rng.randint(1, 16)]
        elif op < 0.8:
            pos = rng.randrange(len(data) + 1)
            data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        else:
            data = data[: rng.randrange(len(data) + 1)]  # truncated
    return bytes(data)


def test_a_hundred_thousand_random_and_mutated_frames() -> None:
    rng = random.Random(20261121)
    seeds = _seeds()
    outcomes: dict[str, int] = {}
    for i in range(100_000):
        if i % 4 == 0:
            data = rng.randbytes(rng.randint(0, 256))
        else:
            data = _mutate(rng, rng.choice(seeds))
        result = decode_or_error(data)
        key = result.code.value if isinstance(result, ProtocolError) else type(result).__name__
        outcomes[key] = outcomes.get(key, 0) + 1
    assert sum(outcomes.values()) == 100_000
    # the mutations reach deep: both valid frames and many distinct errors come out
    assert {"Hello", "Samples", "bad_frame"} <= set(outcomes), outcomes
    assert len(outcomes) >= 6, outcomes


# -- the sample check's fast path accepts exactly what the full checks accept ----------------
near_values = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-5, max_value=3100), st.integers(min_value=2**61, max_value=2**63),
    st.floats(min_value=-5, max_value=3100), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=3),
)
NOW = 1_800_000_000.0
timestamps = st.one_of(st.floats(min_value=NOW - 8 * 86400, max_value=NOW + 400), st.integers(min_value=int(NOW) - 8 * 86400,
                       max_value=int(NOW) + 400), near_values)
near_rows = st.one_of(
    st.tuples(st.one_of(st.integers(min_value=-2, max_value=2**62 + 2), near_values), timestamps,
              st.lists(near_values, max_size=7)).map(lambda t: [t[0], t[1], *t[2]]),
    st.lists(near_values, max_size=3),
    near_values,
)


@given(near_rows)
@settings(max_examples=3000, suppress_health_check=[HealthCheck.too_slow])
def test_the_fast_sample_check_accepts_only_what_every_check_accepts(row: Any) -> None:
    from devices.protocol import _plainly_valid, _why_invalid

    full = _why_invalid(row, NOW)
    assert validate_sample(row, NOW) == full
    if _plainly_valid(row, NOW):
        assert full is None, row


def test_the_fast_sample_check_takes_the_common_rows() -> None:
    from devices.protocol import _plainly_valid

    assert _plainly_valid([1, NOW, 140, 200.5, 88], NOW)  # a phone's short row
    assert _plainly_valid([7, NOW - 3600, None, 250, None, 8.0, 1000.0, "newer field"], NOW)
    assert not _plainly_valid([True, NOW, 140], NOW) and validate_sample([True, NOW, 140], NOW) is ErrorCode.BAD_SAMPLE
    assert validate_sample([1, NOW, float("nan")], NOW) is ErrorCode.BAD_SAMPLE
    assert validate_sample([1, NOW, 260.0], NOW) is ErrorCode.OUT_OF_RANGE
    assert validate_sample([1, float("inf")], NOW) is ErrorCode.BAD_TIMESTAMP


def test_a_hello_naming_a_device_twice_is_refused_with_the_device_named() -> None:
    """One device bound to two riders in one hello was welcomed and the last binding kept
    silently (its samples counted for the second rider only): now a fatal ``bad_field``."""
    twice = {"t": "hello", "v": 1, "devices": [{"device": "h1", "participant": "p1", "session": "s"},
                                              {"device": "h1", "participant": "p2", "session": "s"},
                                              {"device": "h2", "participant": "p3", "session": "s"}]}
    try:
        decode_device_frame(msgpack.packb(twice))
    except ProtocolError as exc:
        assert exc.code is ErrorCode.BAD_FIELD and exc.fatal and "h1" in str(exc) and "h2" not in str(exc)
    else:
        raise AssertionError("a hello naming h1 twice was accepted")
    once = {**twice, "devices": twice["devices"][1:]}
    assert isinstance(decode_device_frame(msgpack.packb(once)), Hello)
