"""LogStream: one log read out to one SSE body, driven without sockets (tests.fakes.FakeBody)."""

from __future__ import annotations

from functools import partial

import pytest
import trio
import trio.testing

from datapulse.core.sse import PING, SSEParser
from datapulse.live.pinger import Pinger
from datapulse.live.stream import LocalLog, LogStream, StoreLog, control_comment
from datapulse.store import LogKey, MemorySessionStore
from tests.fakes import FakeBody
from tests.unit.store_helpers import new_record


def ids(body: FakeBody) -> list[str]:
    return [e.id for e in SSEParser().feed(bytes(body.written)) if e.id is not None and e.data]


async def attached(nursery: trio.Nursery, stream: LogStream, after: int = 0) -> None:
    """Start ``stream.run`` and return once it is parked waiting for news."""
    nursery.start_soon(stream.run, after)
    await settled()


async def settled() -> None:
    """Until every other task (the stream's included) is blocked: the stream did what it had
    to and is parked again (or finished)."""
    await trio.testing.wait_all_tasks_blocked()


@pytest.fixture
async def store() -> MemorySessionStore:
    store = MemorySessionStore(max_events=100, max_bytes=1 << 20)
    await store.create(new_record("s"))
    return store


async def test_an_offered_event_is_written_by_the_offering_task_without_waking_the_stream(
    store: MemorySessionStore, nursery: trio.Nursery
) -> None:
    body = FakeBody()
    stream = LogStream(StoreLog(store, LogKey("s")), body, Pinger(60))
    await attached(nursery, stream)
    stream.offer(await store.append(LogKey("s"), "one"))
    assert ids(body) == ["1"]  # written synchronously, inside offer()
    assert stream.sent_seq == 1
    assert not body.woken  # the stream's task was not needed
    body.leave()


async def test_a_full_socket_leaves_the_event_to_the_stream_task_which_reads_the_log(
    store: MemorySessionStore, nursery: trio.Nursery
) -> None:
    body = FakeBody(accept_now=False)
    stream = LogStream(StoreLog(store, LogKey("s")), body, Pinger(60))
    await attached(nursery, stream)
    for n in range(3):
        stream.offer(await store.append(LogKey("s"), f"e{n}"))
    assert ids(body) == [] and body.woken
    await settled()  # woke, caught up from the log, parked again
    assert ids(body) == ["1", "2", "3"]
    body.leave()


async def test_nothing_overtakes_the_head_not_even_an_event_offered_before_the_task_ran(
    store: MemorySessionStore, nursery: trio.Nursery
) -> None:
    body = FakeBody()
    stream = LogStream(StoreLog(store, LogKey("s")), body, Pinger(60))
    nursery.start_soon(partial(stream.run, 0, head=b"event: endpoint\ndata: /messages\n\n"))
    stream.offer(await store.append(LogKey("s"), "early"))  # the stream's task has not run yet
    await settled()
    assert body.written.startswith(b"event: endpoint\ndata: /messages\n\n")
    assert ids(body) == ["1"]
    body.leave()


async def test_an_offer_that_skips_an_event_makes_the_stream_catch_up_in_order(
    store: MemorySessionStore, nursery: trio.Nursery
) -> None:
    body = FakeBody()
    stream = LogStream(StoreLog(store, LogKey("s")), body, Pinger(60))
    await attached(nursery, stream)
    await store.append(LogKey("s"), "not offered (e.g. still on its way from another instance)")
    stream.offer(await store.append(LogKey("s"), "offered"))
    stream.offer(await store.append(LogKey("s"), "offered too"))
    await settled()
    assert ids(body) == ["1", "2", "3"]
    stream.offer((await store.read(LogKey("s"), 1)).events[0])  # a late duplicate offer
    assert ids(body) == ["1", "2", "3"]
    body.leave()


async def test_replay_and_live_offers_overlapping_write_each_event_once_in_order(
    store: MemorySessionStore, nursery: trio.Nursery
) -> None:
    key = LogKey("s")
    for n in range(80):  # more than one catch-up page
        await store.append(key, f"old{n}")
    body = FakeBody()
    stream = LogStream(StoreLog(store, key), body, Pinger(60))
    nursery.start_soon(stream.run, 0)
    # Published while the replay is still running: some land on the fast path, some are read
    # back from the log by the replay itself.
    for n in range(40):
        stream.offer(await store.append(key, f"new{n}"))
        await trio.lowlevel.checkpoint()
    await settled()
    assert ids(body) == [str(n) for n in range(1, 121)]
    body.leave()


async def test_falling_behind_the_log_bound_ends_a_session_stream_as_lagging(
    nursery: trio.Nursery,
) -> None:
    store = MemorySessionStore(max_events=4, max_bytes=1 << 20)
    await store.create(new_record("s"))
    body = FakeBody(accept_now=False)
    stream = LogStream(StoreLog(store, LogKey("s")), body, Pinger(60))
    await attached(nursery, stream)
    for n in range(10):  # the task cannot run in between: the log evicts what it has not sent
        await store.append(LogKey("s"), f"e{n}")
    stream.offer(await store.append(LogKey("s"), "last"))
    with trio.fail_after(2):
        while b"stream_lagging" not in body.written:
            await trio.lowlevel.checkpoint()
    assert b"event: error" in body.written


async def test_close_writes_what_the_log_holds_then_the_goodbye(
    store: MemorySessionStore, nursery: trio.Nursery
) -> None:
    body = FakeBody(accept_now=False)
    stream = LogStream(StoreLog(store, LogKey("s")), body, Pinger(60))
    with trio.fail_after(2):
        async with trio.open_nursery() as inner:
            await attached(inner, stream)
            stream.offer(await store.append(LogKey("s"), "last words"))
            stream.close("session_deleted")
    assert ids(body) == ["1"]
    assert body.written.endswith(b'event: close\ndata: {"reason":"session_deleted"}\n\n')


async def test_a_request_stream_ends_after_its_closed_log_and_reports_a_gap_but_goes_on() -> None:
    """A reader of a request's SSE reply that fell behind the bounded log is told what is gone
    and still gets the reply (the newest message, which the log always keeps)."""
    store = MemorySessionStore(max_events=3, max_bytes=10_000)
    await store.create(new_record("s"))
    key = await store.open_request_log("s")
    for i in range(10):
        await store.append(key, '{"jsonrpc":"2.0","method":"notifications/progress"}')
    await store.append(key, '{"jsonrpc":"2.0","id":1,"result":{}}')
    await store.close_log(key)
    body = FakeBody()
    stream = LogStream(
        StoreLog(store, key), body, Pinger(60), control=control_comment, ends_with_log=True
    )
    with trio.fail_after(2):
        await stream.run(0)  # returns by itself once the closed log is written
    assert b": error" in body.written and b"replay_gone" in body.written
    events = SSEParser().feed(bytes(body.written))
    assert [e.id for e in events] == ["1-9", "1-10", "1-11"]
    assert events[-1].data == '{"jsonrpc":"2.0","id":1,"result":{}}'


async def test_a_local_log_stream_ends_once_closed() -> None:
    local = LocalLog(max_events=10, max_bytes=10_000)
    body = FakeBody()
    stream = LogStream(local, body, Pinger(60), ends_with_log=True)
    local.reader = stream
    with trio.fail_after(2):
        async with trio.open_nursery() as nursery:
            await attached(nursery, stream)
            local.append("a")
            local.append("b")
            local.close()
    assert ids(body) == ["1", "2"]


async def test_pings_come_from_the_pinger_on_either_path(
    store: MemorySessionStore, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    pinger = Pinger(5)
    nursery.start_soon(pinger.run)
    fast, slow = FakeBody(), FakeBody(accept_now=False)
    for body in (fast, slow):
        stream = LogStream(StoreLog(store, LogKey("s")), body, pinger)
        await attached(nursery, stream)
    await trio.sleep(5.01)
    assert fast.written.count(PING) == 1
    assert slow.written.count(PING) == 1
    await trio.sleep(5)
    assert fast.written.count(PING) == 2 and slow.written.count(PING) == 2
    fast.leave()
    slow.leave()
