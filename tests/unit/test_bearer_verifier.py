"""BearerVerifier: exactly one shared token, behind a case-insensitive ``Bearer`` scheme."""

from __future__ import annotations

import pytest

from datapulse.auth.verifier import BearerVerifier
from datapulse.errors import Unauthorized

TOKEN = "s3cret-token-value"


@pytest.fixture
def verifier() -> BearerVerifier:
    return BearerVerifier(TOKEN)


async def test_the_exact_token_is_accepted(verifier: BearerVerifier) -> None:
    principal = await verifier.verify(f"Bearer {TOKEN}")
    assert principal.subject == "local"
    assert principal.id.startswith("local:") and TOKEN not in principal.id
    # Same token, same principal: sessions are bound to whoever holds it.
    assert await verifier.verify(f"Bearer {TOKEN}") == principal


@pytest.mark.parametrize(
    "token",
    [
        TOKEN[:-1],  # a strict prefix
        TOKEN[:1],  # a one-character prefix
        TOKEN + "x",  # an extension
        TOKEN.upper(),  # tokens are compared byte for byte
        "wrong-token-value-",  # same length, different bytes
        "x",
    ],
)
async def test_any_other_token_is_refused(verifier: BearerVerifier, token: str) -> None:
    with pytest.raises(Unauthorized) as info:
        await verifier.verify(f"Bearer {token}")
    assert info.value.http_status == 401
    assert TOKEN not in info.value.detail


@pytest.mark.parametrize("header", [None, "", "   ", "Bearer", "Bearer ", "Bearer    "])
async def test_a_missing_or_empty_token_is_refused(
    verifier: BearerVerifier, header: str | None
) -> None:
    with pytest.raises(Unauthorized):
        await verifier.verify(header)


@pytest.mark.parametrize(
    "header",
    [f"Basic {TOKEN}", f"Token {TOKEN}", f"Bearer{TOKEN}", TOKEN, f"Bearerx {TOKEN}"],
)
async def test_a_scheme_other_than_bearer_is_refused(verifier: BearerVerifier, header: str) -> None:
    with pytest.raises(Unauthorized):
        await verifier.verify(header)


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "bEaReR"])
async def test_the_scheme_is_case_insensitive(verifier: BearerVerifier, scheme: str) -> None:
    # RFC 9110 section 11.1 / RFC 6750: authentication scheme names are case-insensitive.
    assert await verifier.verify(f"{scheme} {TOKEN}") == await verifier.verify(f"Bearer {TOKEN}")


def test_an_empty_configured_token_is_rejected() -> None:
    with pytest.raises(ValueError, match="must not be empty"):
        BearerVerifier("")
