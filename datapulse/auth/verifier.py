"""The Verifier interface and the local bearer-token verifier.

A verifier takes the raw ``Authorization`` header value (or None) and returns the Principal it
proves, or raises ``Unauthorized`` (401) / ``ServiceUnavailable`` (503, when keys cannot be had).
Sessions remember ``Principal.id`` so that one principal can never use another's session.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from datapulse.errors import ServiceUnavailable, Unauthorized


@dataclass(frozen=True)
class Principal:
    """An authenticated caller. ``id`` is stable per caller and safe to log (it holds no secret)."""

    id: str
    subject: str
    issuer: str | None = None
    scopes: frozenset[str] = field(default_factory=frozenset)
    claims: dict[str, object] = field(default_factory=dict, compare=False, hash=False)


class Verifier(Protocol):
    async def verify(self, authorization: str | None) -> Principal:
        """Return the Principal behind this header value, or raise Unauthorized."""
        ...


def bearer_token(authorization: str | None) -> str:
    """Extract the token from ``Bearer <token>``; raise Unauthorized if absent or malformed."""
    if not authorization:
        raise Unauthorized("missing bearer token")
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("authorization must use the Bearer scheme")
    return token


class BearerVerifier:
    """Accepts exactly one shared token, compared in constant time.

    The principal id is a hash of the token, so sessions are bound to "whoever holds this token"
    without the token itself ever being stored beside them or logged.
    """

    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("the local bearer token must not be empty")
        self._token = token.encode()
        digest = hashlib.sha256(self._token).hexdigest()[:16]
        self._principal = Principal(id=f"local:{digest}", subject="local", scopes=frozenset({"*"}))

    async def verify(self, authorization: str | None) -> Principal:
        token = bearer_token(authorization).encode()
        if not hmac.compare_digest(token, self._token):
            raise Unauthorized("invalid bearer token", challenge='Bearer error="invalid_token"')
        return self._principal


class ChainVerifier:
    """Tries verifiers in order; the first that accepts wins.

    Used to keep the local bearer token working beside JWTs. The error of the last verifier is
    raised, except that a ServiceUnavailable from any verifier wins over a plain 401, since a
    key outage must not look like a bad token.
    """

    def __init__(self, verifiers: Sequence[Verifier]) -> None:
        if not verifiers:
            raise ValueError("ChainVerifier needs at least one verifier")
        self._verifiers = list(verifiers)

    async def verify(self, authorization: str | None) -> Principal:
        last: Exception | None = None
        unavailable: ServiceUnavailable | None = None
        for verifier in self._verifiers:
            try:
                return await verifier.verify(authorization)
            except ServiceUnavailable as exc:
                unavailable = exc
            except Unauthorized as exc:
                last = exc
        if unavailable is not None:
            raise unavailable
        assert last is not None
        raise last
