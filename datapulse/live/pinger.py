"""Pinger: one timer for the keep-alive of every session stream.

A stream that has written nothing for ``interval_s`` must send ``: ping``. Giving each stream its
own timeout (``move_on_after`` around its channel receive) costs a cancellation per ping: the
deadline fires, ``Cancelled`` unwinds the stream's stack, a new scope is entered. Profiling idle
streams showed that machinery, not the write, was most of the CPU spent on pings.

Instead every stream reports each write here (``touch``), and one task keeps a heap of due times
(entries made stale by a later write are skipped when they surface). It sleeps until the earliest
stream is due and calls its ``ping_due()`` (the ``Pingable`` interface): the stream writes the
pre-framed ping straight to its socket when the socket takes it without waiting, else wakes its
own task to write it. The next ping is scheduled one interval after the *due* time, not after the
moment the pinger got round to it: when many pings fall due together, working through them takes a while, and re-arming from
"now" would carry that delay into every later interval. Each write costs one ``heappush``; no
per-stream timers exist.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Protocol

import trio

COALESCE_S = 0.005
"""Pings falling due within this long are handled in one wake-up: thousands of streams opened a
millisecond apart would otherwise cost one scheduler round trip per ping."""

YIELD_EVERY = 256
"""Pings written per pass before letting other tasks run (a burst of due pings must not stall
request handling)."""


class Pingable(Protocol):
    def ping_due(self) -> None:
        """The stream has written nothing for an interval: write ``: ping`` (never waits)."""


class _Counter(Protocol):
    def inc(self, amount: float = 1) -> None: ...


class _Uncounted:
    def inc(self, amount: float = 1) -> None:
        pass


class Pinger:
    def __init__(self, interval_s: float, pings: _Counter | None = None) -> None:
        self.interval_s = interval_s
        self._pings = pings if pings is not None else _Uncounted()
        """Counts each ping due (``Metrics.pings``; a prometheus Counter)."""
        self._due: dict[Pingable, float] = {}
        self._heap: list[tuple[float, int, Pingable]] = []
        self._order = itertools.count()  # tie-breaker: streams themselves are not comparable
        self._wake = trio.Event()
        self._pinged = 0

    def __len__(self) -> int:
        return len(self._due)

    @property
    def scheduled(self) -> int:
        """Entries in the schedule heap, stale ones included (touches must not grow it)."""
        return len(self._heap)

    def _schedule(self, stream: Pingable, due: float) -> None:
        self._due[stream] = due
        heapq.heappush(self._heap, (due, next(self._order), stream))

    def touch(self, stream: Pingable) -> None:
        """``stream`` just wrote: its next ping is due one interval from now.

        A busy stream writes far more often than it needs pings, so a due time less than an
        eighth of an interval old is kept (the ping then comes at most that much early, which is
        harmless for a keep-alive). That bounds the heap to about eight entries per stream per
        interval, however fast events flow.
        """
        due = trio.current_time() + self.interval_s
        current = self._due.get(stream)
        if current is not None and due - current < self.interval_s / 8:
            return
        self._schedule(stream, due)
        if len(self._heap) == 1:
            self._wake.set()

    def forget(self, stream: Pingable) -> None:
        self._due.pop(stream, None)  # its heap entries are skipped as stale

    async def run(self) -> None:
        heap = self._heap
        while True:
            if not heap:
                self._wake = trio.Event()
                await self._wake.wait()
                continue
            due, _, stream = heap[0]
            if self._due.get(stream) != due:
                heapq.heappop(heap)  # stale: the stream wrote since, or is gone
                continue
            now = trio.current_time()
            if due > now:
                await trio.sleep_until(due + COALESCE_S)
                continue
            heapq.heappop(heap)
            # A fixed cadence from the due time; if we fell a whole interval behind, from now.
            next_due = due + self.interval_s
            self._schedule(stream, next_due if next_due > now else now + self.interval_s)
            stream.ping_due()
            self._pings.inc()
            self._pinged += 1
            if self._pinged % YIELD_EVERY == 0:
                await trio.lowlevel.checkpoint()
