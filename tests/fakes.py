"""Test doubles for the seams between layers (no sockets)."""

from __future__ import annotations

import trio


class FakeBody:
    """A ``net.http.BodyStream`` in memory: records what is written; ``leave()`` plays the
    client going away. ``accept_now=False`` makes every ``try_write`` refuse (a full socket),
    so the stream's own task must write."""

    def __init__(self, *, accept_now: bool = True) -> None:
        self.written = bytearray()
        self.accept_now = accept_now
        self.waiting = trio.Event()  # set whenever the producer parks in wait()
        self._woken = False
        self._gone = False
        self._wake = trio.Event()

    async def write(self, chunk: bytes) -> None:
        await trio.lowlevel.checkpoint()
        self.written += chunk

    def try_write(self, chunk: bytes) -> bool:
        if not self.accept_now:
            return False
        self.written += chunk
        return True

    @property
    def needs_flush(self) -> bool:
        return False

    @property
    def woken(self) -> bool:
        """``wake()`` was called and the producer has not yet come back from ``wait()``."""
        return self._woken

    def wake(self) -> None:
        self._woken = True
        self._wake.set()

    def leave(self) -> None:
        self._gone = True
        self._wake.set()

    async def wait(self) -> bool:
        while not (self._woken or self._gone):
            self.waiting.set()
            await self._wake.wait()
            self._wake = trio.Event()
        self.waiting = trio.Event()
        self._woken = False
        return not self._gone
