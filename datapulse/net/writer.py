"""SocketWriter: the one way bytes reach a connection's socket.

Several tasks may want to write to one connection: the connection's own task (a response), a
publisher handing a live event to an idle SSE stream, the shared Pinger. They all go through the
connection's single ``SocketWriter``, which owns the socket's descriptor, the unsent tail of a
partial write, and a lock held across every write that has to wait. Two ways in:

* ``try_write(data)``: never waits. It writes at once if no awaited write is in progress and
  the kernel takes the bytes; a partial write keeps the rest as the pending tail, which every
  later write sends first, so frames never interleave. Most writes fit the socket's send buffer,
  and this path skips a cancel scope (the write timeout), a lock round trip and Trio's send
  machinery, which is most of the cost of a small event or a ping.
* ``await write(data)``: tries the same fast path, then waits under the lock for the socket,
  bounded by ``write_timeout_s``. A peer that stopped reading is dropped with ``ClientGone``.

``close()`` forgets the descriptor before the stream is closed: the number may be reused by the
next accepted connection, and no fast-path write may ever reach it.
"""

from __future__ import annotations

import logging
import os

import trio

log = logging.getLogger("datapulse.http")


class ClientGone(Exception):
    """The peer closed its side or stopped reading; nothing more can be written usefully."""


class SocketWriter:
    def __init__(self, stream: trio.abc.Stream, write_timeout_s: float, peer: str = "peer") -> None:
        self._stream = stream
        self._write_timeout_s = write_timeout_s
        self._peer = peer
        socket = getattr(stream, "socket", None)
        # Streams without a socket (memory streams in tests, TLS later) take the awaited path only.
        self._fd: int = socket.fileno() if socket is not None else -1
        self._pending = b""
        self._lock = trio.Lock()
        self._broken = False

    @property
    def has_pending(self) -> bool:
        """A partial ``try_write`` left bytes behind; an awaited write (or ``flush``) sends them."""
        return bool(self._pending)

    @property
    def broken(self) -> bool:
        return self._broken

    def try_write(self, data: bytes) -> bool:
        """Write ``data`` without waiting. True: it is on the socket, or its unsent tail is held
        as pending (see ``has_pending``). False: nothing was written; await ``write`` instead."""
        if self._fd < 0 or self._lock.locked() or self._broken:
            return False
        if self._pending:
            data = self._pending + data
        try:
            sent = os.write(self._fd, data)
        except BlockingIOError:
            return False  # the pending tail, if any, is still held as it was
        except OSError:
            self._broken = True  # the peer is gone: the awaited path reports it
            return False
        self._pending = data[sent:]
        return True

    async def write(self, data: bytes) -> None:
        """Write ``data`` (after any pending tail), waiting at most ``write_timeout_s``."""
        if self._broken:
            raise ClientGone
        rest = data
        if not self._lock.locked() and self._fd >= 0:
            rest = self._pending + data
            self._pending = b""
            try:
                rest = rest[os.write(self._fd, rest) :]
            except BlockingIOError:
                pass
            except OSError:
                self._broken = True
                raise ClientGone from None
            if not rest:
                return
        async with self._lock:
            # Nothing can have become pending meanwhile: try_write refuses while the lock is held,
            # and a holder always starts by taking the pending tail.
            rest, self._pending = self._pending + rest, b""
            if not rest:
                return
            try:
                with trio.fail_after(self._write_timeout_s):
                    await self._stream.send_all(rest)
            except trio.TooSlowError:
                log.info("write timed out after %ss; closing %s", self._write_timeout_s, self._peer)
                self._broken = True
                raise ClientGone from None
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._broken = True
                raise ClientGone from None

    async def flush(self) -> None:
        """Send the pending tail, if any."""
        if self._pending:
            await self.write(b"")

    def close(self) -> None:
        """Forget the descriptor (called just before the stream is closed)."""
        self._fd = -1
        self._broken = True
