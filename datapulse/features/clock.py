"""The built-in resource ``pulse://clock``: the server's clock, updated every second, so that a
newcomer can watch a live subscription without writing a server (README: "Watch a resource")."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import trio

from datapulse.errors import ServiceUnavailable
from datapulse.features.resources import ResourceRegistry

CLOCK_URI = "pulse://clock"
TICK_S = 1.0


def read_clock() -> dict[str, Any]:
    now = datetime.now(UTC)
    return {
        "time": now.replace(microsecond=0).isoformat().replace("+00:00", "Z"),
        "unix": round(now.timestamp(), 3),
    }


async def clock() -> dict[str, Any]:
    """The server's clock (UTC, ISO 8601, and Unix seconds), updated every second."""
    return read_clock()


def register_clock(resources: ResourceRegistry) -> None:
    resources.add(CLOCK_URI, clock, name="clock", title="Clock", mime_type="application/json")


async def tick(notify: Callable[[str], Awaitable[Any]], interval_s: float = TICK_S) -> None:
    """Tell subscribers the clock changed, on every whole interval, until cancelled."""
    while True:
        # On the second boundary, so that a read right after the notification shows a new value.
        await trio.sleep(interval_s - (time.time() % interval_s))
        # The shared store is down (it says so on /readyz): the next tick tries again.
        with contextlib.suppress(ServiceUnavailable):
            await notify(CLOCK_URI)
