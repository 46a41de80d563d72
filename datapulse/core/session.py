"""Session records and their TTL arithmetic, sans-IO.

A session is created by its first use, belongs to the principal that created it, and expires
``ttl_s`` seconds after its last activity (any request or delivered event refreshes it). Times are
Trio clock seconds, passed in by the caller, so tests use a fixed ``now``.

Session ids come in two kinds. The server picks most (``new_session_id``: ``/mcp``, ``/sse``,
``/ws``), and they are unguessable. The original API lets the *client* pick one
(``/events?session_id=demo``); such an id is a name in its principal's own namespace: the same
name for two principals is two sessions, stored under ``namespaced_key(owner, name)``. So an id
cannot be probed (another principal's ``demo`` and a ``demo`` nobody has are the same to you:
yours, opened on first use) nor taken before its owner uses it.
"""

from __future__ import annotations

import hashlib
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


def namespaced_key(owner: str, name: str) -> str:
    """The store key of the session ``owner`` calls ``name`` (a client-chosen id).

    A digest of the owner, then the name: fixed-length, so two (owner, name) pairs never share a
    key, and safe to log (a principal id is, too). The ``.`` keeps it apart from every
    ``new_session_id`` (hex only), so a chosen name never lands on a server-picked id.
    """
    digest = hashlib.blake2b(owner.encode(), digest_size=12).hexdigest()
    return f"{digest}.{name}"


@dataclass(slots=True)
class SessionRecord:
    id: str
    """The store key: the session id itself, or ``namespaced_key`` of a client-chosen one."""
    owner: str
    """Principal id of the creator; anyone else gets 404 for this session."""
    kind: str
    """Which API created it: ``events`` (original), ``mcp``, ``sse``, ``ws``."""
    created_at: float
    last_active: float
    ttl_s: float
    delivered_seq: int = 0
    """Highest event seq written to a client: a fresh stream resumes after it."""
    name: str | None = None
    """The client-chosen id of a namespaced session (``id`` is then its ``namespaced_key``)."""

    @property
    def session_id(self) -> str:
        """The id the session's owner knows it by: its name, else its key."""
        return self.name if self.name is not None else self.id

    @property
    def expires_at(self) -> float:
        return self.last_active + self.ttl_s

    def is_expired(self, now: float) -> bool:
        return now >= self.expires_at

    def touch(self, now: float) -> None:
        self.last_active = max(self.last_active, now)
