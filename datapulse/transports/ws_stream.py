"""The stream trio-websocket is given for ``/ws``: every write and every wait for the peer bounded.

trio-websocket trusts its peer: it waits as long as it takes for a message to complete, and a
write waits as long as the socket is full. ``WsStream`` sits between it and the socket (the
``ReplayStream`` the h11 layer hands over) and bounds both sides, counting only the time spent
waiting for the peer (not the time we ourselves do not read, which is our backpressure):

* **writes**: each ``send_all`` (a frame of ours, a pong, the close frame, our pings) waits at
  most ``write_timeout_s``; a peer that stopped reading is dropped. Writes are serialised by a
  lock (our pings bypass trio-websocket's). A call writes inside ``shielded``, so that its
  cancellation cannot leave half a frame on the wire; ``abort_writes`` ends those writes when
  the connection itself goes, and a write cut short leaves the stream ``broken``.
* **a message**, from its first byte to its last, must arrive within ``read_timeout_s`` of
  waiting: close 1008. ``FrameTracker`` follows RFC 6455 framing over the bytes read, so a
  frame header that announces more than ``max_message_bytes`` is refused at once with 1009
  (trio-websocket would only notice once that much had arrived).
* **silence between messages**: after ``ping_interval_s`` without a byte the peer is pinged;
  nothing back within ``keepalive_timeout_s`` closes with 1011 (as the ``websockets`` library
  does on a keep-alive timeout). A peer that answers may stay idle, like an attached SSE stream.

Verdicts do not close anything themselves: ``close_now`` cancels ``live`` (the connection's
calls and its read loop) and records the close code the transport then sends; ``finish`` (a
graceful shutdown) cancels only ``reading``. Code ``None`` means the peer cannot be written to.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import trio

log = logging.getLogger("datapulse.ws")

# A server's frames are not masked: FIN + opcode 0x9 (ping), no payload.
PING_FRAME = b"\x89\x00"

_EXTENDED_LENGTH = {126: 2, 127: 8}


class MessageTooBig(Exception):
    """A frame header announced a message longer than the limit."""


class FrameTracker:
    """Where the peer's bytes are in RFC 6455 framing: between messages, or inside one.

    Sans-IO and forgiving: it reads only the lengths (FIN, opcode, payload length, mask bit)
    and leaves validation to wsproto. ``feed`` raises ``MessageTooBig`` as soon as a header
    takes a data message (its fragments added up) past ``max_message_bytes``.
    """

    def __init__(self, max_message_bytes: int) -> None:
        self.max_message_bytes = max_message_bytes
        self._head = bytearray()
        self._payload_left = 0
        self._fragmented = False
        """A data frame without FIN was seen: its message continues."""
        self._message_bytes = 0

    @property
    def at_boundary(self) -> bool:
        """No frame and no fragmented message is in progress."""
        return not self._head and not self._payload_left and not self._fragmented

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        i, n = 0, len(view)
        head = self._head
        while i < n:
            if self._payload_left:
                step = min(self._payload_left, n - i)
                self._payload_left -= step
                i += step
                continue
            if len(head) < 2:
                take = min(2 - len(head), n - i)
                head += view[i : i + take]
                i += take
                if len(head) < 2:
                    return
            size = 2 + _EXTENDED_LENGTH.get(head[1] & 0x7F, 0) + (4 if head[1] & 0x80 else 0)
            if len(head) < size:
                take = min(size - len(head), n - i)
                head += view[i : i + take]
                i += take
                if len(head) < size:
                    return
            self._header(bytes(head))
            head.clear()

    def _header(self, head: bytes) -> None:
        length = head[1] & 0x7F
        if length in _EXTENDED_LENGTH:
            length = int.from_bytes(head[2 : 2 + _EXTENDED_LENGTH[length]], "big")
        self._payload_left = length
        opcode = head[0] & 0x0F
        if opcode >= 0x8:  # control frames (close, ping, pong) sit between fragments
            return
        self._message_bytes = length if opcode else self._message_bytes + length
        self._fragmented = not head[0] & 0x80
        if self._message_bytes > self.max_message_bytes:
            raise MessageTooBig(
                f"message of {self._message_bytes} bytes exceeds {self.max_message_bytes}"
            )


class WsStream(trio.abc.Stream):
    """``inner`` with bounded writes and bounded waits for the peer (see the module docstring)."""

    def __init__(
        self,
        inner: trio.abc.Stream,
        *,
        write_timeout_s: float,
        read_timeout_s: float,
        ping_interval_s: float,
        pong_timeout_s: float,
        max_message_bytes: int,
    ) -> None:
        self._inner = inner
        self._write_timeout_s = write_timeout_s
        self._read_timeout_s = read_timeout_s
        self._ping_interval_s = ping_interval_s
        self._pong_timeout_s = pong_timeout_s
        self.tracker = FrameTracker(max_message_bytes)
        self._tracking = False
        self._untracked_wait: trio.CancelScope | None = None
        self._withhold = False
        """The peer's bytes are no longer read (a message was refused)."""
        self._closed = trio.Event()
        self._budget = read_timeout_s
        self._pinged = False
        self._lock = trio.Lock()
        self._shields: set[trio.CancelScope] = set()
        self._aborted = False
        self.broken = False
        """Nothing more can be written: the peer is gone, or a frame was cut short."""
        self.close_reason: tuple[int | None, str] | None = None
        """What to close with, once decided (the first verdict wins)."""
        self.live = trio.CancelScope()
        """The connection's read loop and calls run in it: ``close_now`` cancels it."""
        self.reading = trio.CancelScope()
        """The read loop alone: ``finish`` cancels it, the calls in flight go on."""

    # -- verdicts --------------------------------------------------------------------------

    def close_now(self, code: int | None, reason: str) -> None:
        """End the connection: its calls are cancelled, then ``code`` is sent (None: nothing)."""
        if self.close_reason is None:
            self.close_reason = (code, reason)
        self.live.cancel()

    def finish(self, code: int, reason: str) -> None:
        """Stop reading; the calls in flight may finish before ``code`` is sent."""
        if self.close_reason is None:
            self.close_reason = (code, reason)
        self.reading.cancel()

    def start_tracking(self) -> None:
        """From now on bytes read are frames. Call it in the same step as the accept (no
        checkpoint between): wsproto drops what it reads before the accept, and frames what it
        reads after, and the tracker must see the same bytes as frames."""
        self._tracking = True
        if self._untracked_wait is not None:
            self._untracked_wait.cancel()

    # -- reading ---------------------------------------------------------------------------

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        while True:
            if self._withhold:
                # A message we refused (1008, 1009): the rest of it goes nowhere, and the
                # peer's close frame, if it sends one, is behind it. Once our close frame has
                # been sent and the stream closed, trio-websocket's reader is told.
                await self._closed.wait()
                raise trio.ClosedResourceError("the WebSocket is closed")
            if self.close_reason is not None:
                # The closing handshake, bounded by the transport: the peer's close frame may
                # still come (no timeouts here, but the message limit holds).
                data = bytes(await self._inner.receive_some(max_bytes))
            elif not self._tracking:
                # The handshake, bounded by the transport; start_tracking ends this wait, so
                # that the next one has the timeouts.
                self._untracked_wait = trio.CancelScope()
                with self._untracked_wait:
                    return bytes(await self._inner.receive_some(max_bytes))
                continue
            else:
                received = await self._receive_open(max_bytes)
                if received is None:
                    continue
                data = received
            try:
                self.tracker.feed(data)
            except MessageTooBig as exc:
                # Dropped, header and all, so that trio-websocket never starts on it (and
                # never sends a close frame of its own after ours).
                self._refuse(1009, str(exc))
                continue
            return data

    async def _receive_open(self, max_bytes: int | None) -> bytes | None:
        """One read of an open connection under its timeouts; None when one expired."""
        idle = self.tracker.at_boundary
        if idle:
            self._budget = self._read_timeout_s
            timeout = self._pong_timeout_s if self._pinged else self._ping_interval_s
        else:
            timeout = max(self._budget, 0.0)
        started = trio.current_time()
        with trio.move_on_after(timeout) as waited:
            data = bytes(await self._inner.receive_some(max_bytes))
        if waited.cancelled_caught:
            if not idle:
                self._refuse(1008, f"message not complete within {self._read_timeout_s}s")
            elif self._pinged:
                self.close_now(1011, f"no pong within {self._pong_timeout_s}s")
            else:
                self._pinged = True
                # A failed write has given its verdict (close_now) itself.
                with contextlib.suppress(trio.BrokenResourceError):
                    await self.send_all(PING_FRAME)
            return None
        if not idle:
            self._budget -= trio.current_time() - started
        self._pinged = False
        return data

    def _refuse(self, code: int, reason: str) -> None:
        self._withhold = True
        self.close_now(code, reason)

    # -- writing ---------------------------------------------------------------------------

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self.broken:
            raise trio.BrokenResourceError("the WebSocket cannot be written to")
        async with self._lock:
            if self.broken:
                raise trio.BrokenResourceError("the WebSocket cannot be written to")
            with trio.move_on_after(self._write_timeout_s) as timer:
                try:
                    await self._inner.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    self._gone("the peer has gone")
                    raise trio.BrokenResourceError("the peer has gone") from None
                except trio.Cancelled:
                    # Only the connection's end reaches a write (calls write in ``shielded``):
                    # the frame may be cut short, nothing may follow it.
                    self.broken = True
                    raise
            if timer.cancelled_caught:
                log.info("/ws write timed out after %ss; closing", self._write_timeout_s)
                self._gone("write timed out")
                raise trio.BrokenResourceError("write timed out")

    def _gone(self, reason: str) -> None:
        self.broken = True
        self.close_now(None, reason)

    @contextlib.contextmanager
    def shielded(self) -> Iterator[None]:
        """Around a call's write: the call's cancellation (``notifications/cancelled``, its
        timeout) must not cut a frame short; the connection's end (``abort_writes``) does."""
        with trio.CancelScope(shield=True) as scope:
            if self._aborted:
                scope.cancel()
            self._shields.add(scope)
            try:
                yield
            finally:
                self._shields.discard(scope)

    def abort_writes(self) -> None:
        """The connection is going: end the calls' writes, now and from now on."""
        self._aborted = True
        for scope in self._shields:
            scope.cancel()

    async def wait_send_all_might_not_block(self) -> None:
        await self._inner.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        self._closed.set()
        self.abort_writes()
        await self._inner.aclose()
