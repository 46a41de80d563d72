"""Worker program for the RPC scenario: closed-loop clients, one session each."""

from __future__ import annotations

import collections
import itertools
import time
from typing import Any

import trio

from benchmarks.client import (
    JSON_HEADERS,
    EventStream,
    HttpConnection,
    HttpStatusError,
    McpSession,
    Target,
    open_stream,
    response_id,
    seed_call,
)
from benchmarks.loadgen.common import (
    NETWORK_ERRORS,
    Control,
    cpu_seconds,
    error_name,
    sample,
    target_of,
)


class SeedClient:
    """Original API: POST /message, then read the result off this client's own stream."""

    def __init__(self, target: Target, name: str) -> None:
        self.target = target
        self.name = name
        self.ids = itertools.count()
        self.stream: EventStream | None = None
        self.poster: HttpConnection | None = None
        self.answers: dict[str, int] = {}

    async def setup(self) -> None:
        self.stream = await open_stream(self.target, "events")
        self.poster = await HttpConnection.open(self.target)

    async def call(self) -> None:
        assert self.stream is not None and self.poster is not None
        key = f"{self.name}n{next(self.ids)}"
        body = seed_call(key)
        head, _ = await self.poster.request("POST", self.stream.post_path, JSON_HEADERS, body)
        if not 200 <= head.status < 300:
            raise HttpStatusError(head.status, "POST /message")
        while not any(response_id(e) == key for e in await self.stream.receive()):
            pass

    def close(self) -> None:
        for part in (self.stream, self.poster):
            if part is not None:
                part.close()


class StreamableClient:
    """Streamable HTTP: one session, tools/call answered as JSON or as a one-event SSE body."""

    def __init__(self, target: Target, _name: str) -> None:
        self.target = target
        self.session: McpSession | None = None
        self.answers: dict[str, int] = {}

    async def setup(self) -> None:
        self.session = McpSession(await HttpConnection.open(self.target), answers=self.answers)
        await self.session.initialize()

    async def call(self) -> None:
        assert self.session is not None
        await self.session.call_get_time()

    def close(self) -> None:
        if self.session is not None:
            self.session.conn.close()


async def run_rpc(job: dict[str, Any], control: Control) -> None:
    target, mode = target_of(job), job["mode"]
    setup_timeout, call_timeout = job["setup_timeout_s"], job["call_timeout_s"]
    kind = SeedClient if mode == "seed" else StreamableClient
    clients = [kind(target, f"w{job['worker_index']}c{i}") for i in range(job["clients"])]
    errors: collections.Counter[str] = collections.Counter()
    latencies: list[float] = []
    go = trio.Event()
    window = [float("inf"), float("inf")]  # set when the coordinator says "start"

    async def setup(client: SeedClient | StreamableClient) -> bool:
        for _attempt in range(3):
            try:
                with trio.fail_after(setup_timeout):
                    await client.setup()
                return True
            except NETWORK_ERRORS as exc:
                errors[error_name(exc)] += 1
                client.close()
        return False

    async def drive(client: SeedClient | StreamableClient) -> None:
        await go.wait()
        restarts = 0
        while time.monotonic() < window[1] and restarts < 20:
            started = time.monotonic()
            try:
                with trio.fail_after(call_timeout):
                    await client.call()
            except NETWORK_ERRORS as exc:
                errors[error_name(exc)] += 1
                restarts += 1
                client.close()
                if not await setup(client):
                    return
                continue
            finished = time.monotonic()
            if window[0] <= finished <= window[1]:
                latencies.append((finished - started) * 1000)

    ready = [c for c in clients if await setup(c)]
    control.report("ready", ready=len(ready), errors=dict(errors))
    await control.command()
    cpu0, wall0 = cpu_seconds(), time.monotonic()
    window[0] = wall0 + job["warmup_s"]
    window[1] = window[0] + job["duration_s"]
    try:
        async with trio.open_nursery() as nursery:
            for client in ready:
                nursery.start_soon(drive, client)
            go.set()
    finally:
        for client in clients:
            client.close()
    answers: collections.Counter[str] = collections.Counter()
    for client in clients:
        answers.update(client.answers)
    control.report(
        "result",
        completed=len(latencies),
        answers=dict(answers),
        window_s=job["duration_s"],
        errors=dict(errors),
        latencies_ms=sample(latencies),
        cpu_s=cpu_seconds() - cpu0,
        wall_s=time.monotonic() - wall0,
    )
