"""SessionManager: the live side of sessions (attached streams, tool tasks, expiry, limits).

Ownership, from the top:
* Records, protocol state and every event log live in the ``SessionStore``; this process holds
  only what is live here: for each session a ``LiveSession`` with the stream attached right now,
  the readers of its request streams, its MCP protocol object and its running tool calls.
* ``SessionManager.run`` owns a nursery. A session gets one task there (``_session_task``,
  started with its first tool call) whose own nursery runs that session's tool calls, so a tool
  outlives the HTTP request that started it (a ``/message`` POST answers 202 at once) but not its
  session: expiring or deleting a session cancels its scope and with it every call still running.
* Every event is appended to its log first; the log is the truth. ``publish`` then *offers* the
  event to the stream attached to that log, which writes it at once if its socket takes it or
  catches up from the log in its own task (``live.stream``). A producer never waits on anybody's
  socket, and nothing is queued per stream: memory per session is the log's bound.
* At most one stream per log: a second GET supersedes the first, which says goodbye
  (``event: close`` ``superseded``) before ending. By default the old one first writes what the
  log still holds for it; an ``exclusive`` stream (GET ``/mcp``) stops where it is instead, so
  no message goes out on both.
* Ids: a session is found by (owner, id), never by id alone, so another principal's session is
  not there at all. Server-picked ids are the store key; a client-chosen id (``/events``) is a
  name in its owner's namespace, stored under ``core.session.namespaced_key`` (``LiveSession.key``
  is the store's name for a session, ``LiveSession.id`` its owner's).
* Limits: ``max_sessions`` in all (503) and ``max_sessions_per_principal`` per owner (429), both
  checked when a session is created.
* Shutdown drains: ``close_all_streams`` closes at once the streams of sessions with no call in
  flight; a session that is still running calls keeps its stream until the last one ends, so
  results finished within the grace period are delivered before ``event: close``.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import trio

from datapulse.config import Config
from datapulse.core.eventlog import LoggedEvent
from datapulse.core.session import SessionRecord, namespaced_key, new_session_id
from datapulse.core.sse import encode_retry
from datapulse.errors import (
    AmbiguousSession,
    ServiceUnavailable,
    SessionNotFound,
    TooManyRequests,
    quote,
)
from datapulse.live.pinger import Pinger
from datapulse.live.stream import Control, LogStream, StoreLog, control_comment, control_event
from datapulse.net.http import BodyStream
from datapulse.protocol.session import McpSession
from datapulse.protocol.state import ProtocolState
from datapulse.store.base import LogKey, SessionStore, UnknownLog

log = logging.getLogger("datapulse.sessions")

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


class SessionManager:
    def __init__(self, config: Config, store: SessionStore) -> None:
        self.config = config
        self.store = store
        self._live: dict[str, LiveSession] = {}
        """By store key."""
        self._named: dict[str, dict[str, LiveSession]] = {}
        """By the id their owners use, then by owner (a chosen id may have several owners)."""
        self._owned: dict[str, int] = {}
        self._nursery: trio.Nursery | None = None
        self._task_done: dict[str, trio.Event] = {}
        self.on_close: list[Callable[[LiveSession, str], None]] = []
        self.draining: str | None = None
        """Set by ``close_all_streams``: the reason streams are told once their calls are done."""
        self.pinger = Pinger(config.ping_interval_s)

    def __len__(self) -> int:
        return len(self._live)

    def live_sessions(self) -> list[LiveSession]:
        return list(self._live.values())

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

    # -- lifecycle ---------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own every session's task and sweep expired sessions until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self.pinger.run)
            task_status.started()
            try:
                while True:
                    await trio.sleep(self.config.sweep_interval_s)
                    await self.sweep()
            finally:
                self._nursery = None
                for live in list(self._live.values()):
                    self._end_locally(live, "shutdown")

    async def _session_task(self, live: LiveSession) -> None:
        """The session's own task, started with its first tool call (most sessions, e.g. a
        stream only fed by ``publish``, never need one: an idle task per stream costs memory)."""
        done = self._task_done[live.key] = trio.Event()
        with trio.CancelScope() as scope:
            live._cancel_scope = scope
            if live.ended:
                scope.cancel()
            async with trio.open_nursery() as nursery:
                live.nursery = nursery
                for fn in live.pending:
                    nursery.start_soon(self._run_task, live, fn)
                live.pending.clear()
                await done.wait()
                nursery.cancel_scope.cancel()
        live.nursery = None
        self._task_done.pop(live.key, None)

    def admit(self, owner: str) -> None:
        """Raise what ``create`` would for ``owner`` now (503, 429), creating nothing: for a
        transport that creates the session only once its response is under way (``/sse``)."""
        if self._nursery is None:
            raise ServiceUnavailable("server is not running")
        if len(self._live) >= self.config.max_sessions:
            raise ServiceUnavailable(
                f"session limit reached ({self.config.max_sessions})", retry_after_s=5
            )
        owned = self._owned.get(owner, 0)
        if owned >= self.config.max_sessions_per_principal:
            raise TooManyRequests(
                f"session limit per principal reached ({self.config.max_sessions_per_principal});"
                " close or let expire an older session",
                retry_after_s=5,
            )

    async def create(self, owner: str, kind: str, session_id: str | None = None) -> LiveSession:
        """A new session of ``owner``. ``session_id`` is a client-chosen id: a name in the
        owner's namespace (stored under ``namespaced_key``); without it the server picks one."""
        self.admit(owner)
        now = trio.current_time()
        record = SessionRecord(
            id=new_session_id() if session_id is None else namespaced_key(owner, session_id),
            owner=owner,
            kind=kind,
            created_at=now,
            last_active=now,
            ttl_s=self.config.session_ttl_s,
            name=session_id,
        )
        # Counted before the first await, so concurrent creates cannot both squeeze past the limit.
        self._owned[owner] = self._owned.get(owner, 0) + 1
        try:
            await self.store.create(record)
        except BaseException:
            self._release(owner)
            raise
        live = LiveSession(record)
        self._live[record.id] = live
        self._named.setdefault(live.id, {})[owner] = live
        log.info("session %s created (%s)", live.id, kind)
        return live

    async def get(self, session_id: str, owner: str, kind: str | None = None) -> LiveSession:
        """``owner``'s session ``session_id``, touched; SessionNotFound if absent or expired.

        Sessions are looked up in the owner's namespace: another principal's session is not
        even there, so it answers exactly like a missing one and ids cannot be probed.
        """
        live = self._named.get(session_id, {}).get(owner)
        now = trio.current_time()
        if live is None or (kind and live.record.kind != kind):
            raise SessionNotFound(f"unknown or expired session: {session_id}")
        if live.record.is_expired(now) and live.stream is None:
            await self.close(live, "session_expired")
            raise SessionNotFound(f"unknown or expired session: {session_id}")
        live.record.touch(now)
        await self.store.touch(live.key, now)
        return live

    async def get_or_create(self, session_id: str, owner: str, kind: str) -> LiveSession:
        """``owner``'s session named ``session_id`` (a client-chosen id), opened on first use.
        Whether another principal uses the same name makes no difference to either of them."""
        if owner in self._named.get(session_id, {}):
            return await self.get(session_id, owner, kind)
        return await self.create(owner, kind, session_id)

    async def close(self, live: LiveSession, reason: str) -> None:
        """End a session: its streams are told why, its tool calls are cancelled, records go."""
        if self._live.get(live.key) is live:
            self._end_locally(live, reason)
            await self.store.delete(live.key)
            log.info("session %s closed (%s)", live.id, reason)

    def _release(self, owner: str) -> None:
        left = self._owned.get(owner, 0) - 1
        if left > 0:
            self._owned[owner] = left
        else:
            self._owned.pop(owner, None)

    def _end_locally(self, live: LiveSession, reason: str) -> None:
        if self._live.pop(live.key, None) is live:
            self._release(live.record.owner)
            owners = self._named.get(live.id)
            if owners is not None and owners.get(live.record.owner) is live:
                del owners[live.record.owner]
                if not owners:
                    del self._named[live.id]
        live.ended = True
        if live.stream is not None:
            live.stream.close(reason)
        for reader in live.request_streams.values():
            reader.close(reason)
        done = self._task_done.get(live.key)
        if done is not None:
            done.set()
        if live._cancel_scope is not None:
            live._cancel_scope.cancel()
        for callback in self.on_close:
            callback(live, reason)

    async def sweep(self) -> int:
        """Close expired sessions; a session with an attached stream is alive by definition."""
        now = trio.current_time()
        count = 0
        for live in list(self._live.values()):
            if live.stream is not None:
                live.record.touch(now)
            elif live.record.is_expired(now):
                await self.close(live, "session_expired")
                count += 1
        return count

    # -- tools ---------------------------------------------------------------------------------

    def spawn(self, live: LiveSession, fn: Task) -> None:
        """Run ``fn()`` as one of the session's tasks (cancelled when the session ends)."""
        if live.ended or self._nursery is None:
            raise SessionNotFound(f"session {live.id} has ended")
        # Counted here, not in the task, so a shutdown between now and the task's first step
        # still sees the call as in flight.
        live.running += 1
        if live.nursery is not None:
            live.nursery.start_soon(self._run_task, live, fn)
            return
        live.pending.append(fn)
        if not live._task_started:
            live._task_started = True
            self._nursery.start_soon(self._session_task, live)

    async def _run_task(self, live: LiveSession, fn: Task) -> None:
        try:
            await fn()
        except SessionNotFound:
            pass  # the session ended while the call ran; there is nobody left to tell
        except Exception:
            # A session task must never take the session manager (and the server) down with it.
            log.exception("task in session %s failed", live.id)
        finally:
            live.running -= 1
            if live.running == 0 and self.draining is not None and live.stream is not None:
                # The last call of a draining session is done (its result is in the log, ahead
                # of the goodbye): now the stream may say goodbye.
                live.stream.close(self.draining)

    # -- protocol state --------------------------------------------------------------------------

    async def save_protocol(self, live: LiveSession) -> None:
        """Write the session's MCP protocol state through to the store if it changed.

        Called after every message; the state changes a few times per session (initialize,
        logging/setLevel), so the check is a field-wise comparison with the last saved copy.
        """
        if live.protocol is None:
            return
        state = live.protocol.state
        if state != live.saved_protocol:
            live.saved_protocol = copy.copy(state)
            await self.store.save_protocol(live.key, state.to_dict())

    # -- events --------------------------------------------------------------------------------

    async def publish(self, live: LiveSession, data: Any, event: str | None = None) -> LoggedEvent:
        """Append an event to the session's log and offer it to its stream. Never waits on a
        client. ``data`` is JSON-encoded unless it is already a ``str``."""
        if self._live.get(live.key) is not live:
            raise SessionNotFound(f"session {live.id} has ended")
        text = data if isinstance(data, str) else orjson.dumps(data).decode()
        logged = await self.store.append(LogKey(live.key), text, event)
        if live.stream is not None:
            live.stream.offer(logged)
        return logged

    async def open_request_log(self, live: LiveSession) -> LogKey:
        return await self.store.open_request_log(live.key)

    async def push(self, live: LiveSession, key: LogKey, data: bytes) -> None:
        """Append one message to a request stream's log and offer it to its reader."""
        try:
            logged = await self.store.append(key, data.decode(), None)
        except UnknownLog:
            return  # the session ended, or the stream was dropped as too old: nobody can read it
        reader = live.request_streams.get(key.stream)
        if reader is not None:
            reader.offer(logged)

    async def finish_request_log(self, live: LiveSession, key: LogKey) -> None:
        """The request is done: its stream ends once a reader has written everything."""
        await self.store.close_log(key)
        reader = live.request_streams.get(key.stream)
        if reader is not None:
            reader.log_changed()

    # -- streams ---------------------------------------------------------------------------------

    async def stream_session(
        self,
        live: LiveSession,
        out: BodyStream,
        *,
        resume_after: int | None,
        preamble: bytes = b"",
        control: Control = control_event,
        exclusive: bool = False,
    ) -> None:
        """Attach a stream to the session's own log and write it until the client leaves or the
        session tells it to stop. Supersedes the stream attached before, if any: that one is
        told ``superseded`` and, unless ``exclusive``, first writes what the log still holds for
        it (``exclusive``: it stops where it is, and this one carries on from there, so no event
        goes out on both; MCP's rule for its streams).

        ``control`` frames the goodbye and error notices: named events for the original API, SSE
        comments (``control_comment``) for MCP streams, whose clients expect nothing but messages.
        """
        key = LogKey(live.key)
        stream = LogStream(StoreLog(self.store, key), out, self.pinger, control=control)
        previous = live.stream
        delivered = live.record.delivered_seq
        if previous is not None:
            previous.close("superseded", drain=not exclusive)
            delivered = max(delivered, previous.sent_seq)
        live.stream = stream
        if self.draining is not None and live.running == 0:
            # Opened during shutdown with nothing in flight: replay, then goodbye at once.
            stream.close(self.draining)
        head = encode_retry(self.config.retry_ms) + preamble
        try:
            start = delivered if resume_after is None else resume_after
            last = await self.store.last_seq(key)
            if start > last:
                # An id we never issued for this session (e.g. from before a restart).
                head += control(
                    "error",
                    error="replay_gone",
                    detail=f"event {start} is not known to this session",
                    requested=str(start),
                    oldest=str(last + 1),
                )
                start = delivered
            await stream.run(start, head=head)
        finally:
            if live.stream is stream:
                live.stream = None
                live.record.touch(trio.current_time())
            if stream.sent_seq > live.record.delivered_seq:
                live.record.delivered_seq = stream.sent_seq
                with trio.CancelScope(shield=True), trio.move_on_after(1):
                    await self.store.mark_delivered(live.key, stream.sent_seq)

    async def stream_request_log(
        self, live: LiveSession, key: LogKey, out: BodyStream, *, after: int, head: bytes
    ) -> None:
        """Write a request stream (a POST's SSE reply, or a GET resuming it) until its reply."""
        reader = LogStream(
            StoreLog(self.store, key), out, self.pinger, control=control_comment, ends_with_log=True
        )
        previous = live.request_streams.get(key.stream)
        if previous is not None:
            previous.close("superseded")
        live.request_streams[key.stream] = reader
        if live.ended:
            reader.close("session_ended")
        try:
            await reader.run(after, head=head)
        finally:
            if live.request_streams.get(key.stream) is reader:
                del live.request_streams[key.stream]

    def close_all_streams(self, reason: str) -> None:
        """Ask every attached stream to finish (used at shutdown).

        A stream whose session has calls in flight is left open until the last of them ends
        (``_run_task``), so their results still reach the client; the caller bounds how long
        that may take (the HTTP server cancels every connection after ``shutdown_grace_s``).
        """
        self.draining = reason
        for live in self._live.values():
            if live.stream is not None and live.running == 0:
                live.stream.close(reason)
