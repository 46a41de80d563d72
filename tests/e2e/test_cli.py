"""The command line, as a real subprocess: start, announce, serve, stop on SIGTERM with exit 0."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import httpx
import pytest
import trio

from datapulse.__main__ import build_parser, config_from_args
from datapulse.config import settings
from tests.helpers import read_stderr_until


def test_help_documents_every_flag_and_env_variable() -> None:
    text = build_parser().format_help()
    for f in settings():
        assert f.metadata["flag"] in text
        assert f.metadata["env"] in text


def test_flags_override_env_and_fractional_ping(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATAPULSE_PING_INTERVAL", "0.25")
    monkeypatch.setenv("DATAPULSE_PORT", "9000")
    monkeypatch.setenv("LOCAL_BEARER_TOKEN", "from-env")
    config = config_from_args(["--port", "9001", "--fetch-allow-private"])
    assert config.ping_interval_s == 0.25
    assert config.port == 9001
    assert config.token == "from-env"
    assert config.fetch_allow_private is True


def test_bad_values_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    from datapulse.__main__ import main

    assert main(["--ping-interval", "-1"]) == 2
    assert "ping_interval_s must be > 0" in capsys.readouterr().err
    assert main(["--port", "abc"]) == 2
    assert main(["--metrics-port", "-5"]) == 2  # refused with a line, not a traceback
    assert "metrics_port must be 0..65535" in capsys.readouterr().err


async def read_announcement(proc: trio.Process) -> tuple[str, str]:
    decoded = (await read_stderr_until(proc, b"bearer token")).decode()
    url = re.search(r"listening on (http://[^\s\"]+)", decoded)
    token = re.search(r"bearer token \(generated\): (\S+)", decoded)
    assert url and token, decoded
    return url.group(1), token.group(1)


async def test_cli_generates_a_token_serves_and_exits_0_on_sigterm() -> None:
    env = {k: v for k, v in os.environ.items() if k != "LOCAL_BEARER_TOKEN"}
    async with trio.open_nursery() as nursery:
        proc = await nursery.start(
            lambda task_status=trio.TASK_STATUS_IGNORED: trio.run_process(
                [sys.executable, "-m", "datapulse", "--port", "0"],
                stderr=subprocess.PIPE,
                env=env,
                check=False,
                task_status=task_status,
            )
        )
        url, token = await read_announcement(proc)
        assert len(token) >= 32
        async with httpx.AsyncClient(base_url=url) as client:
            assert (await client.get("/events?session_id=a")).status_code == 401
            ok = await client.get("/healthz", headers={"Authorization": f"Bearer {token}"})
            assert ok.status_code == 200
            async with client.stream(
                "GET", "/events?session_id=a", headers={"Authorization": f"Bearer {token}"}
            ) as response:
                assert response.status_code == 200
                proc.send_signal(signal.SIGTERM)
                body = b""
                with trio.fail_after(10):
                    async for chunk in response.aiter_raw():
                        body += chunk
                assert b"event: close" in body and b"shutdown" in body
        with trio.fail_after(10):
            await proc.wait()
        assert proc.returncode == 0


async def test_the_cli_freezes_its_start_up_objects_out_of_the_collector() -> None:
    """Full collections then skip the modules and the app (docs/benchmarks.md: one falling
    inside the fan-out window stalled every stream for ~40 ms)."""
    env = {k: v for k, v in os.environ.items() if k != "LOCAL_BEARER_TOKEN"}
    async with trio.open_nursery() as nursery:
        proc = await nursery.start(
            lambda task_status=trio.TASK_STATUS_IGNORED: trio.run_process(
                [sys.executable, "-m", "datapulse", "--port", "0", "--log-level", "DEBUG"],
                stderr=subprocess.PIPE,
                env=env,
                check=False,
                task_status=task_status,
            )
        )
        text = await read_stderr_until(proc, b"bearer token")
        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(10):
            await proc.wait()
    frozen = re.search(rb"(\d+) start-up objects frozen", text)
    assert frozen and int(frozen.group(1)) > 10_000, text.decode()[-2000:]
