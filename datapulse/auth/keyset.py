"""What a JWKS response means: which of its keys we may verify with, and for how long.

Pure rules, tested without sockets; ``JwksCache`` (``jwks.py``) applies them to each fetch.
``parse_jwks`` keeps only public signing keys of the types we verify with (one odd key never takes
the set down); ``cache_ttl`` turns ``Cache-Control`` into a lifetime clamped so that neither a
``no-store`` IdP nor a year-long ``max-age`` changes how often we ask.
"""

from __future__ import annotations

import logging

from joserfc.errors import JoseError
from joserfc.jwk import JWKRegistry, Key, KeySet

from datapulse.auth.idp_fetch import KeySourceError

logger = logging.getLogger("datapulse.auth")

# JWK members that only private keys have: a JWKS must be public, and if an IdP ever leaked
# private members we still load only the public half.
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_KEY_TYPES = ("RSA", "EC", "OKP")  # "oct" never verifies a token here: that is HMAC


def cache_ttl(
    cache_control: str | None, *, floor_s: float, ceiling_s: float, default_s: float
) -> float:
    """Seconds to keep a JWKS: ``max-age`` (or ``default_s``) clamped to [floor_s, ceiling_s].

    ``no-store``/``no-cache`` mean the floor, not zero: refetching per token would make us the
    IdP's heaviest client, and rotation is handled by the unknown-kid refresh anyway.
    """
    ttl = default_s
    directives: dict[str, str] = {}
    for part in (cache_control or "").split(","):
        name, _, value = part.strip().partition("=")
        directives[name.strip().lower()] = value.strip().strip('"')
    max_age = directives.get("max-age", "")
    if "no-store" in directives or "no-cache" in directives:
        ttl = floor_s
    elif max_age.isdigit() and len(max_age) <= 12:  # int() of a huge digit string is slow
        ttl = float(max_age)
    return min(max(ttl, floor_s), ceiling_s)


def parse_jwks(doc: object, *, max_keys: int = 100) -> KeySet:
    """The usable public signing keys of a JWKS document; others are skipped, not fatal.

    RFC 7517 §5 says to ignore keys we do not understand; IdPs publish encryption keys and new
    key types beside signing keys, and one odd key must not take the whole set down.
    """
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise KeySourceError("JWKS document has no 'keys' list")
    keys: list[Key] = []
    for entry in doc["keys"][:max_keys]:
        if not isinstance(entry, dict) or entry.get("kty") not in _KEY_TYPES:
            continue
        if entry.get("use", "sig") != "sig":
            continue
        public = {k: v for k, v in entry.items() if k not in _PRIVATE_MEMBERS}
        try:
            keys.append(JWKRegistry.import_key(public, entry["kty"]))
        except (JoseError, ValueError, TypeError) as exc:
            logger.debug("skipping JWKS key %r: %s", entry.get("kid"), exc)
    if not keys:
        raise KeySourceError("JWKS has no usable signing keys")
    return KeySet(keys)
