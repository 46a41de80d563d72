"""The session store interface: everything another instance would need to continue a session.

What lives here (and so, with a shared backend, survives a restart and is seen by every
instance): session records (owner, kind, TTL, the last event delivered), each session's MCP
protocol state (negotiated revision, client info and capabilities, log level), and every event
log: the session's own stream (``/events``, ``/sse``, GET ``/mcp``) and each ``/mcp`` POST stream.

What does not (``datapulse.live``): the stream attached to a socket right now, the tool calls
running in this process, and the wake-ups that hand a fresh event to an attached stream. Those
belong to one process by nature.

A log is named by a ``LogKey``: the session id and a stream number, 0 for the session's own
stream and 1, 2, ... for its request streams (``open_request_log``). Request streams frame their
event ids as ``<n>-<seq>`` so one session's streams share one id space; only the newest
``KEPT_REQUEST_LOGS`` of them are kept. A log is *closed* once nothing more will be appended (a
request stream after its reply): a reader that has everything of a closed log is done.

Every method is async so a network backend (Redis) implements the same interface; callers do not
know which one runs. The contract every backend must keep is ``tests/unit/test_store_contract.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from datapulse.core.eventlog import LoggedEvent
from datapulse.core.session import SessionRecord

KEPT_REQUEST_LOGS = 32
"""Request streams per session kept for ``Last-Event-ID`` resumption (oldest dropped first)."""


class LogKey(NamedTuple):
    session_id: str
    stream: int = 0
    """0: the session's own stream; n > 0: the session's n-th request stream."""

    @property
    def id_prefix(self) -> str:
        return f"{self.stream}-" if self.stream else ""


@dataclass(frozen=True, slots=True)
class LogRead:
    """What ``read`` found: the held events after the asked seq, and where the log stands."""

    events: list[LoggedEvent]
    last_seq: int
    closed: bool


class SessionExists(Exception):
    """``create`` was given the id of a session the store already holds."""


class UnknownLog(Exception):
    """The log is not held (never opened, dropped as too old, or its session ended)."""


class TaskLimitReached(Exception):
    """``create_task`` refused: the principal (or the store as a whole) holds as many unexpired
    tasks as it may. The message says which bound and what to do."""


class TaskExists(Exception):
    """``create_task`` was given the id of a task the store already holds."""


class StoredTask(NamedTuple):
    """A task record as read: its data (JSON-safe, a copy) and its revision, which
    ``save_task`` compares so that two writers never overwrite each other unseen."""

    rev: int
    data: dict[str, Any]


class SessionStore(Protocol):
    # -- records ---------------------------------------------------------------------------
    async def create(self, record: SessionRecord) -> None:
        """Store a new session with an empty stream-0 log; SessionExists if the id is taken."""

    async def get(self, session_id: str) -> SessionRecord | None:
        """A copy of the record (changing it changes nothing stored), or None."""

    async def delete(self, session_id: str) -> None:
        """Forget the session, its protocol state and all its logs (idempotent)."""

    async def touch(self, session_id: str, now: float) -> None: ...

    async def expired(self, now: float) -> list[str]: ...

    async def count(self) -> int: ...

    async def count_owned(self, owner: str, now: float) -> int:
        """How many unexpired sessions ``owner`` holds in the store (every instance's): what
        ``--max-sessions-per-principal`` is checked against when the store is shared."""

    async def mark_delivered(self, session_id: str, seq: int) -> None:
        """The session's stream-0 events up to ``seq`` reached a client (never moves back)."""

    async def save_protocol(self, session_id: str, state: dict[str, Any]) -> None:
        """The session's MCP protocol state, JSON-safe (``protocol.ProtocolState.to_dict``)."""

    async def load_protocol(self, session_id: str) -> dict[str, Any] | None: ...

    # -- logs ------------------------------------------------------------------------------
    async def open_request_log(self, session_id: str) -> LogKey:
        """A new, empty request stream of the session (dropping the oldest past the bound)."""

    async def drop_log(self, key: LogKey) -> None:
        """Forget a request stream nobody will resume (answered in full as JSON)."""

    async def append(self, key: LogKey, data: str, event: str | None = None) -> LoggedEvent:
        """Append one event; UnknownLog if the log is not held."""

    async def close_log(self, key: LogKey) -> None:
        """Nothing more will be appended: request streams only, the session's own log is never
        closed (idempotent; a missing log is ignored)."""

    async def last_seq(self, key: LogKey) -> int:
        """The seq of the newest event appended (0 for none); UnknownLog if not held."""

    async def read(self, key: LogKey, after: int, limit: int | None = None) -> LogRead:
        """Held events with seq > ``after``, oldest first, at most ``limit`` of them.
        ``ReplayGone`` if some of them were evicted by the log's bounds; UnknownLog if the log
        is not held."""

    # -- round-trip state (2026-07-28 multi round-trip requests) ----------------------------

    async def put_state(self, key: str, data: dict[str, Any], ttl_s: float) -> None:
        """Keep ``data`` (JSON-safe) under ``key`` for ``ttl_s`` seconds: what a request that
        asked the client for input needs when the client retries, on whichever instance."""

    async def take_state(self, key: str) -> dict[str, Any] | None:
        """The data under ``key``, removed (each state is redeemed once); None if there is
        none: never stored, already taken, expired or evicted."""

    # -- tasks (durable tool calls: protocol.tasks) ------------------------------------------
    # Keyed by (principal, task id): another principal's task is not there at all, so it reads
    # exactly like a missing one. A task expires ``ttl_s`` after its creation, whatever it is
    # doing (the runner stops a task that outlives its record). ``data`` is JSON-safe
    # (``core.tasks.TaskState.to_dict``); a network backend stores it as JSON.

    async def create_task(
        self, principal: str, task_id: str, data: dict[str, Any], ttl_s: float, limit: int
    ) -> None:
        """Store a new task record (revision 1) of ``principal``. It is readable (``load_task``,
        on every instance) once this returns. TaskLimitReached if the principal already holds
        ``limit`` unexpired tasks (or the store its overall bound); TaskExists if the id is
        taken."""

    async def load_task(self, principal: str, task_id: str) -> StoredTask | None:
        """The principal's task (a copy), or None: never stored, expired, deleted, or another
        principal's."""

    async def save_task(
        self, principal: str, task_id: str, data: dict[str, Any], rev: int
    ) -> int | None:
        """Replace the record if it is still at revision ``rev`` (what ``load_task`` said); the
        new revision, or None if it changed meanwhile or is gone (re-read and decide again).
        The expiry stays what ``create_task`` set."""

    async def list_tasks(self, principal: str) -> list[StoredTask]:
        """The principal's unexpired tasks, oldest first."""

    async def delete_task(self, principal: str, task_id: str) -> None:
        """Forget the task (idempotent)."""
