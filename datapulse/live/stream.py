"""Writing one event log to one SSE response: the body of every SSE stream.

Every stream datapulse serves is a reader of a log: ``/events``, ``/sse`` and GET ``/mcp`` read
their session's own log, a ``/mcp`` POST stream (or a GET resuming it) reads its request's log.
A ``LogStream`` sends what the log holds after the client's position, then stays attached: the
task that appends an event hands it over with ``offer``, the shared Pinger asks for keep-alives
with ``ping_due``, and the session manager ends it with ``close``. None of those wait.

One task per stream. That task spends an idle stream's life in ``out.wait()``, which reads the
socket: a client that leaves is an event there (EOF), not a second task's cancellation. Writes:
* fast path, from whichever task has the event: ``offer`` writes it at once with
  ``out.try_write`` when it is exactly the next event (seq ``sent_seq + 1``), the stream's task
  is parked (so nothing of ours is being written: no replay, no catch-up), and the socket takes
  it without waiting. That is almost every event, and it costs no task switch at all;
* slow path, in the stream's own task: otherwise the stream is marked *behind* and woken; it then
  reads the log from ``sent_seq`` a page at a time (``CATCH_UP_PAGE``, with a checkpoint per page)
  and writes with ``await out.write``, bounded by ``write_timeout_s``.
The log is the truth and the fast path only a shortcut, so nothing is ever queued per stream:
whatever was not written at once is read back from the log. ``sent_seq`` makes each event go
out once, whichever path carries it.

How it ends:
* the client disconnects -> ``out.wait()`` says so and we return (nothing more to write);
* ``close(reason)`` -> what the log still holds for us, then ``event: close`` with the reason
  (``superseded`` by a newer stream, ``session_expired``, ``session_deleted``, ``shutdown``);
  ``close(reason, drain=False)`` (a newer stream takes over an exclusive one) -> no more events,
  even mid-page, only the goodbye: the newer stream sends the rest;
* a request stream (``ends_with_log``): once its log is closed and all of it was written;
* the stream fell so far behind that the log no longer holds what it has not sent ->
  ``event: error`` with ``stream_lagging``; the client may reconnect with Last-Event-ID and is
  told exactly what is gone (``replay_gone``).

Control events (close/error) carry no ``id`` on purpose: the client's Last-Event-ID must keep
pointing at the last *data* event so a reconnect resumes in the right place.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

import orjson
import trio

from datapulse.core.eventlog import LoggedEvent, ReplayGone, ReplayLog
from datapulse.core.sse import PING, encode_comment, encode_data
from datapulse.live.pinger import Pinger
from datapulse.metrics import StreamMetrics
from datapulse.net.http import BodyStream
from datapulse.store.base import LogKey, LogRead, SessionStore, UnknownLog

log = logging.getLogger("datapulse.stream")

SSE_HEADERS = [
    ("Content-Type", "text/event-stream"),
    ("Cache-Control", "no-cache"),
    # nginx and similar proxies buffer responses unless told not to; SSE must not be buffered.
    ("X-Accel-Buffering", "no"),
]

CATCH_UP_PAGE = 64
"""Events fetched from the log per round while replaying or catching up."""

Control = Callable[..., bytes]


def control_event(event: str, **fields: object) -> bytes:
    return encode_data(orjson.dumps(fields).decode(), event=event)


def control_comment(event: str, **fields: object) -> bytes:
    """The same notice as an SSE comment, for MCP streams whose clients expect only messages."""
    return encode_comment(f"{event} {orjson.dumps(fields).decode()}")


class LogSource(Protocol):
    async def read(self, after: int, limit: int) -> LogRead: ...


class StoreLog:
    """A log held by the session store."""

    __slots__ = ("key", "store")

    def __init__(self, store: SessionStore, key: LogKey) -> None:
        self.store = store
        self.key = key

    async def read(self, after: int, limit: int) -> LogRead:
        return await self.store.read(self.key, after, limit)


class LocalLog:
    """A log held by this process only: a 2026-07-28 request's stream, which has no session
    and cannot be resumed, so there is nothing to share."""

    def __init__(self, max_events: int, max_bytes: int) -> None:
        self.log = ReplayLog(max_events, max_bytes)
        self.closed = False
        self.reader: LogStream | None = None

    def append(self, data: str) -> None:
        logged = self.log.append(data)
        if self.reader is not None:
            self.reader.offer(logged)

    def close(self) -> None:
        self.closed = True
        if self.reader is not None:
            self.reader.log_changed()

    async def read(self, after: int, limit: int) -> LogRead:
        await trio.lowlevel.checkpoint()
        return LogRead(self.log.events_after(after)[:limit], self.log.last_seq, self.closed)


class _Lagging(Exception):
    pass


class LogStream:
    """One log read out to one SSE response (see the module docstring)."""

    __slots__ = (
        "_behind",
        "_bytes",
        "_control",
        "_drain",
        "_ends_with_log",
        "_events",
        "_metrics",
        "_parked",
        "_ping_wanted",
        "_pinger",
        "_resuming",
        "_source",
        "close_reason",
        "out",
        "sent_seq",
    )

    def __init__(
        self,
        source: LogSource,
        out: BodyStream,
        pinger: Pinger,
        *,
        control: Control = control_event,
        ends_with_log: bool = False,
        metrics: StreamMetrics | None = None,
    ) -> None:
        self._source = source
        self._metrics = metrics = metrics or StreamMetrics()
        # The two children every event touches, one attribute away.
        self._events = metrics.events
        self._bytes = metrics.bytes
        self.out = out
        self._pinger = pinger
        self._control = control
        self._ends_with_log = ends_with_log
        self.sent_seq = 0
        """The newest event of the log this stream has written."""
        self.close_reason: str | None = None
        self._drain = True  # on close: write what the log still holds first
        self._behind = False  # an event was not written at once: read the log in our task
        self._ping_wanted = False
        self._resuming = False  # the first read answers a Last-Event-ID (a replay hit or gone)
        # The stream's task waits in out.wait() with everything written: only then may another
        # task write to the body directly (it would otherwise overtake a replay or a catch-up).
        self._parked = False

    # -- called by other tasks; none of these waits ----------------------------------------

    def offer(self, event: LoggedEvent) -> None:
        """``event`` was just appended to our log: write it now if we can, else catch up."""
        if event.seq <= self.sent_seq:
            return
        if (
            self._parked
            and not self._behind
            and self.close_reason is None
            and event.seq == self.sent_seq + 1
            and self.out.try_write(event.wire)
        ):
            self.sent_seq = event.seq
            self._events.inc()
            self._bytes.inc(len(event.wire))
            self._pinger.touch(self)
            if self.out.needs_flush:
                self.out.wake()
            return
        self._behind = True
        self.out.wake()

    def log_changed(self) -> None:
        """Something about the log changed that ``offer`` does not carry (it was closed)."""
        self._behind = True
        self.out.wake()

    def ping_due(self) -> None:
        """The Pinger's call: we have been idle for an interval."""
        if self._parked and self.out.try_write(PING):
            if self.out.needs_flush:
                self.out.wake()
            return
        self._ping_wanted = True
        self.out.wake()

    def close(self, reason: str, *, drain: bool = True) -> None:
        """Finish: write what the log still holds for us (unless not ``drain``: then stop where
        we are; ``sent_seq`` moves no further), then say goodbye with ``reason``."""
        if self.close_reason is None:
            self.close_reason = reason
        if not drain:
            self._drain = False
        self.out.wake()

    # -- the stream's own task ---------------------------------------------------------------

    async def _write(self, data: bytes) -> None:
        await self.out.write(data)
        self._pinger.touch(self)  # idle again from now: the next ping is due one interval on

    async def run(
        self, after: int, *, head: bytes = b"", tolerate_gap: bool = True, resumed: bool = False
    ) -> None:
        """Write ``head``, then the log after seq ``after``, then stay attached until the end.

        A gap at the start (events after ``after`` evicted) is reported as ``replay_gone`` when
        ``tolerate_gap``; a gap that opens later (we fell behind the log's bounds) ends a session
        stream as lagging, while a request stream (``ends_with_log``) reports it and goes on,
        because its reply is the newest event and a log always keeps its newest.

        ``resumed``: ``after`` came from the client (Last-Event-ID), so the first read counts as
        a replay hit unless the log had lost some of it (counted as gone when reported).
        """
        self.sent_seq = after
        metrics = self._metrics
        metrics.open.inc()
        try:
            self._pinger.touch(self)
            if head:
                await self._write(head)
            self._resuming = resumed
            if await self._catch_up(tolerate_gap=tolerate_gap):
                return
            while True:
                if self.close_reason is not None:
                    if self._behind and self._drain:
                        self._behind = False
                        await self._catch_up(tolerate_gap=self._ends_with_log)
                    await self._write(self._control("close", reason=self.close_reason))
                    return
                self._parked = True
                try:
                    if not await self.out.wait():
                        return  # the client has gone
                finally:
                    self._parked = False
                if self.out.needs_flush:
                    await self.out.write(b"")
                if self._behind:
                    self._behind = False
                    before = self.sent_seq
                    done = await self._catch_up(tolerate_gap=self._ends_with_log)
                    metrics.backlog.observe(self.sent_seq - before)
                    if done:
                        return
                if self._ping_wanted:
                    self._ping_wanted = False
                    await self._write(PING)
        except _Lagging:
            log.info("stream fell too far behind its log; closing")
            await self._write(
                self._control(
                    "error",
                    error="stream_lagging",
                    detail="the stream fell behind further than the replay buffer holds",
                )
            )
        finally:
            metrics.open.dec()
            self._pinger.forget(self)

    async def _read(self, *, tolerate_gap: bool) -> LogRead:
        try:
            page = await self._source.read(self.sent_seq, CATCH_UP_PAGE)
        except UnknownLog:
            # The log went with its session (or was dropped as too old): nothing more to read.
            return LogRead([], self.sent_seq, closed=True)
        except ReplayGone as gone:
            if not tolerate_gap:
                raise _Lagging from None
            self._resuming = False
            self._metrics.gone.inc()
            await self._write(
                self._control(
                    "error",
                    error="replay_gone",
                    detail=str(gone),
                    requested=str(gone.requested),
                    oldest=str(gone.oldest),
                )
            )
            self.sent_seq = gone.oldest - 1
            return await self._source.read(self.sent_seq, CATCH_UP_PAGE)
        if self._resuming:
            self._resuming = False
            self._metrics.hit.inc()
        return page

    async def _catch_up(self, *, tolerate_gap: bool) -> bool:
        """Write what the log holds after ``sent_seq``, a page at a time. True when the stream
        is complete (a request stream whose closed log was written in full)."""
        while True:
            page = await self._read(tolerate_gap=tolerate_gap)
            for event in page.events:
                if not self._drain:
                    return False  # taken over: the newer stream sends the rest
                await self._write(event.wire)
                self.sent_seq = event.seq
                self._events.inc()
                self._bytes.inc(len(event.wire))
            if len(page.events) < CATCH_UP_PAGE:
                return self._ends_with_log and page.closed and self.sent_seq >= page.last_seq
            # A long backlog: let other tasks run between pages (its writes may all be fast).
            await trio.lowlevel.checkpoint()
