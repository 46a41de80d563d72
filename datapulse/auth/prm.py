"""OAuth Protected Resource Metadata (RFC 9728) and the challenges that point at it, pure.

An MCP client that is refused finds out where to get a token from us: every 401 carries
``WWW-Authenticate: Bearer resource_metadata="<url>"``, and that URL (the well-known path
inserted between our origin and the endpoint's path, RFC 9728 §3.1) answers a small JSON
document naming our canonical ``resource`` URI and the authorization server (``JWT_ISSUER``).
A token that lacks a tool's scope gets a 403 with ``error="insufficient_scope"`` and the scope it
needs, which is the signal for a client's step-up flow.

``offline_access`` is never advertised (MCP 2026-07-28: it is the client's business, not the
resource's). Auth-parameter values are always quoted strings, one challenge per header, which is
what the Python SDK's simple parser expects.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from datapulse.core.tokens import clean_description
from datapulse.errors import Forbidden

WELL_KNOWN = "/.well-known/oauth-protected-resource"
NEVER_ADVERTISED = frozenset({"offline_access"})


def canonical_resource(url: str) -> str:
    """Lowercase scheme and host, no query or fragment, no trailing slash (MCP canonical URI)."""
    parts = urlsplit(url.strip())
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        raise ValueError(f"resource URL must be an absolute http(s) URL: {url!r}")
    if parts.query or parts.fragment:
        raise ValueError(f"resource URL must have no query or fragment: {url!r}")
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), parts.path.rstrip("/"), "", ""))


def metadata_url(resource: str) -> str:
    """Where the metadata for ``resource`` lives: the well-known path inserted after the host."""
    parts = urlsplit(resource)
    return urlunsplit((parts.scheme, parts.netloc, WELL_KNOWN + parts.path, "", ""))


def quoted(value: str) -> str:
    """An auth-param quoted-string: printable ASCII, with ``\\`` and ``"`` escaped."""
    return '"' + clean_description(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def advertised_scopes(scopes: Iterable[str | None]) -> list[str]:
    """The scopes worth naming in ``scopes_supported``: sorted, no duplicates, no offline_access."""
    return sorted({s for s in scopes if s and s not in NEVER_ADVERTISED})


@dataclass(frozen=True)
class ProtectedResource:
    """Our identity as an OAuth resource server: ``base`` is the canonical server URL.

    The server has two resources with metadata: the server as a whole (the original API and the
    SSE transports live at its root) and its ``/mcp`` endpoint (Streamable HTTP), so that a
    client deriving the metadata URL from either finds a ``resource`` matching what it used.
    """

    base: str
    authorization_servers: tuple[str, ...]

    def resource_for(self, endpoint_path: str = "") -> str:
        return self.base + endpoint_path

    def metadata_url_for(self, request_path: str) -> str:
        """The metadata URL a 401/403 on ``request_path`` points at."""
        endpoint = "/mcp" if request_path == "/mcp" else ""
        return metadata_url(self.resource_for(endpoint))

    def document(self, endpoint_path: str, scopes: Iterable[str | None]) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "resource": self.resource_for(endpoint_path),
            "authorization_servers": list(self.authorization_servers),
            "bearer_methods_supported": ["header"],
            "resource_name": "datapulse",
        }
        supported = advertised_scopes(scopes)
        if supported:
            doc["scopes_supported"] = supported
        return doc


def with_resource_metadata(challenge: str, url: str) -> str:
    """Add ``resource_metadata`` to a Bearer challenge (``Bearer`` alone, or with params)."""
    challenge = challenge.strip()
    if "resource_metadata=" in challenge:
        return challenge
    param = f"resource_metadata={quoted(url)}"
    if challenge.lower() == "bearer":
        return f"Bearer {param}"
    return f"{challenge}, {param}"


def insufficient_scope_challenge(
    scope: str, *, resource_metadata: str | None, description: str
) -> str:
    params = [f"error={quoted('insufficient_scope')}", f"scope={quoted(scope)}"]
    if resource_metadata:
        params.append(f"resource_metadata={quoted(resource_metadata)}")
    params.append(f"error_description={quoted(description)}")
    return "Bearer " + ", ".join(params)


class InsufficientScope(Forbidden):
    """A valid token without the scope an operation needs: 403 with a step-up challenge."""

    error = "insufficient_scope"

    def __init__(self, scope: str, *, what: str, resource_metadata: str | None = None) -> None:
        detail = f"{what} needs the scope {scope!r}"
        super().__init__(detail)
        self.scope = scope
        self.challenge = insufficient_scope_challenge(
            scope, resource_metadata=resource_metadata, description=detail
        )

    @property
    def headers(self) -> list[tuple[str, str]]:
        return [("WWW-Authenticate", self.challenge)]
