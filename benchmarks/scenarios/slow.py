"""Scenario 5, slow consumers: server memory while M clients read slowly and events keep coming.

M streams are opened with a small receive buffer (``rcvbuf``) and read ``read_bytes`` every
``read_interval_s`` -- far slower than events arrive. Senders publish results to them at a fixed
offered rate (the same for every server, paced, round-robin over the M streams) for
``duration_s``; then the senders stop and the readers go on for ``drain_s``. The server's RSS is
sampled throughout. Figures: peak and final RSS growth over the pre-load baseline (MiB), the
publish rate the server actually accepted, events that reached the slow readers, and how many
slow streams the server cut off (a bounded-queue server should; an unbounded one grows instead).
"""

from __future__ import annotations

import dataclasses
import time
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
    put_cpu_figures,
    split,
)
from benchmarks.servers import ServerSpec, run_server
from benchmarks.workers import start_workers

NAME = "slow"
MiB = 2**20


@dataclass(frozen=True)
class Params:
    streams: int
    rate_per_s: float  # offered publish rate, all streams together
    duration_s: float
    senders: int = 8
    kinds: tuple[str, ...] = ("events", "sse")
    read_bytes: int = 256
    read_interval_s: float = 0.5
    rcvbuf: int = 4096
    drain_s: float = 2.0
    sample_interval_s: float = 0.25
    concurrency: int = 16
    open_timeout_s: float = 20.0
    open_budget_s: float = 60.0

    @classmethod
    def quick(cls) -> Params:
        return cls(streams=20, rate_per_s=1000, duration_s=6.0)

    @classmethod
    def full(cls) -> Params:
        return cls(streams=10, rate_per_s=1500, duration_s=60.0, drain_s=5.0)

    @property
    def param(self) -> str:
        return f"M={self.streams},R={self.rate_per_s:g}/s,T={self.duration_s:g}s"


async def run_trial(
    ctx: Context, p: Params, spec: ServerSpec, kind: str, round_index: int
) -> dict[str, Any]:
    samples: list[tuple[float, float, float]] = []  # seconds, RSS MiB, kernel send queue MiB
    async with run_server(spec, ping_interval_s=3600.0, log_path=ctx.server_log(spec)) as server:
        deadline = p.open_budget_s + p.duration_s + p.drain_s + 120
        senders = split(p.senders, ctx.workers)
        jobs = [
            {
                **base_job("slow", server, i, deadline),
                "kind": kind,
                "count": count,
                "senders": max(1, senders[i]),
                "rate_per_s": p.rate_per_s / ctx.workers,
                "duration_s": p.duration_s,
                "read_bytes": p.read_bytes,
                "read_interval_s": p.read_interval_s,
                "rcvbuf": p.rcvbuf,
                "concurrency": p.concurrency,
                "open_timeout_s": p.open_timeout_s,
                "open_budget_s": p.open_budget_s,
            }
            for i, count in enumerate(split(p.streams, ctx.workers))
        ]
        async with start_workers(jobs, ctx.worker_log(NAME)) as pool:
            opened_reports = await pool.gather("opened", p.open_budget_s + 30)
            await trio.sleep(0.5)
            base_rss = server.rss_bytes()
            meter = Meter(server)
            meter.start()
            started = time.monotonic()

            async def sample_rss(task_status: trio.TaskStatus[None]) -> None:
                task_status.started()
                while True:
                    samples.append(
                        (
                            time.monotonic() - started,
                            server.rss_bytes() / MiB,
                            server.kernel_send_queue_bytes() / MiB,
                        )
                    )
                    await trio.sleep(p.sample_interval_s)

            async with trio.open_nursery() as nursery:
                await nursery.start(sample_rss)
                await pool.command("start")
                sent_reports = await pool.gather("sent", p.duration_s + 60)
                await trio.sleep(p.drain_s)
                nursery.cancel_scope.cancel()
            cpu = meter.stop()
            end_rss = server.rss_bytes()
            await pool.command("stop")
            reports = await pool.gather("result", 30)
    base_mib = base_rss / MiB
    peak_mib = max((rss for _t, rss, _q in samples), default=base_mib)
    sendq_peak = max((q for _t, _r, q in samples), default=0.0)
    accepted = sum(r["accepted"] for r in sent_reports)
    send_wall = max(r["wall_s"] for r in sent_reports)
    row: dict[str, Any] = {
        "opened": sum(r["opened"] for r in opened_reports),
        "open_errors": merge_counts(opened_reports, "errors"),
        "sent": sum(r["sent"] for r in sent_reports),
        "accepted": accepted,
        "rejected": sum(r["rejected"] for r in sent_reports),
        "send_errors": merge_counts(sent_reports, "errors"),
        "accepted_per_s": accepted / send_wall if send_wall else None,
        "received": sum(r["received"] for r in reports),
        "streams_cut": sum(r["dropped"] for r in reports),
        "base_rss_mib": base_mib,
        "rss_peak_growth_mib": peak_mib - base_mib,
        "rss_end_growth_mib": end_rss / MiB - base_mib,
        "kernel_sendq_peak_mib": sendq_peak,
        "rss_samples": [(round(t, 2), round(m - base_mib, 2)) for t, m, _q in samples],
        "sendq_samples": [(round(t, 2), round(q, 2)) for t, _m, q in samples],
        **cpu,
        **client_cpu(reports),
    }

    put = figure_recorder(ctx, NAME, spec.name, kind, round_index, p.param)

    put("rss_peak_growth_mib", row["rss_peak_growth_mib"], "MiB", "lower")
    put("rss_end_growth_mib", row["rss_end_growth_mib"], "MiB", "lower")
    put("kernel_sendq_peak_mib", sendq_peak, "MiB", "")
    put("accepted_per_s", row["accepted_per_s"], "events/s", "higher")
    put("received", row["received"], "events", "")
    put("streams_cut", row["streams_cut"], "streams", "")
    put_cpu_figures(put, row)
    ctx.say(
        f"{p.param} opened {row['opened']}  accepted {accepted} "
        f"({fmt(row['accepted_per_s'], '.0f')}/s)  errors {row['send_errors'] or 0}  RSS peak "
        f"+{row['rss_peak_growth_mib']:.1f} MiB end +{row['rss_end_growth_mib']:.1f} MiB  kernel "
        f"send queues peak {sendq_peak:.1f} MiB  "
        f"received {row['received']}  cut {row['streams_cut']}  {cpu_line(row)}"
    )
    return row


def describe(p: Params) -> dict[str, Any]:
    return dataclasses.asdict(p)
