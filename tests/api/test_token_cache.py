"""A verifier remembers the tokens it verified: the same token again costs no signature
check, for at most ``VERIFIED_FOR_S`` and never past the token's expiry; a refused token is
never remembered."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from api.auth import TokenVerifier, mint_token
from api.errors import Unauthorised

SECRET = b"a-test-secret-that-is-long-enough-for-hs256!"


class CountingVerifier(TokenVerifier):
    """The real verifier, counting its signature checks."""

    decoded = 0

    async def _decode(self, token: str) -> dict[str, Any]:
        self.decoded += 1
        return await super()._decode(token)


def test_a_token_is_checked_once_until_it_expires() -> None:
    verifier = CountingVerifier(audience="pulseline", leeway_s=0, secret=SECRET)
    lasting = mint_token(SECRET, kind="operator")
    brief = mint_token(SECRET, kind="operator", ttl_s=1.5)

    async def scenario() -> None:
        first = await verifier.verify(lasting)
        assert await verifier.verify(lasting) is first and verifier.decoded == 1  # remembered
        expires_at = (await verifier.verify(brief)).expires_at
        await verifier.verify(brief)
        assert verifier.decoded == 2
        await asyncio.sleep(max(0.0, expires_at - time.time()) + 0.2)
        with pytest.raises(Unauthorised):  # remembered, but not past its expiry
            await verifier.verify(brief)
        assert await verifier.verify(lasting) is first  # (still within its minute)

    asyncio.run(scenario())


def test_a_refused_token_is_refused_every_time() -> None:
    verifier = CountingVerifier(audience="pulseline", leeway_s=0, secret=SECRET)
    forged = mint_token(b"not-the-secret-" * 4, kind="operator")

    async def scenario() -> None:
        for _ in range(3):
            with pytest.raises(Unauthorised):
                await verifier.verify(forged)
        assert verifier.decoded == 3

    asyncio.run(scenario())
