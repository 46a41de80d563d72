"""JwtVerifier: the Verifier for JWT access tokens from an OAuth 2 / OIDC authorization server.

The flow, in the order RFC 8725 asks for: take the bearer token, read its header without trusting
it, apply the ``alg`` allow-list (``core.tokens.check_header``), pick the key (a static PEM key, or
the ``JwksCache`` by ``kid``), verify the signature with joserfc restricted to our algorithms, and
only then look at the claims (``core.tokens.check_claims``).

Every way a token can be wrong raises ``InvalidToken`` (401, ``error="invalid_token"``); a missing
token raises the plain ``Unauthorized`` from ``bearer_token`` so the challenge carries no error
code (RFC 6750 §3.1); keys that cannot be had raise ``ServiceUnavailable`` (503) from the cache.

The server builds it from Config at start-up, so that a wrong issuer URL fails there and not on
the first request (an IdP that is merely down does not stop it: see ``ready``)::

    verifier = await JwtVerifier.open(JwtSettings.from_config(config))
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import trio
from joserfc import jws
from joserfc.errors import (
    BadSignatureError,
    ExceededSizeError,
    InvalidKeyCurveError,
    JoseError,
    KeyParameterError,
)
from joserfc.jwk import JWKRegistry, Key
from joserfc.jws import JWSRegistry

from datapulse.auth.discovery import require_secure_url
from datapulse.auth.idp_fetch import KiB
from datapulse.auth.jwks import JwksCache
from datapulse.auth.verifier import Principal, bearer_token
from datapulse.config import Config
from datapulse.core.tokens import (
    InvalidToken,
    check_claims,
    check_header,
    parse_claims,
    parse_header,
)
from datapulse.metrics import Metrics

logger = logging.getLogger("datapulse.auth")

#: Algorithms an operator may allow. Symmetric ones are absent on purpose: with HMAC the
#: verification key is the signing key, and ours is public.
ASYMMETRIC_ALGORITHMS = frozenset(
    {
        *("RS256", "RS384", "RS512", "PS256", "PS384", "PS512"),
        *("ES256", "ES384", "ES512", "ES256K", "EdDSA", "Ed25519", "Ed448"),
    }
)


@dataclass(frozen=True)
class JwtSettings:
    """What a JWT must satisfy, and how keys are found. Checked when built.

    Keys come from exactly one place: ``static_pem_key``, else ``jwks_uri``, else discovery from
    ``issuer``. Only URLs we fetch must be https (or loopback http); ``issuer`` is fetched only
    for discovery, otherwise it is just the string ``iss`` must equal.
    """

    issuer: str
    audience: str
    static_pem_key: str | None = None
    jwks_uri: str | None = None
    algorithms: tuple[str, ...] = ("RS256", "ES256", "PS256")
    leeway_s: float = 60.0
    #: Require ``typ: at+jwt`` (RFC 9068). Off by default: Entra ID and Keycloak send "JWT".
    require_at_jwt_typ: bool = False
    max_token_bytes: int = 16 * KiB
    http_timeout_s: float = 5.0
    max_response_bytes: int = 512 * KiB
    min_cache_ttl_s: float = 60.0
    max_cache_ttl_s: float = 24 * 3600.0
    refresh_interval_s: float = 10.0
    #: Background retries while the IdP is unreachable at start: first delay, and the cap.
    retry_initial_s: float = 1.0
    retry_max_s: float = 60.0

    def __post_init__(self) -> None:
        if not self.issuer:
            raise ValueError("JWT_ISSUER is required: tokens are only accepted from one issuer")
        if not self.audience:
            raise ValueError(
                "JWT_AUDIENCE is required: without it a token minted for any other service"
                " of the same issuer would be accepted here"
            )
        if self.static_pem_key and self.jwks_uri:
            raise ValueError("JWT_KEY and JWT_JWKS_URI are alternatives; set only one")
        if not self.algorithms:
            raise ValueError("JWT_ALGORITHMS must name at least one algorithm")
        for alg in self.algorithms:
            if alg.lower() == "none" or alg.upper().startswith("HS"):
                raise ValueError(
                    f"JWT algorithm {alg!r} is refused: 'none' and HMAC (HS*) would accept"
                    " tokens forged with our public key"
                )
            if alg not in ASYMMETRIC_ALGORITHMS:
                raise ValueError(
                    f"unknown JWT algorithm {alg!r}; choose from {sorted(ASYMMETRIC_ALGORITHMS)}"
                )
        if self.leeway_s < 0 or self.max_token_bytes < 1:
            raise ValueError("leeway_s must be >= 0 and max_token_bytes >= 1")
        if self.jwks_uri:
            require_secure_url(self.jwks_uri, what="JWT_JWKS_URI")
        elif self.discovers:
            require_secure_url(self.issuer, what="JWT_ISSUER (used for discovery)")

    @property
    def discovers(self) -> bool:
        return not self.static_pem_key and not self.jwks_uri

    @classmethod
    def from_config(cls, config: Config, **tuning: Any) -> JwtSettings:
        """Settings from Config; ``tuning`` sets the fields Config has no flag for."""
        if not config.jwt_enabled:
            raise ValueError("JWT is not configured: set JWT_ISSUER, JWT_KEY or JWT_JWKS_URI")
        algorithms = tuple(a.strip() for a in config.jwt_algorithms.split(",") if a.strip())
        settings = cls(
            issuer=config.jwt_issuer or "",
            audience=config.jwt_audience or "",
            static_pem_key=config.jwt_key or None,
            jwks_uri=config.jwt_jwks_uri or None,
            algorithms=algorithms,
            leeway_s=config.jwt_leeway_s,
        )
        return dataclasses.replace(settings, **tuning) if tuning else settings


def import_pem_key(pem: str) -> Key:
    """A static verification key from PEM (RSA, EC or OKP public key, or a certificate).

    The key type is given explicitly: joserfc's guessing import would turn text that is not a
    PEM key into an HMAC secret. A private key is accepted but only its public half is kept.
    """
    data = pem.strip().encode()
    for kty in ("RSA", "EC", "OKP"):
        try:
            key = JWKRegistry.import_key(data, kty)
        except (JoseError, ValueError, TypeError):
            continue
        if key.is_private:
            logger.warning("JWT_KEY holds a private key; only its public half is used")
            key = JWKRegistry.import_key(key.as_dict(private=False), kty)
        return key
    raise ValueError("JWT_KEY is not a PEM-encoded RSA, EC or OKP public key")


def principal_id(issuer: str, subject: str) -> str:
    """Stable per (issuer, subject), and safe to log: ``sub`` may be personal or hold any byte."""
    digest = hashlib.sha256(f"{issuer}\x00{subject}".encode()).hexdigest()[:32]
    return f"jwt:{digest}"


class JwtVerifier:
    """Verifies ``Authorization: Bearer <jwt>``; see the module docstring for the flow.

    Build with ``await JwtVerifier.open(settings)`` (or the constructor, then ``await start()``).
    It holds no open connections, so there is nothing to close. ``http_client`` and ``clock``
    are for tests; ``wall_clock`` is the time claims are judged against.
    """

    def __init__(
        self,
        settings: JwtSettings,
        *,
        jwks: JwksCache | None = None,
        http_client: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = trio.current_time,
        wall_clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self._wall_clock = wall_clock
        # The registry carries the explicit allow-list joserfc enforces (a second line behind
        # check_header). strict_check_header=False: IdPs add header members joserfc has no
        # entry for (Entra's "nonce"); "crit" is still enforced, so nothing critical slips by.
        self._registry = JWSRegistry(algorithms=settings.algorithms, strict_check_header=False)
        self._static_key = (
            import_pem_key(settings.static_pem_key) if settings.static_pem_key else None
        )
        self.jwks: JwksCache | None = None
        if self._static_key is None:
            self.jwks = jwks or JwksCache(
                issuer=settings.issuer if settings.discovers else None,
                jwks_uri=settings.jwks_uri,
                timeout_s=settings.http_timeout_s,
                max_bytes=settings.max_response_bytes,
                min_ttl_s=settings.min_cache_ttl_s,
                max_ttl_s=settings.max_cache_ttl_s,
                refresh_interval_s=settings.refresh_interval_s,
                retry_initial_s=settings.retry_initial_s,
                retry_max_s=settings.retry_max_s,
                http_client=http_client,
                clock=clock,
                metrics=metrics,
            )

    @classmethod
    async def open(
        cls,
        settings: JwtSettings,
        *,
        jwks: JwksCache | None = None,
        http_client: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = trio.current_time,
        wall_clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
    ) -> JwtVerifier:
        """Build and start: discovery runs now, so a misconfigured issuer fails at start-up."""
        verifier = cls(
            settings,
            jwks=jwks,
            http_client=http_client,
            clock=clock,
            wall_clock=wall_clock,
            metrics=metrics,
        )
        await verifier.start()
        return verifier

    async def start(self) -> None:
        """Discover ``jwks_uri`` and try a first key fetch. Raises ``DiscoveryError`` only for a
        configuration error; an IdP that is down leaves the verifier not ``ready``."""
        if self.jwks is not None:
            await self.jwks.start()

    @property
    def ready(self) -> bool:
        """Whether JWTs can be checked now (keys loaded); False means they get 503."""
        return self.jwks is None or self.jwks.ready

    @property
    def reason(self) -> str | None:
        """Why not ``ready`` (None when ready): for the log and a future /readyz."""
        return None if self.jwks is None else self.jwks.reason

    async def run_until_ready(self) -> None:
        """The server's background task: retry the IdP until keys load (see ``JwksCache``)."""
        if self.jwks is not None:
            await self.jwks.run_until_ready()

    async def verify(self, authorization: str | None) -> Principal:
        token = bearer_token(authorization)
        if len(token) > self.settings.max_token_bytes:
            raise InvalidToken("token too large")
        header = parse_header(token)
        alg = check_header(
            header,
            algorithms=self.settings.algorithms,
            require_at_jwt_typ=self.settings.require_at_jwt_typ,
        )
        key = await self._key_for(header, alg)
        claims = parse_claims(self._verified_payload(token, key, alg))
        checked = check_claims(
            claims,
            issuer=self.settings.issuer,
            audience=self.settings.audience,
            leeway_s=self.settings.leeway_s,
            now=self._wall_clock(),
        )
        return Principal(
            id=principal_id(checked.issuer, checked.subject),
            subject=checked.subject,
            issuer=checked.issuer,
            scopes=checked.scopes,
            claims=dict(checked.raw),
        )

    async def _key_for(self, header: dict[str, object], alg: str) -> Key:
        if self._static_key is not None:
            return self._static_key  # one key: any kid names it
        assert self.jwks is not None
        kid = header.get("kid")
        key = await self.jwks.get_key(kid if isinstance(kid, str) else None, alg)
        if key is None:
            raise InvalidToken(
                "unknown signing key" if kid is not None else "token names no key (kid)"
            )
        return key

    @property
    def static_key(self) -> Key | None:
        """The configured static verification key (its public half), or None when using JWKS."""
        return self._static_key

    def _verified_payload(self, token: str, key: Key, alg: str) -> bytes:
        try:
            key.check_use("sig")
            key.check_alg(alg)
            obj = jws.deserialize_compact(token, key, registry=self._registry)
        except BadSignatureError:
            raise InvalidToken("invalid signature") from None
        except (KeyParameterError, InvalidKeyCurveError):
            raise InvalidToken(f"signing key does not fit algorithm {alg}") from None
        except ExceededSizeError:
            raise InvalidToken("token too large") from None
        # joserfc parses what the header check let through; anything it chokes on is the
        # token's fault, never a reason for a 500.
        except (JoseError, ValueError, TypeError, RecursionError):
            raise InvalidToken("malformed token") from None
        if obj.payload is None:
            raise InvalidToken("malformed token")
        return obj.payload
