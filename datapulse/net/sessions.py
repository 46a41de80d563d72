"""SessionManager: the live side of sessions (channels, attached streams, tool tasks, expiry).

Ownership, from the top:
* ``SessionManager.run`` owns a nursery. A session gets one task there (``_session_task``, started
  with its first tool call)
  whose own nursery runs that session's tool calls, so a tool outlives the HTTP request that
  started it (a ``/message`` POST answers 202 at once) but not its session: expiring or deleting
  a session cancels its scope and with it every call still running.
* Records and event logs live in the ``SessionStore``. Every event is appended to the log first;
  the log is the truth and the channel is only the fast path to a live stream.
* A stream (GET) *attaches* to a session and gets a fresh bounded memory channel. Publishing
  never waits on it: ``send_nowait``, and when the channel is full the stream is flagged
  ``overflowed`` and catches up from the log itself (see ``net.streaming``). So a producer is
  never blocked by anybody's slow socket, and memory per session is bounded by configuration.
* At most one stream per session: a second GET supersedes the first, whose channel is closed
  with a reason so it can say goodbye (``event: close``) before ending.
* Limits: ``max_sessions`` in all (503) and ``max_sessions_per_principal`` per owner (429), both
  checked when a session is created.
* Shutdown drains: ``close_all_streams`` closes at once the streams of sessions with no call in
  flight; a session that is still running calls keeps its stream until the last one ends, so
  results finished within the grace period are delivered before ``event: close``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import trio

from datapulse.config import Config
from datapulse.core.eventlog import LoggedEvent
from datapulse.core.session import SessionRecord, new_session_id
from datapulse.errors import ServiceUnavailable, SessionNotFound, TooManyRequests
from datapulse.net.pinger import PING_DUE, Pinger
from datapulse.store import SessionStore

log = logging.getLogger("datapulse.sessions")


@dataclass(eq=False)
class Attachment:
    """One stream's hold on its session: the receive side of the session's current channel."""

    send: trio.MemorySendChannel[LoggedEvent]
    receive: trio.MemoryReceiveChannel[LoggedEvent]
    overflowed: bool = False
    close_reason: str | None = None
    sent_seq: int = 0

    ping_now: Callable[[], bool] | None = None
    """Set by the stream: write a ping at once if the socket takes it (True), without waking
    the stream's task."""

    def ping_due(self) -> None:
        """Called by the Pinger: write a keep-alive now if possible, else ask the stream's task
        to (skipped when its channel is full: a busy stream is not idle)."""
        if self.ping_now is not None and self.ping_now():
            return
        try:  # noqa: SIM105 - try/except is cheaper than suppress() on this hot path
            self.send.send_nowait(PING_DUE)
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            pass


@dataclass(eq=False)
class LiveSession:
    record: SessionRecord
    attachment: Attachment | None = None
    nursery: trio.Nursery | None = None
    cancel_scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    closed: trio.Event = field(default_factory=trio.Event)
    state: dict[str, Any] = field(default_factory=dict)
    """Transport-specific state (e.g. the MCP protocol session) keyed by transport."""
    running: int = 0
    """Tasks started by ``SessionManager.spawn`` that have not finished (tool calls in flight)."""
    pending: list[tuple[Callable[..., Awaitable[Any]], tuple[Any, ...]]] = field(
        default_factory=list
    )
    """Spawned before the session's task was running; it starts them first."""
    task_started: bool = False

    @property
    def id(self) -> str:
        return self.record.id


class SessionManager:
    def __init__(self, config: Config, store: SessionStore) -> None:
        self.config = config
        self.store = store
        self._live: dict[str, LiveSession] = {}
        self._owned: dict[str, int] = {}
        self._nursery: trio.Nursery | None = None
        self.on_close: list[Callable[[LiveSession, str], None]] = []
        self.draining: str | None = None
        """Set by ``close_all_streams``: the reason streams are told once their calls are done."""
        self.pinger = Pinger(config.ping_interval_s)

    def __len__(self) -> int:
        return len(self._live)

    def live_sessions(self) -> list[LiveSession]:
        return list(self._live.values())

    def lookup(self, session_id: str) -> LiveSession | None:
        """The live session with this id, whoever owns it (for the host program, not clients)."""
        return self._live.get(session_id)

    def owned_by(self, owner: str) -> int:
        """How many live sessions ``owner`` holds (what ``max_sessions_per_principal`` counts)."""
        return self._owned.get(owner, 0)

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
        with live.cancel_scope:
            async with trio.open_nursery() as nursery:
                live.nursery = nursery
                for fn, args in live.pending:
                    nursery.start_soon(self._run_task, live, fn, args)
                live.pending.clear()
                await live.closed.wait()
                nursery.cancel_scope.cancel()
        live.nursery = None

    async def create(self, owner: str, kind: str, session_id: str | None = None) -> LiveSession:
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
        now = trio.current_time()
        record = SessionRecord(
            id=session_id or new_session_id(),
            owner=owner,
            kind=kind,
            created_at=now,
            last_active=now,
            ttl_s=self.config.session_ttl_s,
        )
        # Counted before the first await, so concurrent creates cannot both squeeze past the limit.
        self._owned[owner] = owned + 1
        try:
            await self.store.create(record)
        except BaseException:
            self._release(owner)
            raise
        live = LiveSession(record)
        self._live[record.id] = live
        log.info("session %s created (%s)", record.id, kind)
        return live

    async def get(self, session_id: str, owner: str, kind: str | None = None) -> LiveSession:
        """The live session, touched; SessionNotFound if absent, expired, or someone else's.

        Another principal's session answers exactly like a missing one, so ids cannot be probed.
        """
        live = self._live.get(session_id)
        now = trio.current_time()
        if live is None or live.record.owner != owner or (kind and live.record.kind != kind):
            raise SessionNotFound(f"unknown or expired session: {session_id}")
        if live.record.is_expired(now) and live.attachment is None:
            await self.close(live, "session_expired")
            raise SessionNotFound(f"unknown or expired session: {session_id}")
        await self.store.touch(session_id, now)
        return live

    async def get_or_create(self, session_id: str, owner: str, kind: str) -> LiveSession:
        if session_id in self._live:
            return await self.get(session_id, owner, kind)
        return await self.create(owner, kind, session_id)

    async def close(self, live: LiveSession, reason: str) -> None:
        """End a session: its stream is told why, its tool calls are cancelled, records go."""
        if self._live.get(live.id) is live:
            self._end_locally(live, reason)
            await self.store.delete(live.id)
            log.info("session %s closed (%s)", live.id, reason)

    def _release(self, owner: str) -> None:
        left = self._owned.get(owner, 0) - 1
        if left > 0:
            self._owned[owner] = left
        else:
            self._owned.pop(owner, None)

    def _end_locally(self, live: LiveSession, reason: str) -> None:
        if self._live.pop(live.id, None) is live:
            self._release(live.record.owner)
        if live.attachment is not None:
            self._close_attachment(live.attachment, reason)
        live.closed.set()
        live.cancel_scope.cancel()
        for callback in self.on_close:
            callback(live, reason)

    async def sweep(self) -> int:
        """Close expired sessions; a session with an attached stream is alive by definition."""
        now = trio.current_time()
        count = 0
        for live in list(self._live.values()):
            if live.attachment is not None:
                live.record.touch(now)
            elif live.record.is_expired(now):
                await self.close(live, "session_expired")
                count += 1
        return count

    # -- tools ---------------------------------------------------------------------------------

    def spawn(self, live: LiveSession, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run ``fn(*args)`` as one of the session's tasks (cancelled when the session ends)."""
        if live.closed.is_set() or self._nursery is None:
            raise SessionNotFound(f"session {live.id} has ended")
        # Counted here, not in the task, so a shutdown between now and the task's first step
        # still sees the call as in flight.
        live.running += 1
        if live.nursery is not None:
            live.nursery.start_soon(self._run_task, live, fn, args)
            return
        live.pending.append((fn, args))
        if not live.task_started:
            live.task_started = True
            self._nursery.start_soon(self._session_task, live)

    async def _run_task(
        self, live: LiveSession, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...]
    ) -> None:
        try:
            await fn(*args)
        except SessionNotFound:
            pass  # the session ended while the call ran; there is nobody left to tell
        except Exception:
            # A session task must never take the session manager (and the server) down with it.
            log.exception("task in session %s failed", live.id)
        finally:
            live.running -= 1
            if live.running == 0 and self.draining is not None and live.attachment is not None:
                # The last call of a draining session is done (its result is in the channel,
                # ahead of the end-of-channel): now the stream may say goodbye.
                self._close_attachment(live.attachment, self.draining)

    # -- events --------------------------------------------------------------------------------

    async def publish(self, live: LiveSession, data: Any, event: str | None = None) -> LoggedEvent:
        """Append an event to the session's log and hand it to its stream without waiting.

        ``data`` is JSON-encoded unless it is already a ``str``. Never blocks on a client.
        """
        if self._live.get(live.id) is not live:
            raise SessionNotFound(f"session {live.id} has ended")
        text = data if isinstance(data, str) else orjson.dumps(data).decode()
        logged = await self.store.append(live.id, text, event)
        attachment = live.attachment
        if attachment is not None and not attachment.overflowed:
            try:
                attachment.send.send_nowait(logged)
            except trio.WouldBlock:
                # The stream is behind by a whole channel; it will catch up from the log.
                attachment.overflowed = True
            except trio.BrokenResourceError:
                pass
        return logged

    def attach(self, live: LiveSession) -> Attachment:
        """Give ``live`` a new stream, superseding the one it had."""
        if live.attachment is not None:
            self._close_attachment(live.attachment, "superseded")
        send, receive = trio.open_memory_channel[LoggedEvent](self.config.stream_queue_events)
        live.attachment = Attachment(send, receive)
        if self.draining is not None and live.running == 0:
            # Opened during shutdown with nothing in flight: replay, then goodbye at once.
            self._close_attachment(live.attachment, self.draining)
        return live.attachment

    def detach(self, live: LiveSession, attachment: Attachment) -> None:
        self.pinger.forget(attachment)
        if live.attachment is attachment:
            live.attachment = None
            live.record.touch(trio.current_time())
        attachment.send.close()
        attachment.receive.close()

    @staticmethod
    def _close_attachment(attachment: Attachment, reason: str) -> None:
        if attachment.close_reason is None:
            attachment.close_reason = reason
        attachment.send.close()

    def close_all_streams(self, reason: str) -> None:
        """Ask every attached stream to finish (used at shutdown).

        A stream whose session has calls in flight is left open until the last of them ends
        (``_run_task``), so their results still reach the client; the caller bounds how long
        that may take (the HTTP server cancels every connection after ``shutdown_grace_s``).
        """
        self.draining = reason
        for live in self._live.values():
            if live.attachment is not None and live.running == 0:
                self._close_attachment(live.attachment, reason)
