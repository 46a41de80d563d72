"""``python -m datapulse --workers 2 --redis-url ...``: two processes on one port, one session.

The real command line and a private redis-server: requests to the one port are answered by
both workers (``/healthz`` names its pid); a session made through one is served by the other; a
worker killed with SIGKILL is started again; SIGTERM stops them all; ``--workers`` without
``--redis-url`` is refused with one line."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import psutil
import pytest
import trio

from datapulse.__main__ import main
from tests.helpers import read_stderr_until
from tests.redis_server import RedisServer, free_port, redis_server

__all__ = ["redis_server"]  # a fixture, used by name

TOKEN = "workers-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
pytestmark = pytest.mark.timeout(90)


@asynccontextmanager
async def supervisor(redis: RedisServer) -> AsyncIterator[tuple[trio.Process, str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATAPULSE_")}
    command = [sys.executable, "-m", "datapulse", "--workers", "2", "--port", "0"]
    command += ["--redis-url", redis.url(), "--token", TOKEN, "--shutdown-grace", "2"]
    async with trio.open_nursery() as nursery:
        proc: trio.Process = await nursery.start(
            lambda task_status=trio.TASK_STATUS_IGNORED: trio.run_process(
                command, stderr=subprocess.PIPE, env=env, check=False, task_status=task_status
            )
        )
        # Each worker's announcement: "datapulse <version> listening on <url>" (log lines aside).
        announced = re.compile(r"^datapulse \S+ listening on (\S+)$", re.MULTILINE)
        text = (await read_stderr_until(proc, b"listening on", timeout_s=30)).decode()
        while len(announced.findall(text)) < 2:
            text += (await read_stderr_until(proc, b"listening on", timeout_s=30)).decode()
        urls = set(announced.findall(text))
        assert len(urls) == 1, text  # both workers on the one port
        try:
            yield proc, urls.pop()
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
            with trio.fail_after(20):
                await proc.wait()


async def pids_answering(http: httpx.AsyncClient, tries: int = 40) -> set[int]:
    seen: set[int] = set()
    for _ in range(tries):
        # A new connection each time: the kernel picks the worker per connection.
        response = await http.get("/healthz", headers={"Connection": "close"})
        seen.add(response.json()["pid"])
    return seen


async def test_two_workers_share_the_port_and_the_sessions(redis_server: RedisServer) -> None:
    with trio.fail_after(60):
        async with supervisor(redis_server) as (proc, url):
            workers = {p.pid for p in psutil.Process(proc.pid).children()}
            assert len(workers) == 2
            async with httpx.AsyncClient(base_url=url, timeout=5) as http:
                assert await pids_answering(http) == workers
                # One session, whichever worker each request lands on.
                params = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {}}
                headers = {**AUTH, "Accept": "application/json, text/event-stream"}
                init = await http.post(
                    "/mcp",
                    headers={**headers, "Connection": "close"},
                    json={"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": params},
                )
                headers["Mcp-Session-Id"] = init.headers["mcp-session-id"]
                for n in range(1, 9):
                    answer = await http.post(
                        "/mcp",
                        headers={**headers, "Connection": "close"},
                        json={
                            "jsonrpc": "2.0",
                            "id": n,
                            "method": "tools/call",
                            "params": {"name": "get_time"},
                        },
                    )
                    assert answer.status_code == 200, answer.text
                    assert "time" in answer.json()["result"]["structuredContent"]

                # A worker killed outright is started again; the port never stops answering.
                victim = next(iter(workers))
                os.kill(victim, signal.SIGKILL)
                with trio.fail_after(20):
                    while True:
                        current = {p.pid for p in psutil.Process(proc.pid).children()}
                        if len(current) == 2 and victim not in current:
                            break
                        await trio.sleep(0.2)
                assert (await http.get("/healthz")).status_code == 200
            proc.send_signal(signal.SIGTERM)
            with trio.fail_after(20):
                assert await proc.wait() == 0
            assert not [p for p in current if psutil.pid_exists(p)]


def test_workers_without_redis_are_refused_with_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["--workers", "2", "--port", "0", "--token", "t"]) == 2
    err = capsys.readouterr().err
    assert "--workers needs --redis-url" in err and "Traceback" not in err


async def test_a_server_whose_redis_is_down_stays_up_and_not_ready() -> None:
    """Redis unreachable from the start: the server serves /healthz, answers /readyz 503, and
    nothing (the clock's ticks, the change and notice subscriptions) takes it down; SIGTERM
    stops it cleanly. (A Redis that is down is the store's 503, never a crash.)"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATAPULSE_")}
    closed = free_port()
    command = [sys.executable, "-m", "datapulse", "--port", "0", "--token", TOKEN]
    command += ["--redis-url", f"redis://127.0.0.1:{closed}/0", "--redis-timeout", "0.3"]
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            proc: trio.Process = await nursery.start(
                lambda task_status=trio.TASK_STATUS_IGNORED: trio.run_process(
                    command, stderr=subprocess.PIPE, env=env, check=False, task_status=task_status
                )
            )
            text = (await read_stderr_until(proc, b"listening on")).decode()
            url = re.findall(r"listening on (http://[^\s\"]+)", text)[0]
            await trio.sleep(2.5)  # two clock ticks, sweeps and resubscriptions against no Redis
            async with httpx.AsyncClient(base_url=url, timeout=5) as http:
                assert (await http.get("/healthz")).status_code == 200
                ready = await http.get("/readyz")
                assert ready.status_code == 503 and ready.json()["checks"]["store"] != "ok"
            assert proc.returncode is None
            proc.send_signal(signal.SIGTERM)
            assert await proc.wait() == 0


def test_a_bad_redis_prefix_is_refused_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--redis-prefix", "{x}", "--port", "0", "--token", "t"]) == 2
    err = capsys.readouterr().err
    assert "redis_prefix must be" in err and "Traceback" not in err
