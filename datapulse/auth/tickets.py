"""Stream tickets: how a browser's EventSource authenticates without an Authorization header.

``EventSource`` cannot send headers, and a long-lived token in a URL ends up in proxy logs,
browser history and ``Referer`` headers, so it is never accepted there. Instead a page asks
``POST /tickets`` (with its bearer token, from script) for a ticket and puts *that* in the URL:

* a ticket is random (256 bits), short-lived (``ttl_s``, 30 s, to its first use) and opens
  exactly one stream: the first use spends it and binds it to that session and principal;
* after that it is accepted only to *resume* the same session's stream with ``Last-Event-ID``,
  which is what EventSource sends when it reconnects to the same URL by itself, and only while
  the session lives (``forget_session`` is called when it ends);
* anything else (another session, a second open without ``Last-Event-ID``, an expired or
  unknown ticket) is a 401. A page that wants a new stream asks for a new ticket and may resume
  with the ``last_event_id`` query parameter.

The book keeps only SHA-256 digests of tickets, so a memory dump or a debug print of it holds
nothing that opens a stream. It is pure apart from the injectable ``clock``; the router-facing
part (which request may use which ticket) is ``transports.auth_routes``.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from datapulse.auth.verifier import Principal
from datapulse.core.tokens import invalid_token_challenge
from datapulse.errors import TooManyRequests, Unauthorized

TICKET_TTL_S = 30.0
MAX_PENDING_PER_PRINCIPAL = 32
"""Unused tickets one principal may hold; a page needs one per stream it is about to open."""
MAX_BOUND_PER_SESSION = 8
"""Spent tickets kept per session for resumption (a page that reopens gets a fresh one)."""

_REFUSED = "invalid, expired or already used ticket"


def ticket_refused(detail: str = _REFUSED) -> Unauthorized:
    """The one 401 every ticket failure gets: the client cannot tell expired from unknown."""
    return Unauthorized(detail, challenge=invalid_token_challenge(detail))


def _digest(ticket: str) -> bytes:
    return hashlib.sha256(ticket.encode("utf-8", "surrogatepass")).digest()


@dataclass(frozen=True)
class _Pending:
    principal: Principal
    session_id: str | None
    expires_at: float


@dataclass(frozen=True)
class _Bound:
    principal: Principal
    session_id: str
    route: str


@dataclass(frozen=True)
class Redeemed:
    """A ticket that was accepted: who it speaks for, and whether this use spent it."""

    principal: Principal
    first_use: bool


class TicketBook:
    """Issues, spends and remembers stream tickets (see the module docstring for the rules)."""

    def __init__(
        self,
        *,
        ttl_s: float = TICKET_TTL_S,
        clock: Callable[[], float] = time.monotonic,
        max_pending_per_principal: int = MAX_PENDING_PER_PRINCIPAL,
        max_bound_per_session: int = MAX_BOUND_PER_SESSION,
    ) -> None:
        self.ttl_s = ttl_s
        self.clock = clock
        self.max_pending_per_principal = max_pending_per_principal
        self.max_bound_per_session = max_bound_per_session
        # Insertion order is expiry order (one TTL for all), so expired ones are at the front.
        self._pending: OrderedDict[bytes, _Pending] = OrderedDict()
        self._pending_per_principal: Counter[str] = Counter()
        self._bound: dict[bytes, _Bound] = {}
        self._by_session: dict[str, list[bytes]] = {}

    def __len__(self) -> int:
        return len(self._pending) + len(self._bound)

    # -- issuing -----------------------------------------------------------------------------

    def issue(self, principal: Principal, session_id: str | None = None) -> str:
        """A fresh ticket for ``principal``, optionally only for ``session_id``."""
        self._expire()
        if self._pending_per_principal[principal.id] >= self.max_pending_per_principal:
            raise TooManyRequests(
                f"too many unused tickets (at most {self.max_pending_per_principal});"
                " use or let expire the ones you have",
                retry_after_s=int(self.ttl_s),
            )
        ticket = secrets.token_urlsafe(32)
        self._pending[_digest(ticket)] = _Pending(principal, session_id, self.clock() + self.ttl_s)
        self._pending_per_principal[principal.id] += 1
        return ticket

    # -- using -------------------------------------------------------------------------------

    def redeem(
        self, ticket: str, *, route: str, session_id: str | None, resuming: bool
    ) -> Redeemed:
        """Accept ``ticket`` for a GET on ``route`` (``session_id``: the session it names, if
        the route names one), or raise the 401.

        A first use spends the ticket; the caller then ``bind``s it to the session the stream
        is for (at once when the URL names it, after creation for ``/sse``). A spent ticket is
        accepted only when ``resuming`` the session it is bound to, on the same route.
        """
        key = _digest(ticket)
        self._expire()
        bound = self._bound.get(key)
        if bound is not None:
            if resuming and bound.route == route and bound.session_id == session_id:
                return Redeemed(bound.principal, first_use=False)
            raise ticket_refused()
        pending = self._pending.get(key)
        if pending is None:
            raise ticket_refused()
        if pending.session_id is not None and pending.session_id != session_id:
            raise ticket_refused("this ticket was issued for another session")
        del self._pending[key]
        self._release_pending(pending.principal.id)
        return Redeemed(pending.principal, first_use=True)

    def bind(self, ticket: str, principal: Principal, session_id: str, route: str) -> None:
        """Remember a spent ticket as the key to resume ``session_id`` on ``route``."""
        key = _digest(ticket)
        self._bound[key] = _Bound(principal, session_id, route)
        keys = self._by_session.setdefault(session_id, [])
        keys.append(key)
        while len(keys) > self.max_bound_per_session:
            self._bound.pop(keys.pop(0), None)

    def forget_session(self, session_id: str) -> None:
        """The session ended: its tickets open nothing any more."""
        for key in self._by_session.pop(session_id, []):
            self._bound.pop(key, None)

    # -- housekeeping ------------------------------------------------------------------------

    def _expire(self) -> None:
        now = self.clock()
        while self._pending:
            key, pending = next(iter(self._pending.items()))
            if pending.expires_at > now:
                return
            del self._pending[key]
            self._release_pending(pending.principal.id)

    def _release_pending(self, principal_id: str) -> None:
        self._pending_per_principal[principal_id] -= 1
        if self._pending_per_principal[principal_id] <= 0:
            del self._pending_per_principal[principal_id]


# -- keeping tickets out of logs --------------------------------------------------------------

# Query parameters whose values are credentials (ours, and the ones clients wrongly send).
_SECRET_PARAM = re.compile(r"(?i)\b(ticket|access_token|token)=[^&\s'\"\\]*")


def redact(text: str) -> str:
    """``...?ticket=abc&x=1`` -> ``...?ticket=<redacted>&x=1``."""
    return _SECRET_PARAM.sub(lambda m: f"{m.group(1)}=<redacted>", text)


class SecretRedactor(logging.Filter):
    """Rewrites a log record whose message carries a credential-bearing query parameter.

    Our own log lines print paths only, but some messages quote what the client sent (h11
    quotes a malformed request line, target and all); this filter is the backstop for those.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


#: The loggers that print request lines, paths or client input.
REDACTED_LOGGERS = ("datapulse", "datapulse.http", "datapulse.server")


def install_redactor(names: tuple[str, ...] = REDACTED_LOGGERS) -> None:
    """Attach one SecretRedactor to each named logger (idempotent)."""
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, SecretRedactor) for f in logger.filters):
            logger.addFilter(SecretRedactor())
