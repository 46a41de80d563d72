"""Scenario 4, RPC throughput: C keep-alive clients calling ``get_time`` back to back.

Modes (the trial's *variant*):

* ``json`` -- Streamable HTTP ``POST /mcp`` tools/call, server started in JSON-answer mode;
* ``sse``  -- the same, server in its default SSE-answer mode (the answer is a one-event stream);
* ``seed`` -- the original API: ``POST /message`` -> 202, result read off the client's own
  ``/events`` stream.

Each client initializes its own session first (not timed), then calls in a closed loop for
warm-up + duration seconds; only calls that finish inside the measured window count. Figures:
requests/s, latency p50/p99, and each side's CPU so a saturated client is visible.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

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

NAME = "rpc"


@dataclass(frozen=True)
class Params:
    clients: int
    warmup_s: float
    duration_s: float
    kinds: tuple[str, ...] = ("seed", "json", "sse")
    setup_timeout_s: float = 20.0
    call_timeout_s: float = 10.0

    @classmethod
    def quick(cls) -> Params:
        return cls(clients=16, warmup_s=1.0, duration_s=3.0)

    @classmethod
    def full(cls) -> Params:
        return cls(clients=16, warmup_s=2.0, duration_s=10.0)


def variants(spec: ServerSpec, p: Params) -> list[str]:
    return [mode for mode in p.kinds if mode in spec.rpc_modes]


async def run_trial(
    ctx: Context, p: Params, spec: ServerSpec, mode: str, round_index: int
) -> dict[str, Any]:
    async with run_server(
        spec, ping_interval_s=3600.0, json_response=mode == "json", log_path=ctx.server_log(spec)
    ) as server:
        deadline = p.clients * p.setup_timeout_s + p.warmup_s + p.duration_s + 60
        jobs = [
            {
                **base_job("rpc", server, i, deadline),
                "mode": mode,
                "clients": clients,
                "warmup_s": p.warmup_s,
                "duration_s": p.duration_s,
                "setup_timeout_s": p.setup_timeout_s,
                "call_timeout_s": p.call_timeout_s,
            }
            for i, clients in enumerate(split(p.clients, ctx.workers))
            if clients
        ]
        async with start_workers(jobs, ctx.worker_log(NAME)) as pool:
            ready = await pool.gather("ready", p.clients * p.setup_timeout_s + 30)
            meter = Meter(server)
            meter.start()
            await pool.command("start")
            reports = await pool.gather("result", p.warmup_s + p.duration_s + 60)
            cpu = meter.stop()
    completed = sum(r["completed"] for r in reports)
    latency = latency_summary(merged(reports, "latencies_ms"))
    answers = merge_counts(reports, "answers")
    row: dict[str, Any] = {
        "clients_ready": sum(r["ready"] for r in ready),
        "setup_errors": merge_counts(ready, "errors"),
        "completed": completed,
        "errors": merge_counts(reports, "errors"),
        "answers": answers,
        "requests_per_s": completed / p.duration_s,
        "latency_ms": latency,
        **cpu,
        **client_cpu(reports),
    }
    wanted = {"json": "json", "sse": "sse"}.get(mode)
    if wanted and answers and set(answers) != {wanted}:
        # Not an error: a server may pick the framing (datapulse answers a fast call in JSON
        # even when SSE is acceptable). The JSON keeps what was actually measured.
        row["note"] = f"server started in {wanted} mode answered {answers}"
        ctx.say(f"note: {row['note']}")

    put = figure_recorder(ctx, NAME, spec.name, mode, round_index, f"C={p.clients}")

    put("requests_per_s", row["requests_per_s"], "req/s", "higher")
    put("latency_ms_p50", latency["p50"], "ms", "lower")
    put("latency_ms_p99", latency["p99"], "ms", "lower")
    put_cpu_figures(put, row)
    ctx.say(
        f"C={p.clients} ready {row['clients_ready']}  {row['requests_per_s']:.0f} req/s  p50 "
        f"{fmt(latency['p50'], '.2f')} p99 {fmt(latency['p99'], '.2f')} ms  errors "
        f"{row['errors'] or 0}  answers {answers or '-'}  {cpu_line(row)}"
    )
    return row


def describe(p: Params) -> dict[str, Any]:
    return dataclasses.asdict(p)
