"""Shared fixtures: a real datapulse server on an ephemeral loopback port, and HTTP clients."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import trio

from datapulse import Config, Server, ServerInfo
from datapulse.core.sse import SSEEvent, SSEParser

TOKEN = "test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def make_config(**overrides: Any) -> Config:
    base: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "token": TOKEN,
        "ping_interval_s": 5.0,
        "read_timeout_s": 5.0,
        "keepalive_timeout_s": 5.0,
        "shutdown_grace_s": 1.0,
    }
    base.update(overrides)
    return Config(**base)


async def start_server(nursery: trio.Nursery, **overrides: Any) -> tuple[Server, ServerInfo]:
    server = Server(make_config(**overrides))
    info = await nursery.start(server.serve)
    return server, info


@pytest.fixture
async def server(nursery: trio.Nursery) -> Server:
    srv, _ = await start_server(nursery)
    return srv


@pytest.fixture
async def client(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    assert server.info is not None
    async with httpx.AsyncClient(base_url=server.info.url, headers=AUTH, timeout=10) as c:
        yield c


class SSEReader:
    """Reads an httpx streaming response as SSE events (our WHATWG parser)."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.parser = SSEParser()
        self.pending: list[SSEEvent] = []
        self.raw = b""
        self._chunks = response.aiter_raw()

    async def next(self, timeout: float = 5.0) -> SSEEvent:
        with trio.fail_after(timeout):
            while not self.pending:
                chunk = await self._chunks.__anext__()
                self.raw += chunk
                self.pending.extend(self.parser.feed(chunk))
            return self.pending.pop(0)

    async def read_until(self, marker: bytes, count: int = 1, timeout: float = 5.0) -> None:
        """Read raw bytes until ``marker`` has been seen ``count`` times (events are kept)."""
        with trio.fail_after(timeout):
            while self.raw.count(marker) < count:
                chunk = await self._chunks.__anext__()
                self.raw += chunk
                self.pending.extend(self.parser.feed(chunk))

    async def next_data(self, timeout: float = 5.0) -> SSEEvent:
        """The next event that carries data (skipping the retry-only hint)."""
        while True:
            event = await self.next(timeout)
            if event.data is not None:
                return event


async def raw_exchange(port: int, payload: bytes, *, read_timeout: float = 5.0) -> bytes:
    """Send raw bytes, return everything the server sends until it closes (or the timeout)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    received = b""
    async with stream:
        if payload:
            await stream.send_all(payload)
        with trio.move_on_after(read_timeout):
            while True:
                try:
                    chunk = await stream.receive_some(65536)
                except trio.BrokenResourceError:
                    break
                if not chunk:
                    break
                received += chunk
    return received
