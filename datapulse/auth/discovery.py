"""Where the issuer's keys are published: OIDC discovery, RFC 8414, and the rules on URLs.

``jwks_uri`` comes from the issuer's metadata unless configured: OIDC ``openid-configuration``
first, then RFC 8414 ``oauth-authorization-server``. This module owns what makes an issuer, a
metadata document and a key URL acceptable (https, or http to loopback only; the document's
``issuer`` equal to ours exactly) and which failures are configuration errors (raised at start)
rather than an IdP that is down (``DiscoveryError.transient``, retried). The rules are pure and
tested without sockets; ``discover`` fetches through a ``get_json`` it is given (``IdpFetcher``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from authlib.oauth2.rfc8414 import AuthorizationServerMetadata
from authlib.oidc.discovery import OpenIDProviderMetadata

from datapulse.auth.idp_fetch import KeySourceError
from datapulse.core.loopback import is_loopback_host

logger = logging.getLogger("datapulse.auth")

GetJson = Callable[[str], Awaitable[tuple[object, object]]]


class DiscoveryError(KeySourceError):
    """The issuer's metadata could not be found or was not acceptable; the message says which."""


def require_secure_url(url: str, *, what: str) -> str:
    """Return ``url`` if it is https, or http to a loopback host; raise ValueError otherwise.

    Keys fetched over plain http could be swapped by anyone on the path, which would let them
    sign tokens we accept; loopback stays allowed for local IdPs and tests.
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname
        _ = parts.port  # raises ValueError for a port that is not a number
    except ValueError:
        raise ValueError(f"{what} is not a valid URL: {url!r}") from None
    if not host:
        raise ValueError(f"{what} must be an absolute URL with a host: {url!r}")
    scheme = parts.scheme.lower()
    if scheme == "https" or (scheme == "http" and is_loopback_host(host)):
        return url
    raise ValueError(
        f"{what} must use https (plain http is allowed only for a loopback host:"
        f" 127.0.0.0/8, ::1, localhost): {url!r}"
    )


def check_issuer(issuer: str) -> None:
    """Raise ValueError unless ``issuer`` can be discovered from: secure, no query or fragment."""
    require_secure_url(issuer, what="JWT issuer (used for discovery)")
    parts = urlsplit(issuer)
    if parts.query or parts.fragment:
        raise ValueError(f"JWT issuer must have no query or fragment: {issuer!r}")


def discovery_urls(issuer: str) -> list[tuple[str, bool]]:
    """Metadata URLs to try, in order, each with "is OIDC".

    OIDC Discovery appends its well-known segment to the issuer; RFC 8414 §3.1 inserts its own
    between host and path. For an issuer with a path we also try OIDC's segment inserted, as the
    MCP clients do, since some IdPs publish it there.
    """
    parts = urlsplit(issuer)
    origin = f"{parts.scheme}://{parts.netloc}"
    path = parts.path.rstrip("/")
    urls = [
        (issuer.rstrip("/") + "/.well-known/openid-configuration", True),
        (f"{origin}/.well-known/oauth-authorization-server{path}", False),
    ]
    if path:
        urls.append((f"{origin}/.well-known/openid-configuration{path}", True))
    return urls


def check_metadata(doc: object, *, issuer: str, oidc: bool) -> str:
    """Validate an issuer's metadata document and return its ``jwks_uri``.

    The document's ``issuer`` must equal ours exactly (RFC 8414 §3.3, OIDC Discovery §4.3):
    otherwise anyone able to serve a document at that URL could name a key set for our issuer.
    """
    if not isinstance(doc, dict):
        raise DiscoveryError("issuer metadata is not a JSON object")
    found = doc.get("issuer")
    if found != issuer:
        raise DiscoveryError(
            f"issuer metadata names issuer {found!r}, not the configured {issuer!r}"
            " (they must match exactly, trailing slash included)"
        )
    metadata = OpenIDProviderMetadata(doc) if oidc else AuthorizationServerMetadata(doc)
    try:
        # Only the members we use are validated: IdPs differ in the rest, and a quirk in, say,
        # response_modes_supported must not stop token checks.
        metadata.validate_issuer()
        metadata.validate_jwks_uri()
    except ValueError as exc:
        raise DiscoveryError(f"issuer metadata is invalid: {exc}") from None
    jwks_uri = doc.get("jwks_uri")
    if not isinstance(jwks_uri, str) or not jwks_uri:
        raise DiscoveryError("issuer metadata has no jwks_uri")
    try:
        return require_secure_url(jwks_uri, what="jwks_uri from issuer metadata")
    except ValueError as exc:
        raise DiscoveryError(str(exc)) from None


async def discover(issuer: str, get_json: GetJson) -> str:
    """Find ``issuer``'s ``jwks_uri``, trying each of ``discovery_urls`` in turn.

    Raises ``DiscoveryError``: ``transient`` if some URL might answer later, otherwise (every URL
    answered 4xx, or a document was wrong) a configuration error.
    """
    failures: list[str] = []
    transient = False
    for url, oidc in discovery_urls(issuer):
        try:
            doc, _ = await get_json(url)
        except KeySourceError as exc:
            failures.append(f"{url}: {exc}")
            transient = transient or exc.transient
            continue
        # A document that answers but is wrong (issuer mismatch) ends discovery: falling
        # through to another URL would hide a misconfiguration or an attack.
        jwks_uri = check_metadata(doc, issuer=issuer, oidc=oidc)
        logger.info("discovered jwks_uri %s from %s", jwks_uri, url)
        return jwks_uri
    # Transient if any URL might answer later: one that 404s beside one that is down is
    # more likely an IdP that serves only one of the two documents than a wrong issuer.
    raise DiscoveryError(
        f"no usable metadata for issuer {issuer!r}: " + "; ".join(failures),
        transient=transient,
    )
