"""The shared Pinger, on Trio's autojump clock: cadence, busy streams, forgetting."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from datapulse.live.pinger import COALESCE_S, Pinger


class Stream:
    def __init__(self) -> None:
        self.pinged_at: list[float] = []

    def ping_due(self) -> None:
        self.pinged_at.append(trio.current_time())


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


async def test_idle_streams_are_pinged_every_interval(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pinger = Pinger(5.0)
    a, b = Stream(), Stream()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pinger.run)
        pinger.touch(a)
        await trio.sleep(1)
        pinger.touch(b)
        await trio.sleep(20.5)
        nursery.cancel_scope.cancel()
    # Up to COALESCE_S late (pings due together share a wake-up), never drifting.
    assert a.pinged_at == pytest.approx([5, 10, 15, 20], abs=COALESCE_S + 1e-9)
    assert b.pinged_at == pytest.approx([6, 11, 16, 21], abs=COALESCE_S + 1e-9)


async def test_a_write_postpones_the_ping_and_forget_stops_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pinger = Pinger(4.0)
    busy, gone = Stream(), Stream()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pinger.run)
        pinger.touch(busy)
        pinger.touch(gone)
        await trio.sleep(3)
        pinger.touch(busy)  # wrote at t=3: next ping at 7, not 4
        pinger.forget(gone)
        await trio.sleep(5)
        nursery.cancel_scope.cancel()
    assert busy.pinged_at == pytest.approx([7], abs=COALESCE_S + 1e-9)
    assert gone.pinged_at == []


async def test_many_writes_within_an_eighth_interval_add_no_heap_entries(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pinger = Pinger(8.0)
    stream = Stream()
    pinger.touch(stream)
    for _ in range(1000):
        await trio.sleep(0.0001)
        pinger.touch(stream)
    assert pinger.scheduled == 1


async def test_cadence_is_kept_when_pings_are_handled_late(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Re-arming from the due time, not from when the ping was handled, keeps the cadence."""
    pinger = Pinger(5.0)
    stream = Stream()
    pinger.touch(stream)
    with trio.move_on_after(5.3):
        await trio.sleep_forever()  # the pinger is not running: the first ping is now late
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pinger.run)
        await trio.sleep(10)
        nursery.cancel_scope.cancel()
    assert stream.pinged_at[0] == pytest.approx(5.3, abs=COALESCE_S + 1e-9)
    assert stream.pinged_at[1:] == pytest.approx([10, 15], abs=COALESCE_S + 1e-9)
