"""What every scenario shares: the run context, progress lines, worker job shapes.

A scenario module exposes ``NAME``, a ``Params`` dataclass with ``quick()`` and ``full()``, and
``run_trial(ctx, params, spec, variant, round_index)``. The driver in ``run.py`` calls
``run_trial`` once per (round, server, variant), round-robin, so drift on the shared machine
hits every server alike. A trial records its figures in ``ctx.recorder`` and returns a dict of
raw detail that lands in the JSON as is.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import psutil

from benchmarks.servers import HOST, ServerProcess, ServerSpec
from benchmarks.stats import Recorder, percentile


class Progress:
    """Progress lines on stderr, each stamped with the seconds since the run began."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def __call__(self, message: str) -> None:
        print(f"[{time.monotonic() - self.started:7.1f}s] {message}", file=sys.stderr, flush=True)

    def loud(self, message: str) -> None:
        bar = "!" * 78
        self(f"\n{bar}\n!!! {message}\n{bar}")


@dataclass
class Context:
    out_dir: Path
    quick: bool
    rounds: int
    workers: int
    recorder: Recorder
    progress: Progress
    trial_label: str = ""
    notes: list[str] = field(default_factory=list)
    profile: bool = False  # --profile: py-spy on datapulse servers (benchmarks/profiling.py)
    profile_rate_hz: int = 500

    def server_log(self, spec: ServerSpec) -> Path:
        return self.out_dir / "logs" / f"server-{spec.name}.log"

    def worker_log(self, scenario: str) -> Path:
        return self.out_dir / "logs" / f"workers-{scenario}.log"

    def say(self, message: str) -> None:
        self.progress(f"{self.trial_label} {message}")


def split(total: int, parts: int) -> list[int]:
    """``total`` spread over ``parts`` as evenly as integers allow."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def base_job(
    program: str, server: ServerProcess, worker_index: int, deadline_s: float
) -> dict[str, Any]:
    return {
        "program": program,
        "host": HOST,
        "port": server.opts.port,
        "token": server.opts.token,
        "worker_index": worker_index,
        "deadline_s": deadline_s,
    }


def merged(reports: list[dict[str, Any]], key: str) -> list[float]:
    return [value for report in reports for value in report.get(key, [])]


def latency_summary(values: list[float]) -> dict[str, float | None]:
    return {
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": max(values) if values else None,
    }


def merge_counts(reports: list[dict[str, Any]], key: str) -> dict[str, int]:
    total: dict[str, int] = {}
    for report in reports:
        for name, count in report.get(key, {}).items():
            total[name] = total.get(name, 0) + int(count)
    return total


def pct(part: float, whole: float) -> float | None:
    return None if whole <= 0 else 100.0 * part / whole


def fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def _machine_times() -> tuple[float, float]:
    times = psutil.cpu_times()
    idle = times.idle + getattr(times, "iowait", 0.0)
    total = sum(times) - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)
    return total - idle, total


class Meter:
    """Server CPU and whole-machine busy share between ``start()`` and ``stop()``.

    ``machine_busy_pct`` (100 = every core busy) shows when the box itself was the limit --
    load generator, server and kernel together, or someone else's job on a shared machine.
    """

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self._start = (0.0, 0.0, (0.0, 0.0))

    def start(self) -> None:
        self._start = (time.monotonic(), self.server.cpu_seconds(), _machine_times())

    def stop(self) -> dict[str, float | None]:
        wall = time.monotonic() - self._start[0]
        server_cpu = self.server.cpu_seconds() - self._start[1]
        busy, total = _machine_times()
        busy0, total0 = self._start[2]
        return {
            "measured_s": wall,
            "server_cpu_s": server_cpu,
            "server_cpu_pct": pct(server_cpu, wall),
            "machine_busy_pct": pct(busy - busy0, total - total0),
        }


def client_cpu(reports: list[dict[str, Any]]) -> dict[str, float | None]:
    """Load-generator CPU: all workers together, and the busiest one (100 = one core)."""
    wall = max((r["wall_s"] for r in reports), default=0.0)
    per_worker = [pct(r["cpu_s"], r["wall_s"]) or 0.0 for r in reports]
    return {
        "client_cpu_pct": pct(sum(r["cpu_s"] for r in reports), wall),
        "client_cpu_max_worker_pct": max(per_worker, default=None),
    }


class Put(Protocol):
    def __call__(self, metric: str, value: float | None, unit: str, better: str = "") -> None: ...


def figure_recorder(
    ctx: Context, scenario: str, server: str, variant: str, round_index: int, param: str
) -> Put:
    """``put(metric, value, unit, better)`` recording one trial's figures under its labels."""

    def put(metric: str, value: float | None, unit: str, better: str = "") -> None:
        ctx.recorder.record(
            scenario,
            metric,
            server,
            variant,
            round_index,
            value,
            unit=unit,
            better=better,
            param=param,
        )

    return put


def put_cpu_figures(put: Any, row: dict[str, Any]) -> None:
    """Record the CPU figures every scenario reports, so client or machine saturation shows."""
    put("server_cpu_pct", row["server_cpu_pct"], "% of a core", "")
    put("client_cpu_pct", row["client_cpu_pct"], "% of a core", "")
    put("client_cpu_max_worker_pct", row["client_cpu_max_worker_pct"], "% of a core", "")
    put("machine_busy_pct", row["machine_busy_pct"], "% of all cores", "")


def cpu_line(row: dict[str, Any]) -> str:
    return (
        f"cpu: server {fmt(row.get('server_cpu_pct'), '.0f')}%  client "
        f"{fmt(row.get('client_cpu_pct'), '.0f')}% (busiest worker "
        f"{fmt(row.get('client_cpu_max_worker_pct'), '.0f')}%)  machine "
        f"{fmt(row.get('machine_busy_pct'), '.0f')}%"
    )
