"""Scenario 3, fan-out latency: K streams, E results published to each, S concurrent senders.

Publishing is the same request on every server: a ``get_time`` tool call whose result is
delivered as an event on the stream -- ``POST /message?session_id=`` on the original API
(``events``), a JSON-RPC ``tools/call`` POSTed to the legacy endpoint on MCP servers (``sse``,
after the initialize handshake). Senders are closed-loop: each POSTs, waits for the 202, POSTs
the next, round-robin over all streams. Latency runs from just before the POST leaves the
client to the event arriving on its stream (the stream and its sender share a worker process and
its clock). Figures: latency p50/p90/p99/max, delivered events/s = events received / (last
arrival - first send) over all workers, and delivery completeness.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import trio

from benchmarks import profiling
from benchmarks.scenarios.base import (
    Context,
    Meter,
    base_job,
    client_cpu,
    cpu_line,
    figure_recorder,
    fmt,
    latency_summary,
    merge_counts,
    merged,
    put_cpu_figures,
    split,
)
from benchmarks.servers import ServerSpec, run_server
from benchmarks.workers import start_workers

NAME = "fanout"


@dataclass(frozen=True)
class Params:
    streams: int
    events_per_stream: int
    senders: int
    kinds: tuple[str, ...] = ("events", "sse")
    warmup_per_stream: int = 1  # results sent to every stream first, not measured (JIT, caches)
    concurrency: int = 32
    open_timeout_s: float = 20.0
    open_budget_s: float = 120.0
    timeout_s: float = 120.0
    ping_interval_s: float = 3600.0

    @classmethod
    def quick(cls) -> Params:
        return cls(streams=500, events_per_stream=3, senders=16, open_budget_s=40, timeout_s=40)

    @classmethod
    def full(cls) -> Params:
        return cls(streams=1000, events_per_stream=5, senders=32)

    @property
    def param(self) -> str:
        return f"K={self.streams}x{self.events_per_stream},S={self.senders}"


async def run_trial(
    ctx: Context, p: Params, spec: ServerSpec, kind: str, round_index: int, name: str = NAME
) -> dict[str, Any]:
    """One trial; ``name`` is the scenario it is recorded under (``fanout_steady`` reuses it)."""
    async with run_server(
        spec, ping_interval_s=p.ping_interval_s, log_path=ctx.server_log(spec)
    ) as server:
        deadline = p.open_budget_s + 2 * p.timeout_s + 60
        senders = split(p.senders, ctx.workers)
        jobs = [
            {
                **base_job("fanout", server, i, deadline),
                "kind": kind,
                "count": count,
                "events_per_stream": p.events_per_stream,
                "warmup_per_stream": p.warmup_per_stream,
                "senders": max(1, senders[i]),
                "concurrency": p.concurrency,
                "open_timeout_s": p.open_timeout_s,
                "open_budget_s": p.open_budget_s,
                "timeout_s": p.timeout_s,
            }
            for i, count in enumerate(split(p.streams, ctx.workers))
        ]
        async with start_workers(jobs, ctx.worker_log(name)) as pool:
            opened_reports = await pool.gather("opened", p.open_budget_s + 30)
            await pool.command("warm")
            await pool.gather("warmed", p.timeout_s + 30)
            await trio.sleep(0.5)
            async with profiling.sampling(ctx, server, name, kind, round_index) as sampler:
                meter = Meter(server)
                meter.start()
                await pool.command("start")
                reports = await pool.gather("result", 2 * p.timeout_s + 30)
                cpu = meter.stop()
    opened = sum(r["opened"] for r in opened_reports)
    received = sum(r["received"] for r in reports)
    expected = sum(r["expected"] for r in reports)
    first = min(r["first_send"] for r in reports)
    last = max(r["last_arrival"] for r in reports)
    span = last - first if received else 0.0
    latency = latency_summary(merged(reports, "latencies_ms"))
    row: dict[str, Any] = {
        "opened": opened,
        "open_errors": merge_counts(opened_reports, "errors"),
        "expected": expected,
        "sent": sum(r["sent"] for r in reports),
        "accepted": sum(r["accepted"] for r in reports),
        "rejected": sum(r["rejected"] for r in reports),
        "send_errors": merge_counts(reports, "errors"),
        "received": received,
        "dropped_streams": sum(r["dropped"] for r in reports),
        "span_s": span,
        "events_per_s": received / span if span > 0 else None,
        "delivered_pct": 100 * received / expected if expected else None,
        "latency_ms": latency,
        **cpu,
        **client_cpu(reports),
    }

    profile = sampler.write_report(
        {"delivered event": received, "request": row["sent"]},
        f"{p.param}: {received} events delivered, {row['sent']} POSTs, "
        f"{fmt(row['events_per_s'], '.0f')} events/s, server CPU (psutil) "
        f"{fmt(cpu['server_cpu_s'], '.2f')} s = "
        f"{fmt(1e6 * (cpu['server_cpu_s'] or 0) / received if received else None, '.0f')} us "
        "per delivered event",
    )
    if profile is not None:
        row["profile"] = profile
    put = figure_recorder(ctx, name, spec.name, kind, round_index, p.param)

    put("events_per_s", row["events_per_s"], "events/s", "higher")
    for q in ("p50", "p90", "p99", "max"):
        put(f"latency_ms_{q}", latency[q], "ms", "lower")
    put("delivered_pct", row["delivered_pct"], "%", "higher")
    put_cpu_figures(put, row)
    ctx.say(
        f"{p.param} opened {opened}  {fmt(row['events_per_s'], '.0f')} events/s  latency p50 "
        f"{fmt(latency['p50'])} p90 {fmt(latency['p90'])} p99 {fmt(latency['p99'])} max "
        f"{fmt(latency['max'])} ms  delivered {received}/{expected}  errors "
        f"{row['send_errors'] or 0}  {cpu_line(row)}"
    )
    return row


def describe(p: Params) -> dict[str, Any]:
    return dataclasses.asdict(p)
