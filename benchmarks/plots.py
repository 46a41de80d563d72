"""PNG plots from a results dict (matplotlib, Agg backend: no display needed).

Bars are medians over rounds; whiskers span min..max. Each server keeps one colour across all
plots; its variants (stream kind / rpc mode) are the x-axis labels.

    python -m benchmarks.plots benchmarks/results/latest/results.json   # re-plot a saved run
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.patches import Patch

COLOURS = {"datapulse": "#d62728", "fastapi": "#1f77b4", "fastmcp": "#2ca02c", "ts": "#9467bd"}
HATCHES = ["", "//", "..", "xx", "\\\\"]

Series = dict[str, Any]


def _select(results: dict[str, Any], scenario: str, metric: str) -> list[Series]:
    return [
        s
        for s in results["series"]
        if s["scenario"] == scenario and s["metric"] == metric and s["median"] is not None
    ]


def _targets(series: Sequence[Series]) -> list[tuple[str, str]]:
    order = {name: i for i, name in enumerate(COLOURS)}
    found = {(s["server"], s["variant"]) for s in series}
    return sorted(found, key=lambda t: (order.get(t[0], 99), t[1]))


def _grouped_bars(
    ax: Axes, results: dict[str, Any], scenario: str, metrics: Sequence[str], labels: Sequence[str]
) -> bool:
    per_metric = {
        m: {(s["server"], s["variant"]): s for s in _select(results, scenario, m)} for m in metrics
    }
    targets = _targets([s for group in per_metric.values() for s in group.values()])
    if not targets:
        return False
    width = 0.8 / len(metrics)
    for k, metric in enumerate(metrics):
        for i, target in enumerate(targets):
            s = per_metric[metric].get(target)
            if s is None:
                continue
            x = i + (k - (len(metrics) - 1) / 2) * width
            err = [[s["median"] - s["min"]], [s["max"] - s["median"]]]
            ax.bar(
                x,
                s["median"],
                width * 0.95,
                yerr=err,
                capsize=3,
                color=COLOURS.get(target[0], "grey"),
                hatch=HATCHES[k % len(HATCHES)],
                edgecolor="black",
                linewidth=0.5,
            )
    ax.set_xticks(range(len(targets)), [f"{s}\n{v}" for s, v in targets])
    if len(metrics) > 1:  # the legend names the hatches; colours name servers on the x-axis
        handles = [
            Patch(
                facecolor="white", edgecolor="black", hatch=HATCHES[k % len(HATCHES)], label=label
            )
            for k, label in enumerate(labels)
        ]
        ax.legend(handles=handles, fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return True


def _param_of(results: dict[str, Any], scenario: str) -> str:
    params = {s["param"] for s in results["series"] if s["scenario"] == scenario}
    return ", ".join(sorted(params))


def _bar_figure(
    results: dict[str, Any],
    out: Path,
    scenario: str,
    metrics: Sequence[str],
    labels: Sequence[str],
    title: str,
    ylabel: str,
) -> Path | None:
    fig, ax = plt.subplots(figsize=(9, 4.5))
    try:
        if not _grouped_bars(ax, results, scenario, metrics, labels):
            return None
        ax.set_title(f"{title}\n{_param_of(results, scenario)}", fontsize=10)
        ax.set_ylabel(ylabel)
        fig.tight_layout()
        fig.savefig(out, dpi=110)
        return out
    finally:
        plt.close(fig)


def _versus_n(
    results: dict[str, Any], out: Path, metric: str, title: str, ylabel: str
) -> Path | None:
    series = _select(results, "idle", metric)
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(9, 4.5))
    try:
        for server, variant in _targets(series):
            points = sorted(
                (int(s["param"].split("=")[1]), s)
                for s in series
                if (s["server"], s["variant"]) == (server, variant)
            )
            xs = [n for n, _s in points]
            ys = [s["median"] for _n, s in points]
            err = [
                [s["median"] - s["min"] for _n, s in points],
                [s["max"] - s["median"] for _n, s in points],
            ]
            ax.errorbar(
                xs,
                ys,
                yerr=err,
                marker="o",
                capsize=3,
                color=COLOURS.get(server, "grey"),
                linestyle=_style(variant),
                label=f"{server}/{variant}",
            )
        levels = sorted({int(s["param"].split("=")[1]) for s in series})
        ax.set_xscale("log")
        ax.set_xticks(levels, [str(n) for n in levels])
        ax.minorticks_off()
        ax.set_xlabel("concurrent idle streams (N)")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out, dpi=110)
        return out
    finally:
        plt.close(fig)


def _style(variant: str) -> str:
    return {"events": "-", "sse": "--", "mcp": ":"}.get(variant, "-.")


def _slow_timeline(results: dict[str, Any], out: Path) -> Path | None:
    trials = [
        t for t in results["scenarios"].get("slow", {}).get("trials", []) if t.get("rss_samples")
    ]
    if not trials:
        return None
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    try:
        seen: set[tuple[str, str]] = set()
        for trial in trials:
            target = (trial["server"], trial["variant"])
            label = f"{target[0]}/{target[1]}" if target not in seen else None
            seen.add(target)
            style = {"color": COLOURS.get(target[0], "grey"), "linestyle": _style(target[1])}
            ts, mib = zip(*trial["rss_samples"], strict=True)
            top.plot(ts, mib, alpha=0.8, label=label, **style)
            if trial.get("sendq_samples"):
                ts, queued = zip(*trial["sendq_samples"], strict=True)
                bottom.plot(ts, queued, alpha=0.8, **style)
        top.set_ylabel("server RSS growth (MiB)")
        bottom.set_ylabel("kernel send queues (MiB)")
        bottom.set_xlabel("seconds since the senders started (every round drawn)")
        top.set_title(
            f"Slow consumers: memory held for slow readers\n{_param_of(results, 'slow')}",
            fontsize=10,
        )
        for ax in (top, bottom):
            ax.grid(alpha=0.3)
        top.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out, dpi=110)
        return out
    finally:
        plt.close(fig)


def _cpu_figure(results: dict[str, Any], out: Path, scenario: str) -> Path | None:
    return _bar_figure(
        results,
        out,
        scenario,
        ("server_cpu_pct", "client_cpu_pct", "client_cpu_max_worker_pct", "machine_busy_pct"),
        (
            "server (% of a core)",
            "load generator, all workers",
            "busiest worker",
            "whole machine (% of all cores)",
        ),
        f"{scenario}: CPU while measuring -- a worker near 100% means the client was the limit",
        "%",
    )


def render_all(results: dict[str, Any], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    made = [
        _versus_n(
            results,
            out_dir / "idle_rss_per_stream.png",
            "rss_per_stream_kib",
            "Idle streams: server RSS per open stream",
            "KiB per stream",
        ),
        _versus_n(
            results,
            out_dir / "idle_open_rate.png",
            "opens_per_s",
            "Idle streams: opening rate for each increment",
            "streams opened per second",
        ),
        _versus_n(
            results,
            out_dir / "idle_failed.png",
            "failed",
            "Idle streams: failed opens per level",
            "failed streams",
        ),
        _bar_figure(
            results,
            out_dir / "ping_cpu.png",
            "ping",
            ("cpu_s_per_1k_streams_min",),
            ("CPU",),
            "Ping overhead: server CPU-seconds per 1,000 streams per minute",
            "CPU-s / 1k streams / min",
        ),
        _bar_figure(
            results,
            out_dir / "ping_lateness.png",
            "ping",
            ("ping_late_ms_p50", "ping_late_ms_p99", "ping_late_ms_max"),
            ("p50", "p99", "max"),
            "Ping jitter: ping gap minus interval",
            "ms late",
        ),
        *(
            figure
            for scenario, title in (("fanout", "Fan-out"), ("fanout_steady", "Steady fan-out"))
            for figure in (
                _bar_figure(
                    results,
                    out_dir / f"{scenario}_throughput.png",
                    scenario,
                    ("events_per_s",),
                    ("events/s",),
                    f"{title}: delivered events per second",
                    "events/s",
                ),
                _bar_figure(
                    results,
                    out_dir / f"{scenario}_latency.png",
                    scenario,
                    ("latency_ms_p50", "latency_ms_p90", "latency_ms_p99", "latency_ms_max"),
                    ("p50", "p90", "p99", "max"),
                    f"{title}: POST sent -> event on stream",
                    "ms",
                ),
            )
        ),
        _bar_figure(
            results,
            out_dir / "rpc_throughput.png",
            "rpc",
            ("requests_per_s",),
            ("req/s",),
            "RPC: tools/call get_time on keep-alive connections",
            "requests/s",
        ),
        _bar_figure(
            results,
            out_dir / "rpc_latency.png",
            "rpc",
            ("latency_ms_p50", "latency_ms_p99"),
            ("p50", "p99"),
            "RPC: request latency",
            "ms",
        ),
        _bar_figure(
            results,
            out_dir / "slow_rss.png",
            "slow",
            ("rss_peak_growth_mib", "rss_end_growth_mib", "kernel_sendq_peak_mib"),
            ("RSS growth, peak", "RSS growth, end", "kernel send queues, peak"),
            "Slow consumers: memory held for slow readers (over the pre-load baseline)",
            "MiB",
        ),
        _slow_timeline(results, out_dir / "slow_rss_timeline.png"),
    ]
    for scenario in ("idle", "ping", "fanout", "fanout_steady", "rpc", "slow"):
        made.append(_cpu_figure(results, out_dir / f"cpu_{scenario}.png", scenario))
    return [p for p in made if p is not None]


def main() -> None:
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/latest/results.json")
    results = json.loads(path.read_text())
    for made in render_all(results, path.parent / "plots"):
        print(made)


if __name__ == "__main__":
    main()
