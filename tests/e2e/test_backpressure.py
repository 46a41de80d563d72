"""Slow consumers (docs/streams.md): bounded memory, a producer that never waits, and a stream
that ends per policy (write timeout, or ``stream_lagging``) and can be resumed.

The clients here are raw sockets with a tiny ``SO_RCVBUF`` that read one byte a second (or
nothing for a while), so the server's writes really block in the kernel. Responses are parsed
with h11's client side and our SSE parser.

``RawClient`` and the MCP request builders are in tests/helpers.py.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import trio

from datapulse import Server
from datapulse.core.sse import SSEEvent
from datapulse.live.sessions import LiveSession
from tests.helpers import (
    MiB,
    RawClient,
    open_events_stream,
    raise_fd_limit,
    rss,
    start_server,
    wait_for,
)


def live_session(server: Server, session_id: str) -> LiveSession:
    return next(s for s in server.sessions.live_sessions() if s.id == session_id)


def event_ids(events: Sequence[SSEEvent]) -> list[int]:
    return [int(e.id) for e in events if e.id is not None and e.data]


def assert_contiguous(ids: Sequence[int], first: int, last: int) -> None:
    assert ids == list(range(first, last + 1)), (ids[:5], ids[-5:], first, last)


async def slow_reader(client: RawClient, byte_every_s: float = 1.0) -> None:
    """One byte at a time, once a second: the pathological consumer."""
    while True:
        try:
            data = await client.stream.receive_some(1)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        if not data:
            return
        client.feed(data)
        await trio.sleep(byte_every_s)


# -- one slow client, 10,000 events ---------------------------------------------------------------

EVENTS = 10_000
PAYLOAD = "x" * 4000  # 4 KB events: 40 MB published in all, far over the bound
REPLAY_BYTES = 256 * 1024


async def publish_all(
    server: Server, session_id: str, count: int, *, payload: str = PAYLOAD, paced: bool = False
) -> tuple[float, float, int]:
    """Publish ``count`` events; returns (total s, slowest single publish s, max log bytes),
    sampling the session's log after every publish (a stream holds no queue of its own). ``paced`` yields to
    the other tasks after each one, so the stream's writer runs until its socket blocks
    (publishing itself never checkpoints: unpaced, the writer only runs afterwards)."""
    log_bytes = server.store.log_bytes  # type: ignore[attr-defined]
    max_log = 0
    slowest = 0.0
    start = trio.current_time()
    for i in range(count):
        before = trio.current_time()
        await server.publish(session_id, {"n": i, "pad": payload})
        slowest = max(slowest, trio.current_time() - before)
        max_log = max(max_log, log_bytes(session_id))
        if paced:
            await trio.sleep(0)
    return trio.current_time() - start, slowest, max_log


async def test_stuck_client_memory_bounded_producer_free_write_timeout_then_replay(
    nursery: trio.Nursery,
) -> None:
    server, info = await start_server(
        nursery,
        replay_events=EVENTS,
        replay_bytes=REPLAY_BYTES,
        write_timeout_s=1.5,
        ping_interval_s=30,
    )
    with trio.fail_after(30):
        client = await open_events_stream(info.port, "slow", rcvbuf=1024)
        await wait_for(
            lambda: any(s.stream for s in server.sessions.live_sessions()), 5, "the stream"
        )
        baseline = rss()
        async with trio.open_nursery() as reading:
            reading.start_soon(slow_reader, client)
            elapsed, slowest, max_log = await publish_all(server, "slow", EVENTS, paced=True)
            growth = rss() - baseline
            # The writer is stuck in send_all; after --write-timeout the server drops the client
            # (well before the 5 s keep-alive timeout could close an idle connection).
            published = trio.current_time()
            await wait_for(lambda: not server.http.connections, 10, "the write timeout")
            dropped_after = trio.current_time() - published
            reading.cancel_scope.cancel()
        live = live_session(server, "slow")
        assert live.stream is None  # detached: nothing of the stream is left
        print(f"1 client: {elapsed=:.3f}s {slowest=:.4f}s {max_log=} {growth=}")
        # Memory for the session stayed within its configuration the whole time...
        assert max_log <= REPLAY_BYTES
        # ...and so did the process (40 MB were published; tolerant bound for allocator noise).
        assert growth < 16 * MiB, growth
        # The producer never waited on the socket.
        assert elapsed < 10, elapsed
        assert slowest < 0.5, slowest

        # What the client got before the cut is a contiguous prefix, cut mid-response (no
        # goodbye: the server could not write one); a reconnect with its Last-Event-ID is told
        # precisely what is gone, then gets the rest, in order.
        await client.drain_available()
        await client.aclose()
        assert not client.complete
        assert b"stream_lagging" not in client.body
        assert dropped_after < 4.5, dropped_after
        seen = event_ids(client.data_events())
        last_seen = seen[-1] if seen else 0
        assert_contiguous(seen, 1, last_seen)
        resumed = await open_events_stream(info.port, "slow", last_event_id=str(last_seen))
        await resumed.read_until(lambda c: any(e.id == str(EVENTS) for e in c.events), 10)
        await resumed.aclose()
    gone = resumed.data_events()[0]
    assert gone.event == "error"
    notice = json.loads(gone.data or "")
    assert notice["error"] == "replay_gone"
    assert notice["requested"] == str(last_seen)
    oldest = int(notice["oldest"])
    assert last_seen + 1 < oldest <= EVENTS
    assert_contiguous(event_ids(resumed.data_events()[1:]), oldest, EVENTS)


async def test_paused_client_gets_stream_lagging_then_resumes_with_last_event_id(
    nursery: trio.Nursery,
) -> None:
    server, info = await start_server(
        nursery,
        replay_events=EVENTS,
        replay_bytes=REPLAY_BYTES,
        write_timeout_s=20,
        ping_interval_s=30,
    )
    with trio.fail_after(30):
        client = await open_events_stream(info.port, "paused", rcvbuf=1024)
        await wait_for(lambda: len(server.sessions) == 1, 5, "the session")
        await wait_for(lambda: live_session(server, "paused").stream is not None, 5, "attach")
        # The client reads nothing while everything is published...
        elapsed, _, max_log = await publish_all(server, "paused", EVENTS)
        assert elapsed < 10 and max_log <= REPLAY_BYTES
        # ...then reads as fast as it can: the writer wakes, finds it has overflowed and that the
        # log no longer holds what it has not sent, and says so instead of skipping ahead.
        await client.read_to_end(15)
        await client.aclose()
    events = client.data_events()
    assert events[-1].event == "error"
    assert json.loads(events[-1].data or "")["error"] == "stream_lagging"
    seen = event_ids(events)
    assert seen, "some events were written before the client paused"
    assert_contiguous(seen, 1, seen[-1])
    assert seen[-1] < EVENTS

    with trio.fail_after(15):
        resumed = await open_events_stream(info.port, "paused", last_event_id=str(seen[-1]))
        await resumed.read_until(lambda c: any(e.id == str(EVENTS) for e in c.events), 10)
        await resumed.aclose()
    replayed = resumed.data_events()
    assert json.loads(replayed[0].data or "")["error"] == "replay_gone"
    oldest = int(json.loads(replayed[0].data or "")["oldest"])
    assert_contiguous(event_ids(replayed[1:]), oldest, EVENTS)


# -- a thousand slow clients at once ----------------------------------------------------------------

CLIENTS = 1000
EACH = 64
SMALL_PAYLOAD = "y" * 1000
SMALL_REPLAY_BYTES = 8 * 1024


async def test_a_thousand_stuck_clients_stay_bounded_and_never_block_the_producer(
    nursery: trio.Nursery,
) -> None:
    raise_fd_limit()
    server, info = await start_server(
        nursery,
        replay_events=EACH,
        replay_bytes=SMALL_REPLAY_BYTES,
        write_timeout_s=2.0,
        ping_interval_s=30,
        read_timeout_s=20,
        max_connections_per_ip=CLIENTS + 50,
        max_sessions_per_principal=CLIENTS + 50,
    )
    clients: list[RawClient] = []
    with trio.fail_after(60):

        async def connect(i: int) -> None:
            clients.append(await open_events_stream(info.port, f"s{i}", rcvbuf=1024))

        for start in range(0, CLIENTS, 100):  # bounded batches: never a SYN flood
            async with trio.open_nursery() as batch:
                for i in range(start, start + 100):
                    batch.start_soon(connect, i)
        await wait_for(
            lambda: sum(s.stream is not None for s in server.sessions.live_sessions()) == CLIENTS,
            20,
            "all streams attached",
        )
        baseline = rss()
        log_bytes = server.store.log_bytes  # type: ignore[attr-defined]
        slowest = 0.0
        max_log = 0
        start_time = trio.current_time()
        for n in range(EACH):  # round-robin, like a broadcast; writers run between rounds
            for i in range(CLIENTS):
                before = trio.current_time()
                await server.publish(f"s{i}", {"n": n, "pad": SMALL_PAYLOAD})
                slowest = max(slowest, trio.current_time() - before)
            await trio.sleep(0)
            if n % 8 == 7:
                max_log = max(max_log, *(log_bytes(f"s{i}") for i in range(CLIENTS)))
        elapsed = trio.current_time() - start_time
        growth = rss() - baseline
        total_log = sum(log_bytes(f"s{i}") for i in range(CLIENTS))
        # Every stuck writer hits the write timeout; all connections go.
        await wait_for(lambda: not server.http.connections, 20, "the write timeouts")
        assert all(s.stream is None for s in server.sessions.live_sessions())
        for client in clients:
            await client.aclose()

        # A sample of clients comes back and is told what it missed, then gets the rest.
        for i in range(0, CLIENTS, 100):
            again = await open_events_stream(info.port, f"s{i}", last_event_id="0")
            await again.read_until(lambda c: any(e.id == str(EACH) for e in c.events), 10)
            await again.aclose()
            replayed = again.data_events()
            notice = json.loads(replayed[0].data or "")
            assert notice["error"] == "replay_gone"
            assert_contiguous(event_ids(replayed[1:]), int(notice["oldest"]), EACH)

    published = CLIENTS * EACH * len(SMALL_PAYLOAD)  # 64 MB
    print(f"1000 clients: {elapsed=:.3f}s {slowest=:.4f}s {max_log=}")
    print(f"1000 clients: {total_log=} {growth=} {published=}")
    assert max_log <= SMALL_REPLAY_BYTES
    assert total_log <= CLIENTS * SMALL_REPLAY_BYTES
    # The logs hold at most 8 MB of the 64 MB (Python-level growth measured with tracemalloc:
    # ~8 MB); RSS also carries allocator slack (measured 14-35 MB), hence the tolerant bound,
    # still far below what keeping the events would cost.
    assert growth < published * 3 // 4, growth
    assert elapsed < 30, elapsed
    assert slowest < 0.5, slowest
