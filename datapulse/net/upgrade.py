"""Handing a connection to another protocol (WebSocket) after h11 has read its request.

h11 has already consumed the request head (and maybe bytes after it). The other protocol's
handshake code wants to read the request itself, so it is given a stream that first replays the
head, re-serialised, and whatever h11 buffered after it, then reads the socket.
"""

from __future__ import annotations

import trio

from datapulse.net.http import Request


def request_head(request: Request) -> bytes:
    """The request head again, as bytes, for a protocol that wants to parse it itself."""
    lines = [f"{request.method} {request.target} HTTP/{request.http_version}".encode()]
    lines += [name + b": " + value for name, value in request.headers]
    return b"\r\n".join(lines) + b"\r\n\r\n"


class ReplayStream(trio.abc.Stream):
    """A stream that first yields ``prefix``, then reads from ``inner``; writes go to ``inner``."""

    def __init__(self, prefix: bytes, inner: trio.abc.Stream) -> None:
        self._prefix = prefix
        self._inner = inner

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._prefix:
            # The checkpoint first: a cancelled receive_some consumes nothing, as on a socket.
            await trio.lowlevel.checkpoint()
            size = len(self._prefix) if max_bytes is None else max_bytes
            chunk, self._prefix = self._prefix[:size], self._prefix[size:]
            return chunk
        return bytes(await self._inner.receive_some(max_bytes))

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._inner.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self._inner.aclose()
