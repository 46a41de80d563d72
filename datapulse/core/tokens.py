"""JWT access-token rules that need no I/O: header policy, key choice, claims, scopes.

``auth.jwt.JwtVerifier`` owns the flow (find the key, verify the signature, then call
``check_claims``); this module owns *what* makes a token acceptable, so every rule can be tested
with a fixed ``now`` and no keys or sockets. The claim-time arithmetic is authlib's RFC 9068
validator (itself joserfc's ``JWTClaimsRegistry``); we only choose the options and turn its errors
into short, stable descriptions for ``error_description``.

Order of trust (RFC 8725 §3.1): nothing in the header is believed before the signature checks,
except what is needed to pick a key. ``alg`` is compared against our allow-list, never used to
choose one; ``jku``, ``x5u``, ``jwk`` and ``x5c`` are ignored, so a token can never tell us where
to fetch its own key; ``crit`` is refused, since we understand no extension it could name.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import cast

from authlib.oauth2.rfc9068.claims import JWTAccessTokenClaimsValidator
from joserfc.errors import ExpiredTokenError, InvalidClaimError, JoseError, MissingClaimError
from joserfc.jwk import Key, KeySet

from datapulse.errors import Unauthorized

# A compact JWS: three base64url segments. Checked before decoding because base64's decoder
# silently skips characters outside the alphabet.
_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*")
# Bigger headers are refused before decoding; joserfc refuses decoded headers over 512 bytes, and
# 4 KiB of base64 leaves room for an IdP's x5t/x5c without letting garbage cost much.
MAX_HEADER_CHARS = 4096
# Longest error_description we echo: enough for a reason, never a whole attacker-chosen header.
_MAX_DESCRIPTION = 120
# RFC 9068 §4: the explicit type of a JWT access token.
AT_JWT_TYPES = frozenset({"at+jwt", "application/at+jwt"})
REQUIRED_CLAIMS = ("iss", "sub", "exp", "aud")


class InvalidToken(Unauthorized):
    """A presented token failed a check: 401 with ``error="invalid_token"`` (RFC 6750 §3.1).

    ``description`` is short, printable ASCII and already safe for ``error_description``; the HTTP
    layer may rebuild the challenge from it (to add ``resource_metadata``) instead of parsing
    ``challenge``.
    """

    error = "invalid_token"

    def __init__(self, description: str) -> None:
        self.description = clean_description(description)
        super().__init__(self.description, challenge=invalid_token_challenge(self.description))


def clean_description(text: str) -> str:
    """Printable ASCII only, bounded: descriptions can echo token contents (an ``alg`` name)."""
    cleaned = "".join(c if " " <= c <= "~" else "?" for c in text)
    if len(cleaned) > _MAX_DESCRIPTION:
        cleaned = cleaned[: _MAX_DESCRIPTION - 3] + "..."
    return cleaned


def invalid_token_challenge(description: str) -> str:
    """``Bearer error="invalid_token", error_description="..."`` with the quoted-string escaped."""
    quoted = clean_description(description).replace("\\", "\\\\").replace('"', '\\"')
    return f'Bearer error="invalid_token", error_description="{quoted}"'


@dataclass(frozen=True)
class TokenClaims:
    """The claims of a token that passed ``check_claims``; ``raw`` keeps everything else.

    Times are kept as the token's own numbers (int or float) because an int too large for a float
    is still a valid, if silly, NumericDate.
    """

    issuer: str
    subject: str
    audience: tuple[str, ...]
    expires_at: float
    scopes: frozenset[str] = frozenset()
    not_before: float | None = None
    issued_at: float | None = None
    client_id: str | None = None
    token_id: str | None = None
    raw: Mapping[str, object] = field(default_factory=dict, compare=False, hash=False)


def _b64url_json(segment: str, what: str) -> object:
    try:
        data = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        return json.loads(data)
    # RecursionError: json's C scanner recurses once per nested bracket.
    except (binascii.Error, ValueError, RecursionError):
        raise InvalidToken(f"malformed token {what}") from None


def parse_header(token: str) -> dict[str, object]:
    """Decode a compact JWS's protected header without trusting it (nothing is verified yet)."""
    if not _COMPACT_JWS.fullmatch(token):
        raise InvalidToken("malformed token")
    segment = token.partition(".")[0]
    if len(segment) > MAX_HEADER_CHARS:
        raise InvalidToken("token header too large")
    header = _b64url_json(segment, "header")
    if not isinstance(header, dict):
        raise InvalidToken("malformed token header")
    return header


def parse_claims(payload: bytes) -> dict[str, object]:
    """Decode a verified payload; a JWT's claims must be one JSON object."""
    try:
        claims = json.loads(payload)
    except (ValueError, RecursionError):
        raise InvalidToken("malformed token claims") from None
    if not isinstance(claims, dict):
        raise InvalidToken("token claims must be a JSON object")
    return claims


def check_header(
    header: Mapping[str, object],
    *,
    algorithms: Collection[str],
    require_at_jwt_typ: bool = False,
) -> str:
    """Apply our header policy and return the ``alg`` to verify with.

    ``none`` and HMAC are refused by name even if someone put them in the allow-list: an HMAC
    check keyed with our *public* key is the classic key-confusion forgery (RFC 8725 §2.1).
    """
    alg = header.get("alg")
    if not isinstance(alg, str) or not alg:
        raise InvalidToken("token header has no alg")
    if alg.lower() == "none":
        raise InvalidToken("unsigned tokens are not accepted")
    if alg.upper().startswith("HS"):
        raise InvalidToken("HMAC-signed tokens are not accepted")
    if alg not in algorithms:
        raise InvalidToken(f"algorithm {alg} is not allowed")
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise InvalidToken("kid must be a string")
    # RFC 7515 §4.1.11: a recipient must refuse a JWS whose "crit" names an extension it does
    # not understand. We understand none, and an empty list is itself invalid there, so any
    # "crit" at all (even [] or null) is refused; never hand it to a library to interpret.
    if "crit" in header:
        crit = header["crit"]
        if not (isinstance(crit, list) and all(isinstance(c, str) for c in crit)):
            raise InvalidToken("crit must be a list of strings")
        raise InvalidToken("critical header parameters (crit) are not supported")
    # RFC 7797 unencoded payloads have no business in a JWT (RFC 7797 §7).
    if "b64" in header:
        raise InvalidToken("unencoded payloads are not accepted")
    typ = header.get("typ")
    if typ is not None and not isinstance(typ, str):
        raise InvalidToken("typ must be a string")
    if require_at_jwt_typ and (typ is None or typ.lower() not in AT_JWT_TYPES):
        raise InvalidToken("token type must be at+jwt")
    return alg


def parse_scopes(claims: Mapping[str, object]) -> frozenset[str]:
    """Scopes from ``scope`` (RFC 9068: one space-separated string) and/or ``scp``.

    ``scp`` is what Entra ID (a space-separated string) and Okta (a list) use. ``roles`` is not
    read: app roles are a different grant and mixing them in would widen what a token may do.
    """
    scopes: set[str] = set()
    scope = claims.get("scope")
    if scope is not None:
        if not isinstance(scope, str):
            raise InvalidToken("scope must be a space-separated string")
        scopes.update(scope.split())
    scp = claims.get("scp")
    if isinstance(scp, str):
        scopes.update(scp.split())
    elif isinstance(scp, list) and all(isinstance(s, str) for s in scp):
        scopes.update(s for s in scp if s)
    elif scp is not None:
        raise InvalidToken("scp must be a string or a list of strings")
    return frozenset(scopes)


# The local bearer token's grant: it holds every scope (see ``auth.verifier.BearerVerifier``).
WILDCARD_SCOPE = "*"


def enforced_scopes(granted: frozenset[str]) -> frozenset[str] | None:
    """The scopes a session enforces for a principal's grant; None means "no limit" (wildcard).

    The one place the wildcard is read, so a session given ``principal.scopes`` as they are and one
    given this function's answer decide every tool the same way (``has_scope``).
    """
    return None if WILDCARD_SCOPE in granted else granted


def has_scope(granted: frozenset[str] | None, needed: str | None) -> bool:
    """Whether ``granted`` (None: authorization off) covers ``needed`` (None or "": no scope)."""
    if not needed or granted is None:
        return True
    limit = enforced_scopes(granted)
    return limit is None or needed in limit


def _describe(error: JoseError) -> str:
    if isinstance(error, ExpiredTokenError):
        return "token expired"
    if isinstance(error, MissingClaimError):
        return f"missing claim: {error.claim}"
    if isinstance(error, InvalidClaimError):
        if "NumericDate" in error.description:
            return f"{error.claim} must be a NumericDate"
        known = {
            "iss": "wrong issuer",
            "aud": "token audience does not include this resource",
            "nbf": "token not yet valid",
            "iat": "token issued in the future",
            "sub": "sub must be a non-empty string",
        }
        return known.get(error.claim, f"invalid claim: {error.claim}")
    return "invalid token claims"


def check_claims(
    claims: Mapping[str, object],
    *,
    issuer: str,
    audience: str,
    leeway_s: float,
    now: float,
) -> TokenClaims:
    """Check a verified token's claims for this resource server; raise InvalidToken if any fail.

    ``iss`` must equal ``issuer`` exactly (no trailing-slash forgiveness: RFC 9068 §4), ``aud``
    (string or list) must contain ``audience``, ``exp`` must lie after ``now - leeway_s``, and
    ``nbf``/``iat`` must not lie after ``now + leeway_s``.
    """
    if not isinstance(claims, Mapping):
        raise InvalidToken("token claims must be a JSON object")
    data = dict(claims)
    missing = [name for name in REQUIRED_CLAIMS if data.get(name) is None]
    if missing:
        raise InvalidToken(f"missing claim: {', '.join(missing)}")
    validator = JWTAccessTokenClaimsValidator(
        now=now,
        leeway=leeway_s,
        iss={"essential": True, "value": issuer},
        sub={"essential": True},
        exp={"essential": True},
        aud={"essential": True, "value": audience},
    )
    try:
        validator.validate(data)
    except JoseError as exc:
        raise InvalidToken(_describe(exc)) from None
    scopes = parse_scopes(data)
    # The validator has checked every type below; the casts only tell mypy so.
    aud = cast("str | list[str]", data["aud"])
    client_id = data.get("client_id", data.get("azp"))
    jti = data.get("jti")
    return TokenClaims(
        issuer=issuer,
        subject=cast(str, data["sub"]),
        audience=(aud,) if isinstance(aud, str) else tuple(aud),
        expires_at=cast(float, data["exp"]),
        scopes=scopes,
        not_before=cast("float | None", data.get("nbf")),
        issued_at=cast("float | None", data.get("iat")),
        client_id=client_id if isinstance(client_id, str) else None,
        token_id=jti if isinstance(jti, str) else None,
        raw=data,
    )


# -- key selection: which published key a header names ------------------------------------


def key_type_for(alg: str) -> str | None:
    """The JWK ``kty`` an asymmetric JWS algorithm needs."""
    if alg.startswith(("RS", "PS")):
        return "RSA"
    if alg.startswith("ES"):
        return "EC"
    if alg in {"EdDSA", "Ed25519", "Ed448"}:
        return "OKP"
    return None


def _fits(key: Key, alg: str) -> bool:
    return key.key_type == key_type_for(alg) and key.get("alg") in (None, alg)


def find_key(keys: KeySet, kid: str | None, alg: str) -> Key | None:
    """The key a token names. Without a ``kid``, only an unambiguous key will do.

    A known ``kid`` is returned even when it does not fit ``alg``: the signature check then fails
    as a bad token, instead of counting as an unknown kid that would trigger a refresh.
    """
    if kid is None:
        fitting = [key for key in keys if _fits(key, alg)]
        return fitting[0] if len(fitting) == 1 else None
    named = [key for key in keys if key.kid == kid]
    return next((key for key in named if _fits(key, alg)), named[0] if named else None)
