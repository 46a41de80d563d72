"""Entry point: ``python -m benchmarks.loadgen JOB_JSON`` runs one job and exits."""

from __future__ import annotations

import json
import resource
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from benchmarks.loadgen.common import Control
from benchmarks.loadgen.rpc import run_rpc
from benchmarks.loadgen.streams import run_fanout, run_idle, run_ping, run_slow

PROGRAMS: dict[str, Callable[[dict[str, Any], Control], Awaitable[None]]] = {
    "idle": run_idle,
    "ping": run_ping,
    "fanout": run_fanout,
    "rpc": run_rpc,
    "slow": run_slow,
}


async def run_job(job: dict[str, Any]) -> None:
    control = Control()
    with trio.move_on_after(job["deadline_s"]) as scope:
        await PROGRAMS[job["program"]](job, control)
    if scope.cancelled_caught:
        control.report("error", message=f"worker deadline of {job['deadline_s']} s passed")


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main() -> None:
    raise_fd_limit()
    job = json.loads(sys.argv[1])
    try:
        trio.run(run_job, job)
    except Exception as exc:  # report, then fail: the coordinator logs stderr
        sys.stdout.write(json.dumps({"event": "error", "message": repr(exc)}) + "\n")
        sys.stdout.flush()
        raise


if __name__ == "__main__":
    main()
