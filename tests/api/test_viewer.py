"""Board frames spliced from cached msgpack pairs decode exactly like plainly encoded ones."""

from __future__ import annotations

import json

import msgpack

from api.viewer import board_encoder


def board() -> dict[str, object]:
    rows = [["ann", 1, 12.5, 140.0, 250.0, 90.0, 9.1, 1000.0, 1.5, 10], ["bob", 2, 10.0, None, 200.0, None, None, None, 1.4, 9]]
    return {"session": "s", "version": 7, "phase": "live", "n": 2, "cols": ["participant", "rank"], "top": rows[:1], "ts": 3.25, "rows": rows}


def test_spliced_frames_decode_to_the_plain_frame() -> None:
    b = board()
    plain = {"t": "board", **{k: b[k] for k in ("session", "version", "phase", "n", "cols", "top", "ts")}}
    for participant, everyone in ((None, False), ("bob", False), ("ann", True), (None, True), ("nobody", False)):
        frame = msgpack.unpackb(board_encoder(participant, everyone=everyone)(b), raw=False)
        expected = dict(plain)
        if participant is not None:
            expected["you"] = {"ann": b["rows"][0], "bob": b["rows"][1]}.get(participant)  # type: ignore[index]
        if everyone:
            expected["rows"] = b["rows"]
        assert frame == expected


def test_json_frames_carry_the_same_content() -> None:
    b = board()
    frame = json.loads(board_encoder("ann", everyone=False, as_json=True)(b))  # type: ignore[arg-type]
    assert frame["t"] == "board" and frame["you"][0] == "ann" and "rows" not in frame
