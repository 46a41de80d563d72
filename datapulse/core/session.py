"""Session records and their TTL arithmetic, sans-IO.

A session is created by its first use, belongs to the principal that created it, and expires
``ttl_s`` seconds after its last activity (any request or delivered event refreshes it). Times are
Trio clock seconds, passed in by the caller, so tests use a fixed ``now``.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

# Visible ASCII (0x21-0x7E) is what MCP allows in Mcp-Session-Id; we apply it to every session id
# so ids are safe in headers, URLs and logs. Checked with fullmatch: with match, ``$`` would also
# match before a trailing newline and let "abc\n" through into a header.
_SESSION_ID = re.compile(r"[\x21-\x7e]{1,128}")


def new_session_id() -> str:
    """128 random bits from the OS CSPRNG, hex: unguessable and header-safe."""
    return secrets.token_hex(16)


def valid_session_id(value: str) -> bool:
    return _SESSION_ID.fullmatch(value) is not None


@dataclass(slots=True)
class SessionRecord:
    id: str
    owner: str
    """Principal id of the creator; anyone else gets 404 for this session."""
    kind: str
    """Which API created it: ``events`` (original), ``mcp``, ``sse``, ``ws``."""
    created_at: float
    last_active: float
    ttl_s: float
    delivered_seq: int = 0
    """Highest event seq written to a client: a fresh stream resumes after it."""

    @property
    def expires_at(self) -> float:
        return self.last_active + self.ttl_s

    def is_expired(self, now: float) -> bool:
        return now >= self.expires_at

    def touch(self, now: float) -> None:
        self.last_active = max(self.last_active, now)
