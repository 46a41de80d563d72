"""Soak: 2,000 concurrent streams with churn, calls flowing and pings, for about a minute.

Each of ``SLOTS`` clients loops until the end: open a session's stream, queue 1-3 calls, read
their results, sometimes drop the stream mid-way and resume with ``Last-Event-ID``, hold the
stream for a few seconds (pings arrive), leave, and start over with a new session. Asserted:

* no errors: every GET is 200, every POST 202, no ``error`` event, no client task fails, and
  the server logs nothing at ERROR;
* every call is answered exactly once, and each session's event ids arrive exactly once and
  in order (1..N) across all of its connections;
* after warm-up the process RSS grows by less than ``RSS_GROWTH_BOUND`` (stated below) while
  the churn goes on;
* at the end every connection and stream is gone.

Clients and server share one Trio loop (and the CI machine's two cores), so the load is
moderate on purpose: about 2,000 open streams, ~100 sessions opened and ~200 calls a second,
a ping every 2 s on every idle stream.
"""

from __future__ import annotations

import json
import logging
import random
from collections import Counter
from typing import Any

import pytest
import trio

from datapulse.tools.registry import ToolContext
from tests.helpers import (
    AUTH_HEADER,
    RawClient,
    open_events_stream,
    raise_fd_limit,
    rss,
    start_server,
    wait_for,
)

SLOTS = 2000
DURATION_S = 50.0
WARMUP_S = 20.0
RAMP_S = 10.0
HOLD_S = (12.0, 30.0)
PING_S = 2.0
RESUME_CHANCE = 0.3
MiB = 1024 * 1024
RSS_GROWTH_BOUND = 12 * MiB
"""Growth allowed between the end of warm-up and the end of the run. Measured: 1.6-4.1 MiB
(allocator noise). A deliberate leak of 10 KB per session raised it to 18 MiB."""


class ErrorLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


class Tally:
    def __init__(self) -> None:
        self.posted: set[str] = set()
        self.answered: Counter[str] = Counter()
        self.problems: list[str] = []
        self.cycles = 0
        self.resumes = 0
        self.pings = 0
        self.max_streams = 0


async def run_slot(slot: int, port: int, deadline: float, tally: Tally, rng: random.Random) -> None:
    await trio.sleep(rng.uniform(0, RAMP_S))
    generation = 0
    # The first hold is a random fraction of a full one, so slots are out of phase at once and
    # the churn reaches its steady state soon after the ramp.
    first = rng.uniform(0, 1)
    while trio.current_time() < deadline - HOLD_S[0]:
        generation += 1
        await one_cycle(f"soak-{slot}-{generation}", port, deadline, tally, rng, first)
        tally.cycles += 1
        first = 1.0


async def one_cycle(
    session: str, port: int, deadline: float, tally: Tally, rng: random.Random, share: float
) -> None:
    stream = await open_events_stream(port, session)
    await stream.read_until(lambda c: c.response is not None, 30)
    check(tally, stream, session)
    poster = await RawClient.connect(port)
    wanted: list[str] = []
    for i in range(rng.randint(1, 3)):
        request_id = f"{session}/{i}"
        message = {
            "type": "call_tool",
            "request_id": request_id,
            "data": {"name": "work", "arguments": {"ms": rng.randint(0, 30)}},
        }
        response = await poster.exchange(
            "POST", f"/message?session_id={session}", [AUTH_HEADER], json.dumps(message).encode()
        )
        if response.status_code != 202:
            tally.problems.append(f"POST {session}: {response.status_code} {poster.body!r}")
            return
        tally.posted.add(request_id)
        wanted.append(request_id)
    await poster.aclose()

    connections = [stream]
    if rng.random() < RESUME_CHANCE:
        # Drop the stream without reading (a network blip), come back with Last-Event-ID.
        await trio.sleep(rng.uniform(0, 0.1))
        await stream.abort()
        seen = [e.id for e in stream.events if e.id]
        stream = await open_events_stream(port, session, last_event_id=seen[-1] if seen else "0")
        await stream.read_until(lambda c: c.response is not None, 30)
        check(tally, stream, session)
        connections.append(stream)
        tally.resumes += 1

    def answered(client: RawClient) -> bool:
        results = {
            json.loads(e.data or "{}").get("request_id")
            for c in connections
            for e in c.data_events()
            if e.event is None
        }
        return all(w in results for w in wanted)

    await stream.read_until(answered, 30)
    hold_until = min(deadline, trio.current_time() + share * rng.uniform(*HOLD_S))
    with trio.move_on_at(hold_until):
        while await stream.receive():
            pass
    tally.pings += stream.body.count(b": ping\n")
    await stream.aclose()

    ids: list[int] = []
    for client in connections:
        for event in client.data_events():
            if event.event is not None:
                tally.problems.append(f"{session}: {event.event} {event.data}")
            if event.id:
                ids.append(int(event.id))
            payload = json.loads(event.data or "{}")
            if payload.get("type") == "tool_result":
                tally.answered[payload["request_id"]] += 1
            elif event.event is None:
                tally.problems.append(f"{session}: unexpected {payload}")
    if ids != list(range(1, len(ids) + 1)):
        tally.problems.append(f"{session}: ids {ids}")


def check(tally: Tally, client: RawClient, session: str) -> None:
    if client.response is None or client.response.status_code != 200:
        tally.problems.append(f"GET {session}: {client.response} {client.body!r}")


@pytest.mark.slow
@pytest.mark.timeout(180)  # ~50 s on the dev machine
async def test_soak_two_thousand_streams_with_churn(nursery: trio.Nursery) -> None:
    raise_fd_limit()
    errors = ErrorLog()
    logging.getLogger("datapulse").addHandler(errors)
    try:
        await soak(nursery, errors)
    finally:
        logging.getLogger("datapulse").removeHandler(errors)


async def soak(nursery: trio.Nursery, errors: ErrorLog) -> None:
    server, info = await start_server(
        nursery,
        ping_interval_s=PING_S,
        session_ttl_s=5.0,
        sweep_interval_s=0.5,
        read_timeout_s=30,
        keepalive_timeout_s=30,
        write_timeout_s=30,
        max_connections_per_ip=3 * SLOTS,
        max_sessions_per_principal=20 * SLOTS,
        max_sessions=20 * SLOTS,
        replay_events=64,
    )

    @server.tool("work", input_schema={"type": "object", "properties": {"ms": {"type": "integer"}}})
    async def work(arguments: dict[str, Any], context: ToolContext) -> dict[str, int]:
        await trio.sleep(arguments["ms"] / 1000)
        return {"ms": arguments["ms"]}

    tally = Tally()
    rng = random.Random(5)
    start = trio.current_time()
    deadline = start + DURATION_S
    samples: list[tuple[float, int]] = []

    async def sample() -> None:
        while True:
            await trio.sleep(2.5)
            attached = sum(s.stream is not None for s in server.sessions.live_sessions())
            tally.max_streams = max(tally.max_streams, attached)
            elapsed = trio.current_time() - start
            if elapsed >= WARMUP_S:
                samples.append((elapsed, rss()))

    with trio.fail_after(DURATION_S + 60):
        async with trio.open_nursery() as clients:
            sampler = trio.CancelScope()

            async def run_sampler() -> None:
                with sampler:
                    await sample()

            clients.start_soon(run_sampler)
            async with trio.open_nursery() as slots:
                for slot in range(SLOTS):
                    seed = rng.random()
                    slots.start_soon(
                        run_slot, slot, info.port, deadline, tally, random.Random(seed)
                    )
            sampler.cancel()
        await wait_for(lambda: not server.http.connections, 10, "all connections to close")
    elapsed = trio.current_time() - start
    assert all(s.stream is None for s in server.sessions.live_sessions())

    growth = max(r for _, r in samples) - samples[0][1]
    twice = [k for k, n in tally.answered.items() if n != 1]
    print(
        f"soak: {elapsed:.0f}s, {tally.cycles} sessions, {len(tally.posted)} calls, "
        f"{tally.resumes} resumes, {tally.pings} pings, peak {tally.max_streams} streams, "
        f"RSS after warm-up {samples[0][1] / MiB:.0f} MiB, growth {growth / MiB:.1f} MiB"
    )
    assert not tally.problems, tally.problems[:10]
    assert not errors.messages, errors.messages[:10]
    assert tally.max_streams >= 0.9 * SLOTS
    assert set(tally.answered) == tally.posted and not twice, twice[:10]
    assert tally.pings > 0 and tally.resumes > 0
    assert growth < RSS_GROWTH_BOUND, [(round(t), r // MiB) for t, r in samples]
