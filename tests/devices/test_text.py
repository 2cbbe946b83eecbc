"""The text rules for client-supplied ids and display text (devices/text.py)."""

from __future__ import annotations

import unicodedata

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from devices.protocol import ErrorCode, ProtocolError, decode_device_frame
from devices.text import TextError, clean_id, clean_text

SCRIPTY = [
    '<img src=x onerror="alert(1)">',
    "<script>alert(1)</script>",
    "javascript:alert(1)",
    "</td><script>alert(1)</script>",
    '" onmouseover="alert(1)',
    "' autofocus onfocus='alert(1)",
    "\uff1cscript\uff1ealert(1)\uff1c/script\uff1e",  # fullwidth lookalikes stay fullwidth
    "Ann & Bob <3",
]


@pytest.mark.parametrize("name", SCRIPTY)
def test_markup_is_kept_as_text(name: str) -> None:
    assert clean_id(name, "participant") == name
    assert clean_text(name, "title") == name


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("", "1-128 characters"),
        ("x" * 129, "1-128 characters"),
        ("tab\there", "control"),
        ("new\nline", "control"),
        ("nul\x00", "control"),
        ("c1\x85", "control"),
        ("rtl\u202eevil", "format"),
        ("zero\u200bwidth", "format"),
        ("line\u2028sep", "control"),
        ("unassigned\U000e0080", "unassigned"),
        ("lone\ud800surrogate", "control"),
        (" padded", "white space"),
        ("padded ", "white space"),
        (7, "a string"),
        (None, "a string"),
        (b"bytes", "a string"),
    ],
)
def test_bad_ids_are_refused_with_a_reason_that_quotes_nothing(value: object, fragment: str) -> None:
    with pytest.raises(TextError) as refused:
        clean_id(value, "participant")
    message = str(refused.value)
    assert fragment in message and message.startswith("participant ")
    assert not isinstance(value, str) or not value.strip() or value.strip() not in message


def test_ids_are_nfc_normalised() -> None:
    decomposed = "Rene\u0301e"
    assert clean_id(decomposed, "participant") == "Ren\u00e9e"
    assert clean_id("Ren\u00e9e", "participant") == "Ren\u00e9e" != decomposed
    assert clean_id("\u212b", "participant") == "\u00c5"  # ANGSTROM SIGN -> A WITH RING


def test_length_is_counted_after_normalisation() -> None:
    assert clean_id("e\u0301" * 128, "participant") == "\u00e9" * 128  # 256 code points in, 128 out
    with pytest.raises(TextError):
        clean_id("\u00e9" * 129, "participant")


def test_text_allows_inner_space_and_counts_its_own_limit() -> None:
    assert clean_text("  spaced  ", "title", max_chars=10) == "  spaced  "
    with pytest.raises(TextError, match="1-5 characters"):
        clean_text("toolong", "tag", max_chars=5)


@given(st.text(max_size=200))
def test_any_text_is_either_refused_or_clean_and_stable(value: str) -> None:
    try:
        cleaned = clean_text(value, "title")
    except TextError:
        return
    assert cleaned == unicodedata.normalize("NFC", cleaned) and cleaned.isprintable()
    assert clean_text(cleaned, "title") == cleaned


def _hello(participant: object, device: object = "d1") -> bytes:
    return msgpack.packb({"t": "hello", "v": 1, "devices": [{"device": device, "participant": participant, "session": "s"}]})


def test_hello_normalises_ids_and_refuses_control_characters_fatally() -> None:
    hello = decode_device_frame(_hello("Rene\u0301e", "pode\u0301"))
    binding = hello.devices[0]  # type: ignore[union-attr]
    assert (binding.participant, binding.device) == ("Ren\u00e9e", "pod\u00e9")
    for bad in ("evil\u202e", "a\x07b", " pad"):
        with pytest.raises(ProtocolError) as refused:
            decode_device_frame(_hello(bad))
        assert refused.value.code is ErrorCode.BAD_FIELD and refused.value.fatal
        assert refused.value.message.startswith("participant must")


def test_samples_frames_find_a_device_by_its_normal_form() -> None:
    frame = decode_device_frame(msgpack.packb({"t": "samples", "device": "pode\u0301", "samples": []}))
    assert frame.device == "pod\u00e9"  # type: ignore[union-attr]
    assert decode_device_frame(msgpack.packb({"t": "samples", "device": "plain-ascii", "samples": []})).device == "plain-ascii"  # type: ignore[union-attr]
