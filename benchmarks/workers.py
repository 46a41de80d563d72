"""Coordinator side of the load generator: start worker processes, keep them in step.

``WorkerPool`` starts N ``python -m benchmarks.loadgen JOB`` processes, one job each, and offers
two moves: ``gather(event)`` waits until every worker has reported ``event`` (their reports come
back in worker order), and ``command(cmd)`` releases them all into the next phase. A worker that
reports ``error`` or exits makes ``gather`` raise ``WorkerFailed``; leaving the pool's ``async
with`` always ends the processes (stdin closes, then TERM, then KILL).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psutil
import trio

from benchmarks.servers import REPO_ROOT


class WorkerFailed(Exception):
    pass


def leaf_errors(error: BaseException) -> list[BaseException]:
    """The plain exceptions inside (nested) exception groups, in order."""
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in leaf_errors(inner)]
    return [error]


class Worker:
    def __init__(self, index: int, process: trio.Process) -> None:
        self.index = index
        self.process = process
        self._buffer = b""
        self.pid = process.pid

    async def send(self, message: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send_all((json.dumps(message) + "\n").encode())

    async def receive(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        while b"\n" not in self._buffer:
            data = await self.process.stdout.receive_some(1 << 20)
            if not data:
                raise WorkerFailed(f"worker {self.index} exited (code {self.process.poll()})")
            self._buffer += data
        line, self._buffer = self._buffer.split(b"\n", 1)
        message: dict[str, Any] = json.loads(line)
        return message


class WorkerPool:
    def __init__(self, workers: list[Worker]) -> None:
        self.workers = workers

    async def gather(self, event: str, timeout_s: float) -> list[dict[str, Any]]:
        results: list[dict[str, Any] | None] = [None] * len(self.workers)

        async def one(worker: Worker) -> None:
            while True:
                message = await worker.receive()
                if message.get("event") == "error":
                    raise WorkerFailed(f"worker {worker.index}: {message.get('message')}")
                if message.get("event") == event:
                    results[worker.index] = message
                    return

        try:
            with trio.fail_after(timeout_s):
                async with trio.open_nursery() as nursery:
                    for worker in self.workers:
                        nursery.start_soon(one, worker)
        except ExceptionGroup as group:
            raise leaf_errors(group)[0] from group
        return [r for r in results if r is not None]

    async def command(self, cmd: str) -> None:
        for worker in self.workers:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await worker.send({"cmd": cmd})

    def cpu_seconds(self) -> float:
        """CPU of all workers so far, read from outside (psutil), for cross-checks."""
        total = 0.0
        for worker in self.workers:
            with contextlib.suppress(psutil.Error):
                times = psutil.Process(worker.pid).cpu_times()
                total += times.user + times.system
        return total


@contextlib.asynccontextmanager
async def start_workers(jobs: list[dict[str, Any]], log_path: Path) -> AsyncIterator[WorkerPool]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    workers: list[Worker] = []
    with log_path.open("ab") as log:
        try:
            for index, job in enumerate(jobs):
                process = await trio.lowlevel.open_process(
                    [sys.executable, "-m", "benchmarks.loadgen", json.dumps(job)],
                    cwd=REPO_ROOT,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=log,
                )
                workers.append(Worker(index, process))
            yield WorkerPool(workers)
        finally:
            with trio.CancelScope(shield=True):
                for worker in workers:
                    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                        await worker.send({"cmd": "stop"})
                with trio.move_on_after(5):
                    for worker in workers:
                        await worker.process.wait()
                for worker in workers:
                    if worker.process.poll() is None:
                        worker.process.kill()
                        await worker.process.wait()
                    for stream in (worker.process.stdin, worker.process.stdout):
                        if stream is not None:
                            await stream.aclose()
