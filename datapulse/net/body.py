"""A streamed response body as its producer sees it: the connection's ``BodyStream``."""

from __future__ import annotations

from typing import Protocol

import h11
import trio

from datapulse.net.writer import SocketWriter

RECEIVE_SIZE = 65536


class BodyOwner(Protocol):
    """What a body needs of its connection (``net.connection.HTTPConnection``)."""

    stream: trio.abc.Stream
    conn: h11.Connection
    writer: SocketWriter
    watching: bool

    def received(self, data: bytes | bytearray) -> bool: ...

    def keep_reading(self) -> bool: ...


class ResponseBody:
    """A streamed response body as its producer sees it (``net.http.BodyStream``).

    Writes go through the connection's ``SocketWriter``. HTTP/1.1 bodies are chunked, framed here
    by hand: h11's chunked writer keeps no state, so this is equivalent and skips building and
    validating an event per write. HTTP/1.0 bodies are delimited by closing the connection and go
    through h11 unchanged.

    ``wait()`` is where an idle stream spends its life: it reads the socket (EOF is how a client
    leaves; a pipelined request is kept for h11's next cycle) until another task calls ``wake()``.
    So a stream is one task, and its disconnect is an event it sees, not a second task's cancel.
    """

    # Every idle stream holds one for its whole life: no per-instance __dict__.
    __slots__ = ("_chunked", "_connection", "_wait_scope", "_woken", "_writer")

    def __init__(self, connection: BodyOwner) -> None:
        self._connection = connection
        self._writer = connection.writer
        self._chunked = connection.conn.their_http_version == b"1.1"
        self._woken = False
        self._wait_scope: trio.CancelScope | None = None

    def _frame(self, chunk: bytes) -> bytes:
        if self._chunked:
            return b"%x\r\n%b\r\n" % (len(chunk), chunk)
        return self._connection.conn.send(h11.Data(data=chunk)) or b""

    async def write(self, chunk: bytes) -> None:
        if chunk:
            await self._writer.write(self._frame(chunk))
        elif self._writer.has_pending:
            await self._writer.flush()

    def try_write(self, chunk: bytes) -> bool:
        return self._writer.try_write(self._frame(chunk))

    @property
    def needs_flush(self) -> bool:
        return self._writer.has_pending

    def wake(self) -> None:
        self._woken = True
        if self._wait_scope is not None:
            self._wait_scope.cancel()

    async def wait(self) -> bool:
        if self._woken:
            self._woken = False
            await trio.lowlevel.checkpoint()
            return True
        connection = self._connection
        with trio.CancelScope() as scope:
            self._wait_scope = scope
            try:
                if connection.watching:
                    # The request's own tasks run beside us, and with them the disconnect
                    # watcher, which already reads the socket (and cancels us on EOF).
                    await trio.sleep_forever()
                # Read here rather than call read_while_busy(): one coroutine frame less on
                # every idle stream, which is most of what an idle stream costs.
                while connection.keep_reading():
                    try:
                        data = await connection.stream.receive_some(RECEIVE_SIZE)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        data = b""
                    if not connection.received(data):
                        return False
                await trio.sleep_forever()
            finally:
                self._wait_scope = None
        self._woken = False
        return True
