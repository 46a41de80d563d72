"""LiveSession and SessionRegistry: what this process holds of each session, and how it is found.

Split out of ``live.sessions`` so that naming and counting can be read on their own: the
``SessionManager`` (``live.sessions``) decides *when* a session begins and ends, this module only
*keeps* the live ones and answers who has which.

* ``LiveSession`` is one session while it lives here: the stream attached right now, the readers
  of its request streams, its MCP protocol object and its running tool calls. The record, the
  protocol state and the logs live in the ``SessionStore``; ``LiveSession.record`` is this
  process's copy.
* Ids: a session is found by (owner, id), never by id alone, so another principal's session is
  not there at all. Server-picked ids are the store key; a client-chosen id (``/events``) is a
  name in its owner's namespace, stored under ``core.session.namespaced_key`` (``LiveSession.key``
  is the store's name for a session, ``LiveSession.id`` its owner's).
* The per-principal counts that ``max_sessions_per_principal`` checks are kept here; the manager
  reserves a slot before its first await (``reserve``) and gives it back on failure or removal.

Owned by ``SessionManager`` (one registry per manager); ``live.streams`` asks it only whether a
session is still the live one (``holds``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

from datapulse.core.session import SessionRecord
from datapulse.errors import AmbiguousSession, quote
from datapulse.live.stream import LogStream
from datapulse.protocol.session import McpSession
from datapulse.protocol.state import ProtocolState

Task = Callable[[], Awaitable[object]]


class LiveSession:
    """What this process holds of one session while it lives here."""

    __slots__ = (
        "_cancel_scope",
        "_task_started",
        "ended",
        "nursery",
        "pending",
        "protocol",
        "record",
        "request_streams",
        "running",
        "saved_protocol",
        "stream",
    )

    def __init__(self, record: SessionRecord) -> None:
        self.record = record
        """This process's copy: owner and kind never change; TTL fields are kept current here
        and written through to the store."""
        self.stream: LogStream | None = None
        """The stream attached to the session's own log, if any."""
        self.request_streams: dict[int, LogStream] = {}
        """Attached readers of the session's request streams, by stream number."""
        self.protocol: McpSession | None = None
        """The MCP protocol state machine of the session (None for the original API until its
        first request, and for a session restored from the store until it is used)."""
        self.saved_protocol: ProtocolState | None = None
        self.ended = False
        self.running = 0
        """Tasks started by ``SessionManager.spawn`` that have not finished (calls in flight)."""
        self.pending: list[Task] = []
        """Spawned before the session's task was running; it starts them first."""
        self.nursery: trio.Nursery | None = None
        self._cancel_scope: trio.CancelScope | None = None
        self._task_started = False

    @property
    def id(self) -> str:
        """The id the owner uses (in URLs, headers, tickets, ``ToolContext.session_id``)."""
        return self.record.session_id

    @property
    def key(self) -> str:
        """The store's name for the session (its logs are ``LogKey(key, n)``)."""
        return self.record.id


class SessionRegistry:
    """The live sessions of this process: by store key, by (owner's id, owner), counted per
    owner. Holds and answers; never awaits, never ends a session itself."""

    def __init__(self) -> None:
        self._live: dict[str, LiveSession] = {}
        """By store key."""
        self._named: dict[str, dict[str, LiveSession]] = {}
        """By the id their owners use, then by owner (a chosen id may have several owners)."""
        self._owned: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._live)

    def sessions(self) -> list[LiveSession]:
        return list(self._live.values())

    def holds(self, live: LiveSession) -> bool:
        """Whether ``live`` is the live session under its key (not ended, not replaced)."""
        return self._live.get(live.key) is live

    def get(self, key: str) -> LiveSession | None:
        """The live session under store key ``key``, if it is live here."""
        return self._live.get(key)

    def find(self, session_id: str, owner: str) -> LiveSession | None:
        """``owner``'s live session named ``session_id``, if any (the owner's namespace only)."""
        return self._named.get(session_id, {}).get(owner)

    def lookup(self, session_id: str, principal: str | None = None) -> LiveSession | None:
        """The live session with this id (for the host program, not clients): ``principal``'s,
        or without it the only one there is. A client-chosen id may name one session for each
        of several principals; then the answer must be chosen: ``AmbiguousSession``."""
        owners = self._named.get(session_id)
        if not owners:
            return None
        if principal is not None:
            return owners.get(principal)
        if len(owners) > 1:
            raise AmbiguousSession(
                f"{len(owners)} principals have a session {quote(session_id)}; say whose"
                " (principal=)"
            )
        return next(iter(owners.values()))

    def owned_by(self, owner: str) -> int:
        """How many live sessions ``owner`` holds (what ``max_sessions_per_principal`` counts)."""
        return self._owned.get(owner, 0)

    @property
    def owned_total(self) -> int:
        """The per-principal session counts summed (equals ``len(self)`` unless they leak)."""
        return sum(self._owned.values())

    def reserve(self, owner: str) -> None:
        """Count a session of ``owner`` about to be created (before any await, so concurrent
        creates cannot both squeeze past the limit); ``release`` undoes it."""
        self._owned[owner] = self._owned.get(owner, 0) + 1

    def release(self, owner: str) -> None:
        left = self._owned.get(owner, 0) - 1
        if left > 0:
            self._owned[owner] = left
        else:
            self._owned.pop(owner, None)

    def add(self, live: LiveSession) -> None:
        """Register a created session (its owner's slot was ``reserve``d)."""
        self._live[live.key] = live
        self._named.setdefault(live.id, {})[live.record.owner] = live

    def remove(self, live: LiveSession) -> None:
        """Forget ``live`` and give back its owner's slot, if it is still registered."""
        if self._live.pop(live.key, None) is live:
            self.release(live.record.owner)
            owners = self._named.get(live.id)
            if owners is not None and owners.get(live.record.owner) is live:
                del owners[live.record.owner]
                if not owners:
                    del self._named[live.id]
