"""Writing a session's events to one SSE response.

``stream_session`` is the body of every session stream (``/events``, and the GET streams of the
MCP transports). It attaches to the session, sends the ``retry:`` hint, replays what the client
missed from the log, then forwards the live channel, writing ``: ping`` whenever the stream has
been idle for ``ping_interval_s``.

How it ends:
* the client disconnects -> the connection cancels us (we never see it as an error);
* the channel is closed by the session manager -> ``event: close`` with the reason
  (``superseded`` by a newer stream, ``session_expired``, ``session_deleted``, ``shutdown``);
* the stream fell so far behind that the log no longer holds what it has not sent ->
  ``event: error`` with ``stream_lagging``; the client may reconnect with Last-Event-ID and is
  told exactly what is gone.

Control events (close/error) carry no ``id`` on purpose: the client's Last-Event-ID must keep
pointing at the last *data* event so a reconnect resumes in the right place.

Memory: besides the session's log, a stream holds at most its channel (``stream_queue_events``
references, normally to events the log still holds) and one page of ``CATCH_UP_PAGE`` events
while it replays. A backlog is read a page at a time, so a stream writing slowly cannot pin
events the log has already evicted; if the log moves past it meanwhile, it is lagging.
Each write is bounded by ``write_timeout_s`` in the connection: a peer that stops reading
is dropped, and what it missed stays replayable.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import orjson
import trio

from datapulse.core.eventlog import LoggedEvent, ReplayGone, ReplayLog
from datapulse.core.sse import PING, encode_comment, encode_data, encode_retry
from datapulse.net.http import BodyWriter
from datapulse.net.pinger import PING_DUE
from datapulse.net.sessions import Attachment, LiveSession, SessionManager

log = logging.getLogger("datapulse.stream")

SSE_HEADERS = [
    ("Content-Type", "text/event-stream"),
    ("Cache-Control", "no-cache"),
    # nginx and similar proxies buffer responses unless told not to; SSE must not be buffered.
    ("X-Accel-Buffering", "no"),
]


def control_event(event: str, **fields: object) -> bytes:
    return encode_data(orjson.dumps(fields).decode(), event=event)


def control_comment(event: str, **fields: object) -> bytes:
    """The same notice as an SSE comment, for MCP streams whose clients expect only messages."""
    return encode_comment(f"{event} {orjson.dumps(fields).decode()}")


CATCH_UP_PAGE = 64
"""Events fetched from the log per round while replaying or catching up."""


class _Lagging(Exception):
    pass


class SessionStream:
    def __init__(
        self,
        manager: SessionManager,
        live: LiveSession,
        write: BodyWriter,
        attachment: Attachment,
        ping_interval_s: float,
        control: Callable[..., bytes] = control_event,
    ) -> None:
        self.control = control
        self.manager = manager
        self.live = live
        pinger = manager.pinger

        async def write_and_touch(data: bytes) -> None:
            await write(data)
            pinger.touch(attachment)  # idle again from now: the next ping is due one interval on

        self.write = write_and_touch
        pinger.touch(attachment)  # the retry hint was just written: idle from now
        self.idle = False
        write_now = getattr(write, "write_now", None)
        if write_now is not None:
            # Only while the task waits on its channel: then nothing else is being written.
            attachment.ping_now = lambda: self.idle and bool(write_now(PING))
        self.attachment = attachment
        self.ping_interval_s = ping_interval_s

    async def send_event(self, event: LoggedEvent) -> None:
        # Replay and the live channel can both carry an event; the seq check sends it once.
        if event.seq <= self.attachment.sent_seq:
            return
        await self.write(event.wire)
        self.attachment.sent_seq = event.seq
        await self.manager.store.mark_delivered(self.live.id, event.seq)

    async def _page(self, after: int) -> list[LoggedEvent]:
        # Slice at once: the rest of the list must not keep evicted events alive while we write.
        return (await self.manager.store.events_after(self.live.id, after))[:CATCH_UP_PAGE]

    async def catch_up(self, after: int, *, tolerate_gap: bool) -> None:
        """Send what the log holds after ``after``, a page at a time.

        A gap at the start is reported (``replay_gone``) when ``tolerate_gap`` (a client
        resuming), else the stream is lagging; a gap opening while we write is always lagging.
        """
        try:
            page = await self._page(after)
        except ReplayGone as gone:
            if not tolerate_gap:
                raise _Lagging from None
            await self.write(
                self.control(
                    "error",
                    error="replay_gone",
                    detail=str(gone),
                    requested=str(gone.requested),
                    oldest=str(gone.oldest),
                )
            )
            page = await self._page(gone.oldest - 1)
        self.attachment.sent_seq = max(self.attachment.sent_seq, after)
        while page:
            for event in page:
                await self.send_event(event)
            if len(page) < CATCH_UP_PAGE:
                return
            try:
                page = await self._page(self.attachment.sent_seq)
            except ReplayGone:
                raise _Lagging from None

    def _drain_channel(self) -> None:
        while True:
            try:
                self.attachment.receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                return

    async def run(self, resume_after: int | None) -> None:
        try:
            await self._run(resume_after)
        except _Lagging:
            log.info("stream for session %s fell too far behind; closing", self.live.id)
            await self.write(
                self.control(
                    "error",
                    error="stream_lagging",
                    detail="the stream fell behind further than the replay buffer holds",
                )
            )

    async def _run(self, resume_after: int | None) -> None:
        start = self.live.record.delivered_seq if resume_after is None else resume_after
        last = await self.manager.store.last_seq(self.live.id)
        if start > last:
            # An id we never issued for this session (e.g. from before a restart).
            await self.write(
                self.control(
                    "error",
                    error="replay_gone",
                    detail=f"event {start} is not known to this session",
                    requested=str(start),
                    oldest=str(last + 1),
                )
            )
            start = self.live.record.delivered_seq
        await self.catch_up(start, tolerate_gap=True)
        receive = self.attachment.receive
        while True:
            if self.attachment.overflowed:
                self.attachment.overflowed = False
                self._drain_channel()
                await self.catch_up(self.attachment.sent_seq, tolerate_gap=False)
            # No timeout here: the manager's Pinger puts PING_DUE in the channel when this
            # stream has been idle for the ping interval (see net/pinger.py for why).
            self.idle = True
            try:
                event = await receive.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                self.idle = False
                reason = self.attachment.close_reason or "closed"
                await self.write(self.control("close", reason=reason))
                return
            self.idle = False
            if event is PING_DUE:
                await self.write(PING)
                continue
            await self.send_event(event)


async def stream_session(
    manager: SessionManager,
    live: LiveSession,
    write: BodyWriter,
    *,
    resume_after: int | None,
    ping_interval_s: float,
    retry_ms: int,
    preamble: bytes = b"",
    control: Callable[..., bytes] = control_event,
) -> None:
    """Attach to ``live`` and stream it until the client leaves or the session tells us to stop.

    ``control`` frames the goodbye and error notices: named events for the original API, SSE
    comments (``control_comment``) for MCP streams, whose clients expect nothing but messages.
    """
    attachment = manager.attach(live)
    try:
        await write(encode_retry(retry_ms) + preamble)
        stream = SessionStream(manager, live, write, attachment, ping_interval_s, control)
        await stream.run(resume_after)
    finally:
        manager.detach(live, attachment)


class MessageBuffer:
    """The messages of one request's SSE response (a Streamable HTTP POST), kept for resumption.

    The request's task pushes encoded JSON-RPC messages; one writer at a time (the POST response,
    or a GET resuming it with ``Last-Event-ID``) drains them. The log is bounded like a session's,
    and a writer that falls behind its bound is told so, not silently skipped ahead.
    """

    def __init__(self, number: int, max_events: int, max_bytes: int, *, event: str | None = None):
        self.number = number
        self.log = ReplayLog(max_events, max_bytes, id_prefix=f"{number}-")
        self.event = event
        self.done = False
        self._changed = trio.Event()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def push(self, message: bytes) -> None:
        self.log.append(message.decode(), self.event)
        self._wake()

    def finish(self) -> None:
        self.done = True
        self._wake()

    @property
    def count(self) -> int:
        return self.log.last_seq

    async def wait_for(self, count: int) -> None:
        """Until at least ``count`` messages were pushed, or the request finished."""
        while self.log.last_seq < count and not self.done:
            await self._changed.wait()

    async def write_to(self, write: BodyWriter, *, after: int = 0, ping_interval_s: float) -> None:
        """Write messages after seq ``after`` until the request is done and all are written."""
        sent = after
        while True:
            changed = self._changed  # taken before reading, so no wake-up can slip between
            try:
                pending = self.log.events_after(sent)
            except ReplayGone as gone:
                # Say what was lost, then go on with what is held: the reply is the newest
                # message, and the log always keeps the newest, so the request still completes.
                await write(control_comment("error", error="replay_gone", detail=str(gone)))
                sent = gone.oldest - 1
                continue
            for event in pending:
                await write(event.wire)
                sent = event.seq
            if self.done and sent >= self.log.last_seq:
                return
            with trio.move_on_after(ping_interval_s) as idle:
                await changed.wait()
            if idle.cancelled_caught:
                await write(PING)
