"""``--profile``: where a datapulse server's CPU goes during a trial's measured phase.

py-spy (a sampling profiler, ``benchmarks/requirements.txt``) is attached to the running server
with ``py-spy record --pid P --format raw`` just before the workers start the measured phase
and stopped (SIGINT, so it writes its file) right after the last result arrived. It samples
only while the server is on a CPU (no ``--idle``), so samples / rate = CPU-seconds in Python
code and the system calls it makes. The trial then writes, next to ``results.json``::

    <out>/<run>/profiles/<server>-<scenario>-<variant>[-r<round>].raw.txt   # py-spy's own output
    <out>/<run>/profiles/<server>-<scenario>-<variant>[-r<round>].txt       # the table

The table: top functions by self samples (the function on top of the stack) and by total
samples (the function anywhere on the stack, once per sample), each also as CPU microseconds
per delivered event and per request. Line numbers are folded, so a function is one row.

py-spy needs ptrace rights on the server (root, or CAP_SYS_PTRACE, or a permissive
``kernel.yama.ptrace_scope``). If it is missing or cannot attach, the trial says so loudly and
runs on without a profile. Sampling pauses the server briefly at every sample, so a profiled
trial's figures are a little worse than an unprofiled one's: read them for attribution only.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from benchmarks.servers import REPO_ROOT, ServerProcess

DEFAULT_RATE_HZ = 500
TOP = 25
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>.*?)(?::\d+)?\)$")


def wanted(server_name: str) -> bool:
    """Only datapulse (and ``datapulse@REV``) is profiled; the peers are not Python-on-Trio."""
    return server_name.partition("@")[0] == "datapulse"


def py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"  # the venv's, even when it is not on PATH
    return str(beside) if beside.exists() else shutil.which("py-spy")


def short_path(path: str) -> str:
    for marker in ("site-packages/", "dist-packages/"):
        if marker in path:
            return path.split(marker, 1)[1]
    with contextlib.suppress(ValueError):
        return str(Path(path).relative_to(REPO_ROOT))
    match = re.search(r"/lib/python3\.\d+/(.*)$", path)
    return match.group(1) if match else path


def package_of(name: str) -> str:
    """``f (datapulse/net/writer.py)`` -> ``datapulse/net``; ``f (trio/_socket.py)`` -> ``trio``."""
    path = name.rpartition(" (")[2].rstrip(")")
    if path.startswith("<attrs generated"):  # <attrs generated methods trio._core._run.Task>
        return path.rstrip(">").split()[-1].split(".")[0]
    parts = path.split("/")
    if parts[0] == "datapulse" and len(parts) > 2:
        return "/".join(parts[:2])
    if len(parts) > 1:
        return parts[0]
    return "stdlib" if path.endswith(".py") or path.startswith("<frozen") else path


def frame_name(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip()
    return f"{match['func']} ({short_path(match['file'])})"


@dataclass
class Profile:
    """Parsed collapsed stacks: self and total samples per function."""

    samples: int = 0
    self_samples: Counter[str] = field(default_factory=Counter)
    total_samples: Counter[str] = field(default_factory=Counter)

    @classmethod
    def parse(cls, text: str) -> Profile:
        profile = cls()
        for line in text.splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            count = int(count_text)
            frames = [frame_name(f) for f in stack.split(";") if f]
            if not frames:
                continue
            profile.samples += count
            profile.self_samples[frames[-1]] += count
            for name in set(frames):
                profile.total_samples[name] += count
        return profile


@dataclass
class Sampler:
    """One py-spy run against one server; ``active`` is False if it never got going."""

    ctx: Any
    raw_path: Path
    table_path: Path
    label: str
    rate_hz: int
    active: bool = False
    error: str | None = None
    wall_s: float = 0.0

    def fail(self, message: str) -> None:
        self.error = message
        self.ctx.progress.loud(f"{self.label}: NO PROFILE: {message}")

    def write_report(self, per: dict[str, int], extra: str = "") -> dict[str, Any] | None:
        """Write the table; ``per`` maps a unit ("delivered event") to how many there were."""
        if not self.active:
            return {"error": self.error} if self.error else None
        try:
            text = self.raw_path.read_text()
        except OSError as exc:
            self.fail(f"py-spy wrote no output ({exc})")
            return {"error": self.error}
        profile = Profile.parse(text)
        if profile.samples == 0:
            self.fail("py-spy recorded no samples")
            return {"error": self.error}
        report = render(profile, self.rate_hz, per, f"{self.label}\n{extra}".strip(), self.wall_s)
        self.table_path.write_text(report)
        self.ctx.progress(f"profile -> {self.table_path}")
        first_unit, first_count = next(iter(per.items()), ("", 0))
        return {
            "table": str(self.table_path),
            "raw": str(self.raw_path),
            "rate_hz": self.rate_hz,
            "samples": profile.samples,
            "cpu_s": profile.samples / self.rate_hz,
            "wall_s": self.wall_s,
            **{
                f"samples_per_{unit.replace(' ', '_')}": profile.samples / n if n else None
                for unit, n in per.items()
            },
            "top_self": [
                {
                    "function": name,
                    "samples": n,
                    f"us_per_{first_unit.replace(' ', '_')}": _us(n, self.rate_hz, first_count),
                }
                for name, n in profile.self_samples.most_common(10)
            ],
        }


def _us(samples: int, rate_hz: int, count: int) -> float | None:
    return 1e6 * samples / rate_hz / count if count else None


def render(
    profile: Profile, rate_hz: int, per: dict[str, int], title: str, wall_s: float = 0.0
) -> str:
    units = [(unit, n) for unit, n in per.items() if n]
    cpu_s = profile.samples / rate_hz
    lines = [
        title,
        "",
        f"py-spy at {rate_hz} Hz while on a CPU: {profile.samples} samples = {cpu_s:.2f} CPU-s"
        + (f" over {wall_s:.2f} s wall ({100 * cpu_s / wall_s:.0f}% of a core)" if wall_s else ""),
    ]
    for unit, n in units:
        lines.append(
            f"per {unit} ({n}): {profile.samples / n:.3f} samples = "
            f"{_us(profile.samples, rate_hz, n):.0f} us of CPU"
        )
    head = "".join(f" {'us/' + unit.split()[-1]:>10}" for unit, _ in units)
    packages: Counter[str] = Counter()
    for name, n in profile.self_samples.items():
        packages[package_of(name)] += n
    # Frames on every stack (runpy, __main__, trio.run) say nothing: left out of the totals.
    everywhere = [name for name, n in profile.total_samples.items() if n == profile.samples]
    totals = Counter({k: n for k, n in profile.total_samples.items() if k not in everywhere})
    for title_, counter, what in (
        ("self samples by package", packages, "package"),
        ("top functions by self samples", profile.self_samples, "function (file)"),
        (
            f"top functions by total samples (anywhere on the stack; the {len(everywhere)} "
            "frames on every stack left out)",
            totals,
            "function (file)",
        ),
    ):
        lines += ["", title_, f"{'samples':>8} {'share':>6}{head}  {what}"]
        for name, n in counter.most_common(TOP):
            cells = "".join(f" {_us(n, rate_hz, c) or 0:>10.1f}" for _, c in units)
            lines.append(f"{n:>8} {100 * n / profile.samples:>5.1f}%{cells}  {name}")
    return "\n".join(lines) + "\n"


@contextlib.asynccontextmanager
async def sampling(
    ctx: Any, server: ServerProcess, scenario: str, variant: str, round_index: int
) -> AsyncIterator[Sampler]:
    """Sample ``server`` for the body of the block if ``ctx.profile`` asks for it.

    Yields a :class:`Sampler` either way; call its ``write_report`` after the block.
    """
    stem = f"{server.spec.name}-{scenario}-{variant}"
    if ctx.rounds > 1:
        stem += f"-r{round_index + 1}"
    out = ctx.out_dir / "profiles"
    sampler = Sampler(
        ctx,
        out / f"{stem}.raw.txt",
        out / f"{stem}.txt",
        f"{server.spec.name} {scenario}/{variant} round {round_index + 1}",
        ctx.profile_rate_hz,
    )
    if not (ctx.profile and wanted(server.spec.name)):
        yield sampler
        return
    exe = py_spy()
    if exe is None:
        sampler.fail("py-spy is not installed (pip install -r benchmarks/requirements.txt)")
        yield sampler
        return
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / f"{stem}.py-spy.log"
    argv = [exe, "record", "--pid", str(server.process.pid), "--format", "raw"]
    argv += ["--rate", str(sampler.rate_hz), "--output", str(sampler.raw_path)]
    with log_path.open("wb") as log:
        process = await trio.lowlevel.open_process(
            argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL
        )
        try:
            with trio.move_on_after(10):
                while "Sampling process" not in log_path.read_text(errors="replace"):
                    if process.poll() is not None:
                        break
                    await trio.sleep(0.05)
            if process.poll() is not None or "Sampling process" not in log_path.read_text():
                said = log_path.read_text(errors="replace").strip().splitlines()
                why = [line for line in said if "rror" in line][:2] or said[-3:]  # not backtraces
                sampler.fail(
                    f"py-spy could not attach to pid {server.process.pid} (ptrace rights?): "
                    + " | ".join(line.strip() for line in why)
                )
            else:
                sampler.active = True
            started = trio.current_time()
            yield sampler
            sampler.wall_s = trio.current_time() - started
        finally:
            with trio.CancelScope(shield=True):
                if process.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        process.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
                    with trio.move_on_after(30):
                        await process.wait()
                if process.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
                    await process.wait()
                    if sampler.active:
                        sampler.fail("py-spy did not stop on SIGINT; killed")
                        sampler.active = False
