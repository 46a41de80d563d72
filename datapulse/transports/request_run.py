"""RequestRun: one Streamable HTTP request as the POST that started it sees it.

The request runs in another task (its session's, or the connection's on 2026-07-28); the POST
waits here, at most ``JSON_WAIT_S``, to decide between a bare JSON answer and an SSE stream.
Process-local by nature: the POST waits on the instance that runs the call.
"""

from __future__ import annotations

import orjson
import trio

from datapulse.net.http import JSON_HEADERS, Response

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
