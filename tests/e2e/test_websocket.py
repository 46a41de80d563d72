"""MCP over WebSocket at ``/ws`` (subprotocol ``mcp``), driven by a trio-websocket client.

One JSON-RPC message per text frame, in both directions; the socket is the session. Also checks
the hand-over from the h11 layer: a client that sends its first frame in the same TCP write as
the upgrade request must have that frame read (h11 had already buffered it).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest
import trio
import trio_websocket
import wsproto
import wsproto.events

from datapulse.core import mcp, tasks
from tests.helpers import AUTH, Env, RawWebSocket, bound_tests, make_env, rpc, wire

TEST_TIMEOUT_S = 10
AUTH_HEADER = [(b"authorization", AUTH["Authorization"].encode())]


@asynccontextmanager
async def open_ws(
    env: Env,
    subprotocols: list[str] | None = None,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> AsyncIterator[trio_websocket.WebSocketConnection]:
    async with trio_websocket.open_websocket(
        "127.0.0.1",
        env.port,
        "/ws",
        use_ssl=False,
        subprotocols=["mcp"] if subprotocols is None else subprotocols,
        extra_headers=AUTH_HEADER if headers is None else headers,
        connect_timeout=5,
        disconnect_timeout=2,
    ) as ws:
        yield ws


async def send(ws: trio_websocket.WebSocketConnection, message: dict[str, Any]) -> None:
    await ws.send_message(orjson.dumps(message).decode())


async def receive(ws: trio_websocket.WebSocketConnection) -> dict[str, Any]:
    with trio.fail_after(5):
        message = await ws.get_message()
    assert isinstance(message, str)  # replies are text frames too
    decoded: dict[str, Any] = orjson.loads(message)
    return decoded


async def initialize(ws: trio_websocket.WebSocketConnection, version: str = "2025-11-25") -> None:
    params = {
        "protocolVersion": version,
        "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"},
    }
    await send(ws, rpc("initialize", params, id="init"))
    reply = await receive(ws)
    assert reply["id"] == "init"
    assert reply["result"]["protocolVersion"] == version
    expected = {
        **mcp.server_capabilities(version),
        **tasks.server_capabilities(version, modern=False),
    }
    assert set(reply["result"]["capabilities"]) == set(expected)
    await send(ws, {"jsonrpc": "2.0", "method": "notifications/initialized"})


async def test_initialize_list_and_call(env: Env) -> None:
    async with open_ws(env) as ws:
        assert ws.subprotocol == "mcp"
        await initialize(ws)
        await send(ws, rpc("tools/list", id=2))
        tools = (await receive(ws))["result"]["tools"]
        assert {"get_time", "sleeper", "progress"} <= {t["name"] for t in tools}
        await send(ws, rpc("tools/call", {"name": "get_time", "arguments": {}}, id=3))
        reply = await receive(ws)
        assert reply["id"] == 3
        assert reply["result"]["isError"] is False
        assert reply["result"]["structuredContent"]["time"].endswith("Z")
        await send(ws, rpc("tools/call", {"name": "no_such_tool"}, id=4))
        error = await receive(ws)
        assert error["id"] == 4
        assert error["error"]["code"] == -32602


async def test_requests_before_initialize_are_refused_in_band(env: Env) -> None:
    async with open_ws(env) as ws:
        await send(ws, rpc("ping", id=1))  # ping is allowed before initialize
        assert await receive(ws) == {"jsonrpc": "2.0", "id": 1, "result": {}}
        await send(ws, rpc("tools/list", id=2))
        reply = await receive(ws)
        assert reply["id"] == 2
        assert reply["error"]["code"] == -32600


async def test_progress_arrives_before_the_result(env: Env) -> None:
    async with open_ws(env) as ws:
        await initialize(ws)
        params = {"name": "progress", "arguments": {}, "_meta": {"progressToken": "p"}}
        await send(ws, rpc("tools/call", params, id=7))
        received = [await receive(ws) for _ in range(4)]
        progress = [m["params"] for m in received[:3]]
        assert [m["method"] for m in received[:3]] == ["notifications/progress"] * 3
        assert [(p["progressToken"], p["progress"], p["total"]) for p in progress] == [
            ("p", 1, 3),
            ("p", 2, 3),
            ("p", 3, 3),
        ]
        assert received[3]["id"] == 7
        assert received[3]["result"]["content"][0]["text"] == '{"steps":3}'


async def test_notifications_cancelled_stops_the_call_without_a_reply(env: Env) -> None:
    async with open_ws(env) as ws:
        await initialize(ws)
        await send(ws, rpc("tools/call", {"name": "sleeper", "arguments": {}}, id=5))
        await env.probe.started.wait()
        await send(
            ws, {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 5}}
        )
        await env.probe.cleaned.wait()
        await send(ws, rpc("ping", id=6))
        assert await receive(ws) == {"jsonrpc": "2.0", "id": 6, "result": {}}  # nothing for 5


async def test_disconnect_cancels_an_in_flight_call(env: Env) -> None:
    async with open_ws(env) as ws:
        await initialize(ws)
        await send(ws, rpc("tools/call", {"name": "sleeper", "arguments": {}}, id=5))
        await env.probe.started.wait()
    await env.probe.cleaned.wait()


async def test_abrupt_disconnect_cancels_an_in_flight_call(env: Env) -> None:
    ws = await RawWebSocket.connect(env.port)  # raw: trio-websocket always says goodbye
    await ws.initialize()
    await ws.send(wire(rpc("tools/call", {"name": "sleeper", "arguments": {}}, id=5)))
    await env.probe.started.wait()
    # No close handshake: the TCP connection just goes away.
    await ws.client.aclose()
    await env.probe.cleaned.wait()


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ("{not json", -32700),
        ("[1, 2", -32700),
        ('{"jsonrpc": "2.0"}', -32600),
        ('{"jsonrpc": "1.0", "id": 3, "method": "ping"}', -32600),
        ('[{"jsonrpc": "2.0", "id": 3, "method": "ping"}]', -32600),  # no batches at 2025-11-25
    ],
)
async def test_malformed_messages_are_answered_in_band(env: Env, payload: str, code: int) -> None:
    async with open_ws(env) as ws:
        await initialize(ws)
        await ws.send_message(payload)
        error = await receive(ws)
        assert error["error"]["code"] == code
        assert error["id"] in (None, 3)
        await send(ws, rpc("ping", id=9))  # the connection is still usable
        assert (await receive(ws))["id"] == 9


async def test_batches_at_2025_03_26(env: Env) -> None:
    async with open_ws(env) as ws:
        await initialize(ws, "2025-03-26")
        await ws.send_message(orjson.dumps([rpc("ping", id=1), rpc("ping", id=2)]).decode())
        replies = [await receive(ws), await receive(ws)]
        assert sorted(r["id"] for r in replies) == [1, 2]


async def test_missing_subprotocol_is_closed_with_1002(env: Env) -> None:
    async with open_ws(env, subprotocols=[]) as ws:
        with pytest.raises(trio_websocket.ConnectionClosed) as closed:
            await ws.get_message()
    assert closed.value.reason.code == 1002
    assert "mcp" in (closed.value.reason.reason or "")


async def test_other_subprotocols_only_is_closed_with_1002(env: Env) -> None:
    async with open_ws(env, subprotocols=["graphql-ws"]) as ws:
        with pytest.raises(trio_websocket.ConnectionClosed) as closed:
            await ws.get_message()
    assert closed.value.reason.code == 1002


async def test_binary_frame_is_closed_with_1003(env: Env) -> None:
    async with open_ws(env) as ws:
        await initialize(ws)
        await ws.send_message(b'{"jsonrpc": "2.0", "id": 1, "method": "ping"}')
        with pytest.raises(trio_websocket.ConnectionClosed) as closed:
            await ws.get_message()
    assert closed.value.reason.code == 1003


async def test_binary_frame_cancels_in_flight_calls(env: Env) -> None:
    async with open_ws(env) as ws:
        await initialize(ws)
        await send(ws, rpc("tools/call", {"name": "sleeper", "arguments": {}}, id=5))
        await env.probe.started.wait()
        await ws.send_message(b"\x00")
        await env.probe.cleaned.wait()


async def test_message_over_max_body_is_closed_with_1009(nursery: trio.Nursery) -> None:
    async with make_env(nursery, max_body_bytes=1000) as env, open_ws(env) as ws:
        await ws.send_message("x" * 5000)
        with pytest.raises(trio_websocket.ConnectionClosed) as closed:
            await ws.get_message()
    assert closed.value.reason.code == 1009


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ([], 401),
        ([(b"authorization", b"Bearer wrong")], 401),
        ([*AUTH_HEADER, (b"origin", b"http://evil.example.com")], 403),
    ],
)
async def test_upgrade_is_checked_like_any_request(
    env: Env, headers: list[tuple[bytes, bytes]], status: int
) -> None:
    with pytest.raises(trio_websocket.ConnectionRejected) as rejected:
        async with open_ws(env, headers=headers):
            pass  # pragma: no cover
    assert rejected.value.status_code == status


async def test_plain_get_on_ws_is_400(env: Env) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", env.port)
    async with stream:
        await stream.send_all(
            b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: "
            + AUTH["Authorization"].encode()
            + b"\r\nConnection: close\r\n\r\n"
        )
        head = await stream.receive_some(4096)
    assert head.startswith(b"HTTP/1.1 400 ")


async def test_upgrade_request_read_in_pieces_is_replayed_whole(env: Env) -> None:
    """h11 parses the upgrade request (here arriving in three TCP writes), the router checks it,
    and ``_ReplayStream`` hands trio-websocket the re-serialised head so that wsproto performs
    the handshake as if it had read the socket itself. (Bytes a client sends before the 101 are
    replayed too, but wsproto's server handshake drops them; RFC 6455 4.1 forbids sending any.)
    """
    client = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    handshake = client.send(
        wsproto.events.Request(
            host=f"127.0.0.1:{env.port}",
            target="/ws",
            subprotocols=["other", "mcp"],
            extra_headers=AUTH_HEADER,
        )
    )
    stream = await trio.open_tcp_stream("127.0.0.1", env.port)
    async with stream:
        third = len(handshake) // 3
        for piece in (handshake[:third], handshake[third : 2 * third], handshake[2 * third :]):
            await stream.send_all(piece)
            await trio.sleep(0.02)
        events: list[wsproto.events.Event] = []

        async def until(kind: type[wsproto.events.Event]) -> Any:
            with trio.fail_after(5):
                while not any(isinstance(e, kind) for e in events):
                    client.receive_data(await stream.receive_some(4096))
                    events.extend(client.events())
            return next(e for e in events if isinstance(e, kind))

        accepted = await until(wsproto.events.AcceptConnection)
        assert accepted.subprotocol == "mcp"
        await stream.send_all(
            client.send(wsproto.events.TextMessage(orjson.dumps(rpc("ping", id="x")).decode()))
        )
        reply = await until(wsproto.events.TextMessage)
        assert orjson.loads(reply.data) == {"jsonrpc": "2.0", "id": "x", "result": {}}


# Every test runs under a deadline (reads also have their own, shorter ones).
bound_tests(globals(), TEST_TIMEOUT_S)
