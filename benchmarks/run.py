"""Run the benchmark suite: every scenario, every server in turn, several rounds.

    python -m benchmarks.run --quick                      # all scenarios, all servers, ~minutes
    python -m benchmarks.run                              # full sizes (1k..20k streams, ...)
    python -m benchmarks.run --quick --scenarios rpc --servers fastapi datapulse
    python -m benchmarks.run --quick --scenarios idle --servers datapulse --baseline main
    python -m benchmarks.run --quick --scenarios fanout_steady --servers datapulse --profile

Progress goes to stderr. Results go to ``<out>/<timestamp>[-quick]/``: ``results.json`` (per-round
raw figures, median, spread, datapulse/peer ratios), ``summary.md``, ``plots/*.png`` and
``logs/`` (server and worker output); ``<out>/latest`` points at the newest run. A server that
cannot start is skipped -- loudly, here and in the JSON -- and the rest of the run goes on.
``--profile`` attaches py-spy to datapulse servers for each fan-out trial's measured phase and
writes ``profiles/<server>-<scenario>-<variant>.txt`` (see benchmarks/profiling.py).
See docs/benchmarks.md for what each scenario measures and how to read it.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import trio

from benchmarks import profiling, summary
from benchmarks.scenarios import DEFAULT_SCENARIOS, SCENARIOS
from benchmarks.scenarios.base import Context, Progress
from benchmarks.servers import (
    REPO_ROOT,
    ServerSpec,
    ServerUnavailable,
    baseline_server,
    build_servers,
    probe,
)
from benchmarks.stats import Recorder
from benchmarks.workers import leaf_errors

TRIAL_TIMEOUT_S = {True: 240.0, False: 1800.0}  # by --quick


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, 2 rounds: minutes")
    parser.add_argument(
        "--scenarios",
        nargs="+",
        default=list(DEFAULT_SCENARIOS),
        metavar="NAME",
        help=f"any of {', '.join(SCENARIOS)} (default: {', '.join(DEFAULT_SCENARIOS)})",
    )
    parser.add_argument(
        "--servers",
        nargs="+",
        default=None,
        metavar="NAME",
        help="any of datapulse, fastapi, fastmcp, ts (default: all)",
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        default=None,
        metavar="NAME",
        help="only these stream kinds / rpc modes: events, sse, mcp, seed, json",
    )
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="also run datapulse as it was at git revision REV (from a temporary worktree), "
        "as server datapulse@<short REV>; needs datapulse among --servers",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="sample datapulse servers with py-spy during each fan-out trial's measured phase; "
        "tables in <run>/profiles/ (figures of profiled trials are for attribution only)",
    )
    parser.add_argument(
        "--profile-rate",
        type=int,
        default=profiling.DEFAULT_RATE_HZ,
        metavar="HZ",
        help=f"py-spy samples per second with --profile (default: {profiling.DEFAULT_RATE_HZ})",
    )
    parser.add_argument("--rounds", type=int, default=None, help="default: 2 quick, 3 full")
    parser.add_argument(
        "--workers", type=int, default=2, help="load-generator processes (default: 2)"
    )
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SCENARIO.FIELD=VALUE",
        help="override one scenario parameter, e.g. --set idle.levels=1000,5000 "
        "--set rpc.clients=64 (repeatable; fields are listed in results.json)",
    )
    args = parser.parse_args(argv)
    args.scenarios = _names(args.scenarios, set(SCENARIOS), "scenario", parser)
    all_servers = {"datapulse", "fastapi", "fastmcp", "ts"}
    args.servers = _names(args.servers or sorted(all_servers), all_servers, "server", parser)
    if args.baseline and "datapulse" not in args.servers:
        parser.error("--baseline REV compares with datapulse: include it in --servers")
    if args.variants is not None:
        args.variants = _names(
            args.variants, {"events", "sse", "mcp", "seed", "json"}, "variant", parser
        )
    if args.rounds is None:
        args.rounds = 2 if args.quick else 3
    if args.rounds < 1 or args.workers < 1 or args.profile_rate < 1:
        parser.error("--rounds, --workers and --profile-rate must be >= 1")
    return args


def _names(
    values: list[str], allowed: set[str], what: str, parser: argparse.ArgumentParser
) -> list[str]:
    names = [n for value in values for n in value.split(",") if n]
    unknown = [n for n in names if n not in allowed]
    if unknown:
        parser.error(f"unknown {what}(s) {unknown}; choose from {sorted(allowed)}")
    return list(dict.fromkeys(names))


def apply_overrides(scenario: str, params: Any, overrides: list[str]) -> Any:
    """``--set scenario.field=value``: the value is cast to the field's current type."""
    changes: dict[str, Any] = {}
    for item in overrides:
        key, _, raw = item.partition("=")
        name, _, field_name = key.partition(".")
        if name != scenario:
            continue
        if not hasattr(params, field_name):
            fields = ", ".join(f.name for f in dataclasses.fields(params))
            raise SystemExit(f"--set {item}: {scenario} has no field {field_name!r} ({fields})")
        current = getattr(params, field_name)
        if isinstance(current, tuple):
            cast = type(current[0]) if current else str
            changes[field_name] = tuple(cast(v) for v in raw.split(",") if v)
        elif isinstance(current, bool):
            changes[field_name] = raw.lower() in ("1", "true", "yes")
        else:
            changes[field_name] = type(current)(raw)
    return dataclasses.replace(params, **changes) if changes else params


def raise_fd_limit() -> tuple[int, int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def variants_for(
    module: ModuleType, params: Any, spec: ServerSpec, only: list[str] | None
) -> list[str]:
    offered = spec.rpc_modes if module.NAME == "rpc" else spec.kinds
    return [v for v in params.kinds if v in offered and (only is None or v in only)]


def machine_info(fd_limit: tuple[int, int]) -> dict[str, Any]:
    def command(argv: list[str]) -> str:
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=10, check=False, cwd=REPO_ROOT
            )
        except (OSError, subprocess.SubprocessError):
            return ""
        return done.stdout.strip()

    cpu_model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "trio": trio.__version__,
        "node": command(["node", "--version"]),
        "git_commit": command(["git", "rev-parse", "--short", "HEAD"]),
        "fd_limit": list(fd_limit),
        "mem_total_mib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20,
    }


async def run_suite(args: argparse.Namespace, baseline: ServerSpec | None = None) -> Path:
    progress = Progress()
    fd_limit = raise_fd_limit()
    stamp = time.strftime("%Y%m%d-%H%M%S") + ("-quick" if args.quick else "")
    out_dir: Path = args.out / stamp
    out_dir.mkdir(parents=True, exist_ok=True)
    progress(f"results -> {out_dir}   (fd limit {fd_limit[0]}, {os.cpu_count()} cpus)")

    specs = build_servers()
    if baseline is not None:  # right after datapulse in every round, so drift hits both alike
        specs[baseline.name] = baseline
        args.servers.insert(args.servers.index("datapulse") + 1, baseline.name)
    servers_out: dict[str, Any] = {}
    for name in args.servers:
        spec = specs[name]
        probe(spec, progress)
        servers_out[name] = {"description": spec.description, "version": spec.version}
        if spec.unavailable:
            progress.loud(f"{name} SKIPPED: {spec.unavailable}")
        else:
            progress(f"server {name}: {spec.version}")

    recorder = Recorder(args.rounds)
    ctx = Context(out_dir, args.quick, args.rounds, args.workers, recorder, progress)
    ctx.profile, ctx.profile_rate_hz = args.profile, args.profile_rate
    if args.profile:
        profiled = [n for n in args.scenarios if n.startswith("fanout")]
        if not profiled:
            progress.loud("--profile: only the fanout scenarios are profiled; none is selected")
        elif profiling.py_spy() is None:
            progress.loud("--profile: py-spy not found; trials run without a profile")
    results: dict[str, Any] = {
        "schema": 1,
        "meta": {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "quick": args.quick,
            "rounds": args.rounds,
            "workers": args.workers,
            "profile_rate_hz": args.profile_rate if args.profile else None,
            "argv": sys.argv[1:],
            "machine": machine_info(fd_limit),
        },
        "servers": servers_out,
        "scenarios": {},
        "skipped": [],
        "errors": [],
        "series": [],
    }
    plans = {}
    for name in args.scenarios:
        module = SCENARIOS[name]
        params = module.Params.quick() if args.quick else module.Params.full()
        params = apply_overrides(name, params, args.set)
        plan = [
            (specs[s], v)
            for s in args.servers
            for v in variants_for(module, params, specs[s], args.variants)
        ]
        plans[name] = (module, params, plan)
    total = sum(len(plan) * args.rounds for _m, _p, plan in plans.values())
    done = 0
    try:
        for name, (module, params, plan) in plans.items():
            scenario_out: dict[str, Any] = {"params": module.describe(params), "trials": []}
            results["scenarios"][name] = scenario_out
            progress(f"== scenario {name}: {(module.__doc__ or name).splitlines()[0]}")
            for round_index in range(args.rounds):
                for spec, variant in plan:
                    done += 1
                    where = {
                        "scenario": name,
                        "server": spec.name,
                        "variant": variant,
                        "round": round_index + 1,
                    }
                    if spec.unavailable:
                        results["skipped"].append({**where, "reason": spec.unavailable})
                        continue
                    ctx.trial_label = (
                        f"[{done}/{total}] {name} r{round_index + 1}/{args.rounds} "
                        f"{spec.name}/{variant}"
                    )
                    trial = await _run_trial(ctx, module, params, spec, variant, round_index)
                    if "error" in trial and not trial.get("skipped"):
                        results["errors"].append({**where, "error": trial["error"]})
                    if trial.get("skipped"):
                        results["skipped"].append({**where, "reason": trial["error"]})
                        servers_out[spec.name]["status"] = "skipped"
                        servers_out[spec.name]["reason"] = trial["error"]
                    scenario_out["trials"].append({**where, **trial})
    finally:
        for name, spec in specs.items():
            if name in servers_out:
                servers_out[name].setdefault("status", "skipped" if spec.unavailable else "ok")
                if spec.unavailable:
                    servers_out[name]["reason"] = spec.unavailable
        results["series"] = recorder.finalize()
        results["meta"]["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        results["meta"]["elapsed_s"] = round(time.monotonic() - progress.started, 1)
        write_outputs(out_dir, results, progress)
    return out_dir


async def _run_trial(
    ctx: Context, module: ModuleType, params: Any, spec: ServerSpec, variant: str, round_index: int
) -> dict[str, Any]:
    timeout = TRIAL_TIMEOUT_S[ctx.quick]
    try:
        with trio.fail_after(timeout):
            trial: dict[str, Any] = await module.run_trial(ctx, params, spec, variant, round_index)
            return trial
    except Exception as exc:  # a failed trial is a result too; the suite goes on
        leaves = leaf_errors(exc)
        unavailable = [e for e in leaves if isinstance(e, ServerUnavailable)]
        if unavailable:
            spec.unavailable = str(unavailable[0])
            ctx.progress.loud(f"{spec.name} SKIPPED from here on: {spec.unavailable}")
            return {"error": spec.unavailable, "skipped": True}
        if any(isinstance(e, trio.TooSlowError) for e in leaves):
            message = f"trial exceeded a time bound (whole trial: {timeout:g} s)"
        else:
            message = "; ".join(f"{type(e).__name__}: {e}" for e in leaves)
    ctx.progress.loud(f"{ctx.trial_label} FAILED: {message}")
    return {"error": message}


def write_outputs(out_dir: Path, results: dict[str, Any], progress: Progress) -> None:
    (out_dir / "results.json").write_text(json.dumps(results, indent=1, default=str))
    compact, full = summary.render(results)
    (out_dir / "summary.md").write_text(full)
    try:
        # Imported here: matplotlib comes with benchmarks/requirements.txt, not the test extra,
        # and everything else of the runner (its options, tests/e2e/test_bench_baseline.py)
        # must work without it.
        from benchmarks import plots

        made = plots.render_all(results, out_dir / "plots")
        progress(f"plots: {len(made)} PNGs in {out_dir / 'plots'}")
    except Exception as exc:  # plots are a view; the JSON must survive a plotting bug
        progress.loud(f"plotting failed: {type(exc).__name__}: {exc}")
    latest = out_dir.parent / "latest"
    try:
        if latest.is_symlink() or latest.exists():
            latest.unlink()
        latest.symlink_to(out_dir.name)
    except OSError:
        pass
    print(compact)
    progress(f"wrote {out_dir / 'results.json'}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.chdir(REPO_ROOT)
    with contextlib.ExitStack() as stack:
        baseline = stack.enter_context(baseline_server(args.baseline)) if args.baseline else None
        trio.run(run_suite, args, baseline)


if __name__ == "__main__":
    main()
