"""One Streamable HTTP request while it runs in another task: what its POST sees of it.

The request runs in another task (its session's, or the connection's on 2026-07-28); the POST
waits here, at most ``JSON_WAIT_S``, to decide between a bare JSON answer and an SSE stream.

* ``RequestRun`` (both eras): its messages, its reply, whether it is done. Process-local by
  nature: the POST waits on the instance that runs the call.
* ``RequestLog`` (handshake era only): where its messages go once the POST commits to SSE, the
  store, so that a GET with ``Last-Event-ID`` resumes them. 2026-07-28 streams use a
  ``LocalLog`` instead (``streamable_modern.py``).

Both are shared by ``streamable.py`` and ``streamable_modern.py``, which is why they live here
and not in either.
"""

from __future__ import annotations

from collections import deque

import orjson
import trio

from datapulse.live.sessions import LiveSession, SessionManager
from datapulse.net.http import JSON_HEADERS, Response
from datapulse.store.base import LogKey

JSON_WAIT_S = 0.5
"""How long a POST waits for a bare reply before committing to an SSE response."""


def is_response(message: bytes) -> bool:
    """A reply (has ``result``/``error``), as opposed to a notification we sent before it."""
    decoded = orjson.loads(message)
    return isinstance(decoded, dict) and "method" not in decoded


class RequestRun:
    """What the POST that started a request sees of it while it runs in another task: how many
    messages it sent, its reply, whether it is done. Process-local by nature: the POST waits
    here, for ``JSON_WAIT_S`` at most, on the instance that runs the call."""

    def __init__(self) -> None:
        self.messages = 0
        self.reply: bytes | None = None
        self.done = False
        self.error_code: int | None = None
        self.error_headers: tuple[tuple[str, str], ...] = ()
        self._last: bytes | None = None
        self._changed = trio.Event()

    def note(self, message: bytes) -> None:
        self.messages += 1
        self._last = message
        self._wake()

    def finish(self, *, replied: bool) -> None:
        """The request is over; ``replied``: the last message it sent is its response (the
        session says so, so no message is decoded again to find out)."""
        self.done = True
        self.reply = self._last if replied else None
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait(self, *, first_message: bool) -> None:
        """Until the request is done (or, with ``first_message``, has sent anything)."""
        while not self.done and not (first_message and self.messages):
            await self._changed.wait()


def json_reply(progress: RequestRun) -> Response:
    if progress.reply is None:
        return Response(204, [], b"")  # cancelled: the client asked for no reply
    return Response(200, list(JSON_HEADERS), progress.reply)


class RequestLog:
    """A handshake-era request's messages: held here until its POST commits to an SSE answer,
    then in the store, where a GET with ``Last-Event-ID`` can resume them on any instance.

    Most requests are answered as bare JSON within ``JSON_WAIT_S`` and never need a log: they
    cost the store nothing. Exactly one of ``open`` (the POST) and ``finish``/``close`` (the
    request's task) closes the log in the store, whichever sees the other's step: neither awaits
    between setting its flag and reading the other's.
    """

    def __init__(self, sessions: SessionManager, live: LiveSession) -> None:
        self._sessions = sessions
        self._live = live
        self._held: deque[bytes] = deque()
        self._key: LogKey | None = None
        self._finished = False

    async def push(self, data: bytes) -> None:
        if self._key is None:
            self._held.append(data)
        else:
            await self._sessions.push(self._live, self._key, data)

    async def open(self) -> LogKey:
        key = await self._sessions.open_request_log(self._live)
        while self._held:  # messages may still arrive while we copy: until none is left
            await self._sessions.push(self._live, key, self._held.popleft())
        self._key = key
        if self._finished:
            await self._sessions.finish_request_log(self._live, key)
        return key

    def finish(self) -> bool:
        """The request is done; True if its log is in the store and must be closed there (the
        common case, a bare JSON answer, needs no await at all)."""
        self._finished = True
        return self._key is not None

    async def close(self) -> None:
        assert self._key is not None
        await self._sessions.finish_request_log(self._live, self._key)
