"""Scenario 1, idle streams: how many concurrent SSE streams, how fast, at what memory cost.

One server start per round. After a short warm-up (a few streams opened and closed, so lazy
imports and first-use caches are not billed to the streams) the baseline RSS is read, then the
workers open streams up to each level in turn (1k, 5k, 10k, 20k in full mode), keeping all of them
open. At each level: the time to open the increment (and opens/s), server RSS growth per open
stream, failures. Pings are off (a one-hour interval) so only the cost of holding streams shows.
A server that fails more than ``max_fail_fraction`` of a level's opens is not pushed further.

Stream kinds: ``events`` opens ``GET /events``; ``sse`` opens ``GET /sse`` and waits for the
``endpoint`` event (no initialize); ``mcp`` does initialize + initialized and then ``GET /mcp``,
so its open rate includes two POSTs.
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
    merge_counts,
    merged,
    put_cpu_figures,
    split,
)
from benchmarks.servers import ServerSpec, run_server
from benchmarks.stats import percentile
from benchmarks.workers import start_workers

NAME = "idle"
KiB = 1024


@dataclass(frozen=True)
class Params:
    levels: tuple[int, ...]
    kinds: tuple[str, ...] = ("events", "sse", "mcp")
    warmup: int = 20
    concurrency: int = 64  # handshakes in flight per worker
    open_timeout_s: float = 20.0
    level_budget_s: float = 120.0
    settle_s: float = 1.0
    max_fail_fraction: float = 0.02
    ping_interval_s: float = 3600.0

    @classmethod
    def quick(cls) -> Params:
        return cls(levels=(250, 1000), level_budget_s=30.0, settle_s=0.5)

    @classmethod
    def full(cls) -> Params:
        return cls(levels=(1000, 5000, 10000, 20000))


async def run_trial(
    ctx: Context, p: Params, spec: ServerSpec, kind: str, round_index: int
) -> dict[str, Any]:
    levels_out: list[dict[str, Any]] = []
    async with run_server(
        spec, ping_interval_s=p.ping_interval_s, log_path=ctx.server_log(spec)
    ) as server:
        per_worker = [split(level, ctx.workers) for level in p.levels]
        deadline = p.level_budget_s * (len(p.levels) + 1) + 120
        jobs = [
            {
                **base_job("idle", server, i, deadline),
                "kind": kind,
                "levels": [counts[i] for counts in per_worker],
                "warmup": max(1, p.warmup // ctx.workers),
                "concurrency": p.concurrency,
                "open_timeout_s": p.open_timeout_s,
                "level_budget_s": p.level_budget_s,
            }
            for i in range(ctx.workers)
        ]
        async with start_workers(jobs, ctx.worker_log(NAME)) as pool:
            warm = await pool.gather("warmed", p.level_budget_s + 30)
            if sum(r["opened"] for r in warm) == 0:
                raise RuntimeError(f"warm-up opened no stream: {merge_counts(warm, 'errors')}")
            await trio.sleep(p.settle_s)
            base_rss = server.rss_bytes()
            open_total_s = 0.0
            await pool.command("next")
            for level_index, level in enumerate(p.levels):
                meter = Meter(server)
                meter.start()
                reports = await pool.gather("level", p.level_budget_s + 30)
                cpu = meter.stop()
                attempted = level - (p.levels[level_index - 1] if level_index else 0)
                opened_now = sum(r["opened"] for r in reports)
                failed = sum(r["failed"] for r in reports)
                elapsed = max(r["elapsed_s"] for r in reports)
                open_total_s += elapsed
                await trio.sleep(p.settle_s)
                rss = server.rss_bytes()
                live = sum(r["live"] for r in reports)
                open_ms = merged(reports, "open_ms")
                row = {
                    "level": level,
                    "attempted": attempted,
                    "opened": opened_now,
                    "live": live,
                    "failed": failed,
                    "errors": merge_counts(reports, "errors"),
                    "elapsed_s": elapsed,
                    "open_total_s": open_total_s,
                    "opens_per_s": opened_now / elapsed if elapsed > 0 else None,
                    "rss_bytes": rss,
                    "base_rss_bytes": base_rss,
                    "rss_per_stream_kib": (rss - base_rss) / KiB / live if live else None,
                    **cpu,
                    **client_cpu([{**r, "wall_s": r["elapsed_s"]} for r in reports]),
                    "open_ms_p50": percentile(open_ms, 50),
                    "open_ms_p99": percentile(open_ms, 99),
                }
                levels_out.append(row)
                _record(ctx, spec.name, kind, round_index, row)
                ctx.say(
                    f"N={level:<6} live {live}/{level} (+{opened_now} in {elapsed:.2f}s, "
                    f"{fmt(row['opens_per_s'], '.0f')}/s)  RSS {fmt(row['rss_per_stream_kib'])}"
                    f" KiB/stream  failed {failed} {row['errors'] or ''}  {cpu_line(row)}"
                )
                too_many_failures = failed > p.max_fail_fraction * attempted
                last = level_index == len(p.levels) - 1
                if too_many_failures or not server.alive():
                    reason = "server died" if not server.alive() else "too many failures"
                    ctx.say(f"stopping at N={level}: {reason}")
                    levels_out[-1]["stopped"] = reason
                    await pool.command("stop")
                    break
                await pool.command("stop" if last else "next")
            await pool.gather("done", 60)
    return {"levels": levels_out}


def _record(ctx: Context, server: str, kind: str, round_index: int, row: dict[str, Any]) -> None:
    param = f"N={row['level']}"

    put = figure_recorder(ctx, NAME, server, kind, round_index, param)

    put("rss_per_stream_kib", row["rss_per_stream_kib"], "KiB", "lower")
    put("opens_per_s", row["opens_per_s"], "streams/s", "higher")
    put("open_total_s", row["open_total_s"], "s", "lower")
    put("failed", row["failed"], "streams", "lower")
    put("live_streams", row["live"], "streams", "higher")
    put_cpu_figures(put, row)


def describe(p: Params) -> dict[str, Any]:
    return dataclasses.asdict(p)
