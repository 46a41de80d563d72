"""Human-readable tables from a results dict: compact (stdout) and full (summary.md).

Compact: per scenario, one row per headline metric and parameter, one column per
server/variant; a cell is the median over rounds and, for a peer, ``x`` the median of the
per-round ratios datapulse / that peer. Full adds every headline series with its min-max.
"""

from __future__ import annotations

from typing import Any

from benchmarks.stats import DATAPULSE

HEADLINES: dict[str, tuple[str, ...]] = {
    "idle": ("rss_per_stream_kib", "opens_per_s", "failed"),
    "ping": ("cpu_s_per_1k_streams_min", "ping_late_ms_p99", "pings_delivered_pct"),
    "fanout": ("events_per_s", "latency_ms_p50", "latency_ms_p99", "latency_ms_max"),
    "fanout_steady": ("events_per_s", "latency_ms_p50", "latency_ms_p99", "latency_ms_max"),
    "rpc": ("requests_per_s", "latency_ms_p50", "latency_ms_p99", "client_cpu_pct"),
    "slow": ("rss_peak_growth_mib", "kernel_sendq_peak_mib", "accepted_per_s", "streams_cut"),
}
SERVER_ORDER = {DATAPULSE: 0, "fastapi": 1, "fastmcp": 2, "ts": 3}

Series = dict[str, Any]


def number(value: float | None) -> str:
    if value is None:
        return "-"
    if float(value).is_integer() and abs(value) < 1e9:
        return str(int(value))
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _headline_series(results: dict[str, Any]) -> dict[str, list[Series]]:
    by_scenario: dict[str, list[Series]] = {}
    for series in results["series"]:
        if series["metric"] in HEADLINES.get(series["scenario"], ()):
            by_scenario.setdefault(series["scenario"], []).append(series)
    return by_scenario


def _target_key(target: tuple[str, str]) -> tuple[int, str, str]:
    # datapulse@REV (--baseline) sorts right after datapulse
    return (SERVER_ORDER.get(target[0].partition("@")[0], 9), target[0], target[1])


def _cell(s: Series) -> str:
    text = number(s["median"])
    if s["ratio_median"] is not None:
        text += f" x{s['ratio_median']:.2f}"
        if s["ratio_basis"] and s["ratio_basis"].split("/")[1] != s["variant"]:
            text += f" (vs {s['ratio_basis']})"
    return text


def _pivot(scenario: str, rows: list[Series]) -> list[str]:
    targets = sorted({(s["server"], s["variant"]) for s in rows}, key=_target_key)
    cells = {(s["metric"], s["param"], s["server"], s["variant"]): s for s in rows}
    keys = sorted(
        {(s["metric"], s["param"], s["unit"]) for s in rows},
        key=lambda k: (HEADLINES[scenario].index(k[0]), k[1]),
    )
    lines = [
        f"## {scenario}",
        "",
        "| metric | param | " + " | ".join(f"{s}/{v}" for s, v in targets) + " |",
        "|---|---|" + "---:|" * len(targets),
    ]
    for metric, param, unit in keys:
        row = [f"{metric} ({unit})", param]
        for server, variant in targets:
            series = cells.get((metric, param, server, variant))
            row.append(_cell(series) if series else "")
        lines.append("| " + " | ".join(row) + " |")
    return [*lines, ""]


def _details(scenario: str, rows: list[Series]) -> list[str]:
    lines = [
        f"### {scenario}: every round",
        "",
        "| metric | param | server/variant | median | min-max | rounds |",
        "|---|---|---|---:|---:|---|",
    ]
    order = HEADLINES[scenario]
    for s in sorted(
        rows,
        key=lambda s: (
            order.index(s["metric"]),
            s["param"],
            _target_key((s["server"], s["variant"])),
        ),
    ):
        spread = f"{number(s['min'])}-{number(s['max'])}" if s["median"] is not None else "-"
        rounds = ", ".join(number(v) for v in s["rounds"])
        lines.append(
            f"| {s['metric']} | {s['param']} | {s['server']}/{s['variant']} | "
            f"{number(s['median'])} {s['unit']} | {spread} | {rounds} |"
        )
    return [*lines, ""]


def render(results: dict[str, Any]) -> tuple[str, str]:
    """Return (compact, full) markdown."""
    meta = results["meta"]
    head = [
        f"# datapulse benchmarks ({'quick' if meta['quick'] else 'full'}, {meta['rounds']} "
        f"rounds, {meta['machine']['cpus']} cpus, {meta.get('elapsed_s', '?')} s)",
        "",
        "Cells: median over rounds; `xR` = datapulse / that peer, median of per-round ratios.",
        "",
    ]
    for name, server in results["servers"].items():
        reason = f" -- {server['reason']}" if server.get("reason") else ""
        head.append(
            f"- **{name}** ({server.get('status', '?')}): {server.get('version', '')}{reason}"
        )
    head.append("")
    by_scenario = _headline_series(results)
    pivots = [line for sc, rows in by_scenario.items() for line in _pivot(sc, rows)]
    problems: list[str] = []
    if results["skipped"] or results["errors"]:
        problems = ["## skipped / failed trials", ""]
        seen = set()
        for entry in results["skipped"] + results["errors"]:
            text = entry.get("reason") or entry.get("error")
            key = (entry["server"], entry["scenario"], entry["variant"], text)
            if key not in seen:
                seen.add(key)
                problems.append(
                    f"- {entry['scenario']} {entry['server']}/{entry['variant']}: {text}"
                )
        problems.append("")
    details = ["## details", ""] + [
        line for sc, rows in by_scenario.items() for line in _details(sc, rows)
    ]
    compact = "\n".join(head + pivots + problems)
    return compact, "\n".join(head + pivots + problems + details)
