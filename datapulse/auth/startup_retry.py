"""StartupRetry: keep trying to load the keys while the IdP is down, with capped backoff.

An IdP that is down when the server starts must not stop it (restarting every instance during a
short outage would crash-loop them all). ``JwksCache.run_until_ready``, a background task of the
server, hands its attempt to ``StartupRetry.run``, which owns only the timing: the delay doubles
from ``initial_s`` up to ``max_s``, each one jittered (x0.5 .. x1) so that instances restarted
together do not hit a recovering IdP at once. While it runs, ``active`` tells the cache that no
request should wait on a fetch, and ``next_at`` is when the next attempt starts (for
``Retry-After``).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable

import trio


class StartupRetry:
    """The background retry's timing; ``clock`` is for ``next_at`` only, sleeps use Trio's."""

    def __init__(
        self,
        *,
        initial_s: float,
        max_s: float,
        clock: Callable[[], float],
        jitter: Callable[[], float],
    ) -> None:
        if not 0 < initial_s <= max_s:
            raise ValueError("retry delays must satisfy 0 < retry_initial_s <= retry_max_s")
        self._initial_s = initial_s
        self._max_s = max_s
        self._clock = clock
        self._jitter = jitter
        self.active = False  # run() is running: requests never wait on a fetch
        self.next_at = -math.inf  # its next attempt

    async def run(
        self, ready: Callable[[], bool], attempt: Callable[[], Awaitable[object]]
    ) -> None:
        """Sleep, then ``attempt()``, until ``ready()``; return once it is."""
        delay = self._initial_s
        self.active = True
        try:
            while not ready():
                wait = delay * (0.5 + 0.5 * self._jitter())
                self.next_at = self._clock() + wait
                await trio.sleep(wait)
                if not ready():
                    await attempt()
                delay = min(delay * 2, self._max_s)
        finally:
            self.active = False
            self.next_at = -math.inf
