"""Scenario 2, ping overhead: what keeping N idle streams alive costs, and how punctual it is.

The server runs with ping interval P. After N streams are open and one interval has passed,
the server's CPU is read over a window of several intervals while the workers timestamp every
``:`` comment (ping) on every stream. Figures:

* ``cpu_s_per_1k_streams_min`` -- server CPU-seconds per 1,000 streams per minute;
* ``ping_late_ms_p50/p99/max`` -- how much later than P each ping came after the previous one on
  the same stream (negative: early). All N streams' pings fall due within the few seconds it took
  to open them, which is the point: the bunching shows here;
* ``pings_delivered_pct`` -- pings seen / (N x window / P).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import trio

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
    split,
)
from benchmarks.servers import ServerSpec, run_server
from benchmarks.workers import start_workers

NAME = "ping"


@dataclass(frozen=True)
class Params:
    count: int
    interval_s: float
    window_s: float
    kinds: tuple[str, ...] = ("events", "mcp")
    concurrency: int = 64
    open_timeout_s: float = 20.0
    open_budget_s: float = 120.0

    @classmethod
    def quick(cls) -> Params:
        return cls(count=1000, interval_s=1.0, window_s=5.0, open_budget_s=40.0)

    @classmethod
    def full(cls) -> Params:
        return cls(count=5000, interval_s=5.0, window_s=60.0)


async def run_trial(
    ctx: Context, p: Params, spec: ServerSpec, kind: str, round_index: int
) -> dict[str, Any]:
    async with run_server(
        spec, ping_interval_s=p.interval_s, log_path=ctx.server_log(spec)
    ) as server:
        deadline = p.open_budget_s + p.window_s + 3 * p.interval_s + 120
        jobs = [
            {
                **base_job("ping", server, i, deadline),
                "kind": kind,
                "count": count,
                "interval_s": p.interval_s,
                "window_s": p.window_s,
                "concurrency": p.concurrency,
                "open_timeout_s": p.open_timeout_s,
                "open_budget_s": p.open_budget_s,
            }
            for i, count in enumerate(split(p.count, ctx.workers))
        ]
        async with start_workers(jobs, ctx.worker_log(NAME)) as pool:
            opened_reports = await pool.gather("opened", p.open_budget_s + 30)
            opened = sum(r["opened"] for r in opened_reports)
            await trio.sleep(p.interval_s)  # let the first round of pings pass
            meter = Meter(server)
            meter.start()
            await pool.command("start")
            reports = await pool.gather("result", p.window_s + 60)
            cpu = meter.stop()
            rss = server.rss_bytes()
    wall = max(r["wall_s"] for r in reports)
    live = sum(r["live"] for r in reports)
    pings = sum(r["pings"] for r in reports)
    lateness = latency_summary(merged(reports, "lateness_ms"))
    cpu_s = cpu["server_cpu_s"] or 0.0
    row: dict[str, Any] = {
        "opened": opened,
        "live": live,
        "open_errors": merge_counts(opened_reports, "errors"),
        "window_s": wall,
        "cpu_s_per_1k_streams_min": cpu_s / (live / 1000) / (wall / 60) if live and wall else None,
        "pings": pings,
        "pings_delivered_pct": 100 * pings / (live * wall / p.interval_s) if live else None,
        "silent_streams": sum(r["silent_streams"] for r in reports),
        "dropped": sum(r["dropped"] for r in reports),
        "ping_late_ms": lateness,
        "server_rss_mib": rss / 2**20,
        **cpu,
        **client_cpu(reports),
    }

    put = figure_recorder(
        ctx, NAME, spec.name, kind, round_index, f"N={p.count},P={p.interval_s:g}s"
    )

    put("cpu_s_per_1k_streams_min", row["cpu_s_per_1k_streams_min"], "CPU-s", "lower")
    put("ping_late_ms_p50", lateness["p50"], "ms", "lower")
    put("ping_late_ms_p99", lateness["p99"], "ms", "lower")
    put("ping_late_ms_max", lateness["max"], "ms", "lower")
    put("pings_delivered_pct", row["pings_delivered_pct"], "%", "higher")
    put("live_streams", live, "streams", "higher")
    put("client_cpu_pct", row["client_cpu_pct"], "% of a core")
    put("client_cpu_max_worker_pct", row["client_cpu_max_worker_pct"], "% of a core")
    put("machine_busy_pct", row["machine_busy_pct"], "% of all cores")
    ctx.say(
        f"N={live}/{p.count} P={p.interval_s:g}s  server {fmt(row['cpu_s_per_1k_streams_min'], '.3f')}"
        f" CPU-s/1k/min  late p50 {fmt(lateness['p50'])} p99 {fmt(lateness['p99'])} max "
        f"{fmt(lateness['max'])} ms  delivered {fmt(row['pings_delivered_pct'])}%  "
        f"{cpu_line(row)}"
    )
    return row


def describe(p: Params) -> dict[str, Any]:
    return dataclasses.asdict(p)
