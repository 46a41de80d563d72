"""The Verifier interface and the local bearer-token verifier.

A verifier takes the raw ``Authorization`` header value (or None) and returns the Principal it
proves, or raises ``Unauthorized`` (401) / ``ServiceUnavailable`` (503, when keys cannot be had).
Sessions remember ``Principal.id`` so that one principal can never use another's session.

A verifier may also say whether it can work right now (``ready``, and ``reason`` when not: a JWT
verifier whose IdP is down) and have a background task (``run_until_ready``) that the server
runs; ``is_ready``/``not_ready_reason`` read them with defaults, for verifiers without them.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import trio

from datapulse.auth.redact import add_secret
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


def is_ready(verifier: Verifier) -> bool:
    """Whether ``verifier`` can verify now (True for verifiers that do not say)."""
    return bool(getattr(verifier, "ready", True))


def not_ready_reason(verifier: Verifier) -> str | None:
    return None if is_ready(verifier) else getattr(verifier, "reason", None) or "not ready"


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
        add_secret(token)  # never printed by a log line, whatever quotes it
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

    @property
    def ready(self) -> bool:
        return all(is_ready(v) for v in self._verifiers)

    @property
    def reason(self) -> str | None:
        return next((r for v in self._verifiers if (r := not_ready_reason(v))), None)

    async def run_until_ready(self) -> None:
        """Run each member's background task (a JWT verifier's retries), if it has one."""
        async with trio.open_nursery() as nursery:
            for verifier in self._verifiers:
                run = getattr(verifier, "run_until_ready", None)
                if run is not None and not is_ready(verifier):
                    nursery.start_soon(run)

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
