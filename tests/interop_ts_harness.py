"""Running a tests/interop_ts/*.mjs script (the official MCP TypeScript SDK v2 client) against an
app served in process, for tests/e2e/test_interop_ts*.py.

``run_script(make_run, script, ...)`` installs the npm packages (``npm ci`` through
``tests/node_tools.py``; a no-op when ``.ci/run`` did it), then in one ``trio.run``: builds the
run (``make_run()``, whose ``app.server`` is served on loopback), starts
``node SCRIPT URL/mcp TOKEN REVISION`` with ``INTEROP_TIMEOUT_MS`` set, reads its JSON lines
(``ready`` lines are kept and handed to ``on_ready``; the ``result`` line is kept; anything else
is stray output) and collects its stderr and datapulse's ERROR log records, all under one
deadline. A missing Node or npm fails the test, it does not skip it.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio

from tests import node_tools
from tests.helpers import TOKEN

PACKAGE = Path(__file__).resolve().parent / "interop_ts"
REVISIONS = ["2025-11-25", "2026-07-28"]


@dataclass
class ScriptRun:
    """What one script run saw. ``app`` has the ``server`` the script talks to."""

    revision: str
    app: Any
    result: dict[str, Any] = field(default_factory=dict)
    ready: list[dict[str, Any]] = field(default_factory=list)  # the script's ready lines
    stderr: str = ""
    returncode: int | None = None
    server_errors: list[str] = field(default_factory=list)  # datapulse's ERROR log records
    stray: list[str] = field(default_factory=list)  # stdout lines that were not JSON

    @property
    def modern(self) -> bool:
        return self.revision == "2026-07-28"

    def __repr__(self) -> str:
        return f"Run({self.revision!r}, exit {self.returncode})"

    def step(self, name: str) -> Any:
        """A step's value; fails with the step's error and the script's stderr if it threw."""
        assert name in self.result, f"{self.revision}: no step {name!r} ({self.stderr[-2000:]})"
        value = self.result[name]
        if isinstance(value, dict) and set(value) == {"error"}:
            pytest.fail(f"{self.revision}: {name} failed: {value['error']}\n{self.stderr[-2000:]}")
        return value

    def error(self, name: str) -> dict[str, Any]:
        """A step's error; fails if the step did not throw."""
        value = self.result[name]
        assert isinstance(value, dict) and set(value) == {"error"}, f"{name} did not throw: {value}"
        error: dict[str, Any] = value["error"]
        return error


R = TypeVar("R", bound=ScriptRun)
OnReady = Callable[[R, trio.Process, dict[str, Any]], Awaitable[None]]


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(logging.Formatter().format(record))


def node() -> str:
    """Node >= 22: the system's if new enough, else the node-linux-<arch> this package pins.
    (The SDK itself says ``"engines": {"node": ">=20"}``, and passes these tests on 20 too.)"""
    found = node_tools.find_node(PACKAGE)
    assert found is not None, f"no Node.js >= {node_tools.MIN_NODE_MAJOR}: npm ci in {PACKAGE}?"
    return str(found)


def run_script(
    make_run: Callable[[], R],
    script: str,
    *,
    run_timeout_s: float,
    step_timeout_ms: int,
    on_ready: OnReady[R] | None = None,
    stdin: bool = False,
    on_exit: Callable[[R], None] | None = None,
) -> R:
    """Run ``tests/interop_ts/SCRIPT`` once against ``make_run().app.server``; fail unless it
    printed a result line.

    ``on_ready(run, proc, line)`` answers each ready line (``stdin``: the script reads
    ``proc.stdin``); ``on_exit(run)`` runs once the script has exited, before the server stops.
    """
    node_tools.ensure_node_modules(PACKAGE)  # .ci/run did it: a no-op then

    async def main() -> R:
        errors = _Errors()
        logging.getLogger("datapulse").addHandler(errors)
        try:
            run = make_run()
            run.server_errors = errors.records
            await _exchange(
                run,
                PACKAGE / script,
                run_timeout_s=run_timeout_s,
                step_timeout_ms=step_timeout_ms,
                on_ready=on_ready,
                stdin=stdin,
                on_exit=on_exit,
            )
            return run
        finally:
            logging.getLogger("datapulse").removeHandler(errors)

    done = trio.run(main)
    assert done.result, (
        f"no result line from the script (exit {done.returncode}, ready lines {done.ready},"
        f" other output {done.stray}):\n{done.stderr}"
    )
    return done


async def _exchange(
    run: R,
    script: Path,
    *,
    run_timeout_s: float,
    step_timeout_ms: int,
    on_ready: OnReady[R] | None,
    stdin: bool,
    on_exit: Callable[[R], None] | None,
) -> None:
    stderr = bytearray()
    with trio.move_on_after(run_timeout_s) as deadline:
        async with trio.open_nursery() as nursery:
            info = await nursery.start(run.app.server.serve)
            env = {**os.environ, "INTEROP_TIMEOUT_MS": str(step_timeout_ms)}
            env.pop("NODE_OPTIONS", None)
            proc = await trio.lowlevel.open_process(
                [node(), str(script), f"{info.url}/mcp", TOKEN, run.revision],
                cwd=PACKAGE,
                env=env,
                stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            try:

                async def drain_stderr() -> None:
                    assert proc.stderr is not None
                    async for chunk in proc.stderr:
                        stderr.extend(chunk)

                nursery.start_soon(drain_stderr)
                await _read_lines(run, proc, on_ready)
                run.returncode = await proc.wait()
                if on_exit is not None:
                    on_exit(run)
            finally:
                if proc.returncode is None:
                    proc.kill()
                    with trio.CancelScope(shield=True):
                        await proc.wait()
            nursery.cancel_scope.cancel()
    run.stderr = stderr.decode(errors="replace")
    if deadline.cancelled_caught:
        run.stderr += f"\n(the exchange was stopped after {run_timeout_s} s)"


async def _read_lines(run: R, proc: trio.Process, on_ready: OnReady[R] | None) -> None:
    """Read the script's JSON lines as they come: keep the result line, hand on each ready line."""
    assert proc.stdout is not None
    buffered = b""

    async def take(line: bytes) -> None:
        try:
            message = json.loads(line)
        except ValueError:
            run.stray.append(line.decode(errors="replace"))
            return
        if message.get("event") == "result":
            run.result = message
        elif message.get("event") == "ready":
            run.ready.append(message)
            if on_ready is not None:
                await on_ready(run, proc, message)

    async for chunk in proc.stdout:
        buffered += chunk
        *lines, buffered = buffered.split(b"\n")
        for line in lines:
            await take(line)
    if buffered:  # a last line without its newline
        await take(buffered)
