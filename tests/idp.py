"""An identity-provider stand-in for the JWT tests: discovery and JWKS over real HTTP on 127.0.0.1.

``IdP`` serves OIDC discovery (``<issuer>/.well-known/openid-configuration``), RFC 8414 metadata
(``/.well-known/oauth-authorization-server<issuer path>``) and a JWKS, each switchable, and mints
tokens with its private keys. Faults are plain attributes a test flips mid-run: ``down`` ("503"
or "close"), ``delay_s``, a custom ``cache_control``, a lying ``metadata_issuer``; ``faulty_paths``
limits them to some paths. ``hits`` counts requests per path, counted on arrival (before any fault),
so a test can prove how often the verifier asked.

It is served by ``CannedServer`` (tests/helpers.py): one response per connection (``Connection:
close``) keeps it small; the verifier opens a fresh connection per fetch anyway.

    idp = await start_idp(nursery, keys=[rsa_key("k1")])
    token = idp.mint(sub="alice")
"""

from __future__ import annotations

import base64
import functools
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import trio
from joserfc import jwt
from joserfc.jwk import ECKey, Key, RSAKey

from tests.helpers import AUDIENCE, Canned, CannedServer, Recorded

__all__ = ["AUDIENCE", "IdP", "b64url", "ec_key", "forge", "rsa_key", "start_idp"]


@functools.cache
def rsa_key(kid: str) -> RSAKey:
    """A 2048-bit RSA key, generated once per test session (generation is the slow part)."""
    return RSAKey.generate_key(2048, parameters={"kid": kid, "use": "sig"})


@functools.cache
def ec_key(kid: str, crv: str = "P-256") -> ECKey:
    return ECKey.generate_key(crv, parameters={"kid": kid, "use": "sig"})


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def default_alg(key: Key) -> str:
    return {"RSA": "RS256", "EC": "ES256"}[key.key_type]


@dataclass
class IdP:
    keys: list[Key] = field(default_factory=lambda: [rsa_key("rsa-1")])
    path: str = ""  # issuer path, e.g. "/tenant1"
    oidc: bool = True  # serve openid-configuration
    rfc8414: bool = True  # serve oauth-authorization-server
    metadata_issuer: str | None = None  # what the metadata claims; None: the real issuer
    metadata_extra: dict[str, Any] = field(default_factory=dict)
    jwks_path: str = "/keys"
    cache_control: str | None = "max-age=300"
    jwks_padding: int = 0  # bytes of filler in the JWKS, for the size limit
    down: str | None = None  # "503": answer 503; "close": hang up without answering
    delay_s: float = 0.0  # wait before answering
    faulty_paths: set[str] | None = None  # where down/delay apply; None: everywhere
    hits: Counter[str] = field(default_factory=Counter)
    http: CannedServer = field(init=False)

    def __post_init__(self) -> None:
        self.http = CannedServer(answer=self.answer)

    # -- addresses ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self.http.port

    @property
    def origin(self) -> str:
        return self.http.url

    @property
    def issuer(self) -> str:
        return self.origin + self.path

    @property
    def jwks_uri(self) -> str:
        return self.origin + self.jwks_path

    @property
    def oidc_path(self) -> str:
        return f"{self.path}/.well-known/openid-configuration"

    @property
    def rfc8414_path(self) -> str:
        return f"/.well-known/oauth-authorization-server{self.path}"

    # -- keys and tokens ---------------------------------------------------------------------

    def rotate(self, *keys: Key) -> None:
        """Serve exactly these keys from now on (the old ones disappear)."""
        self.keys = list(keys)

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": "user-1",
            "aud": AUDIENCE,
            "iat": now,
            "exp": now + 300,
            "scope": "mcp:tools mcp:read",
            "client_id": "client-1",
            "jti": f"jti-{now}",
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def mint(
        self,
        *,
        key: Key | None = None,
        alg: str | None = None,
        header: dict[str, Any] | None = None,
        **claim_overrides: Any,
    ) -> str:
        """A token signed by ``key`` (default: the first served key); ``None`` drops a claim."""
        key = key or self.keys[0]
        alg = alg or default_alg(key)
        full_header = {"alg": alg, "typ": "at+jwt", "kid": key.kid, **(header or {})}
        full_header = {k: v for k, v in full_header.items() if v is not None}
        return jwt.encode(full_header, self.claims(**claim_overrides), key, algorithms=[alg])

    # -- documents ---------------------------------------------------------------------------

    def metadata(self) -> dict[str, Any]:
        return {
            "issuer": self.metadata_issuer if self.metadata_issuer is not None else self.issuer,
            "jwks_uri": self.jwks_uri,
            "authorization_endpoint": self.origin + "/authorize",
            "token_endpoint": self.origin + "/token",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256", "ES256"],
            **self.metadata_extra,
        }

    def jwks(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"keys": [k.as_dict(private=False) for k in self.keys]}
        if self.jwks_padding:
            doc["padding"] = "x" * self.jwks_padding
        return doc

    def route(self, path: str) -> tuple[int, list[tuple[str, str]], bytes]:
        json_type = ("Content-Type", "application/json")
        if path == self.jwks_path:
            headers = [json_type]
            if self.cache_control is not None:
                headers.append(("Cache-Control", self.cache_control))
            return 200, headers, json.dumps(self.jwks()).encode()
        if (self.oidc and path == self.oidc_path) or (self.rfc8414 and path == self.rfc8414_path):
            return 200, [json_type], json.dumps(self.metadata()).encode()
        return 404, [json_type], b'{"error": "not_found"}'

    # -- server ------------------------------------------------------------------------------

    def answer(self, request: Recorded) -> Canned:
        """Count the request, then apply the faults set for its path, or route it."""
        path = request.path
        self.hits[path] += 1
        faulty = self.faulty_paths is None or path in self.faulty_paths
        delay_s = self.delay_s if faulty else 0.0
        if faulty and self.down == "close":
            return Canned(delay_s=delay_s, hang_up=True)
        if faulty and self.down == "503":
            return Canned(503, (("Content-Type", "text/plain"),), b"down", delay_s=delay_s)
        status, headers, body = self.route(path)
        return Canned(status, tuple(headers), body, delay_s=delay_s)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self.http.run(task_status=task_status)


async def start_idp(nursery: trio.Nursery, **options: Any) -> IdP:
    """Start an IdP in ``nursery`` (pytest-trio's ``nursery`` fixture cancels it at teardown)."""
    idp = IdP(**options)
    await nursery.start(idp.run)
    return idp


def forge(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    """A token with any header and signature, for the attacks a real library refuses to mint."""
    head = b64url(json.dumps(header).encode())
    body = b64url(json.dumps(claims).encode())
    return f"{head}.{body}.{b64url(signature)}"
