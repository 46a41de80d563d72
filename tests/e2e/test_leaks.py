"""Nothing leaks: 5,000 connections opened and dropped abruptly leave no task, session, channel,
connection or file descriptor behind.

The mix covers every way a client can vanish: mid-stream (``/events``, ``/sse``), mid-request
(half a head, half a body), mid-call (2026-07-28 POST, WebSocket, handshake ``/mcp``, original
API), and garbage. Half the drops are a FIN, half a RST. Connections go in bounded batches.
Sessions of the original and handshake APIs legitimately outlive their connections, so the
session TTL is short and the test waits for the sweeper; everything else must go at once.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import psutil
import trio

from datapulse import Server
from tests.helpers import (
    AUTH_HEADER,
    CountedTools,
    RawClient,
    RawWebSocket,
    add_counted_tools,
    handshake_headers,
    modern_call,
    note,
    open_events_stream,
    raise_fd_limit,
    rpc,
    start_server,
    wait_for,
    wire,
)

CONNECTIONS = 5000
BATCH = 250
PAUSE_S = 0.05


@dataclass
class Target:
    port: int
    probe: CountedTools

    async def started(self, n: int) -> None:
        """Until the call tagged ``n`` runs: the drop that follows is truly mid-call."""
        await self.probe.until(lambda p: str(n) in p.tags, timeout=10)


def count_tasks() -> int:
    """Every live Trio task, found by walking the task tree from the root."""

    def walk(task: trio.lowlevel.Task) -> int:
        return 1 + sum(walk(child) for n in task.child_nurseries for child in n.child_tasks)

    return walk(trio.lowlevel.current_root_task())


def open_fds() -> int:
    return psutil.Process(os.getpid()).num_fds()


class Leaks:
    def __init__(self, server: Server) -> None:
        self.server = server

    def snapshot(self) -> dict[str, int]:
        server = self.server
        live = server.sessions.live_sessions()
        return {
            "tasks": count_tasks(),
            "fds": open_fds(),
            "connections": len(server.http.connections),
            "per_address": sum(server.http.per_address.values()),
            "sessions": len(server.sessions),
            "store_sessions": len(server.store),  # type: ignore[arg-type]
            "attachments": sum(s.stream is not None for s in live),
            "session_tasks": sum(s.running for s in live),
            "owned": server.sessions.owned_total,  # per-principal session counts
        }


async def drop(client: RawClient, n: int) -> None:
    await (client.abort() if n % 2 else client.aclose())


async def events_stream(target: Target, n: int) -> int:
    port = target.port
    client = await open_events_stream(port, f"leak-{n}")
    await client.read_until(lambda c: c.response is not None)
    await drop(client, n)
    return 1


async def events_stream_with_call(target: Target, n: int) -> int:
    port = target.port
    stream = await open_events_stream(port, f"leak-{n}")
    await stream.read_until(lambda c: c.response is not None)
    poster = await RawClient.connect(port)
    message = {"type": "call_tool", "request_id": str(n), "data": {"name": "hang", "tag": str(n)}}
    await poster.send(
        "POST", f"/message?session_id=leak-{n}", [AUTH_HEADER], json.dumps(message).encode()
    )
    await poster.read_to_end()
    await drop(poster, n)
    await target.started(n)
    await drop(stream, n + 1)
    return 2


async def legacy_stream_with_call(target: Target, n: int) -> int:
    port = target.port
    stream = await RawClient.connect(port)
    await stream.send("GET", "/sse", [AUTH_HEADER, ("Accept", "text/event-stream")])
    await stream.read_until(lambda c: any(e.event == "endpoint" for e in c.events))
    endpoint = next(e.data for e in stream.events if e.event == "endpoint")
    assert endpoint is not None
    poster = await RawClient.connect(port)
    headers = [AUTH_HEADER, ("Content-Type", "application/json")]
    initialize = wire(
        rpc("initialize", {"protocolVersion": "2024-11-05", "capabilities": {}}, id=0)
    )
    for body in (
        initialize,
        wire(note("notifications/initialized")),
        wire(rpc("tools/call", {"name": "hang", "arguments": {"tag": str(n)}}, id=n)),
    ):
        assert (await poster.exchange("POST", endpoint, headers, body)).status_code == 202
    await drop(poster, n)
    await target.started(n)
    await drop(stream, n + 1)
    return 2


async def half_head(target: Target, n: int) -> int:
    port = target.port
    client = await RawClient.connect(port)
    await client.stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: local")
    await trio.sleep(PAUSE_S)
    await drop(client, n)
    return 1


async def half_body(target: Target, n: int) -> int:
    port = target.port
    client = await RawClient.connect(port)
    head = f"POST /message?session_id=x HTTP/1.1\r\nHost: localhost\r\nAuthorization: {AUTH_HEADER[1]}\r\nContent-Length: 100\r\n\r\n"
    await client.stream.send_all(head.encode() + b'{"type": "call_')
    await trio.sleep(PAUSE_S)
    await drop(client, n)
    return 1


async def modern_mid_call(target: Target, n: int) -> int:
    port = target.port
    client = await RawClient.connect(port)
    headers, body = modern_call("hang", {"tag": str(n)}, id=n)
    await client.send("POST", "/mcp", headers, body)
    await target.started(n)
    await drop(client, n)
    return 1


async def websocket_mid_call(target: Target, n: int) -> int:
    port = target.port
    ws = await RawWebSocket.connect(port)
    await ws.initialize()
    await ws.send(wire(rpc("tools/call", {"name": "hang", "arguments": {"tag": str(n)}}, id=n)))
    await target.started(n)
    await drop(ws.client, n)
    return 1


async def handshake_mid_call(target: Target, n: int) -> int:
    port = target.port
    client = await RawClient.connect(port)
    params = {"protocolVersion": "2025-06-18", "capabilities": {}}
    await client.send(
        "POST", "/mcp", list(handshake_headers().items()), wire(rpc("initialize", params))
    )
    await client.read_to_end()
    assert client.response is not None
    session_id = dict(client.response.headers)[b"mcp-session-id"].decode()
    client.conn.start_next_cycle()
    headers = list(handshake_headers(session_id, "2025-06-18").items())
    await client.send(
        "POST",
        "/mcp",
        headers,
        wire(rpc("tools/call", {"name": "hang", "arguments": {"tag": str(n)}}, id=n)),
    )
    await target.started(n)
    await drop(client, n)
    return 1


async def garbage(target: Target, n: int) -> int:
    port = target.port
    client = await RawClient.connect(port)
    await client.stream.send_all(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" * 8)
    await client.read_to_end()
    await drop(client, n)
    return 1


Kind = Callable[[Target, int], Awaitable[int]]  # returns how many connections it opened
MID_CALL: list[Kind] = [
    events_stream_with_call,
    legacy_stream_with_call,
    modern_mid_call,
    websocket_mid_call,
    handshake_mid_call,
]
KINDS: list[Kind] = [
    events_stream,
    events_stream_with_call,
    legacy_stream_with_call,
    half_head,
    half_body,
    modern_mid_call,
    websocket_mid_call,
    handshake_mid_call,
    garbage,
]


async def test_five_thousand_dropped_connections_leave_nothing_behind(
    nursery: trio.Nursery,
) -> None:
    raise_fd_limit()
    server, info = await start_server(
        nursery,
        ping_interval_s=30,
        session_ttl_s=1.0,
        sweep_interval_s=0.2,
        read_timeout_s=10,
        max_connections_per_ip=2 * BATCH * 3,
        max_sessions_per_principal=CONNECTIONS,
    )
    probe = add_counted_tools(server)
    target = Target(info.port, probe)
    leaks = Leaks(server)
    settled = leaks.snapshot

    # Warm up every path once (imports, caches, lazily created state), then take the baseline.
    with trio.fail_after(20):
        for kind in KINDS:
            await kind(target, -1)
        await wait_for(
            lambda: (
                len(server.sessions) == 0
                and probe.started == probe.cleaned
                and not server.http.connections
            ),
            10,
            "warm-up to settle",
        )
    before = settled()

    opened: Counter[str] = Counter()  # connections per kind
    runs: Counter[str] = Counter()
    started_at = trio.current_time()
    with trio.fail_after(120):
        for start in range(0, CONNECTIONS, BATCH):

            async def one(n: int) -> None:
                kind = KINDS[n % len(KINDS)]
                count = await kind(target, n)  # awaited first: += would race across tasks
                opened[kind.__name__] += count
                runs[kind.__name__] += 1

            async with trio.open_nursery() as batch:
                for n in range(start, start + BATCH):
                    batch.start_soon(one, n)
        churn_s = trio.current_time() - started_at

        def back_to_baseline() -> bool:
            now = settled()
            return now == before and probe.started == probe.cleaned

        await wait_for(back_to_baseline, 20, "everything to be released")
    after = settled()
    print(f"leaks: {sum(opened.values())} connections in {churn_s:.1f}s; {dict(opened)}")
    print(
        f"leaks: before={before} after={after} calls started={probe.started} cleaned={probe.cleaned}"
    )
    assert sum(opened.values()) >= CONNECTIONS
    assert after == before
    assert probe.started == probe.cleaned
    # Every mid-call drop really was mid-call: each waited for its own call to start.
    assert probe.started == len(MID_CALL) + sum(runs[k.__name__] for k in MID_CALL)
