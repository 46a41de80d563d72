"""SocketWriter over a real AF_UNIX socket pair (no network) with a small send buffer, so it
fills after a few KiB: the fast path, the pending tail, the lock, the write timeout, a gone peer.

The reading end is drained synchronously (``drain``) where a test needs to say exactly when the
kernel has room again, and by a task (``read_exactly``) where a write must wait for the reader.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

from datapulse.net.writer import ClientGone, SocketWriter

DEADLINE_S = 5
CHUNK = 10_000  # over the ~8 KiB the pair holds: the first chunk is already a partial write


class Pair:
    def __init__(self) -> None:
        ours, theirs = trio.socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.stream = trio.SocketStream(ours)
        self.reader = theirs  # non-blocking, as every trio socket

    def drain(self) -> bytes:
        """Everything the kernel holds for the reader right now (never waits)."""
        received = bytearray()
        while True:
            try:
                data = os.read(self.reader.fileno(), 65536)
            except BlockingIOError:
                return bytes(received)
            if not data:
                return bytes(received)
            received += data

    async def read_exactly(self, size: int, into: bytearray) -> None:
        while len(into) < size:
            data = await self.reader.recv(65536)
            assert data, "the writer closed early"
            into += data

    def close(self) -> None:
        self.stream.socket.close()
        self.reader.close()


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    p = Pair()  # inside the trio run: closing a trio socket tells the run loop
    yield p
    p.close()


def chunk(n: int) -> bytes:
    """Distinct, self-numbered chunks: a reordering or a lost tail shows in the concatenation."""
    return f"<{n}>".encode().ljust(CHUNK, b".")


def fill(writer: SocketWriter) -> bytes:
    """``try_write`` until the socket refuses; returns what try_write accepted (sent or pending)."""
    accepted = bytearray()
    for n in range(100):
        data = chunk(n)
        if not writer.try_write(data):
            return bytes(accepted)
        accepted += data
    raise AssertionError("the socket never filled")


class GatedStream(trio.abc.Stream):
    """A SocketStream whose awaited ``send_all`` waits for ``gate``: holds the writer's lock
    for as long as a test wants, even while the socket itself has room."""

    def __init__(self, inner: trio.SocketStream) -> None:
        self.inner = inner
        self.socket = inner.socket
        self.gate = trio.Event()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.gate.wait()
        await self.inner.send_all(data)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return bytes(await self.inner.receive_some(max_bytes))

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_try_write_sends_at_once_while_the_kernel_takes_bytes(pair: Pair) -> None:
    writer = SocketWriter(pair.stream, 1.0)
    assert writer.try_write(b"hello ")
    assert writer.try_write(b"world")
    assert not writer.has_pending
    assert pair.drain() == b"hello world"


async def test_a_partial_try_write_keeps_its_tail_and_the_next_one_sends_it_first(
    pair: Pair,
) -> None:
    writer = SocketWriter(pair.stream, 1.0)
    accepted = fill(writer)
    assert accepted  # the first chunk went out in part...
    assert writer.has_pending  # ...and its tail is held
    assert not writer.try_write(b"refused")  # full: nothing written, the tail kept as it was
    assert writer.has_pending
    received = pair.drain()
    assert len(received) < len(accepted)
    assert writer.try_write(b"tail")  # room again: the pending tail goes first
    received += pair.drain()
    assert received == accepted + b"tail"
    assert not writer.has_pending


async def test_write_waits_for_the_reader_and_sends_the_pending_tail_first(pair: Pair) -> None:
    writer = SocketWriter(pair.stream, 2.0)
    accepted = fill(writer)
    assert writer.has_pending
    last = b"last" * 5000
    received = bytearray()
    with trio.fail_after(DEADLINE_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pair.read_exactly, len(accepted) + len(last), received)
            await writer.write(last)
    assert bytes(received) == accepted + last
    assert not writer.has_pending
    assert not writer.broken


async def test_flush_sends_only_the_pending_tail(pair: Pair) -> None:
    writer = SocketWriter(pair.stream, 2.0)
    accepted = fill(writer)
    received = bytearray()
    with trio.fail_after(DEADLINE_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pair.read_exactly, len(accepted), received)
            await writer.flush()
    assert bytes(received) == accepted
    assert not writer.has_pending
    await writer.flush()  # nothing pending: a no-op
    assert pair.drain() == b""


async def test_try_write_refuses_while_an_awaited_write_holds_the_lock(pair: Pair) -> None:
    gated = GatedStream(pair.stream)
    writer = SocketWriter(gated, 2.0)
    accepted = fill(writer)
    big = b"B" * 20_000
    received = bytearray()
    with trio.fail_after(DEADLINE_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer.write, big)
            await trio.testing.wait_all_tasks_blocked()  # it holds the lock, at the gate
            received += pair.drain()  # the kernel has room again...
            assert not writer.try_write(b"interloper")  # ...but the awaited write comes first
            assert not writer.has_pending
            gated.gate.set()
            await pair.read_exactly(len(accepted) + len(big), received)
    assert bytes(received) == accepted + big


async def test_a_reader_that_never_reads_is_dropped_after_write_timeout(
    pair: Pair, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="datapulse.http")
    writer = SocketWriter(pair.stream, 3.0, peer="203.0.113.9:1234")
    start = trio.current_time()
    with trio.fail_after(60), pytest.raises(ClientGone):
        await writer.write(b"z" * 100_000)
    assert trio.current_time() - start == pytest.approx(3.0)
    assert writer.broken
    assert not writer.try_write(b"more")
    with pytest.raises(ClientGone):
        await writer.write(b"more")
    assert "write timed out after 3.0s; closing 203.0.113.9:1234" in caplog.text


async def test_after_close_nothing_is_written(pair: Pair) -> None:
    writer = SocketWriter(pair.stream, 1.0)
    writer.close()
    assert writer.broken
    assert not writer.try_write(b"late")
    with trio.fail_after(DEADLINE_S), pytest.raises(ClientGone):
        await writer.write(b"late")
    assert pair.drain() == b""


async def test_a_peer_that_closed_makes_try_write_refuse_and_write_raise(pair: Pair) -> None:
    writer = SocketWriter(pair.stream, 1.0)
    pair.reader.close()
    assert not writer.try_write(b"x")  # EPIPE: nothing written...
    assert writer.broken  # ...and remembered for the awaited path to report
    with trio.fail_after(DEADLINE_S), pytest.raises(ClientGone):
        await writer.write(b"x")


async def test_an_awaited_write_to_a_closed_peer_raises_client_gone(pair: Pair) -> None:
    writer = SocketWriter(pair.stream, 1.0)
    pair.reader.close()
    with trio.fail_after(DEADLINE_S), pytest.raises(ClientGone):
        await writer.write(b"x")
    assert writer.broken


async def test_a_stream_without_a_socket_takes_only_the_awaited_path() -> None:
    ours, theirs = trio.testing.memory_stream_pair()
    writer = SocketWriter(ours, 1.0)
    assert not writer.try_write(b"fast")
    with trio.fail_after(DEADLINE_S):
        await writer.write(b"slow")
        assert await theirs.receive_some() == b"slow"
