"""``actors.wire``: messages round-trip, frames reassemble from any split, bad input is refused."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from actors.wire import (
    HEADER,
    FrameBuffer,
    Hello,
    StreamError,
    StreamErrorCode,
    TickRequest,
    TickResult,
    WireError,
    decode_message,
    encode_frame,
    encode_message,
)

pytestmark = pytest.mark.timeout(30)


def _request() -> TickRequest:
    return TickRequest.from_batches(
        "s1",
        [("d1", "ann", [[1, 10.0, 120, 200.0], [2, 11.0, None, 210.0, 90, 8.0, 12.5, "future field"]], [3]),
         ("d2", "bob", [], [7, 9])],
        want_durable=["d1", "d2"], known_version=4, id=9,
    )


def test_a_tick_round_trips_with_its_columns() -> None:
    request = _request()
    decoded = decode_message(encode_message(request))
    assert isinstance(decoded, TickRequest)
    assert (decoded.session, decoded.devices, decoded.want_durable, decoded.known_version, decoded.id) == (
        "s1", (("d1", "ann"), ("d2", "bob")), ("d1", "d2"), 4, 9)
    assert decoded.samples.device.tolist() == [0, 0] and decoded.samples.seq.tolist() == [1, 2]
    np.testing.assert_array_equal(decoded.samples.values, np.array(
        [[10.0, 120, 200.0, np.nan, np.nan, np.nan], [11.0, np.nan, 210.0, 90, 8.0, 12.5]]))
    assert decoded.rejected_device.tolist() == [0, 1, 1] and decoded.rejected_seq.tolist() == [3, 7, 9]
    assert decoded.sample_count == 5


def test_rows_of_one_short_width_are_padded_as_absent() -> None:
    """A phone's rows (``[seq, ts, hr, power, cadence]``, all the same width) take the table
    path and come out as the ragged path would give them: NaN where absent."""
    rows = [[1, 10.0, 120, 200.0, 88], [2, 11.0, None, 210.0, 90]]
    columns = TickRequest.from_batches("s1", [("d1", "ann", rows, [])]).samples
    assert columns.seq.tolist() == [1, 2] and columns.seq.dtype == np.int64
    np.testing.assert_array_equal(columns.values, np.array(
        [[10.0, 120, 200.0, 88, np.nan, np.nan], [11.0, np.nan, 210.0, 90, np.nan, np.nan]]))
    ragged = TickRequest.from_batches("s1", [("d1", "ann", [*rows, [3, 12.0]], [])]).samples
    np.testing.assert_array_equal(ragged.values[:2], columns.values)


def test_results_errors_and_hellos_round_trip() -> None:
    result = TickResult("s1", 3, 12, {"rows": [["ann", 1]]}, {"d1": 5}, applied=2, duplicates=1, id=9)
    error = StreamError("s1", StreamErrorCode.STALE, "fenced", 4)
    for message in (result, error, Hello("tok")):
        assert decode_message(encode_message(message)) == message


def test_board_periods_are_optional_both_ways() -> None:
    """An edge says its fastest viewer's period and the class answers the fastest one asked
    for; either side may be an older version without them (the keys are left out)."""
    request = TickRequest.from_batches("s1", [], period_s=0.1)
    assert decode_message(encode_message(request)).period_s == 0.1  # type: ignore[union-attr]
    assert b"\xa1p" not in encode_message(_request())  # no period: no key
    assert decode_message(encode_message(_request())).period_s is None  # type: ignore[union-attr]
    result = TickResult("s1", 3, 12, None, {}, class_period_s=0.25)
    assert decode_message(encode_message(result)) == result
    assert decode_message(encode_message(TickResult("s1", 3, 12, None, {}))).class_period_s is None  # type: ignore[union-attr]
    for bad in (0, -1, float("nan"), "fast"):
        raw = msgpack.unpackb(encode_message(request))
        with pytest.raises(WireError):
            decode_message(msgpack.packb({**raw, "p": bad}))


def test_edge_ids_and_beats_are_optional_both_ways() -> None:
    """An edge names itself and the class answers the beat to keep; older versions leave
    the keys out, and a malformed one is refused like any other bad field."""
    request = TickRequest.from_batches("s1", [], edge="edge-a")
    assert decode_message(encode_message(request)).edge == "edge-a"  # type: ignore[union-attr]
    assert b"\xa1g" not in encode_message(_request())
    assert decode_message(encode_message(_request())).edge is None  # type: ignore[union-attr]
    result = TickResult("s1", 3, 12, None, {}, class_period_s=0.1, beat_s=0.0375, edges=2)
    assert decode_message(encode_message(result)) == result
    plain = decode_message(encode_message(TickResult("s1", 3, 12, None, {})))
    assert plain.beat_s is None and plain.edges == 1  # type: ignore[union-attr]
    for bad in (7, "x" * 129, ["edge-a"]):
        with pytest.raises(WireError):
            decode_message(msgpack.packb({**msgpack.unpackb(encode_message(request)), "g": bad}))
    for bad_beat in (-0.01, float("nan"), float("inf"), "soon"):
        with pytest.raises(WireError):
            decode_message(msgpack.packb({**msgpack.unpackb(encode_message(result)), "bt": bad_beat}))


def test_frames_reassemble_from_every_split() -> None:
    stream = encode_frame(_request()) + encode_frame(Hello("t")) + encode_frame(StreamError("", StreamErrorCode.UNAUTHORISED, "no"))
    for cut in range(len(stream) + 1):
        frames = FrameBuffer()
        bodies = frames.feed(stream[:cut]) + frames.feed(stream[cut:])
        assert [type(decode_message(b)).__name__ for b in bodies] == ["TickRequest", "Hello", "StreamError"]


def test_an_oversized_frame_is_refused_before_it_is_buffered() -> None:
    with pytest.raises(WireError):
        FrameBuffer(max_frame_bytes=1024).feed(HEADER.pack(1025))


@pytest.mark.parametrize("body", [
    b"\xc1",  # not msgpack
    msgpack.packb({"t": "nope"}),
    msgpack.packb({"t": "tick", "s": "s"}),  # fields missing
    msgpack.packb({"t": "tick", "id": 1, "s": "s", "k": -1, "w": [], "dv": [["d", "p"]],
                   "sd": np.array([1], "<i4").tobytes(), "sq": np.array([1], "<i8").tobytes(),
                   "sv": np.zeros(6).tobytes(), "rd": b"", "rq": b""}),  # device index out of range
    msgpack.packb({"t": "tick", "id": 1, "s": "s", "k": -1, "w": [], "dv": [["d", "p"]],
                   "sd": np.array([0, 0], "<i4").tobytes(), "sq": np.array([1], "<i8").tobytes(),
                   "sv": np.zeros(6).tobytes(), "rd": b"", "rq": b""}),  # columns of different lengths
])
def test_malformed_messages_raise_wire_error(body: bytes) -> None:
    with pytest.raises(WireError):
        decode_message(body)
