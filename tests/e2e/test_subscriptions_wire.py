"""Resource subscriptions and ``list_changed`` on the wire, every transport: raw httpx and a raw
WebSocket against a real server on loopback, asserting the exact messages.

* ``/mcp`` (2025-11-25, 2025-06-18): ``resources/subscribe``, then ``server.notify_resource_updated``
  arrives on the session's GET stream; other URIs and unsubscribed ones do not; an update sent
  while no GET stream is open is in the session's log and goes out when one opens; an unknown
  URI is -32002. ``list_changed`` after ``remove_*`` and after registering at run time, one per
  kind per burst; an ended session hears nothing.
* ``/sse`` (2024-11-05): the same through ``POST /messages``, arriving as ``event: message``;
  nothing before ``initialize``.
* ``/ws``: the same as text frames; nothing before ``initialize``; the bounded notification
  outbox (as many as ``--replay-events``): a client that never reads is dropped, told 1013.
* 2026-07-28 ``subscriptions/listen`` on ``/mcp``: the acknowledgment first (subscription id and
  the honoured filter), then only what the filter asked for, every message tagged; 406 without
  ``text/event-stream``; keep-alive comments while idle; a JSON-RPC result at shutdown (the
  graceful close); a client that goes leaves no listener behind.
* the built-in ``pulse://clock`` ticks to its subscribers.

"Does not arrive" is never a timed silence: the test then makes something that *must* arrive
(a sentinel) and checks it is the very next message. Notifications reach a client in the order
the server produced them (one log, or one outbox, per client), and ``list_changed`` goes out from
the notifier's task in the order the kinds changed, so anything unwanted would come first.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest
import trio
from wsproto.events import CloseConnection, Event, TextMessage

from datapulse import Server
from datapulse.core import mcp
from tests.e2e.conformance_helpers import init_body, modern_body, modern_headers
from tests.e2e.test_ws_hardening import close_of, raw_ws
from tests.helpers import (
    AUTH,
    RawWebSocket,
    SSEReader,
    bound_tests,
    make_config,
    make_env,
    mcp_session,
    note,
    rpc,
    wait_for,
    wire,
)

TEST_TIMEOUT_S = 10
HANDSHAKE_VERSIONS = ["2025-11-25", "2025-06-18"]
SUBSCRIPTION_ID = mcp.META_SUBSCRIPTION_ID
A = "data://a"
B = "data://b"
NOTE = "notes://alpha"


# -- the app ------------------------------------------------------------------------------------


def build_server(**settings: Any) -> Server:
    """Two fixed resources, a template, two tools and a prompt; no built-ins (no clock ticking
    into the tests, a tool list the tests know exactly)."""
    server = Server(make_config(retry_ms=100, **settings), builtin_tools=False)

    @server.resource(A, mime_type="text/plain")
    async def read_a() -> str:
        return "A"

    @server.resource(B, mime_type="text/plain")
    async def read_b() -> str:
        return "B"

    @server.resource("notes://{name}")
    async def read_note(name: str) -> str:
        return f"note {name}"

    @server.tool()
    async def add(a: int, b: int = 1) -> int:
        """Add two integers."""
        return a + b

    @server.tool()
    def shout(text: str) -> str:
        """Upper-case a text."""
        return text.upper()

    @server.prompt()
    async def greet(name: str) -> str:
        """Greet someone."""
        return f"Hello {name}"

    return server


@dataclass
class App:
    server: Server
    port: int
    http: httpx.AsyncClient


@asynccontextmanager
async def serve(nursery: trio.Nursery, **settings: Any) -> AsyncIterator[App]:
    server = build_server(**settings)
    info = await nursery.start(server.serve)
    async with httpx.AsyncClient(base_url=info.url, timeout=5) as http:
        yield App(server, info.port, http)


@pytest.fixture
async def app(nursery: trio.Nursery) -> AsyncIterator[App]:
    async with serve(nursery) as value:
        yield value


async def whisper(text: str) -> str:
    """Lower-case a text (registered while clients are connected)."""
    return text.lower()


async def farewell(name: str) -> str:
    """Say goodbye (registered while clients are connected)."""
    return f"Bye {name}"


async def read_c() -> str:
    return "C"


# -- expected messages -------------------------------------------------------------------------


def updated(uri: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "method": "notifications/resources/updated", "params": {"uri": uri}}


def changed(kind: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "method": f"notifications/{kind}/list_changed"}


def tagged(message: dict[str, Any], subscription_id: str | int) -> dict[str, Any]:
    """``message`` as a listen stream carries it: ``params._meta`` names the subscription."""
    params = {**message.get("params", {}), "_meta": {SUBSCRIPTION_ID: subscription_id}}
    return {**message, "params": params}


def result(id: int | str, value: Any = None) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": id, "result": {} if value is None else value}


# -- /mcp helpers ------------------------------------------------------------------------------


async def post(app: App, headers: dict[str, str], message: dict[str, Any]) -> dict[str, Any]:
    """A request on a handshake session, answered with JSON."""
    response = await app.http.post("/mcp", headers=headers, json=message)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json"), response.headers
    reply: dict[str, Any] = response.json()
    return reply


async def subscribe(app: App, headers: dict[str, str], uri: str, id: int = 2) -> None:
    assert await post(app, headers, rpc("resources/subscribe", {"uri": uri}, id)) == result(id)


@asynccontextmanager
async def get_stream(app: App, headers: dict[str, str]) -> AsyncIterator[SSEReader]:
    """The session's GET stream (``Accept: text/event-stream`` only, as clients send it)."""
    async with app.http.stream(
        "GET", "/mcp", headers={**headers, "Accept": "text/event-stream"}
    ) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        yield SSEReader(response)


async def next_json(reader: SSEReader, timeout: float = 5.0) -> dict[str, Any]:
    event = await reader.next_data(timeout)
    assert event.data is not None
    message: dict[str, Any] = orjson.loads(event.data)
    return message


# == /mcp, handshake era ==========================================================================


@pytest.mark.parametrize("version", HANDSHAKE_VERSIONS)
async def test_mcp_update_reaches_the_get_stream_of_a_subscriber_only(
    app: App, version: str
) -> None:
    headers = await mcp_session(app.http, version)
    await subscribe(app, headers, A)
    await subscribe(app, headers, NOTE, id=3)  # a URI a template serves
    async with get_stream(app, headers) as stream:
        assert await app.server.notify_resource_updated(B) == 0  # nobody subscribed to it
        assert await app.server.notify_resource_updated(A) == 1
        assert await next_json(stream) == updated(A)  # B would have come first
        assert await app.server.notify_resource_updated(NOTE) == 1
        assert await next_json(stream) == updated(NOTE)

        unsubscribe = rpc("resources/unsubscribe", {"uri": A}, 4)
        assert await post(app, headers, unsubscribe) == result(4)
        assert await app.server.notify_resource_updated(A) == 0
        # The sentinel: a change that must arrive, after an update to A would have.
        app.server.remove_tool("shout")
        assert await next_json(stream) == changed("tools")
        assert await app.server.notify_resource_updated(NOTE) == 1  # still subscribed to that
        assert await next_json(stream) == updated(NOTE)


@pytest.mark.parametrize("version", HANDSHAKE_VERSIONS)
async def test_mcp_update_sent_with_no_get_stream_open_is_replayed_when_one_opens(
    app: App, version: str
) -> None:
    headers = await mcp_session(app.http, version)
    await subscribe(app, headers, A)
    # No GET stream: the update goes into the session's log all the same.
    assert await app.server.notify_resource_updated(A) == 1
    assert await app.server.notify_resource_updated(B) == 0
    async with get_stream(app, headers) as stream:
        first = await stream.next_data()
        assert first.id == "1"  # the first event of the session's log
        assert orjson.loads(first.data or "") == updated(A)
        assert await app.server.notify_resource_updated(A) == 1
        second = await stream.next_data()
        assert (second.id, orjson.loads(second.data or "")) == ("2", updated(A))


@pytest.mark.parametrize("version", HANDSHAKE_VERSIONS)
async def test_mcp_subscribing_to_an_unknown_uri_is_32002(app: App, version: str) -> None:
    headers = await mcp_session(app.http, version)
    reply = await post(app, headers, rpc("resources/subscribe", {"uri": "data://nope"}, 7))
    assert reply["id"] == 7
    assert reply["error"]["code"] == -32002, reply
    assert reply["error"]["data"] == {"uri": "data://nope"}
    assert await app.server.notify_resource_updated("data://nope") == 0
    # The session is still good, and subscribing to what exists still works.
    await subscribe(app, headers, A, id=8)
    assert await app.server.notify_resource_updated(A) == 1


@pytest.mark.parametrize("version", HANDSHAKE_VERSIONS)
async def test_mcp_list_changed_after_removing_and_registering_at_run_time(
    app: App, version: str
) -> None:
    headers = await mcp_session(app.http, version)
    server = app.server
    async with get_stream(app, headers) as stream:
        server.remove_tool("shout")
        assert await next_json(stream) == changed("tools")
        listed = await post(app, headers, rpc("tools/list", id=5))
        assert [t["name"] for t in listed["result"]["tools"]] == ["add"]

        server.tool()(whisper)
        assert await next_json(stream) == changed("tools")
        listed = await post(app, headers, rpc("tools/list", id=6))
        assert [t["name"] for t in listed["result"]["tools"]] == ["add", "whisper"]

        server.resource("data://c")(read_c)
        assert await next_json(stream) == changed("resources")
        listed = await post(app, headers, rpc("resources/list", id=7))
        assert [r["uri"] for r in listed["result"]["resources"]] == [A, B, "data://c"]

        server.prompt()(farewell)
        assert await next_json(stream) == changed("prompts")
        listed = await post(app, headers, rpc("prompts/list", id=8))
        assert [p["name"] for p in listed["result"]["prompts"]] == ["greet", "farewell"]

        server.remove_resource("notes://{name}")
        assert await next_json(stream) == changed("resources")
        server.remove_prompt("greet")
        assert await next_json(stream) == changed("prompts")


async def test_mcp_a_burst_of_changes_is_one_list_changed_per_kind(app: App) -> None:
    headers = await mcp_session(app.http)
    await subscribe(app, headers, A)
    server = app.server
    async with get_stream(app, headers) as stream:
        # In one step, no checkpoint between: one notification per kind, in the order changed.
        server.remove_tool("shout")
        server.prompt()(farewell)
        server.tool()(whisper)
        server.remove_tool("add")
        assert await next_json(stream) == changed("tools")
        assert await next_json(stream) == changed("prompts")
        assert await server.notify_resource_updated(A) == 1  # the sentinel
        assert await next_json(stream) == updated(A)


async def test_mcp_an_ended_session_hears_nothing(app: App) -> None:
    server = app.server
    assert server.notices.listeners == 0
    kept = await mcp_session(app.http)
    ended = await mcp_session(app.http)
    await subscribe(app, kept, A)
    await subscribe(app, ended, A)
    assert server.notices.listeners == 2
    assert await server.notify_resource_updated(A) == 2
    deleted = await app.http.delete("/mcp", headers=ended)
    assert deleted.status_code == 200
    assert server.notices.listeners == 1
    assert await server.notify_resource_updated(A) == 1
    async with get_stream(app, kept) as stream:
        assert await next_json(stream) == updated(A)
        assert await next_json(stream) == updated(A)


# == /sse (HTTP+SSE, 2024-11-05) ==================================================================


@dataclass
class Legacy:
    """One /sse session: its stream and where it posts."""

    app: App
    reader: SSEReader
    endpoint: str

    async def send(self, message: dict[str, Any]) -> None:
        headers = {**AUTH, "Content-Type": "application/json"}
        response = await self.app.http.post(self.endpoint, headers=headers, json=message)
        assert response.status_code == 202, response.text

    async def next(self) -> dict[str, Any]:
        event = await self.reader.next_data()
        assert event.event == "message", event  # every server message, on this transport
        message: dict[str, Any] = orjson.loads(event.data or "")
        return message

    async def request(self, message: dict[str, Any]) -> dict[str, Any]:
        await self.send(message)
        return await self.next()

    async def initialize(self, version: str = "2024-11-05") -> None:
        reply = await self.request(init_body(version, id=0))
        assert reply["result"]["protocolVersion"] == version
        await self.send(note("notifications/initialized"))


async def open_legacy(app: App, stack: AsyncExitStack) -> Legacy:
    response = await stack.enter_async_context(
        app.http.stream("GET", "/sse", headers={**AUTH, "Accept": "text/event-stream"})
    )
    assert response.status_code == 200
    reader = SSEReader(response)
    first = await reader.next_data()
    assert first.event == "endpoint"
    return Legacy(app, reader, first.data or "")


async def test_sse_update_arrives_as_a_message_event(app: App) -> None:
    async with AsyncExitStack() as stack:
        legacy = await open_legacy(app, stack)
        await legacy.initialize()
        assert await legacy.request(rpc("resources/subscribe", {"uri": A}, 1)) == result(1)
        assert await app.server.notify_resource_updated(B) == 0
        assert await app.server.notify_resource_updated(A) == 1
        assert await legacy.next() == updated(A)
        app.server.remove_tool("shout")
        assert await legacy.next() == changed("tools")
        assert await legacy.request(rpc("resources/unsubscribe", {"uri": A}, 2)) == result(2)
        assert await app.server.notify_resource_updated(A) == 0
        reply = await legacy.request(rpc("resources/subscribe", {"uri": "data://nope"}, 3))
        assert reply["error"]["code"] == -32002
    # The stream was the session: gone with it, and so is its listener.
    await wait_for(lambda: app.server.notices.listeners == 0, 3, "the /sse session to detach")


async def test_sse_no_list_changed_before_initialize(app: App) -> None:
    server = app.server
    async with AsyncExitStack() as stack:
        legacy = await open_legacy(app, stack)  # attached from here, not yet initialized
        # A witness attached after it: it hears the change once the /sse session was passed.
        witness = await mcp_session(app.http)
        stream = await stack.enter_async_context(get_stream(app, witness))
        server.remove_tool("shout")
        assert await next_json(stream) == changed("tools")
        await legacy.initialize()
        server.prompt()(farewell)
        # The first message after the initialize answer: no tools/list_changed ahead of it.
        assert await legacy.next() == changed("prompts")


# == /ws ==========================================================================================


async def ws_initialize(ws: RawWebSocket) -> None:
    await ws.send(wire(init_body("2025-11-25", id=0)))
    reply = await ws.next_message()
    assert reply["id"] == 0 and reply["result"]["protocolVersion"] == "2025-11-25"
    await ws.send(wire(note("notifications/initialized")))


async def ws_request(ws: RawWebSocket, message: dict[str, Any]) -> dict[str, Any]:
    await ws.send(wire(message))
    return await ws.next_message()


async def test_ws_update_and_list_changed_arrive_as_text_frames(app: App) -> None:
    server = app.server
    ws = await RawWebSocket.connect(app.port)
    try:
        await ws_initialize(ws)
        assert await ws_request(ws, rpc("resources/subscribe", {"uri": A}, 1)) == result(1)
        assert await server.notify_resource_updated(B) == 0
        assert await server.notify_resource_updated(A) == 1
        assert await ws.next_message() == updated(A)
        server.remove_tool("shout")
        assert await ws.next_message() == changed("tools")
        server.resource("data://c")(read_c)
        assert await ws.next_message() == changed("resources")
        assert await ws_request(ws, rpc("resources/unsubscribe", {"uri": A}, 2)) == result(2)
        assert await server.notify_resource_updated(A) == 0
        server.prompt()(farewell)
        assert await ws.next_message() == changed("prompts")
        reply = await ws_request(ws, rpc("resources/subscribe", {"uri": "data://nope"}, 3))
        assert reply["error"]["code"] == -32002
    finally:
        await ws.client.abort()
    await wait_for(lambda: server.notices.listeners == 0, 3, "the /ws session to detach")


async def test_ws_no_list_changed_before_initialize(app: App) -> None:
    server = app.server
    early = await RawWebSocket.connect(app.port)  # attached, not initialized
    witness = await RawWebSocket.connect(app.port)  # attached after it
    try:
        await ws_initialize(witness)
        assert await ws_request(witness, rpc("ping", id=1)) == result(1)  # initialized now
        server.remove_tool("shout")
        assert await witness.next_message() == changed("tools")
        await ws_initialize(early)
        server.prompt()(farewell)
        assert await early.next_message() == changed("prompts")
    finally:
        await early.client.abort()
        await witness.client.abort()


def whole_messages(events: list[Event]) -> list[dict[str, Any]]:
    """The complete text messages among ``events`` (wsproto hands them over in pieces)."""
    messages, text = [], ""
    for event in events:
        if isinstance(event, TextMessage):
            text += event.data
            if event.message_finished:
                messages.append(orjson.loads(text))
                text = ""
    return messages


FLOOD_LIMIT = 5_000  # ~450 kB of updates: far more than the socket buffers of a 4 kB reader


async def flood_until_dropped(app: App) -> int:
    """Updates to A until the server stops counting the client (it was dropped); returns how
    many went. Paced (2 per millisecond) so that the server's forwarder keeps up until the
    socket itself is full: what fills the outbox is the client not reading, not a burst."""
    sent = 0
    while sent < FLOOD_LIMIT and await app.server.notify_resource_updated(A) == 1:
        sent += 1
        if sent % 2 == 0:
            await trio.sleep(0.001)
    return sent


async def test_ws_a_client_that_never_reads_is_dropped_once_the_outbox_is_full(
    nursery: trio.Nursery,
) -> None:
    # Long write timeout and ping interval: only the outbox may end this connection.
    async with serve(nursery, write_timeout_s=30.0, ping_interval_s=30.0) as app:
        ws = await raw_ws(app.port, rcvbuf=4096)
        try:
            await ws_initialize(ws)
            assert await ws_request(ws, rpc("resources/subscribe", {"uri": A}, 1)) == result(1)
            sent = await flood_until_dropped(app)
            assert sent < FLOOD_LIMIT, "never dropped: the outbox is not bounded"
            assert app.server.notices.listeners == 0
            await wait_for(lambda: not app.server.http.connections, 3, "the connection to close")
            # What reached the client: complete frames, fewer than were sent by at least the
            # outbox's worth (those were waiting when it was dropped).
            _, events = await close_of(ws, 3)
            delivered = whole_messages(events)
            assert all(message == updated(A) for message in delivered)
            assert sent - len(delivered) >= app.server.config.replay_events, (sent, len(delivered))
        finally:
            await ws.client.abort()


async def test_ws_a_client_that_never_reads_is_told_1013(nursery: trio.Nursery) -> None:
    async with serve(nursery, write_timeout_s=30.0, ping_interval_s=30.0) as app:
        ws = await raw_ws(app.port, rcvbuf=4096)
        try:
            await ws_initialize(ws)
            assert await ws_request(ws, rpc("resources/subscribe", {"uri": A}, 1)) == result(1)
            sent = await flood_until_dropped(app)
            assert app.server.config.replay_events < sent < FLOOD_LIMIT
            # The client reads at last: every frame the server started is whole, then the
            # close frame saying why (not a frame cut short and a bare EOF, 1006).
            code, events = await close_of(ws, 3)
            got = len(whole_messages(events))
            assert code == 1013, f"closed with {code} (no close frame) after {got} of {sent}"
            close = events[-1]
            assert isinstance(close, CloseConnection)
            assert close.reason == "too many notifications waiting; reconnect"
        finally:
            await ws.client.abort()


async def test_ws_a_burst_of_updates_reaches_a_client_that_reads(app: App) -> None:
    """A host that updates many resources at once (one loop, no checkpoint of its own) must
    not cost a client that reads promptly its connection: /mcp delivers the same burst."""
    burst = app.server.config.replay_events // 2  # within the bound every stream has
    ws = await RawWebSocket.connect(app.port)
    try:
        await ws_initialize(ws)
        assert await ws_request(ws, rpc("resources/subscribe", {"uri": A}, 1)) == result(1)
        told = [await app.server.notify_resource_updated(A) for _ in range(burst)]
        assert sum(told) == burst
        received: list[dict[str, Any]] = []
        with contextlib.suppress(EOFError):  # the server closed the connection
            while len(received) < burst:
                received.append(await ws.next_message(timeout=3))
        assert len(received) == burst, f"closed after {len(received)} of {burst} updates"
        assert received == [updated(A)] * burst
        assert await ws_request(ws, rpc("ping", id=2)) == result(2)  # still connected
    finally:
        await ws.client.abort()


async def test_mcp_the_same_burst_reaches_the_get_stream(app: App) -> None:
    """The comparison for the /ws test above."""
    burst = app.server.config.replay_events // 2  # within the bound every stream has
    headers = await mcp_session(app.http)
    await subscribe(app, headers, A)
    async with get_stream(app, headers) as stream:
        told = [await app.server.notify_resource_updated(A) for _ in range(burst)]
        assert sum(told) == burst
        for _ in range(burst):
            assert await next_json(stream) == updated(A)


# == 2026-07-28 subscriptions/listen ==============================================================


def listen_body(notifications: dict[str, Any], id: int | str = "listen-1") -> dict[str, Any]:
    return modern_body("subscriptions/listen", {"notifications": notifications}, id=id)


LISTEN_HEADERS = modern_headers("subscriptions/listen")


@asynccontextmanager
async def listen(
    app: App, notifications: dict[str, Any], id: int | str = "listen-1"
) -> AsyncIterator[SSEReader]:
    async with app.http.stream(
        "POST", "/mcp", headers=LISTEN_HEADERS, json=listen_body(notifications, id)
    ) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        assert "mcp-session-id" not in response.headers
        yield SSEReader(response)


def acknowledged(honoured: dict[str, Any], id: int | str) -> dict[str, Any]:
    method = "notifications/subscriptions/acknowledged"
    return tagged({"jsonrpc": "2.0", "method": method, "params": {"notifications": honoured}}, id)


@pytest.mark.parametrize("id", ["listen-1", 7], ids=["string-id", "integer-id"])
async def test_listen_acknowledges_then_relays_only_what_its_filter_asked(
    app: App, id: int | str
) -> None:
    server = app.server
    asked = {
        "toolsListChanged": True,
        "promptsListChanged": False,
        "resourceSubscriptions": [A, NOTE, A],
        "somethingWeDoNotServe": True,
    }
    async with listen(app, asked, id) as stream:
        # First: the acknowledgment, echoing what is honoured (unknown keys and false flags
        # left out, the URIs once each, in order), with the request id as subscription id.
        ack = await next_json(stream)
        assert ack == acknowledged(
            {"toolsListChanged": True, "resourceSubscriptions": [A, NOTE]}, id
        )
        assert server.notices.listeners == 1

        # Kinds not asked for change first, the wanted one last, all in one wake-up.
        server.prompt()(farewell)
        server.resource("data://c")(read_c)
        server.remove_tool("shout")
        assert await next_json(stream) == tagged(changed("tools"), id)

        assert await server.notify_resource_updated(B) == 0  # not listed
        assert await server.notify_resource_updated(A) == 1
        assert await next_json(stream) == tagged(updated(A), id)
        assert await server.notify_resource_updated(NOTE) == 1
        assert await next_json(stream) == tagged(updated(NOTE), id)


async def test_listen_for_list_kinds_only_hears_no_resource_updates(app: App) -> None:
    server = app.server
    async with listen(app, {"promptsListChanged": True, "resourcesListChanged": True}) as stream:
        assert await next_json(stream) == acknowledged(
            {"promptsListChanged": True, "resourcesListChanged": True}, "listen-1"
        )
        assert await server.notify_resource_updated(A) == 0
        server.remove_tool("shout")  # not asked for
        server.remove_prompt("greet")
        assert await next_json(stream) == tagged(changed("prompts"), "listen-1")
        server.remove_resource(B)
        assert await next_json(stream) == tagged(changed("resources"), "listen-1")


async def test_listen_streams_and_handshake_sessions_each_get_their_own(app: App) -> None:
    server = app.server
    headers = await mcp_session(app.http)
    await subscribe(app, headers, B)
    async with (
        listen(app, {"resourceSubscriptions": [A]}, "la") as la,
        listen(app, {"resourceSubscriptions": [B], "toolsListChanged": True}, "lb") as lb,
        get_stream(app, headers) as session,
    ):
        assert (await next_json(la))["params"]["_meta"] == {SUBSCRIPTION_ID: "la"}
        assert (await next_json(lb))["params"]["_meta"] == {SUBSCRIPTION_ID: "lb"}
        assert server.notices.listeners == 3
        assert await server.notify_resource_updated(B) == 2  # lb and the session
        assert await server.notify_resource_updated(A) == 1  # la
        assert await next_json(la) == tagged(updated(A), "la")
        assert await next_json(lb) == tagged(updated(B), "lb")
        assert await next_json(session) == updated(B)  # untagged: not a listen stream
        server.remove_tool("shout")
        assert await next_json(lb) == tagged(changed("tools"), "lb")
        assert await next_json(session) == changed("tools")


async def test_listen_for_an_unknown_uri_is_refused(app: App) -> None:
    body = listen_body({"resourceSubscriptions": [A, "data://nope"]}, id="L")
    response = await app.http.post("/mcp", headers=LISTEN_HEADERS, json=body)
    assert response.status_code == 400
    reply = response.json()
    assert (reply["id"], reply["error"]["code"]) == ("L", -32602)  # 2026-07-28: not -32002
    assert reply["error"]["data"] == {"uri": "data://nope"}
    assert "'data://nope'" in reply["error"]["message"]
    assert app.server.notices.listeners == 0


@pytest.mark.parametrize("json_response", [False, True])
async def test_listen_without_text_event_stream_in_accept_is_406(
    nursery: trio.Nursery, json_response: bool
) -> None:
    # With --json-response a POST needs only application/json: listen still needs SSE.
    async with serve(nursery, json_response=json_response) as app:
        headers = {**LISTEN_HEADERS, "Accept": "application/json"}
        body = listen_body({"resourceSubscriptions": [A]}, id="L")
        response = await app.http.post("/mcp", headers=headers, json=body)
        assert response.status_code == 406, response.text
        reply = response.json()
        assert reply["error"]["code"] == -32600
        assert app.server.notices.listeners == 0
        # The same request with SSE accepted is a stream.
        async with listen(app, {"resourceSubscriptions": [A]}) as stream:
            assert await next_json(stream) == acknowledged(
                {"resourceSubscriptions": [A]}, "listen-1"
            )


async def test_listen_stream_sends_keepalive_comments_while_idle(nursery: trio.Nursery) -> None:
    async with serve(nursery, ping_interval_s=0.2) as app:
        async with listen(app, {"toolsListChanged": True}) as stream:
            await next_json(stream)  # the acknowledgment
            started = trio.current_time()
            await stream.read_until(b": ping\n\n", count=2, timeout=3)
            assert trio.current_time() - started >= 0.3  # two intervals, not a burst
            assert stream.pending == []  # comments only: no message came with them
            app.server.remove_tool("shout")
            assert await next_json(stream) == tagged(changed("tools"), "listen-1")


async def test_listen_ends_with_a_result_at_shutdown(nursery: trio.Nursery) -> None:
    async with serve(nursery) as app:
        async with listen(app, {"resourceSubscriptions": [A]}, "L9") as stream:
            await next_json(stream)  # the acknowledgment
            app.server.shutdown()
            # The spec's graceful close: the request's result, naming the subscription.
            reply = await next_json(stream)
            assert reply["id"] == "L9"
            assert set(reply) == {"jsonrpc", "id", "result"}
            assert reply["result"]["_meta"][SUBSCRIPTION_ID] == "L9"
            with pytest.raises(StopAsyncIteration):  # then the stream ends
                await stream.next(timeout=3)
        assert app.server.notices.listeners == 0


async def test_a_client_closing_its_listen_stream_leaves_no_listener(app: App) -> None:
    server = app.server
    async with listen(app, {"resourceSubscriptions": [A]}, "kept") as kept:
        await next_json(kept)
        for n in range(3):
            async with listen(app, {"resourceSubscriptions": [A]}, f"gone-{n}") as gone:
                await next_json(gone)
                assert server.notices.listeners == 2
            await wait_for(lambda: server.notices.listeners == 1, 3, "the closed listen to go")
        assert await server.notify_resource_updated(A) == 1
        assert await next_json(kept) == tagged(updated(A), "kept")
    await wait_for(lambda: server.notices.listeners == 0, 3, "the last listen to go")
    assert await server.notify_resource_updated(A) == 0


async def test_resources_subscribe_is_not_a_2026_method(app: App) -> None:
    body = modern_body("resources/subscribe", {"uri": A}, id=3)
    response = await app.http.post("/mcp", headers=modern_headers("resources/subscribe"), json=body)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == -32601


# == the built-in clock ===========================================================================


async def test_builtin_clock_ticks_to_its_subscribers(nursery: trio.Nursery) -> None:
    async with make_env(nursery) as env:  # a default server: built-in tools and the clock
        headers = await mcp_session(env.http)
        resources = (
            await env.http.post("/mcp", headers=headers, json=rpc("resources/list"))
        ).json()
        clock = {"uri": "pulse://clock", "name": "clock", "title": "Clock"}
        assert {**clock, "mimeType": "application/json"} in [
            {k: r[k] for k in ("uri", "name", "title", "mimeType")}
            for r in resources["result"]["resources"]
        ]
        reply = await env.http.post(
            "/mcp", headers=headers, json=rpc("resources/subscribe", {"uri": "pulse://clock"}, 2)
        )
        assert reply.json() == result(2)
        async with env.http.stream(
            "GET", "/mcp", headers={**headers, "Accept": "text/event-stream"}
        ) as response:
            stream = SSEReader(response)
            assert await next_json(stream, timeout=2.5) == updated("pulse://clock")
        read = await env.http.post(
            "/mcp", headers=headers, json=rpc("resources/read", {"uri": "pulse://clock"}, 3)
        )
        (contents,) = read.json()["result"]["contents"]
        assert contents["uri"] == "pulse://clock"
        assert set(orjson.loads(contents["text"])) == {"time", "unix"}


bound_tests(globals(), TEST_TIMEOUT_S)
