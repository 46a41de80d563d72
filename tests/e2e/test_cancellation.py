"""A call ends with its caller: a dropped 2026-07-28 POST, a dropped WebSocket, a
``notifications/cancelled``, a server shutdown. Each test proves the tool's cleanup ran.

The exception is deliberate: a handshake-era ``/mcp`` POST stream that drops does not cancel
its call (the transport spec), and the result can be resumed with ``Last-Event-ID``.

Pings are set far apart (30 s) so that only the disconnect watcher, not a failed write, can
notice a client that left.
"""

from __future__ import annotations

import json

import httpx
import pytest
import trio
from wsproto.events import CloseConnection

from datapulse import Server
from tests.helpers import (
    AUTH,
    CountedTools,
    RawClient,
    RawWebSocket,
    add_counted_tools,
    mcp_session,
    modern_call,
    note,
    open_events_stream,
    rpc,
    start_server,
    wait_for,
    wire,
)

QUIET = {"ping_interval_s": 30.0}


# -- 2026-07-28: the request runs in the connection's nursery -------------------------------------


@pytest.mark.parametrize("moment", ["before_the_response", "while_streaming"])
@pytest.mark.parametrize("how", ["close", "reset"])
async def test_dropping_a_modern_post_cancels_its_call(
    nursery: trio.Nursery, moment: str, how: str
) -> None:
    server, info = await start_server(nursery, **QUIET)
    probe = add_counted_tools(server)
    with trio.fail_after(10):
        client = await RawClient.connect(info.port)
        headers, body = modern_call("hang")
        await client.send("POST", "/mcp", headers, body)
        await probe.until(lambda p: p.started == 1)
        if moment == "while_streaming":  # past JSON_WAIT_S the answer becomes an SSE stream
            await client.read_until(lambda c: c.response is not None)
            assert client.response is not None
            assert client.response.status_code == 200
        await (client.abort() if how == "reset" else client.aclose())
        await probe.until(lambda p: p.cleaned == 1, timeout=3)
        await wait_for(lambda: not server.http.connections, 3, "the connection to close")
    assert probe.finished == 0


# -- WebSocket: calls run in the connection's nursery ---------------------------------------------


@pytest.mark.parametrize("how", ["close_frame", "reset"])
async def test_dropping_a_websocket_cancels_its_calls(nursery: trio.Nursery, how: str) -> None:
    server, info = await start_server(nursery, **QUIET)
    probe = add_counted_tools(server)
    with trio.fail_after(10):
        ws = await RawWebSocket.connect(info.port)
        await ws.initialize()
        for i in (1, 2):
            await ws.send(wire(rpc("tools/call", {"name": "hang", "arguments": {}}, id=i)))
        await probe.until(lambda p: p.started == 2)
        if how == "close_frame":
            await ws.client.stream.send_all(ws.ws.send(CloseConnection(code=1000)))
        else:
            await ws.client.abort()
        await probe.until(lambda p: p.cleaned == 2, timeout=3)
        await wait_for(lambda: not server.http.connections, 3, "the connection to close")
        await ws.client.aclose()


# -- handshake era: a dropped POST stream does not cancel (spec), and is resumable ----------------


async def test_dropping_a_handshake_post_keeps_the_call_and_its_result_is_resumable(
    nursery: trio.Nursery,
) -> None:
    server, info = await start_server(nursery, **QUIET)
    probe = add_counted_tools(server)
    async with httpx.AsyncClient(base_url=info.url, headers=AUTH, timeout=10) as http:
        headers = await mcp_session(http)  # 2025-11-25: POST streams start with a priming id
        with trio.fail_after(10):
            client = await RawClient.connect(info.port)
            body = wire(rpc("tools/call", {"name": "gated", "arguments": {}}, id=41))
            await client.send("POST", "/mcp", list(headers.items()), body)
            await client.read_until(lambda c: any(e.id for e in c.events))
            primed = next(e.id for e in client.events if e.id)
            assert primed is not None and primed.endswith("-0")
            await client.abort()
            await wait_for(lambda: len(server.http.connections) == 1, 3, "the drop (httpx stays)")
            await trio.sleep(0.2)
            assert probe.started == 1 and probe.cleaned == 0  # still running
            probe.gate.set()
            await probe.until(lambda p: p.finished == 1)
            resumed = await http.get("/mcp", headers={**headers, "Last-Event-ID": primed})
    assert resumed.status_code == 200
    replies = [json.loads(line[6:]) for line in resumed.text.splitlines() if line[:6] == "data: "]
    assert [r["id"] for r in replies if "id" in r] == [41]
    assert replies[-1]["result"]["isError"] is False


# -- notifications/cancelled over HTTP ----------------------------------------------------------


async def test_notifications_cancelled_over_http_stops_the_call_and_no_result_is_sent(
    nursery: trio.Nursery,
) -> None:
    server, info = await start_server(nursery, **QUIET)
    probe = add_counted_tools(server)
    async with httpx.AsyncClient(base_url=info.url, headers=AUTH, timeout=10) as http:
        headers = await mcp_session(http)
        with trio.fail_after(10):
            client = await RawClient.connect(info.port)
            body = wire(rpc("tools/call", {"name": "hang", "arguments": {}}, id=5))
            await client.send("POST", "/mcp", list(headers.items()), body)
            await probe.until(lambda p: p.started == 1)
            cancel = wire(note("notifications/cancelled", {"requestId": 5, "reason": "user"}))
            assert (await http.post("/mcp", headers=headers, content=cancel)).status_code == 202
            await probe.until(lambda p: p.cleaned == 1)
            await client.read_to_end()  # the POST's stream ends...
            await client.aclose()
    sent = [json.loads(e.data) for e in client.events if e.data and e.data.strip()]
    assert not [m for m in sent if m.get("id") == 5 and "result" in m]  # ...without a result


async def test_original_api_call_is_cancelled_when_its_session_is_deleted_by_expiry(
    nursery: trio.Nursery,
) -> None:
    server, info = await start_server(nursery, session_ttl_s=0.3, sweep_interval_s=0.1, **QUIET)
    probe = add_counted_tools(server)
    async with httpx.AsyncClient(base_url=info.url, headers=AUTH, timeout=10) as http:
        with trio.fail_after(10):
            stream = await open_events_stream(info.port, "exp")
            await stream.read_until(lambda c: c.response is not None)
            message = {"type": "call_tool", "request_id": "r", "data": {"name": "hang"}}
            assert (await http.post("/message?session_id=exp", json=message)).status_code == 202
            await probe.until(lambda p: p.started == 1)
            live = server.sessions.lookup("exp")
            assert live is not None
            await stream.aclose()  # the stream goes; the call outlives it, not the session
            await wait_for(lambda: live.stream is None, 3, "the server to notice the stream left")
            assert probe.cleaned == 0
            await probe.until(lambda p: p.cleaned == 1, timeout=3)
    assert len(server.sessions) == 0


# -- shutdown: everything is cancelled within the grace period ---------------------------------------


async def test_shutdown_cancels_every_kind_of_call_within_the_grace_period() -> None:
    grace = 0.5
    server: Server | None = None
    probe: CountedTools | None = None
    clients: list[RawClient] = []
    with trio.fail_after(15):
        async with trio.open_nursery() as outer:
            async with trio.open_nursery() as serving:
                server, info = await start_server(serving, shutdown_grace_s=grace, **QUIET)
                probe = add_counted_tools(server)
                # 1: a 2026-07-28 call on its own connection
                modern = await RawClient.connect(info.port)
                headers, body = modern_call("hang")
                await modern.send("POST", "/mcp", headers, body)
                # 2: a handshake call (runs in its session)
                async with httpx.AsyncClient(base_url=info.url, headers=AUTH) as http:
                    session_headers = await mcp_session(http)
                    # 3: an original-API call (session task), its stream open
                    message = {"type": "call_tool", "request_id": "r", "data": {"name": "hang"}}
                    events = await open_events_stream(info.port, "shut")
                    await events.read_until(lambda c: c.response is not None)
                    await http.post("/message?session_id=shut", json=message)
                handshake = await RawClient.connect(info.port)
                body = wire(rpc("tools/call", {"name": "hang", "arguments": {}}, id=3))
                await handshake.send("POST", "/mcp", list(session_headers.items()), body)
                # 4: a WebSocket call
                ws = await RawWebSocket.connect(info.port)
                await ws.initialize()
                await ws.send(wire(rpc("tools/call", {"name": "hang", "arguments": {}}, id=4)))
                # 5: an idle stream of another session
                idle = await open_events_stream(info.port, "idle")
                await idle.read_until(lambda c: c.response is not None)
                clients = [modern, handshake, events, ws.client, idle]
                for client in clients:
                    outer.start_soon(client.read_to_end, 10)
                await probe.until(lambda p: p.started == 4)
                started = trio.current_time()
                server.shutdown()
            elapsed = trio.current_time() - started
            # serve returned: every connection is closed, so every reader sees its end.
    assert probe is not None and server is not None
    assert probe.cleaned == 4 and probe.finished == 0
    assert elapsed < grace + 1.5, elapsed
    assert all(c.ended for c in clients)
    assert b"event: close" in idle.body and b"shutdown" in idle.body
    assert len(server.sessions) == 0
