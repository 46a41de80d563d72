"""CORS: which browser origins may read our responses, and the headers that say so. Pure.

Two policies, on purpose:

* Protected endpoints answer cross-origin only to the ``--cors-origins`` allow-list (``*``
  allows any). The Origin guard (DNS rebinding) lets these origins through too; every other
  origin keeps its 403 there, and a preflight from an origin that is allowed by the guard (a
  localhost one) but not listed here is refused with 403 as well.
* Public metadata (RFC 9728 documents) is readable from any origin, like the Python SDK's
  metadata routes: it holds nothing secret, and browser-based MCP clients need it.

Credentials (cookies) are never allowed: we authenticate with the Authorization header, which a
page sets itself, so ``Access-Control-Allow-Credentials`` is never sent.
"""

from __future__ import annotations

from collections.abc import Iterable

from datapulse.core.origins import parse_origins

Headers = list[tuple[str, str]]

ALLOW_HEADERS = (
    "Authorization",
    "Content-Type",
    "Last-Event-ID",
    "Mcp-Session-Id",
    "MCP-Protocol-Version",
    "Mcp-Method",
    "Mcp-Name",
)
EXPOSE_HEADERS = ("Mcp-Session-Id", "WWW-Authenticate", "Retry-After")
MAX_AGE_S = 600


class CorsPolicy:
    def __init__(self, origins_csv: str) -> None:
        self.origins = parse_origins(origins_csv)
        self.any_origin = "*" in self.origins

    def allows(self, origin: str | None) -> bool:
        if origin is None:
            return False
        return self.any_origin or origin.strip().rstrip("/").lower() in self.origins

    def _allow_origin(self, origin: str) -> Headers:
        if self.any_origin:
            return [("Access-Control-Allow-Origin", "*")]
        # The answer depends on the request's Origin: caches must keep one per origin.
        return [("Access-Control-Allow-Origin", origin), ("Vary", "Origin")]

    def response_headers(self, origin: str | None) -> Headers:
        """Headers for an actual (non-preflight) response; none for an origin not allowed."""
        if origin is None or not self.allows(origin):
            return []
        return [
            *self._allow_origin(origin),
            ("Access-Control-Expose-Headers", ", ".join(EXPOSE_HEADERS)),
        ]

    def preflight_headers(self, origin: str, methods: Iterable[str]) -> Headers:
        """Headers for a 204 answer to an allowed origin's preflight."""
        return [
            *self._allow_origin(origin),
            ("Access-Control-Allow-Methods", ", ".join(sorted({*methods, "OPTIONS"}))),
            ("Access-Control-Allow-Headers", ", ".join(ALLOW_HEADERS)),
            ("Access-Control-Expose-Headers", ", ".join(EXPOSE_HEADERS)),
            ("Access-Control-Max-Age", str(MAX_AGE_S)),
        ]


def public_headers() -> Headers:
    """For public metadata: any origin may read it."""
    return [("Access-Control-Allow-Origin", "*")]


def public_preflight_headers() -> Headers:
    return [
        ("Access-Control-Allow-Origin", "*"),
        ("Access-Control-Allow-Methods", "GET, OPTIONS"),
        ("Access-Control-Allow-Headers", "MCP-Protocol-Version"),
        ("Access-Control-Max-Age", str(MAX_AGE_S)),
    ]
