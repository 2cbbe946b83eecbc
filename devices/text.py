"""Client-supplied text: the one rule for ids and display text, applied where text enters.

Every string a client chooses and other people may see (participant, device and hub ids
in a ``hello`` or a token, tag values, a session title) passes ``clean_id`` or
``clean_text`` before it is stored:

* it is a ``str`` (lone surrogates are refused: they cannot be encoded);
* it is normalised to Unicode NFC, so one visible name has one spelling (an "é" typed as
  ``e`` + U+0301 and as U+00E9 is the same id);
* it holds no control or format characters (``str.isprintable``: no C0/C1 controls, no
  bidirectional overrides such as U+202E, no zero-width characters, no unassigned code
  points, no line or paragraph separators);
* ids have no leading or trailing white space;
* after normalisation it is 1 to ``max_chars`` characters long.

Markup characters (``<``, ``>``, ``&``, quotes) are allowed: a rider may be called
``<b>Ann</b>`` and must see exactly that. Text is data, never HTML: every page shows it
with ``textContent`` (``api/static/view.js``), so these rules are about identity and
legibility, not about escaping.
"""

from __future__ import annotations

import unicodedata
from typing import Any

from devices.errors import DevicesError

MAX_ID_CHARS = 128
MAX_TEXT_CHARS = 200


class TextError(DevicesError, ValueError):
    """A client-supplied string breaks the text rules; ``str(exc)`` says which and is safe
    to send back (it quotes none of the offending text)."""


def clean_text(value: Any, what: str, *, max_chars: int = MAX_TEXT_CHARS) -> str:
    """``value`` in NFC if it is acceptable display text, else ``TextError``."""
    if not isinstance(value, str):
        raise TextError(f"{what} must be a string")
    if len(value) > 4 * max_chars:  # NFC grows text by at most 3x: refuse before normalising
        raise TextError(f"{what} must be 1-{max_chars} characters")
    try:
        value = unicodedata.normalize("NFC", value)
    except UnicodeError:  # pragma: no cover - normalize accepts any str today
        raise TextError(f"{what} is not valid Unicode") from None
    if not 0 < len(value) <= max_chars:
        raise TextError(f"{what} must be 1-{max_chars} characters")
    if not value.isprintable():
        raise TextError(f"{what} must not contain control, format or unassigned characters")
    return value


def clean_id(value: Any, what: str, *, max_chars: int = MAX_ID_CHARS) -> str:
    """``value`` in NFC if it is an acceptable id (display-text rules, no outer white space)."""
    value = clean_text(value, what, max_chars=max_chars)
    if value != value.strip():
        raise TextError(f"{what} must not start or end with white space")
    return value
