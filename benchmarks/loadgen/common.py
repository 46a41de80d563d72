"""Shared worker pieces: the control channel, bulk stream opening, holding, publishing."""

from __future__ import annotations

import collections
import json
import os
import random
import resource
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from benchmarks.client import (
    JSON_HEADERS,
    EventStream,
    HttpConnection,
    HttpStatusError,
    StreamEnded,
    Target,
    call_get_time,
    initialize_legacy,
    open_stream,
    response_id,
    seed_call,
)
from benchmarks.wire import WireError

NETWORK_ERRORS = (OSError, StreamEnded, HttpStatusError, WireError, trio.TooSlowError, ValueError)
MAX_SAMPLES = 100_000  # latency values sent back per report; beyond this, a uniform sample


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def error_name(exc: BaseException) -> str:
    if isinstance(exc, HttpStatusError):
        return f"HTTP {exc.status}"
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"{type(exc).__name__}[{os.strerror(exc.errno)}]"
    return type(exc).__name__


def sample(values: list[float], limit: int = MAX_SAMPLES) -> list[float]:
    picked = values if len(values) <= limit else random.sample(values, limit)
    return [round(v, 3) for v in picked]


class Control:
    """The JSON-lines channel to the coordinator."""

    def __init__(self) -> None:
        self._stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
        self._buffer = b""

    def report(self, event: str, **fields: Any) -> None:
        sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
        sys.stdout.flush()

    async def command(self) -> str:
        while b"\n" not in self._buffer:
            data = await self._stdin.receive_some(4096)
            if not data:
                raise SystemExit("coordinator went away")
            self._buffer += data
        line, self._buffer = self._buffer.split(b"\n", 1)
        return str(json.loads(line)["cmd"])


@dataclass
class OpenStats:
    opened: int = 0
    failed: int = 0
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    open_ms: list[float] = field(default_factory=list)

    def as_report(self) -> dict[str, Any]:
        return {
            "opened": self.opened,
            "failed": self.failed,
            "errors": dict(self.errors),
            "open_ms": sample(self.open_ms, 20_000),
        }


async def open_streams(
    target: Target,
    kind: str,
    count: int,
    *,
    concurrency: int,
    timeout_s: float,
    budget_s: float,
    on_open: Callable[[EventStream], Awaitable[None]],
    rcvbuf: int | None = None,
) -> OpenStats:
    """Open ``count`` streams, ``concurrency`` handshakes at a time, within ``budget_s``."""
    stats = OpenStats()
    limiter = trio.CapacityLimiter(concurrency)

    async def open_one() -> None:
        async with limiter:
            started = trio.current_time()
            try:
                with trio.fail_after(timeout_s):
                    stream = await open_stream(target, kind, rcvbuf=rcvbuf)
                    try:
                        await on_open(stream)
                    except BaseException:
                        stream.close()
                        raise
            except NETWORK_ERRORS as exc:
                stats.failed += 1
                stats.errors[error_name(exc)] += 1
                return
            stats.opened += 1
            stats.open_ms.append((trio.current_time() - started) * 1000)

    with trio.move_on_after(budget_s):
        async with trio.open_nursery() as nursery:
            for _ in range(count):
                nursery.start_soon(open_one)
    missing = count - stats.opened - stats.failed
    if missing:
        stats.failed += missing
        stats.errors["open budget exceeded"] += missing
    return stats


class Holder:
    """Keeps streams open and reads whatever arrives; counts server-side drops and pings."""

    def __init__(self, *, record_pings: bool = False) -> None:
        self.live = 0
        self.dropped = 0
        self.events = 0
        self.record_pings = record_pings
        self.ping_times: list[list[float]] = []
        self.on_event: Callable[[Any, float], None] | None = None

    def adopt(self, stream: EventStream, nursery: trio.Nursery) -> None:
        """Count the stream as live at once and read it in a task of ``nursery``."""
        times: list[float] = []
        if self.record_pings:
            self.ping_times.append(times)
        self.live += 1
        nursery.start_soon(self._hold, stream, times)

    async def _hold(self, stream: EventStream, times: list[float]) -> None:
        try:
            while True:
                events = await stream.receive()
                now = time.monotonic()
                for event in events:
                    if event.comment:
                        if self.record_pings:
                            times.append(now)
                        continue
                    self.events += 1
                    if self.on_event is not None:
                        self.on_event(response_id(event), now)
        except NETWORK_ERRORS:
            self.dropped += 1
        finally:
            self.live -= 1
            stream.close()


def target_of(job: dict[str, Any]) -> Target:
    return Target(job["host"], job["port"], job["token"])


async def prepare_stream(stream: EventStream, target: Target, kind: str, request_id: int) -> None:
    """Legacy SSE sessions need the initialize handshake before they take tools/call."""
    if kind != "sse":
        return
    poster = await HttpConnection.open(target)
    try:
        await initialize_legacy(stream, poster, request_id)
    finally:
        poster.close()


@dataclass
class Sends:
    sent: int = 0
    accepted: int = 0
    rejected: int = 0
    errors: collections.Counter[str] = field(default_factory=collections.Counter)


async def post_loop(
    target: Target,
    next_job: Callable[[], tuple[str, bytes, Any] | None],
    sends: Sends,
    on_sent: Callable[[Any, float], None],
    *,
    pace_s: float = 0.0,
    until: float = float("inf"),
) -> None:
    """One sender: POSTs jobs on a keep-alive connection until ``next_job()`` runs dry."""
    conn: HttpConnection | None = None
    next_at = time.monotonic()
    failures = 0
    try:
        while failures < 50 and time.monotonic() < until:
            if pace_s:
                next_at += pace_s
                await trio.sleep(max(0.0, next_at - time.monotonic()))
            item = next_job()
            if item is None:
                return
            path, body, key = item
            try:
                if conn is None:
                    conn = await HttpConnection.open(target)
                on_sent(key, time.monotonic())
                sends.sent += 1
                head, _ = await conn.request("POST", path, JSON_HEADERS, body)
            except NETWORK_ERRORS as exc:
                failures += 1
                sends.errors[error_name(exc)] += 1
                if conn is not None:
                    conn.close()
                conn = None
                continue
            if 200 <= head.status < 300:
                sends.accepted += 1
            else:
                sends.rejected += 1
                sends.errors[f"HTTP {head.status}"] += 1
            if head.headers.get("connection", "").lower() == "close":
                conn.close()
                conn = None
    finally:
        if conn is not None:
            conn.close()


def ignore_sent(_key: Any, _now: float) -> None:
    pass


def publish_body(kind: str, key: Any) -> bytes:
    return seed_call(key) if kind == "events" else call_get_time(key)
