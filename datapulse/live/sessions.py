"""SessionManager: the live side of sessions (lifecycle, limits, expiry, tool tasks).

Ownership, from the top:
* Records, protocol state and every event log live in the ``SessionStore``; this process holds
  only what is live here, one ``LiveSession`` per session (``live.registry``).
* ``SessionManager`` is the one object the server and the transports are given. It owns the
  lifecycle: creating (with the limits), touching, expiring and closing sessions, and their tool
  tasks. Its parts, each owned by the manager and built in its ``__init__``:
  - ``registry`` (``live.registry.SessionRegistry``): the live sessions by key and by (owner,
    id), the per-principal counts, ``lookup``;
  - ``streams`` (``live.streams.SessionStreams``): attaching SSE bodies to logs, ``publish`` /
    ``push``, the shutdown drain;
  - ``pinger`` (``live.pinger.Pinger``): the keep-alive timer, run in the manager's nursery.
  The manager's methods of the same names delegate to them, so callers keep one interface.
* ``SessionManager.run`` owns a nursery. A session gets one task there (``_session_task``,
  started with its first tool call) whose own nursery runs that session's tool calls, so a tool
  outlives the HTTP request that started it (a ``/message`` POST answers 202 at once) but not its
  session: expiring or deleting a session cancels its scope and with it every call still running.
* Limits: ``max_sessions`` in all (503) and ``max_sessions_per_principal`` per owner (429), both
  checked when a session is created.
* Shutdown drains (``close_all_streams``): a session still running calls keeps its stream until
  the last one ends (``_run_task`` tells ``streams.calls_done``).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import trio

from datapulse.config import Config
from datapulse.core.eventlog import LoggedEvent
from datapulse.core.session import SessionRecord, namespaced_key, new_session_id
from datapulse.errors import ServiceUnavailable, SessionNotFound, TooManyRequests
from datapulse.live.pinger import Pinger
from datapulse.live.registry import LiveSession, SessionRegistry, Task
from datapulse.live.streams import SessionStreams
from datapulse.metrics import Metrics
from datapulse.net.http import BodyStream
from datapulse.store.base import LogKey, SessionExists, SessionStore

__all__ = ["LiveSession", "SessionManager", "Task"]

log = logging.getLogger("datapulse.sessions")


class SessionManager:
    def __init__(self, config: Config, store: SessionStore, metrics: Metrics | None = None) -> None:
        self.config = config
        self.store = store
        self.metrics = metrics = metrics if metrics is not None else Metrics()
        self.registry = SessionRegistry()
        metrics.count_sessions(lambda: len(self.registry))
        self._nursery: trio.Nursery | None = None
        self._task_done: dict[str, trio.Event] = {}
        self._cap_warned: dict[str, float] = {}
        self.on_close: list[Callable[[LiveSession, str], None]] = []
        # A shared store (one with watch(): several instances) keeps wall-clock times, the one
        # clock every instance agrees on; in one process, Trio's clock (tests can jump it).
        self.shared = getattr(store, "watch", None) is not None
        self.clock: Callable[[], float] = time.time if self.shared else trio.current_time
        self.pinger = Pinger(config.ping_interval_s, metrics.pings)
        self.streams = SessionStreams(config, store, self.registry, self.pinger, metrics)
        self.streams.clock = self.clock
        self.streams.on_ended_elsewhere = lambda live: self._end_locally(live, "session_ended")
        # The stream entry point itself, not a method that awaits it: every idle stream would
        # hold that extra coroutine frame (~250 bytes) for as long as it is open.
        self.stream_session = self.streams.stream_session

    @property
    def draining(self) -> str | None:
        """Set by ``close_all_streams``: the reason streams are told once their calls are done."""
        return self.streams.draining

    def __len__(self) -> int:
        return len(self.registry)

    def live_sessions(self) -> list[LiveSession]:
        return self.registry.sessions()

    def lookup(self, session_id: str, principal: str | None = None) -> LiveSession | None:
        """The live session with this id, for the host program (``SessionRegistry.lookup``)."""
        return self.registry.lookup(session_id, principal)

    def owned_by(self, owner: str) -> int:
        """How many live sessions ``owner`` holds (what ``max_sessions_per_principal`` counts)."""
        return self.registry.owned_by(owner)

    @property
    def owned_total(self) -> int:
        """The per-principal session counts summed (equals ``len(self)`` unless they leak)."""
        return self.registry.owned_total

    # -- lifecycle ---------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own every session's task and sweep expired sessions until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self.pinger.run)
            watch = getattr(self.store, "watch", None)
            if watch is not None:  # a shared store: appends by other instances wake our streams
                nursery.start_soon(self._follow, watch)
            task_status.started()
            try:
                while True:
                    await trio.sleep(self.config.sweep_interval_s)
                    await self.sweep()
            finally:
                self._nursery = None
                for live in self.registry.sessions():
                    self._end_locally(live, "shutdown")

    async def _follow(self, watch: Any) -> None:
        """``streams.follow`` for as long as we run: a store that goes away (Redis restarting)
        ends the subscription, which is taken again rather than taking the server down."""
        while True:
            try:
                await self.streams.follow(watch)
            except Exception as exc:
                log.warning("wake-ups from other instances paused: %s", exc)
            await trio.sleep(1)

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
        if len(self.registry) >= self.config.max_sessions:
            self.metrics.rejected("sessions")
            self._warn_cap("--max-sessions", f"{self.config.max_sessions} sessions in all")
            raise ServiceUnavailable(
                f"session limit reached ({self.config.max_sessions})", retry_after_s=5
            )
        owned = self.registry.owned_by(owner)
        if owned >= self.config.max_sessions_per_principal:
            self.metrics.rejected("sessions_per_principal")
            self._warn_cap(
                "--max-sessions-per-principal",
                f"principal {owner} holds {owned} sessions (with one shared token, every"
                " client is one principal)",
            )
            raise TooManyRequests(
                f"session limit per principal reached ({self.config.max_sessions_per_principal});"
                " close or let expire an older session",
                retry_after_s=5,
            )

    async def _admit_shared(self, owner: str, now: float) -> None:
        """The limits across every instance sharing the store (``admit`` counts this one's):
        checked before creating, so instances racing for the last slot may overshoot by the
        number of creates in flight at once; never by more."""
        cfg = self.config
        if await self.store.count() >= cfg.max_sessions:
            self.metrics.rejected("sessions")
            self._warn_cap("--max-sessions", f"{cfg.max_sessions} sessions on all instances")
            raise ServiceUnavailable(f"session limit reached ({cfg.max_sessions})", retry_after_s=5)
        owned = await self.store.count_owned(owner, now)
        if owned >= cfg.max_sessions_per_principal:
            self.metrics.rejected("sessions_per_principal")
            self._warn_cap(
                "--max-sessions-per-principal",
                f"principal {owner} holds {owned} sessions on all instances",
            )
            raise TooManyRequests(
                f"session limit per principal reached ({cfg.max_sessions_per_principal});"
                " close or let expire an older session",
                retry_after_s=5,
            )

    def _warn_cap(self, setting: str, what: str) -> None:
        """Say once a minute per setting that a cap refuses sessions: an operator whose one-token
        or one-proxy deployment outgrew a default must learn it from the log, not from users."""
        now = trio.current_time()
        if now - self._cap_warned.get(setting, -math.inf) >= 60:
            self._cap_warned[setting] = now
            log.warning("refusing new sessions: %s; raise %s if that is expected", what, setting)

    async def create(self, owner: str, kind: str, session_id: str | None = None) -> LiveSession:
        """A new session of ``owner``. ``session_id`` is a client-chosen id: a name in the
        owner's namespace (stored under ``namespaced_key``); without it the server picks one."""
        self.admit(owner)
        now = self.clock()
        if self.shared:
            await self._admit_shared(owner, now)
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
        self.registry.reserve(owner)
        try:
            await self.store.create(record)
        except BaseException:
            self.registry.release(owner)
            raise
        live = LiveSession(record)
        self.registry.add(live)
        log.info("session %s created (%s)", live.id, kind)
        return live

    async def get(self, session_id: str, owner: str, kind: str | None = None) -> LiveSession:
        """``owner``'s session ``session_id``, touched; SessionNotFound if absent or expired.

        Sessions are looked up in the owner's namespace: another principal's session is not
        even there, so it answers exactly like a missing one and ids cannot be probed.
        """
        live = self.registry.find(session_id, owner)
        if live is None:
            live = await self._adopt(session_id, owner)
        now = self.clock()
        if live is None or (kind and live.record.kind != kind):
            raise SessionNotFound(f"unknown or expired session: {session_id}")
        if live.record.is_expired(now) and live.stream is None:
            await self.close(live, "session_expired")
            raise SessionNotFound(f"unknown or expired session: {session_id}")
        live.record.touch(now)
        await self.store.touch(live.key, now)
        return live

    async def _adopt(self, session_id: str, owner: str) -> LiveSession | None:
        """A session this process does not hold but the (shared) store does: created by another
        instance, or by this one before a restart. It becomes live here too, from its record;
        its protocol state is loaded by the transport that needs it. With the memory store
        every session is live in this process already, so this finds nothing."""
        for key, chosen in ((namespaced_key(owner, session_id), True), (session_id, False)):
            record = await self.store.get(key)
            if record is None or record.owner != owner or (record.name is not None) != chosen:
                continue
            if self.registry.get(key) is not None:  # adopted meanwhile by a concurrent request
                return self.registry.get(key)
            if not self.shared:  # a record from before a restart: its times were another clock's
                record.created_at = record.last_active = self.clock()
            self.registry.reserve(owner)
            live = LiveSession(record)
            self.registry.add(live)
            log.info("session %s adopted from the store (%s)", live.id, record.kind)
            return live
        return None

    async def get_or_create(self, session_id: str, owner: str, kind: str) -> LiveSession:
        """``owner``'s session named ``session_id`` (a client-chosen id), opened on first use.
        Whether another principal uses the same name makes no difference to either of them."""
        if self.registry.find(session_id, owner) is not None:
            return await self.get(session_id, owner, kind)
        try:
            return await self.create(owner, kind, session_id)
        except SessionExists:
            # Another instance sharing the store opened it first: it is ours to adopt.
            return await self.get(session_id, owner, kind)

    async def close(self, live: LiveSession, reason: str) -> None:
        """End a session: its streams are told why, its tool calls are cancelled, records go."""
        if self.registry.holds(live):
            self._end_locally(live, reason)
            await self.store.delete(live.key)
            log.info("session %s closed (%s)", live.id, reason)

    def _end_locally(self, live: LiveSession, reason: str) -> None:
        self.registry.remove(live)
        live.ended = True
        self.streams.close_session_streams(live, reason)
        done = self._task_done.get(live.key)
        if done is not None:
            done.set()
        if live._cancel_scope is not None:
            live._cancel_scope.cancel()
        for callback in self.on_close:
            callback(live, reason)

    async def sweep(self) -> int:
        """Close expired sessions; a session with an attached stream is alive by definition."""
        now = self.clock()
        count = 0
        for live in self.registry.sessions():
            try:
                if live.stream is not None:
                    live.record.touch(now)
                    if self.shared:  # its keys must not expire under a long-idle stream
                        await self.store.touch(live.key, now)
                elif live.record.is_expired(now):
                    if self.shared and await self._fresher_elsewhere(live, now):
                        continue
                    await self.close(live, "session_expired")
                    count += 1
            except ServiceUnavailable as exc:
                # The store is down (Redis restarting): try again at the next sweep; its own
                # TTLs clean up meanwhile. A sweep must never take the server down.
                log.warning("sweep: %s", exc.detail or exc)
                break
        return count

    async def _fresher_elsewhere(self, live: LiveSession, now: float) -> bool:
        """On a shared store another instance may have kept the session alive (its stream is
        there): the store's record is the truth; only a session expired there is ended."""
        record = await self.store.get(live.key)
        if record is None or record.is_expired(now):
            return False
        live.record.last_active = record.last_active
        return True

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
            self.streams.calls_done(live)

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

    # -- events and streams: delegated to ``self.streams`` (``live.streams``) -------------------

    async def publish(self, live: LiveSession, data: Any, event: str | None = None) -> LoggedEvent:
        """Append an event to the session's log and offer it to its stream (never waits)."""
        return await self.streams.publish(live, data, event)

    async def open_request_log(self, live: LiveSession) -> LogKey:
        return await self.streams.open_request_log(live)

    async def push(self, live: LiveSession, key: LogKey, data: bytes) -> None:
        """Append one message to a request stream's log and offer it to its reader."""
        await self.streams.push(live, key, data)

    async def finish_request_log(self, live: LiveSession, key: LogKey) -> None:
        """The request is done: its stream ends once a reader has written everything."""
        await self.streams.finish_request_log(live, key)

    async def stream_request_log(
        self, live: LiveSession, key: LogKey, out: BodyStream, *, after: int, head: bytes
    ) -> None:
        """Write a request stream (a POST's SSE reply, or a GET resuming it) until its reply."""
        await self.streams.stream_request_log(live, key, out, after=after, head=head)

    def close_all_streams(self, reason: str) -> None:
        """Ask every attached stream to finish (used at shutdown; ``SessionStreams``)."""
        self.streams.close_all_streams(reason)
