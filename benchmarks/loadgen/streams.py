"""Worker programs that hold SSE streams: idle, ping, fan-out, slow consumers."""

from __future__ import annotations

import collections
import functools
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from benchmarks.client import EventStream, Target
from benchmarks.loadgen.common import (
    Control,
    Holder,
    Sends,
    cpu_seconds,
    ignore_sent,
    open_streams,
    post_loop,
    prepare_stream,
    publish_body,
    sample,
    target_of,
)


async def run_idle(job: dict[str, Any], control: Control) -> None:
    target, kind = target_of(job), job["kind"]
    holder = Holder()
    cpu_start = cpu_seconds()
    async with trio.open_nursery() as nursery:

        async def keep(stream: EventStream) -> None:
            holder.adopt(stream, nursery)

        async def drop(stream: EventStream) -> None:
            stream.close()

        warm = await open_streams(
            target,
            kind,
            job["warmup"],
            concurrency=16,
            timeout_s=job["open_timeout_s"],
            budget_s=job["level_budget_s"],
            on_open=drop,
        )
        control.report("warmed", **warm.as_report())
        cmd = await control.command()
        opened = 0
        for level in job["levels"] if cmd != "stop" else []:
            started, cpu0 = time.monotonic(), cpu_seconds()
            stats = await open_streams(
                target,
                kind,
                max(0, level - opened),
                concurrency=job["concurrency"],
                timeout_s=job["open_timeout_s"],
                budget_s=job["level_budget_s"],
                on_open=keep,
            )
            opened += stats.opened
            control.report(
                "level",
                level=level,
                elapsed_s=time.monotonic() - started,
                cpu_s=cpu_seconds() - cpu0,
                live=holder.live,
                dropped=holder.dropped,
                **stats.as_report(),
            )
            if await control.command() == "stop":
                break
        control.report("holding", live=holder.live, dropped=holder.dropped)
        nursery.cancel_scope.cancel()
    control.report("done", cpu_s=cpu_seconds() - cpu_start)


async def run_ping(job: dict[str, Any], control: Control) -> None:
    target, kind, interval = target_of(job), job["kind"], job["interval_s"]
    holder = Holder(record_pings=True)
    async with trio.open_nursery() as nursery:

        async def keep(stream: EventStream) -> None:
            holder.adopt(stream, nursery)

        stats = await open_streams(
            target,
            kind,
            job["count"],
            concurrency=job["concurrency"],
            timeout_s=job["open_timeout_s"],
            budget_s=job["open_budget_s"],
            on_open=keep,
        )
        control.report("opened", **stats.as_report())
        await control.command()
        window_start, cpu0 = time.monotonic(), cpu_seconds()
        await trio.sleep(job["window_s"])
        window_end, cpu1 = time.monotonic(), cpu_seconds()
        lateness: list[float] = []
        pings = silent = 0
        for times in holder.ping_times:
            inside = [t for t in times if window_start <= t <= window_end]
            pings += len(inside)
            silent += not inside
            lateness.extend(
                (b - a - interval) * 1000
                for a, b in itertools.pairwise(times)
                if window_start <= b <= window_end
            )
        control.report(
            "result",
            pings=pings,
            silent_streams=silent,
            live=holder.live,
            dropped=holder.dropped,
            lateness_ms=sample(lateness),
            wall_s=window_end - window_start,
            cpu_s=cpu1 - cpu0,
        )
        nursery.cancel_scope.cancel()


@dataclass
class Publication:
    """One publishing phase of the fan-out: what was sent when, and what arrived."""

    sends: Sends = field(default_factory=Sends)
    sent_at: dict[Any, float] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    first_send: float = 0.0
    last_arrival: float = 0.0

    def on_sent(self, key: Any, now: float) -> None:
        self.sent_at[key] = now

    def on_event(self, key: Any, now: float) -> None:
        started = self.sent_at.pop(key, None)
        if started is not None:
            self.last_arrival = now
            self.latencies.append((now - started) * 1000)


async def publish_round_robin(
    target: Target,
    kind: str,
    streams: list[EventStream],
    per_stream: int,
    senders: int,
    holder: Holder,
    keys: Callable[[], Any],
    timeout_s: float,
) -> Publication:
    """Send ``per_stream`` results to every stream and wait until they have all arrived."""
    phase = Publication()
    holder.on_event = phase.on_event
    queue = collections.deque(s for _ in range(per_stream) for s in streams)

    def next_job() -> tuple[str, bytes, Any] | None:
        if not queue:
            return None
        stream, key = queue.popleft(), keys()
        return stream.post_path, publish_body(kind, key), key

    phase.first_send = time.monotonic()
    with trio.move_on_after(timeout_s):
        async with trio.open_nursery() as nursery:
            for _ in range(senders):
                nursery.start_soon(post_loop, target, next_job, phase.sends, phase.on_sent)
        while len(phase.latencies) < phase.sends.accepted:  # stragglers; arrivals are stamped
            await trio.sleep(0.005)  # by the readers, so this poll adds nothing to them
    return phase


async def run_fanout(job: dict[str, Any], control: Control) -> None:
    target, kind = target_of(job), job["kind"]
    worker = job["worker_index"]
    holder = Holder()
    streams: list[EventStream] = []
    handshake_ids = itertools.count(1_000_000_000)
    counter = itertools.count()

    def next_key() -> Any:
        n = next(counter)
        return f"w{worker}n{n}" if kind == "events" else n

    async with trio.open_nursery() as nursery:

        async def keep(stream: EventStream) -> None:
            await prepare_stream(stream, target, kind, next(handshake_ids))
            streams.append(stream)
            holder.adopt(stream, nursery)

        stats = await open_streams(
            target,
            kind,
            job["count"],
            concurrency=job["concurrency"],
            timeout_s=job["open_timeout_s"],
            budget_s=job["open_budget_s"],
            on_open=keep,
        )
        control.report("opened", **stats.as_report())
        await control.command()
        warm = await publish_round_robin(
            target,
            kind,
            streams,
            job["warmup_per_stream"],
            job["senders"],
            holder,
            next_key,
            job["timeout_s"],
        )
        control.report("warmed", received=len(warm.latencies), accepted=warm.sends.accepted)
        await control.command()
        cpu0 = cpu_seconds()
        phase = await publish_round_robin(
            target,
            kind,
            streams,
            job["events_per_stream"],
            job["senders"],
            holder,
            next_key,
            job["timeout_s"],
        )
        control.report(
            "result",
            expected=len(streams) * job["events_per_stream"],
            sent=phase.sends.sent,
            accepted=phase.sends.accepted,
            rejected=phase.sends.rejected,
            errors=dict(phase.sends.errors),
            received=len(phase.latencies),
            dropped=holder.dropped,
            latencies_ms=sample(phase.latencies),
            first_send=phase.first_send,
            last_arrival=phase.last_arrival,
            cpu_s=cpu_seconds() - cpu0,
            wall_s=time.monotonic() - phase.first_send,
        )
        nursery.cancel_scope.cancel()


async def run_slow(job: dict[str, Any], control: Control) -> None:
    target, kind = target_of(job), job["kind"]
    holder = Holder()
    streams: list[EventStream] = []
    handshake_ids = itertools.count(1_000_000_000)
    async with trio.open_nursery() as nursery:

        async def keep(stream: EventStream) -> None:
            await prepare_stream(stream, target, kind, next(handshake_ids))
            stream.conn.recv_bytes = job["read_bytes"]
            stream.conn.recv_delay_s = job["read_interval_s"]
            streams.append(stream)
            holder.adopt(stream, nursery)

        stats = await open_streams(
            target,
            kind,
            job["count"],
            concurrency=job["concurrency"],
            timeout_s=job["open_timeout_s"],
            budget_s=job["open_budget_s"],
            on_open=keep,
            rcvbuf=job["rcvbuf"],
        )
        control.report("opened", **stats.as_report())
        await control.command()
        cycle = itertools.cycle(streams) if streams else iter(())
        counter = itertools.count()
        worker = job["worker_index"]

        def next_job() -> tuple[str, bytes, Any] | None:
            stream = next(cycle, None)
            if stream is None:
                return None
            n = next(counter)
            key: Any = f"w{worker}n{n}" if kind == "events" else n
            return stream.post_path, publish_body(kind, key), key

        sends = Sends()
        cpu0, started = cpu_seconds(), time.monotonic()
        until = started + job["duration_s"]
        pace_s = job["senders"] / job["rate_per_s"]
        with trio.move_on_after(job["duration_s"] + 5):
            async with trio.open_nursery() as senders:
                for _ in range(job["senders"]):
                    senders.start_soon(
                        functools.partial(
                            post_loop,
                            target,
                            next_job,
                            sends,
                            ignore_sent,
                            pace_s=pace_s,
                            until=until,
                        )
                    )
        control.report(
            "sent",
            sent=sends.sent,
            accepted=sends.accepted,
            rejected=sends.rejected,
            errors=dict(sends.errors),
            received=holder.events,
            dropped=holder.dropped,
            wall_s=time.monotonic() - started,
        )
        await control.command()
        control.report(
            "result",
            received=holder.events,
            dropped=holder.dropped,
            cpu_s=cpu_seconds() - cpu0,
            wall_s=time.monotonic() - started,
        )
        nursery.cancel_scope.cancel()
