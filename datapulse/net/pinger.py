"""Pinger: one timer for the keep-alive of every session stream.

A stream that has written nothing for ``interval_s`` must send ``: ping``. Giving each stream its
own timeout (``move_on_after`` around its channel receive) costs a cancellation per ping: the
deadline fires, ``Cancelled`` unwinds the stream's stack, a new scope is entered. Profiling idle
streams showed that machinery, not the write, was most of the CPU spent on pings.

Instead every stream reports each write here (``touch``), and one task keeps the streams in an
``OrderedDict`` ordered by when they last wrote. Since the interval is the same for all, that is
also the order in which pings fall due, so the task only ever looks at the front: it sleeps until
the oldest stream is due, hands it a ``PING_DUE`` item through the stream's own channel (the
stream wakes as for any event and writes the pre-encoded ping), and moves it to the back. Each
write costs an O(1) ``move_to_end``; each ping one ``send_nowait``; no per-stream timers exist.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Protocol

import trio

from datapulse.core.eventlog import LoggedEvent
from datapulse.core.sse import PING

PING_DUE = LoggedEvent(seq=-1, wire=PING)
"""The channel item that tells a stream to write a ping (never logged, never counted)."""


class Pingable(Protocol):
    def ping_due(self) -> None: ...


class Pinger:
    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._due: OrderedDict[Pingable, float] = OrderedDict()
        self._wake = trio.Event()

    def __len__(self) -> int:
        return len(self._due)

    def touch(self, stream: Pingable) -> None:
        """``stream`` just wrote: its next ping is due one interval from now."""
        self._due[stream] = trio.current_time() + self.interval_s
        self._due.move_to_end(stream)
        if len(self._due) == 1:
            self._wake.set()

    def forget(self, stream: Pingable) -> None:
        self._due.pop(stream, None)

    async def run(self) -> None:
        while True:
            if not self._due:
                self._wake = trio.Event()
                await self._wake.wait()
                continue
            stream, due = next(iter(self._due.items()))
            now = trio.current_time()
            if due > now:
                await trio.sleep_until(due)
                continue
            # Due: re-arm first (a stream that is too busy to take the ping is, by definition,
            # not idle), then poke it. Everything due at once is handled in this one pass.
            self._due[stream] = now + self.interval_s
            self._due.move_to_end(stream)
            stream.ping_due()
            await trio.lowlevel.checkpoint_if_cancelled()
