"""benchmarks.run --baseline REV: datapulse at REV from a temporary git worktree, as a peer."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from benchmarks import summary
from benchmarks.run import parse_args
from benchmarks.servers import (
    REPO_ROOT,
    LaunchOptions,
    _datapulse_spec,
    _env,
    baseline_server,
    probe,
)
from benchmarks.stats import Recorder


def _worktrees() -> str:
    return subprocess.run(
        ["git", "-C", str(REPO_ROOT), "worktree", "list"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_parse_baseline_needs_datapulse() -> None:
    args = parse_args(["--servers", "datapulse", "--baseline", "HEAD~1"])
    assert args.baseline == "HEAD~1"
    assert parse_args([]).baseline is None
    with pytest.raises(SystemExit):
        parse_args(["--servers", "fastapi", "--baseline", "HEAD"])


@pytest.mark.skipif(not (REPO_ROOT / ".git").exists(), reason="needs a git checkout")
def test_baseline_server_runs_from_a_worktree_it_removes() -> None:
    with baseline_server("HEAD") as spec:
        checkout = spec.checkout
        assert spec.name.startswith("datapulse@") and spec.name[len("datapulse@") :] in _worktrees()
        assert str(checkout) in _worktrees() and not checkout.is_relative_to(REPO_ROOT)
        assert _env(spec)["PYTHONPATH"].split(":")[0] == str(checkout)
        assert spec.command(LaunchOptions(1, "t", 1.0))[1:3] == ["-m", "datapulse"]
        probe(spec, print)
        assert spec.unavailable is None, spec.unavailable
        assert "--max-connections" in spec.extra_flags  # same --help detection as datapulse
    assert not checkout.exists() and str(checkout) not in _worktrees()


def _fake_datapulse(root: Path) -> Path:
    package = root / "datapulse"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text('__version__ = "9.9"\n')
    (package / "__main__.py").write_text('print("--max-connections N  --json-response")\n')
    return root


def test_probe_imports_datapulse_from_the_checkout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(_fake_datapulse(tmp_path / "elsewhere")))
    spec = _datapulse_spec("datapulse@x", "a checkout without datapulse", tmp_path / "empty")
    spec.checkout.mkdir()
    probe(spec, print)
    assert spec.unavailable is not None and "imports" in spec.unavailable
    spec = _datapulse_spec("datapulse@y", "a checkout with one", _fake_datapulse(tmp_path / "y"))
    probe(spec, print)
    assert spec.unavailable is None and spec.version == "datapulse 9.9"
    assert spec.extra_flags == ["--max-connections", "1000000"]


def test_baseline_is_a_peer_with_after_before_ratios() -> None:
    recorder = Recorder(rounds=2)
    for server, values in (("datapulse", (16.0, 18.0)), ("datapulse@abc1234", (20.0, 20.0))):
        for round_index, value in enumerate(values):
            recorder.record(
                "idle", "rss_per_stream_kib", server, "events", round_index, value, unit="KiB"
            )
    results: dict[str, Any] = {
        "meta": {"quick": True, "rounds": 2, "machine": {"cpus": 2}},
        "servers": {},
        "series": recorder.finalize(),
        "skipped": [],
        "errors": [],
    }
    baseline = next(s for s in results["series"] if s["server"] == "datapulse@abc1234")
    assert baseline["ratio_per_round"] == [0.8, 0.9] and baseline["ratio_median"] == 0.85
    compact, _full = summary.render(results)
    assert "| datapulse/events | datapulse@abc1234/events |" in compact
    assert "| 17 | 20 x0.85 |" in compact
