"""/metrics after real traffic, read with prometheus-client's own parser (docs/metrics.md)."""

from __future__ import annotations

import socket
from typing import Any

import httpx
import trio
from prometheus_client.parser import text_string_to_metric_families

from datapulse import ToolContext
from datapulse.core.sse import PING, encode_retry
from datapulse.errors import ToolError
from tests.helpers import AUTH, SSEReader, start_auth_server, start_server, wait_for
from tests.idp import IdP

RETRY_MS = 100


def parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample as {(name, sorted labels): value}."""
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


async def scrape(http: httpx.AsyncClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = await http.get("/metrics", headers=AUTH)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    return parse(response.text)


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def call(http: httpx.AsyncClient, session: str, request_id: str, name: str) -> None:
    body = {"type": "call_tool", "request_id": request_id, "data": {"name": name}}
    response = await http.post(f"/message?session_id={session}", json=body, headers=AUTH)
    assert response.status_code == 202


async def test_metrics_match_the_traffic(nursery: trio.Nursery) -> None:
    server, info = await start_server(
        nursery, ping_interval_s=0.05, retry_ms=RETRY_MS, max_sessions_per_principal=1
    )

    @server.tool("boom", description="always fails")
    async def boom(arguments: dict[str, Any], context: ToolContext) -> None:
        raise ToolError("boom")

    async with httpx.AsyncClient(base_url=info.url, timeout=5) as http:
        with trio.fail_after(10):
            async with http.stream("GET", "/events?session_id=a", headers=AUTH) as response:
                assert response.status_code == 200
                reader = SSEReader(response)
                await server.publish("a", {"n": 1})
                await server.publish("a", {"n": 2})
                await call(http, "a", "r1", "get_time")
                await call(http, "a", "r2", "boom")
                ids = [(await reader.next_data()).id for _ in range(4)]
                assert ids == ["1", "2", "3", "4"]
                await reader.read_until(PING)
                # A 401 (no token) and a 429 (a second session past the per-principal limit).
                assert (await http.get("/events?session_id=x")).status_code == 401
                assert (await http.get("/events?session_id=b", headers=AUTH)).status_code == 429

                samples = await scrape(http)
                assert value(samples, "datapulse_events_sent_total", transport="events") == 4
                framing = len(encode_retry(RETRY_MS)) + reader.raw.count(PING) * len(PING)
                assert (
                    value(samples, "datapulse_event_bytes_sent_total", transport="events")
                    == len(reader.raw) - framing
                )
                assert value(samples, "datapulse_pings_total") >= reader.raw.count(PING) >= 1
                assert value(samples, "datapulse_open_streams", transport="events") == 1
                assert value(samples, "datapulse_sessions") == 1
                assert value(samples, "datapulse_open_connections") >= 1
                tool = "datapulse_tool_calls_total"
                assert value(samples, tool, tool="get_time", outcome="ok") == 1
                assert value(samples, tool, tool="boom", outcome="error") == 1
                assert (
                    value(samples, "datapulse_tool_call_duration_seconds_count", tool="get_time")
                    == 1
                )
                assert value(samples, "datapulse_auth_failures_total", reason="missing_token") == 1
                assert (
                    value(
                        samples, "datapulse_limit_rejections_total", limit="sessions_per_principal"
                    )
                    == 1
                )

        # Resumptions: Last-Event-ID 2 is all there (a hit); 99 was never issued (a miss).
        with trio.fail_after(10):
            headers = {**AUTH, "Last-Event-ID": "2"}
            async with http.stream("GET", "/events?session_id=a", headers=headers) as response:
                reader = SSEReader(response)
                assert [(await reader.next_data()).id for _ in range(2)] == ["3", "4"]
            headers = {**AUTH, "Last-Event-ID": "99"}
            async with http.stream("GET", "/events?session_id=a", headers=headers) as response:
                reader = SSEReader(response)
                assert "replay_gone" in ((await reader.next_data()).data or "")
                samples = await scrape(http)
        assert value(samples, "datapulse_replay_total", result="hit") == 1
        assert value(samples, "datapulse_replay_total", result="miss") == 1
        assert value(samples, "datapulse_events_sent_total", transport="events") == 6


async def test_metrics_need_the_token(nursery: trio.Nursery) -> None:
    _, info = await start_server(nursery)
    async with httpx.AsyncClient(base_url=info.url, timeout=5) as http:
        assert (await http.get("/metrics")).status_code == 401
        bad = await http.get("/metrics", headers={"Authorization": "Bearer nope"})
        assert bad.status_code == 401
        samples = await scrape(http)
        assert value(samples, "datapulse_auth_failures_total", reason="missing_token") == 1
        assert value(samples, "datapulse_auth_failures_total", reason="invalid_token") == 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_metrics_port_serves_without_auth_on_loopback(nursery: trio.Nursery) -> None:
    port = free_port()
    server, info = await start_server(nursery, metrics_port=port)
    assert server.metrics_http is not None and server.metrics_http.bound is not None
    assert server.metrics_http.bound.host == "127.0.0.1"
    async with httpx.AsyncClient(timeout=5) as http:
        response = await http.get(f"http://127.0.0.1:{port}/metrics")
        assert response.status_code == 200
        samples = parse(response.text)
        assert ("datapulse_sessions", ()) in samples
        # Only /metrics there; the main port's /metrics still needs the token.
        assert (await http.get(f"http://127.0.0.1:{port}/healthz")).status_code == 404
        assert (await http.get(f"{info.url}/metrics")).status_code == 401
        # No auth there, so the DNS-rebinding guard is what keeps a foreign page out.
        rebound = await http.get(
            f"http://127.0.0.1:{port}/metrics", headers={"Host": "rebind.evil.example"}
        )
        assert rebound.status_code == 421


async def test_two_servers_count_apart(nursery: trio.Nursery) -> None:
    one, one_info = await start_server(nursery)
    _, two_info = await start_server(nursery)
    async with httpx.AsyncClient(timeout=5) as http:
        assert (await http.get(f"{one_info.url}/events?session_id=a")).status_code == 401
        await wait_for(
            lambda: one.metrics.auth_failures.labels("missing_token")._value.get() == 1,
            2,
            "the first server to count its 401",
        )
        two = parse((await http.get(f"{two_info.url}/metrics", headers=AUTH)).text)
    assert value(two, "datapulse_auth_failures_total", reason="missing_token") == 0


async def test_jwks_fetches_are_counted(nursery: trio.Nursery, idp: IdP) -> None:
    _, info = await start_auth_server(nursery, idp)
    async with httpx.AsyncClient(base_url=info.url, timeout=5) as http:
        samples = await scrape(http)
    assert value(samples, "datapulse_jwks_fetches_total", result="ok") == 1
    assert value(samples, "datapulse_jwks_fetches_total", result="error") == 0
