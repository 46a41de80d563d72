"""datapulse behind a real nginx (Debian's package), configured by docs/deploy-nginx.md.

Each test starts nginx on a free loopback port with the server block from the deploy guide (its
ports and ``proxy_read_timeout`` substituted, so the guide cannot drift from what is tested),
running as the current user with every temp path under ``tmp_path``; it is always stopped. Not
skipped when nginx is missing: ``.ci/run`` installs it, so a missing nginx is a failure.

Checked through nginx: an event published to an SSE stream arrives within 100 ms (no
buffering); pings keep an idle stream past nginx's ``proxy_read_timeout``; the client's own
address (we connect from 127.0.0.2 and 127.0.0.3) is what ``--max-connections-per-ip`` counts
and what the log names; a public ``Host`` is answered with ``--allowed-hosts``; and the official
MCP SDK works on ``/mcp`` and ``/sse``.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
import trio
from mcp import Client
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client

from tests.helpers import AUTH, Env, bound_tests, make_env, start_auth_server
from tests.idp import IdP

NGINX = "/usr/sbin/nginx"
GUIDE = Path(__file__).resolve().parents[2] / "docs" / "deploy-nginx.md"
READ_TIMEOUT_S = 2
TEST_TIMEOUT_S = 30


def guide_server_block() -> str:
    """The ``nginx`` block of docs/deploy-nginx.md, verbatim."""
    match = re.search(r"```nginx\n(.*?)```", GUIDE.read_text(), re.S)
    assert match, f"{GUIDE} has no ```nginx block"
    return match.group(1)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def nginx_conf(tmp: Path, upstream_port: int, listen_port: int) -> str:
    block = guide_server_block()
    for old, new in [
        ("server 127.0.0.1:8000;", f"server 127.0.0.1:{upstream_port};"),
        ("listen 80;", f"listen 127.0.0.1:{listen_port};"),
        ("proxy_read_timeout 360s;", f"proxy_read_timeout {READ_TIMEOUT_S}s;"),
    ]:
        assert old in block, f"the guide's nginx block no longer says {old!r}"
        block = block.replace(old, new)
    temps = "\n".join(
        f"    {name}_temp_path {tmp / name};" for name in ("client_body", "proxy", "fastcgi")
    )
    return (
        "worker_processes 1;\n"
        "events { worker_connections 256; }\n"
        "http {\n"
        f"    access_log {tmp / 'access.log'};\n"
        f"{temps}\n"
        f"{block}"
        "}\n"
    )


@asynccontextmanager
async def nginx(tmp: Path, upstream_port: int) -> AsyncIterator[str]:
    """nginx in front of ``upstream_port``; yields its URL. Always stopped."""
    assert os.path.exists(NGINX), (
        f"{NGINX} is missing: install Debian's nginx (apt-get install -y nginx-light); .ci/run does"
    )
    port = free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(nginx_conf(tmp, upstream_port, port))
    directives = f"daemon off; master_process on; pid {tmp / 'nginx.pid'}; error_log stderr;"
    if os.geteuid() == 0:
        directives += " user root;"  # else workers run as nobody and cannot use tmp_path
    stderr = (tmp / "nginx.stderr").open("wb")
    process = subprocess.Popen(
        [NGINX, "-e", "stderr", "-p", str(tmp), "-c", str(conf), "-g", directives],
        stdout=subprocess.DEVNULL,
        stderr=stderr,
    )
    try:
        with trio.fail_after(5):
            while True:
                assert process.poll() is None, (tmp / "nginx.stderr").read_text()
                try:
                    probe = await trio.open_tcp_stream("127.0.0.1", port)
                except OSError:
                    await trio.sleep(0.02)
                    continue
                await probe.aclose()
                break
        yield f"http://127.0.0.1:{port}"
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        stderr.close()


@asynccontextmanager
async def proxied(
    nursery: trio.Nursery, tmp: Path, **overrides: Any
) -> AsyncIterator[tuple[Env, str]]:
    settings: dict[str, Any] = {
        "trusted_proxies": "127.0.0.1/32",
        "allowed_hosts": "mcp.example.com",
        "ping_interval_s": 0.5,
    }
    settings.update(overrides)
    async with make_env(nursery, **settings) as env, nginx(tmp, env.port) as url:
        yield env, url


def client_from(address: str, url: str) -> httpx.AsyncClient:
    """An httpx client whose connections come from ``address`` (a 127.0.0.0/8 address)."""
    return httpx.AsyncClient(
        base_url=url,
        timeout=5,
        headers=AUTH,
        transport=httpx.AsyncHTTPTransport(local_address=address),
    )


class Lines:
    """The lines of an SSE response body, as they arrive."""

    def __init__(self, response: httpx.Response) -> None:
        self._chunks = response.aiter_raw()
        self._buffer = b""

    async def line(self) -> str:
        while b"\n" not in self._buffer:
            self._buffer += await self._chunks.__anext__()
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode()

    async def until(self, prefix: str) -> tuple[str, int]:
        """The next line starting with ``prefix``, and how many ``: ping`` lines came before."""
        pings = 0
        while True:
            line = await self.line()
            if line.startswith(prefix):
                return line, pings
            pings += line.startswith(": ping")


# -- streams through nginx ---------------------------------------------------------------------


async def test_sse_is_not_buffered_and_pings_outlive_the_read_timeout(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    async with (
        proxied(nursery, tmp_path) as (env, url),
        client_from("127.0.0.2", url) as http,
        http.stream("GET", "/sse") as response,
    ):
        assert response.status_code == 200
        lines = Lines(response)
        endpoint, _ = await lines.until("data: /messages?session_id=")
        session_id = endpoint.split("session_id=", 1)[1]
        for _ in range(3):
            started = trio.current_time()
            await env.server.publish(session_id, {"n": 1}, event="note")
            with trio.fail_after(0.1):
                await lines.until("event: note")
            assert trio.current_time() - started < 0.1
        # Idle for longer than nginx's proxy_read_timeout: only the pings keep it open.
        await trio.sleep(READ_TIMEOUT_S + 1)
        await env.server.publish(session_id, {"n": 2}, event="late")
        _line, pings = await lines.until("event: late")
        assert pings >= READ_TIMEOUT_S  # one every 0.5 s while idle


async def test_the_forwarded_client_is_what_the_per_ip_limit_counts(
    nursery: trio.Nursery, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="datapulse.server")
    async with (
        proxied(nursery, tmp_path, max_connections_per_ip=2) as (env, url),
        client_from("127.0.0.2", url) as first,
        client_from("127.0.0.3", url) as second,
        first.stream("GET", "/sse") as one,
        first.stream("GET", "/sse") as two,
    ):
        assert one.status_code == two.status_code == 200
        # nginx's connections all come from 127.0.0.1; the client behind them is 127.0.0.2.
        assert env.server.http.per_address == {"127.0.0.2": 2}
        refused = await first.get("/sse")
        assert refused.status_code == 429
        assert refused.json()["error"] == "too_many_connections"
        async with second.stream("GET", "/sse") as other:
            assert other.status_code == 200
            assert env.server.http.per_address == {"127.0.0.2": 2, "127.0.0.3": 1}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len([w for w in warnings if "--max-connections-per-ip" in w]) == 1, warnings
    assert warnings[0].startswith("127.0.0.2 holds 2 connections")


async def test_a_public_host_is_answered_only_when_allowed(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    async with proxied(nursery, tmp_path) as (_env, url), client_from("127.0.0.2", url) as http:
        listed = await http.post(
            "/message",
            json={"session_id": "s", "tool": "get_time"},
            headers={"Host": "mcp.example.com"},
        )
        assert listed.status_code != 421, listed.text
        other = await http.get("/events", headers={"Host": "evil.example"})
        assert other.status_code == 421


async def test_resource_metadata_names_the_forwarded_scheme_and_host(
    nursery: trio.Nursery, tmp_path: Path, idp: IdP
) -> None:
    _server, info = await start_auth_server(
        nursery,
        idp,
        trusted_proxies="127.0.0.1/32",
        allowed_hosts="mcp.example.com",
    )
    async with nginx(tmp_path, info.port) as url, client_from("127.0.0.2", url) as http:
        got = await http.get(
            "/.well-known/oauth-protected-resource/mcp", headers={"Host": "mcp.example.com"}
        )
        assert got.status_code == 200, got.text
        assert got.json()["resource"] == "http://mcp.example.com/mcp"


# -- the official SDK through nginx ------------------------------------------------------------


@pytest.mark.parametrize("transport", ["mcp", "sse"])
async def test_the_sdk_works_through_nginx(
    nursery: trio.Nursery, tmp_path: Path, transport: str
) -> None:
    async with proxied(nursery, tmp_path) as (_env, url):
        wire: Any
        if transport == "sse":
            wire = sse_client(url + "/sse", headers=AUTH)
            async with Client(wire, mode="legacy", read_timeout_seconds=10) as client:
                result = await client.call_tool("get_time", {})
        else:
            async with httpx2.AsyncClient(headers=AUTH, timeout=10) as http:
                wire = streamable_http_client(url + "/mcp", http_client=http)
                async with Client(wire, mode="legacy", read_timeout_seconds=10) as client:
                    result = await client.call_tool("get_time", {})
        assert result.is_error is False


bound_tests(globals(), TEST_TIMEOUT_S)
