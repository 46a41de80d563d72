"""Two servers sharing one session store: any instance serves any session.

The store here is the memory store with the one thing a shared backend adds, ``watch()``: every
append, announced to every instance (what the Redis backend does with one channel). With it,
the mechanisms that make several instances one server are exercised over real sockets without
Redis: a session made on A is adopted by B from the store; a request posted to B runs on B and
its result, appended to the log, reaches the stream held open on A, exactly once and in order.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import trio

from datapulse import Server
from datapulse.core.eventlog import LoggedEvent
from datapulse.store import LogKey, MemorySessionStore
from tests.helpers import AUTH, SSEReader, bound_tests, make_config

MCP = {**AUTH, "Accept": "application/json, text/event-stream"}


class WatchedStore(MemorySessionStore):
    """A memory store that announces every append to every watcher (one per instance)."""

    def __init__(self) -> None:
        super().__init__(1000, 4 * 1024 * 1024)
        self._watchers: list[trio.MemorySendChannel[tuple[LogKey, int]]] = []
        self._relays: list[trio.MemorySendChannel[str]] = []

    async def append(self, key: LogKey, data: str, event: str | None = None) -> LoggedEvent:
        logged = await super().append(key, data, event)
        for watcher in self._watchers:
            watcher.send_nowait((key, logged.seq))
        return logged

    async def delete(self, session_id: str) -> None:
        await super().delete(session_id)
        for watcher in self._watchers:
            watcher.send_nowait((LogKey(session_id), 0))  # seq 0: the session ended

    async def publish_notice(self, uri: str) -> int:
        for relay in self._relays:
            relay.send_nowait(uri)
        return len(self._relays)

    async def notices(self) -> AsyncIterator[str]:
        send, receive = trio.open_memory_channel[str](10_000)
        self._relays.append(send)
        async with receive:
            async for uri in receive:
                yield uri

    async def watch(self) -> AsyncIterator[tuple[LogKey, int]]:
        send, receive = trio.open_memory_channel[tuple[LogKey, int]](10_000)
        self._watchers.append(send)
        async with receive:
            async for item in receive:
                yield item


SERVERS: list[Server] = []


async def two_servers(nursery: trio.Nursery, **settings: Any) -> tuple[str, str]:
    store = WatchedStore()
    urls = []
    SERVERS.clear()
    for _ in range(2):
        config = make_config(retry_ms=100, **settings)
        server = Server(config, store=store, builtin_tools=True)
        info = await nursery.start(server.serve)
        urls.append(info.url)
        SERVERS.append(server)
    return urls[0], urls[1]


async def test_events_stream_on_a_message_posted_to_b(nursery: trio.Nursery) -> None:
    a, b = await two_servers(nursery)
    async with (
        httpx.AsyncClient(base_url=a, headers=AUTH, timeout=5) as on_a,
        httpx.AsyncClient(base_url=b, headers=AUTH, timeout=5) as on_b,
        on_a.stream("GET", "/events?session_id=shared") as stream,
    ):
        reader = SSEReader(stream)
        for n in range(3):
            posted = await on_b.post(
                "/message?session_id=shared",
                json={"type": "call_tool", "request_id": f"r{n}", "data": {"name": "get_time"}},
            )
            assert posted.status_code == 202, posted.text
        seen = []
        for _ in range(3):
            event = await reader.next_data()
            seen.append((event.id, orjson.loads(event.data)["request_id"]))
        assert seen == [("1", "r0"), ("2", "r1"), ("3", "r2")]  # once each, in order


async def mcp_init(http: httpx.AsyncClient) -> dict[str, str]:
    params = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t"}}
    response = await http.post(
        "/mcp",
        headers=MCP,
        json={"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": params},
    )
    headers = {**MCP, "Mcp-Session-Id": response.headers["mcp-session-id"]}
    await http.post(
        "/mcp", headers=headers, json={"jsonrpc": "2.0", "method": "notifications/initialized"}
    )
    return headers


async def test_mcp_session_initialized_on_a_called_on_b(nursery: trio.Nursery) -> None:
    a, b = await two_servers(nursery)
    async with (
        httpx.AsyncClient(base_url=a, timeout=5) as on_a,
        httpx.AsyncClient(base_url=b, timeout=5) as on_b,
    ):
        headers = await mcp_init(on_a)
        call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "get_time"}}
        answered = await on_b.post("/mcp", headers=headers, json=call)
        assert answered.status_code == 200
        assert "time" in answered.json()["result"]["structuredContent"]
        # B restored the session's protocol state (initialized, its revision) from the store.
        listed = await on_b.post(
            "/mcp", headers=headers, json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
        )
        assert [t["name"] for t in listed.json()["result"]["tools"]] == ["get_time", "fetch_url"]


async def test_sse_stream_on_a_messages_posted_to_b(nursery: trio.Nursery) -> None:
    a, b = await two_servers(nursery)
    async with (
        httpx.AsyncClient(base_url=a, headers=AUTH, timeout=5) as on_a,
        httpx.AsyncClient(base_url=b, headers=AUTH, timeout=5) as on_b,
        on_a.stream("GET", "/sse") as stream,
    ):
        reader = SSEReader(stream)
        endpoint = (await reader.next_data()).data
        assert endpoint.startswith("/messages?session_id=")

        async def post(message: dict[str, Any]) -> None:
            response = await on_b.post(endpoint, json={"jsonrpc": "2.0", **message})
            assert response.status_code == 202, response.text

        params = {"protocolVersion": "2024-11-05", "capabilities": {}, "clientInfo": {"name": "t"}}
        await post({"id": 0, "method": "initialize", "params": params})
        assert orjson.loads((await reader.next_data()).data)["result"]["protocolVersion"] == (
            "2024-11-05"
        )
        await post({"method": "notifications/initialized"})
        await post({"id": 1, "method": "tools/call", "params": {"name": "get_time"}})
        result = orjson.loads((await reader.next_data()).data)
        assert result["id"] == 1 and result["result"]["isError"] is False


async def test_a_session_deleted_on_b_ends_its_stream_on_a(nursery: trio.Nursery) -> None:
    a, b = await two_servers(nursery)
    async with (
        httpx.AsyncClient(base_url=a, timeout=5) as on_a,
        httpx.AsyncClient(base_url=b, timeout=5) as on_b,
    ):
        headers = await mcp_init(on_a)
        get_headers = {**headers, "Accept": "text/event-stream"}
        async with on_a.stream("GET", "/mcp", headers=get_headers) as stream:
            assert stream.status_code == 200
            assert (await on_b.delete("/mcp", headers=headers)).status_code == 200
            body = b""
            with trio.fail_after(5):
                async for chunk in stream.aiter_raw():  # ends: A ended the session too
                    body += chunk
            assert b"session_ended" in body
        gone = await on_a.post(
            "/mcp", headers=headers, json={"jsonrpc": "2.0", "id": 9, "method": "tools/list"}
        )
        assert gone.status_code == 404


async def test_a_stream_on_a_keeps_the_session_b_adopted_alive(nursery: trio.Nursery) -> None:
    """B's copy of a session it adopted goes stale while A streams it; B's sweep must take the
    store's word (A keeps it fresh there) instead of expiring the session under A's stream."""
    a, b = await two_servers(nursery, session_ttl_s=1.0, sweep_interval_s=0.1)
    async with (
        httpx.AsyncClient(base_url=a, headers=AUTH, timeout=5) as on_a,
        httpx.AsyncClient(base_url=b, headers=AUTH, timeout=5) as on_b,
        on_a.stream("GET", "/events?session_id=kept") as stream,
    ):
        reader = SSEReader(stream)
        call = {"type": "call_tool", "request_id": "r1", "data": {"name": "get_time"}}
        assert (await on_b.post("/message?session_id=kept", json=call)).status_code == 202
        assert orjson.loads((await reader.next_data()).data)["request_id"] == "r1"
        await trio.sleep(2.5)  # more than the TTL: B's copy has not been touched since
        call["request_id"] = "r2"
        assert (await on_b.post("/message?session_id=kept", json=call)).status_code == 202
        assert orjson.loads((await reader.next_data()).data)["request_id"] == "r2"


async def test_a_resource_update_on_b_reaches_a_subscriber_on_a(nursery: trio.Nursery) -> None:
    """The host program of any instance tells every instance's subscribers."""
    a, _ = await two_servers(nursery)
    async with httpx.AsyncClient(base_url=a, timeout=5) as on_a:
        headers = await mcp_init(on_a)
        subscribe = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "resources/subscribe",
            "params": {"uri": "pulse://clock"},
        }
        assert (await on_a.post("/mcp", headers=headers, json=subscribe)).json()["result"] == {}
        get_headers = {**headers, "Accept": "text/event-stream"}
        async with on_a.stream("GET", "/mcp", headers=get_headers) as stream:
            reader = SSEReader(stream)
            assert await SERVERS[1].notify_resource_updated("pulse://clock") == 2  # instances
            while True:  # the clock's own ticks may come first: any update proves the path
                message = orjson.loads((await reader.next_data()).data)
                if message.get("method") == "notifications/resources/updated":
                    break
            assert message["params"] == {"uri": "pulse://clock"}


bound_tests(globals(), 15)
