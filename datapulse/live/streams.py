"""SessionStreams: attaching SSE bodies to session logs, and handing events to them.

Split out of ``live.sessions`` so the event path can be read without the session lifecycle: the
``SessionManager`` creates and ends sessions and runs their calls; this module owns everything
between a log and the sockets reading it. The manager keeps its public methods (``publish``,
``push``, ``stream_session``...) and delegates here, so transports see one object.

* Every event is appended to its log first; the log is the truth. ``publish`` then *offers* the
  event to the stream attached to that log, which writes it at once if its socket takes it or
  catches up from the log in its own task (``live.stream``). A producer never waits on anybody's
  socket, and nothing is queued per stream: memory per session is the log's bound.
* At most one stream per log: a second GET supersedes the first, which says goodbye
  (``event: close`` ``superseded``) before ending. By default the old one first writes what the
  log still holds for it; an ``exclusive`` stream (GET ``/mcp``) stops where it is instead, so
  no message goes out on both.
* Shutdown drains: ``close_all_streams`` closes at once the streams of sessions with no call in
  flight; a session that is still running calls keeps its stream until the last one ends
  (``calls_done``, called by the manager), so results finished within the grace period are
  delivered before ``event: close``.

* One INFO line per closed stream on ``datapulse.stream``: session id, duration, events
  written, body bytes and why it closed (``superseded``, ``shutdown``..., or ``client_gone``
  when it ended without being told). Nothing is counted while that logger is disabled.

Needs of the manager only its registry (``holds``: is this session still live here); it never
imports ``live.sessions``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import trio

from datapulse.config import Config
from datapulse.core.eventlog import LoggedEvent
from datapulse.core.sse import encode_retry
from datapulse.errors import SessionNotFound
from datapulse.live.pinger import Pinger
from datapulse.live.registry import LiveSession, SessionRegistry
from datapulse.live.stream import Control, LogStream, StoreLog, control_comment, control_event
from datapulse.metrics import Metrics, StreamMetrics
from datapulse.net.http import BodyStream
from datapulse.store.base import LogKey, SessionStore, UnknownLog

log = logging.getLogger("datapulse.stream")


class _Counted:
    """A ``BodyStream`` that counts what was written through it (for the closing line)."""

    __slots__ = ("_out", "sent")

    def __init__(self, out: BodyStream) -> None:
        self._out = out
        self.sent = 0

    async def write(self, chunk: bytes) -> None:
        await self._out.write(chunk)
        self.sent += len(chunk)

    def try_write(self, chunk: bytes) -> bool:
        written = self._out.try_write(chunk)
        if written:
            self.sent += len(chunk)
        return written

    @property
    def needs_flush(self) -> bool:
        return self._out.needs_flush

    def wake(self) -> None:
        self._out.wake()

    async def wait(self) -> bool:
        return await self._out.wait()


def _log_closed(
    live: LiveSession, stream: LogStream, out: BodyStream, started: float, first_seq: int
) -> None:
    duration_ms = round((time.perf_counter() - started) * 1000, 3)
    events = max(0, stream.sent_seq - first_seq)
    sent = out.sent if isinstance(out, _Counted) else 0
    reason = stream.close_reason or "client_gone"
    log.info(
        "stream closed: session %s, %.1fs, %d events, %dB, %s",
        live.id,
        duration_ms / 1000,
        events,
        sent,
        reason,
        extra={
            "session_id": live.id,
            "duration_ms": duration_ms,
            "events": events,
            "bytes": sent,
            "reason": reason,
        },
    )


class SessionStreams:
    """The streams attached to this process's sessions, and the way events reach them."""

    def __init__(
        self,
        config: Config,
        store: SessionStore,
        registry: SessionRegistry,
        pinger: Pinger,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics if metrics is not None else Metrics()
        self._stream_metrics: dict[str, StreamMetrics] = {}
        self.store = store
        self.registry = registry
        self.pinger = pinger
        self.clock: Callable[[], float] = trio.current_time
        self.on_ended_elsewhere: Callable[[LiveSession], None] | None = None
        """Set by ``SessionManager``: end a session here that another instance ended."""
        """Record times (``SessionManager`` gives its own: wall clock on a shared store)."""
        self.draining: str | None = None
        """Set by ``close_all_streams``: the reason streams are told once their calls are done."""

    def stream_metrics(self, transport: str) -> StreamMetrics:
        """The metric children of ``transport``'s streams, bound once per transport."""
        bound = self._stream_metrics.get(transport)
        if bound is None:
            bound = self._stream_metrics[transport] = self.metrics.stream(transport)
        return bound

    # -- events --------------------------------------------------------------------------------

    async def publish(self, live: LiveSession, data: Any, event: str | None = None) -> LoggedEvent:
        """Append an event to the session's log and offer it to its stream. Never waits on a
        client. ``data`` is JSON-encoded unless it is already a ``str``."""
        if not self.registry.holds(live):
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

    async def follow(self, watch: Callable[[], AsyncIterator[tuple[LogKey, int]]]) -> None:
        """Wake the streams attached here whenever another instance appends to their logs.

        ``watch()`` yields ``(key, seq)`` for every append to the shared store (a Redis
        channel, one subscription per instance whatever the number of streams). A stream that
        already wrote ``seq`` (the append was ours, offered directly) is left alone; any other
        catches up from the log in its own task, so order and exactly-once come from the log's
        seqs, never from the notification."""
        async for key, seq in watch():
            live = self.registry.get(key.session_id)
            if live is None:
                continue
            if seq == 0:  # the session was ended by another instance (deleted, expired)
                if self.on_ended_elsewhere is not None:
                    self.on_ended_elsewhere(live)
                continue
            reader = live.stream if key.stream == 0 else live.request_streams.get(key.stream)
            if reader is not None and seq > reader.sent_seq:
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
        logging_on = log.isEnabledFor(logging.INFO)
        if logging_on:
            started = time.perf_counter()
            out = _Counted(out)
        metrics = self.stream_metrics(live.record.kind)
        stream = LogStream(
            StoreLog(self.store, key), out, self.pinger, control=control, metrics=metrics
        )
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
        start = delivered if resume_after is None else resume_after
        try:
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
                metrics.miss.inc()
                resume_after = None
            await stream.run(start, head=head, resumed=resume_after is not None)
        finally:
            if live.stream is stream:
                live.stream = None
                live.record.touch(self.clock())
            if logging_on:
                _log_closed(live, stream, out, started, start)
            if stream.sent_seq > live.record.delivered_seq:
                live.record.delivered_seq = stream.sent_seq
                with trio.CancelScope(shield=True), trio.move_on_after(1):
                    await self.store.mark_delivered(live.key, stream.sent_seq)

    async def stream_request_log(
        self, live: LiveSession, key: LogKey, out: BodyStream, *, after: int, head: bytes
    ) -> None:
        """Write a request stream (a POST's SSE reply, or a GET resuming it) until its reply."""
        logging_on = log.isEnabledFor(logging.INFO)
        if logging_on:
            started = time.perf_counter()
            out = _Counted(out)
        reader = LogStream(
            StoreLog(self.store, key),
            out,
            self.pinger,
            control=control_comment,
            ends_with_log=True,
            metrics=self.stream_metrics("mcp_request"),
        )
        previous = live.request_streams.get(key.stream)
        if previous is not None:
            previous.close("superseded")
        live.request_streams[key.stream] = reader
        if live.ended:
            reader.close("session_ended")
        try:
            await reader.run(after, head=head, resumed=after > 0)
        finally:
            if logging_on:
                _log_closed(live, reader, out, started, after)
            if live.request_streams.get(key.stream) is reader:
                del live.request_streams[key.stream]

    def close_all_streams(self, reason: str) -> None:
        """Ask every attached stream to finish (used at shutdown).

        A stream whose session has calls in flight is left open until the last of them ends
        (``calls_done``), so their results still reach the client; the caller bounds how long
        that may take (the HTTP server cancels every connection after ``shutdown_grace_s``).
        """
        self.draining = reason
        for live in self.registry.sessions():
            if live.stream is not None and live.running == 0:
                live.stream.close(reason)

    def calls_done(self, live: LiveSession) -> None:
        """A call of ``live`` ended; if it was the last of a draining session (its result is in
        the log, ahead of the goodbye), now the stream may say goodbye."""
        if live.running == 0 and self.draining is not None and live.stream is not None:
            live.stream.close(self.draining)

    @staticmethod
    def close_session_streams(live: LiveSession, reason: str) -> None:
        """Tell every stream of an ending session why (what the log holds goes out first)."""
        if live.stream is not None:
            live.stream.close(reason)
        for reader in live.request_streams.values():
            reader.close(reason)
