"""Stream tickets: how a browser's EventSource authenticates without an Authorization header.

``EventSource`` cannot send headers, and a long-lived token in a URL ends up in proxy logs,
browser history and ``Referer`` headers, so it is never accepted there. Instead a page asks
``POST /tickets`` (with its bearer token, from script) for a ticket and puts *that* in the URL:

* a ticket is random (256 bits), short-lived (``ttl_s``, 30 s, to its first use) and opens
  exactly one stream: the first use spends it and binds it to that session and principal;
* after that it is accepted only to *resume* the same session's stream with ``Last-Event-ID``,
  which is what EventSource sends when it reconnects to the same URL by itself, and only while
  the session lives (``forget_session`` is called when it ends), while a stream it opened is
  attached or within ``resume_window_s`` after the last one was cut (``stream_started`` /
  ``stream_ended``), and never from before the first event its own stream could have sent
  (a ``Last-Event-ID`` below that, or none that parses, is refused like a spent ticket);
* anything else (another session, a second open without ``Last-Event-ID``, an expired or
  unknown ticket) is a 401. A page that wants a new stream asks for a new ticket and may resume
  with the ``last_event_id`` query parameter.

The book keeps only SHA-256 digests of tickets, so a memory dump or a debug print of it holds
nothing that opens a stream. It is pure apart from the injectable ``clock``; the router-facing
part (which request may use which ticket) is ``transports.auth_routes``.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from datapulse.auth.redact import REDACTED_LOGGERS, SecretRedactor, install_redactor, redact
from datapulse.auth.verifier import Principal
from datapulse.core.tokens import invalid_token_challenge
from datapulse.errors import TooManyRequests, Unauthorized

TICKET_TTL_S = 30.0
MAX_PENDING_PER_PRINCIPAL = 32
"""Unused tickets one principal may hold; a page needs one per stream it is about to open."""
MAX_BOUND_PER_SESSION = 8
"""Spent tickets kept per session for resumption (a page that reopens gets a fresh one)."""
TICKET_RESUME_WINDOW_S = 300.0
"""How long after its stream was cut a spent ticket may still resume it (EventSource reconnects
within seconds; a ticket leaked from a log or a history is useless after this)."""

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


@dataclass
class _Bound:
    principal: Principal
    session_id: str
    route: str
    first_event_id: int | None
    """The first event id the ticket's own stream could send; resuming from before it would
    replay events that stream never carried. None: not known (anything goes)."""
    cut_at: float
    """When the last stream opened with this ticket ended (until one starts: when bound)."""
    open_streams: int = 0


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
        resume_window_s: float = TICKET_RESUME_WINDOW_S,
    ) -> None:
        if resume_window_s < 0:
            raise ValueError("resume_window_s must be >= 0")
        self.ttl_s = ttl_s
        self.resume_window_s = resume_window_s
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
        self,
        ticket: str,
        *,
        route: str,
        session_id: str | None,
        resuming: bool,
        last_event_id: int | None = None,
    ) -> Redeemed:
        """Accept ``ticket`` for a GET on ``route`` (``session_id``: the session it names, if
        the route names one), or raise the 401.

        A first use spends the ticket; the caller then ``bind``s it to the session the stream
        is for (at once when the URL names it, after creation for ``/sse``). A spent ticket is
        accepted only when ``resuming`` the session it is bound to, on the same route, within
        the resume window, from ``last_event_id`` (the parsed ``Last-Event-ID``; None when it
        does not parse) at or after the first event its stream could have sent.
        """
        key = _digest(ticket)
        self._expire()
        bound = self._bound.get(key)
        if bound is not None:
            if not (resuming and bound.route == route and bound.session_id == session_id):
                raise ticket_refused()
            if bound.open_streams == 0 and self.clock() > bound.cut_at + self.resume_window_s:
                raise ticket_refused()
            floor = bound.first_event_id
            if floor is not None and (last_event_id is None or last_event_id < floor):
                raise ticket_refused()
            return Redeemed(bound.principal, first_use=False)
        pending = self._pending.get(key)
        if pending is None:
            raise ticket_refused()
        if pending.session_id is not None and pending.session_id != session_id:
            raise ticket_refused("this ticket was issued for another session")
        del self._pending[key]
        self._release_pending(pending.principal.id)
        return Redeemed(pending.principal, first_use=True)

    def bind(
        self,
        ticket: str,
        principal: Principal,
        session_id: str,
        route: str,
        *,
        first_event_id: int | None = None,
    ) -> None:
        """Remember a spent ticket as the key to resume ``session_id`` on ``route``, never from
        before ``first_event_id`` (the first event id the stream it opens can send)."""
        key = _digest(ticket)
        self._bound[key] = _Bound(principal, session_id, route, first_event_id, self.clock())
        keys = self._by_session.setdefault(session_id, [])
        keys.append(key)
        while len(keys) > self.max_bound_per_session:
            self._bound.pop(keys.pop(0), None)

    def stream_started(self, ticket: str, *, first_event_id: int | None = None) -> None:
        """A stream opened with ``ticket`` is being written; ``first_event_id`` (for the stream
        that spent it) is the first id it can send, now that it is known exactly."""
        bound = self._bound.get(_digest(ticket))
        if bound is None:
            return
        bound.open_streams += 1
        if first_event_id is not None:
            bound.first_event_id = max(bound.first_event_id or 0, first_event_id)

    def stream_ended(self, ticket: str) -> None:
        """A stream opened with ``ticket`` ended: the resume window starts now."""
        bound = self._bound.get(_digest(ticket))
        if bound is None:
            return
        bound.open_streams = max(0, bound.open_streams - 1)
        bound.cut_at = self.clock()

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


# -- keeping tickets out of logs: moved to auth.redact, which covers every credential -----------

__all__ = [
    "REDACTED_LOGGERS",
    "Redeemed",
    "SecretRedactor",
    "TicketBook",
    "install_redactor",
    "redact",
    "ticket_refused",
]
