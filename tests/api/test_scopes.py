"""``api.scopes`` refusals, as plain functions (the edge's use of them: test_auth.py)."""

from __future__ import annotations

import pytest

from api.auth import Principal, TokenKind
from api.errors import Forbidden
from api.scopes import authorise_write
from devices.protocol import DeviceBinding


@pytest.mark.parametrize(("kind", "said"), [(TokenKind.OPERATOR, "an operator token"), (TokenKind.VIEWER, "a viewer token")])
def test_a_token_that_cannot_send_samples_is_named_in_plain_english(kind: TokenKind, said: str) -> None:
    who = Principal(kind=kind, subject="x", token_id="t", expires_at=0.0)
    with pytest.raises(Forbidden) as refused:
        authorise_write(who, DeviceBinding(device="d", participant="p", session="s"))
    assert str(refused.value).startswith(f"{said} cannot send samples"), str(refused.value)
