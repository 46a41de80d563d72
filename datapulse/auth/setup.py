"""Building the configured verifier at start-up (JWT discovery needs the network, so it is async).

``Server.serve`` calls ``open_configured_verifier`` before it listens, so a configuration error
(a malformed issuer, plain http where https is required, metadata naming another issuer) stops
the server at start with one clear line, not at the first request. An IdP that is only down
(network errors, 5xx) does not: the server starts with the verifier not ``ready``, answers JWTs
503 with ``Retry-After``, keeps the local token working, and runs ``run_until_ready`` in the
background until the keys load. Restarting every instance during a short IdP outage must not
crash-loop them all.
"""

from __future__ import annotations

from datapulse.auth.idp_fetch import KeySourceError
from datapulse.auth.jwt import JwtSettings, JwtVerifier
from datapulse.auth.verifier import BearerVerifier, ChainVerifier, Principal, Verifier
from datapulse.config import Config
from datapulse.errors import ServiceUnavailable
from datapulse.metrics import Metrics


class AuthStartupError(Exception):
    """The configured authentication cannot work; the message says why, for an operator."""


class StartingVerifier:
    """Stands in until the real verifier is built: nothing is accepted before ``serve`` runs."""

    ready = False
    reason = "authentication is not set up yet"

    async def verify(self, authorization: str | None) -> Principal:
        raise ServiceUnavailable("authentication is not ready yet")


async def open_configured_verifier(
    config: Config, token: str | None, metrics: Metrics | None = None
) -> Verifier:
    """The JWT verifier (discovery done), behind the local token when one is configured.

    JWT comes last in the chain so that a bad JWT's specific 401 reason is what the client sees.
    """
    try:
        jwt = await JwtVerifier.open(JwtSettings.from_config(config), metrics=metrics)
    except (ValueError, KeySourceError) as exc:
        raise AuthStartupError(f"JWT authentication cannot start: {exc}") from exc
    if token:
        return ChainVerifier([BearerVerifier(token), jwt])
    return jwt
