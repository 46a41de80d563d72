"""The server surface (typed tools, resources and templates, prompts, completions, subscriptions,
list_changed) as the official MCP Python SDK client (``mcp`` 2.3.0) sees it.

One app, registered through the public decorators only (``@server.tool()``, ``@server.resource``,
``@server.prompt()``, ``@server.completion``), is served on loopback and reached over three wires:

* ``/mcp`` at 2025-11-25 (``Client(mode="legacy")``: the initialize handshake);
* ``/mcp`` at 2026-07-28 (``mode="auto"``: ``server/discover``, per-request ``_meta``);
* ``/sse`` at 2024-11-05 (the SDK's newest handshake revision patched down, as in
  test_interop_sdk.py).

Subscriptions: on the handshake wires ``subscribe_resource`` and the client's
``message_handler``; on 2026-07-28 the SDK's ``Client.listen()`` (``subscriptions/listen``,
typed ``ResourceUpdated`` / ``ToolsListChanged`` events, a graceful end at server shutdown).
The SDK runs on anyio, so under pytest-trio it shares Trio's loop with the server.
"""

from __future__ import annotations

import base64
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx2
import mcp_types as types
import pydantic
import pytest
import trio
from mcp import Client
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.client.subscriptions import ResourceUpdated, Subscription, ToolsListChanged
from mcp.shared._httpx_utils import MCP_DEFAULT_SSE_READ_TIMEOUT
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError

from datapulse import Server, ToolContext
from tests.helpers import AUTH, bound_tests, make_config

TEST_TIMEOUT_S = 15
WAIT_S = 3.0  # for one notification to reach the client

GREETING = "text://greeting"
LOGO = "pulse://logo.png"
STATUS = "data://status"
NOTES = "notes://{name}"
NOTE = "notes://alpha"  # a URI the template serves
SUBSCRIPTION_ID = "io.modelcontextprotocol/subscriptionId"
BLOB = b"\x89PNG\r\n\x1a\n\x00\x01\xfe\xff datapulse"
LANGUAGES = ["python", "pyret", "rust", "ruby"]
NOTE_NAMES = ["alpha", "beta", "bravo"]


@dataclass(frozen=True)
class Wire:
    transport: str  # "mcp" or "sse"
    version: str

    @property
    def modern(self) -> bool:
        return self.version == "2026-07-28"

    @property
    def structured(self) -> bool:
        """outputSchema, structuredContent, titles and annotations: 2025-06-18 on."""
        return self.version >= "2025-06-18"

    def __str__(self) -> str:
        return f"{self.transport}-{self.version}"


WIRES = [Wire("mcp", "2025-11-25"), Wire("mcp", "2026-07-28"), Wire("sse", "2024-11-05")]
HANDSHAKE_WIRES = [w for w in WIRES if not w.modern]


# -- the app ------------------------------------------------------------------------------------


class Point(pydantic.BaseModel):
    x: float
    y: float


@dataclass
class Placed:
    label: str
    norm: float


def build_server() -> Server:
    server = Server(make_config(retry_ms=100), builtin_tools=False)

    @server.tool()
    async def add(a: int, b: int = 1) -> int:
        """Add two integers."""
        return a + b

    @server.tool()
    async def place(point: Point, context: ToolContext, label: str = "") -> Placed:
        """Label a point with its norm."""
        return Placed(label=label, norm=math.hypot(point.x, point.y))

    @server.tool(title="Shout", annotations={"readOnlyHint": True})
    def shout(text: str) -> str:
        """Upper-case a text."""
        return text.upper()

    @server.resource(GREETING, mime_type="text/plain", title="Greeting")
    async def greeting() -> str:
        """A friendly text."""
        return "hello, world"

    @server.resource(LOGO, mime_type="image/png")
    async def logo() -> bytes:
        return BLOB

    @server.resource(STATUS)
    async def status() -> dict[str, Any]:
        return {"ok": True, "items": [1, 2]}

    @server.resource(NOTES, mime_type="text/plain", description="A note by name.")
    async def note(name: str) -> str:
        return f"note {name}"

    @server.prompt(title="Code review")
    async def review(code: str, language: str = "python") -> str:
        """Ask for a code review."""
        return f"Review this {language} code:\n{code}"

    @server.completion(prompt="review", argument="language")
    async def languages(value: str) -> list[str]:
        return [name for name in LANGUAGES if name.startswith(value)]

    @server.completion(resource=NOTES, argument="name")
    def note_names(value: str, arguments: dict[str, str]) -> list[str]:
        # Sync (a worker thread); what the client chose for the others comes in ``arguments``.
        prefix = arguments.get("prefix", "")
        return [prefix + name for name in NOTE_NAMES if name.startswith(value)]

    return server


@dataclass
class App:
    server: Server
    url: str


@pytest.fixture
async def app(nursery: trio.Nursery) -> App:
    server = build_server()
    info = await nursery.start(server.serve)
    return App(server, info.url)


# -- the client ---------------------------------------------------------------------------------


@dataclass
class Connected:
    client: Client
    inbox: trio.MemoryReceiveChannel[types.ServerNotification]
    errors: list[Exception]

    async def notification(self) -> types.ServerNotification:
        """The next notification the SDK handed to ``message_handler``."""
        with trio.fail_after(WAIT_S):
            return await self.inbox.receive()


@asynccontextmanager
async def connect(
    app: App, wire: Wire, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Connected]:
    if wire.version == "2024-11-05":
        # The SDK offers its newest handshake revision; pin the one under test.
        monkeypatch.setattr("mcp.client.session.LATEST_HANDSHAKE_VERSION", wire.version)
    send, receive = trio.open_memory_channel[types.ServerNotification](100)
    errors: list[Exception] = []

    async def on_message(message: Any) -> None:
        if isinstance(message, Exception):
            errors.append(message)
        else:
            send.send_nowait(message)

    mode = "auto" if wire.modern else "legacy"
    options: dict[str, Any] = {
        "mode": mode,
        "read_timeout_seconds": 10,
        "message_handler": on_message,
    }
    if wire.transport == "sse":
        transport: Any = sse_client(app.url + "/sse", headers=AUTH)
        async with Client(transport, **options) as client:
            assert client.protocol_version == wire.version
            yield Connected(client, receive, errors)
    else:
        timeout = httpx2.Timeout(10, read=MCP_DEFAULT_SSE_READ_TIMEOUT)
        async with httpx2.AsyncClient(headers=AUTH, timeout=timeout) as http:
            transport = streamable_http_client(app.url + "/mcp", http_client=http)
            async with Client(transport, **options) as client:
                assert client.protocol_version == wire.version
                yield Connected(client, receive, errors)
    assert errors == []


async def next_event(subscription: Subscription) -> Any:
    with trio.fail_after(WAIT_S):
        return await subscription.__anext__()


async def subscribe(client: Client, uri: str) -> None:
    with pytest.warns(MCPDeprecationWarning):  # the SDK's nudge towards listen()
        assert isinstance(await client.subscribe_resource(uri), types.EmptyResult)


# == tools =========================================================================================


@pytest.mark.parametrize("wire", WIRES, ids=str)
async def test_typed_tool_schemas_as_the_client_sees_them(
    app: App, wire: Wire, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with connect(app, wire, monkeypatch) as conn:
        capabilities = conn.client.server_capabilities
        assert capabilities.tools is not None and capabilities.tools.list_changed is True
        listed = await conn.client.list_tools()
        tools = {tool.name: tool for tool in listed.tools}
        assert list(tools) == ["add", "place", "shout"]

        add = tools["add"]
        assert add.description == "Add two integers."
        assert add.input_schema == {
            "type": "object",
            "properties": {
                "a": {"title": "A", "type": "integer"},
                "b": {"default": 1, "title": "B", "type": "integer"},
            },
            "required": ["a"],
        }
        result_schema = {"type": "object", "properties": {"result": {"type": "integer"}}}
        expected = {**result_schema, "required": ["result"]} if wire.structured else None
        assert add.output_schema == expected

        place = tools["place"]
        assert place.input_schema == {
            "type": "object",
            "$defs": {
                "Point": {
                    "properties": {
                        "x": {"title": "X", "type": "number"},
                        "y": {"title": "Y", "type": "number"},
                    },
                    "required": ["x", "y"],
                    "title": "Point",
                    "type": "object",
                }
            },
            "properties": {
                "point": {"$ref": "#/$defs/Point"},
                "label": {"default": "", "title": "Label", "type": "string"},
            },
            "required": ["point"],  # the injected ToolContext is not an argument
        }
        # An object return type is the output schema itself, not wrapped in "result".
        placed_schema = {
            "type": "object",
            "properties": {
                "label": {"title": "Label", "type": "string"},
                "norm": {"title": "Norm", "type": "number"},
            },
            "required": ["label", "norm"],
        }
        assert place.output_schema == (placed_schema if wire.structured else None)

        shout = tools["shout"]
        if wire.structured:
            assert shout.title == "Shout"
            assert shout.annotations == types.ToolAnnotations(read_only_hint=True)
        else:  # 2024-11-05 has neither field
            assert (shout.title, shout.annotations) == (None, None)


@pytest.mark.parametrize("wire", WIRES, ids=str)
async def test_typed_tool_calls_and_their_structured_content(
    app: App, wire: Wire, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with connect(app, wire, monkeypatch) as conn:
        client = conn.client
        added = await client.call_tool("add", {"a": 2})  # b's default
        assert added.is_error is False
        assert [(c.type, getattr(c, "text", None)) for c in added.content] == [("text", "3")]
        assert added.structured_content == ({"result": 3} if wire.structured else None)

        placed = await client.call_tool("place", {"point": {"x": 3, "y": 4}, "label": "p"})
        assert placed.is_error is False
        assert [getattr(c, "text", None) for c in placed.content] == ['{"label":"p","norm":5.0}']
        expected = {"label": "p", "norm": 5.0} if wire.structured else None
        assert placed.structured_content == expected

        shouted = await client.call_tool("shout", {"text": "hi"})  # sync: a worker thread
        assert [getattr(c, "text", None) for c in shouted.content] == ["HI"]

        # A bad argument: a tool error the model can read from 2025-11-25 (SEP-1303), a
        # protocol error before that.
        message = "invalid arguments for add: 'a': Input should be a valid integer"
        if wire.version >= "2025-11-25":
            bad = await client.call_tool("add", {"a": "two"})
            assert bad.is_error is True
            assert getattr(bad.content[0], "text", "").startswith(message)
        else:
            with pytest.raises(MCPError) as refused:
                await client.call_tool("add", {"a": "two"})
            assert refused.value.error.code == -32602
            assert refused.value.error.message.startswith(message)


# == resources =====================================================================================


@pytest.mark.parametrize("wire", WIRES, ids=str)
async def test_resources_templates_and_reads(
    app: App, wire: Wire, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with connect(app, wire, monkeypatch) as conn:
        client = conn.client
        resources = conn.client.server_capabilities.resources
        assert resources is not None
        assert (resources.subscribe, resources.list_changed) == (True, True)

        listed = await client.list_resources()
        assert [(r.uri, r.name, r.mime_type) for r in listed.resources] == [
            (GREETING, "greeting", "text/plain"),
            (LOGO, "logo", "image/png"),
            (STATUS, "status", None),
        ]
        assert listed.resources[0].description == "A friendly text."
        assert listed.resources[0].title == ("Greeting" if wire.structured else None)

        templates = await client.list_resource_templates()
        assert [
            (t.uri_template, t.name, t.mime_type, t.description)
            for t in templates.resource_templates
        ] == [(NOTES, "note", "text/plain", "A note by name.")]

        text = await client.read_resource(GREETING)
        assert text.contents == [
            types.TextResourceContents(uri=GREETING, mime_type="text/plain", text="hello, world")
        ]
        blob = await client.read_resource(LOGO)
        (item,) = blob.contents
        assert isinstance(item, types.BlobResourceContents)
        assert (item.uri, item.mime_type) == (LOGO, "image/png")
        assert base64.b64decode(item.blob) == BLOB
        status = await client.read_resource(STATUS)
        assert status.contents == [
            types.TextResourceContents(
                uri=STATUS, mime_type="application/json", text='{"ok":true,"items":[1,2]}'
            )
        ]
        # A template, its variable percent-decoded.
        noted = await client.read_resource("notes://to%20do")
        assert noted.contents == [
            types.TextResourceContents(
                uri="notes://to%20do", mime_type="text/plain", text="note to do"
            )
        ]

        with pytest.raises(MCPError) as missing:
            await client.read_resource("text://nothing")
        # -32002 in every handshake revision; 2026-07-28 made it -32602.
        assert missing.value.error.code == (-32602 if wire.modern else -32002)
        assert missing.value.error.data == {"uri": "text://nothing"}


@pytest.mark.parametrize("wire", HANDSHAKE_WIRES, ids=str)
async def test_handshake_subscription_receives_the_hosts_update(
    app: App, wire: Wire, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with connect(app, wire, monkeypatch) as conn:
        await subscribe(conn.client, GREETING)
        assert await app.server.notify_resource_updated(STATUS) == 0  # not subscribed
        assert await app.server.notify_resource_updated(GREETING) == 1
        update = await conn.notification()
        assert isinstance(update, types.ResourceUpdatedNotification)
        assert update.params.uri == GREETING

        with pytest.warns(MCPDeprecationWarning):
            await conn.client.unsubscribe_resource(GREETING)
        assert await app.server.notify_resource_updated(GREETING) == 0
        with pytest.raises(MCPError) as unknown:
            await subscribe(conn.client, "text://nothing")
        assert unknown.value.error.code == -32002


async def test_listen_receives_the_hosts_update(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    async with connect(app, Wire("mcp", "2026-07-28"), monkeypatch) as conn:
        async with conn.client.listen(resource_subscriptions=[GREETING, NOTE]) as subscription:
            assert subscription.honored.resource_subscriptions == [GREETING, NOTE]
            assert subscription.honored.tools_list_changed is None
            assert await app.server.notify_resource_updated(STATUS) == 0  # not listed
            assert await app.server.notify_resource_updated(GREETING) == 1
            assert await next_event(subscription) == ResourceUpdated(uri=GREETING)
            assert await app.server.notify_resource_updated(NOTE) == 1
            assert await next_event(subscription) == ResourceUpdated(uri=NOTE)
            # The SDK also hands each notification of a listen stream to message_handler,
            # as the server sent it: tagged with the subscription id.
            meta = {SUBSCRIPTION_ID: subscription.subscription_id}
            for uri in (GREETING, NOTE):
                teed = await conn.notification()
                assert isinstance(teed, types.ResourceUpdatedNotification)
                assert (teed.params.uri, teed.params.meta) == (uri, meta)


# == prompts and completions =======================================================================


@pytest.mark.parametrize("wire", WIRES, ids=str)
async def test_prompts_list_and_get(app: App, wire: Wire, monkeypatch: pytest.MonkeyPatch) -> None:
    async with connect(app, wire, monkeypatch) as conn:
        client = conn.client
        prompts = conn.client.server_capabilities.prompts
        assert prompts is not None and prompts.list_changed is True
        listed = await client.list_prompts()
        (prompt,) = listed.prompts
        assert prompt.name == "review"
        assert prompt.title == ("Code review" if wire.structured else None)
        assert prompt.description == "Ask for a code review."
        assert [(a.name, a.required) for a in prompt.arguments or []] == [
            ("code", True),
            ("language", False),
        ]

        got = await client.get_prompt("review", {"code": "x = 1", "language": "rust"})
        assert got.description == "Ask for a code review."
        assert got.messages == [
            types.PromptMessage(
                role="user",
                content=types.TextContent(type="text", text="Review this rust code:\nx = 1"),
            )
        ]
        default = await client.get_prompt("review", {"code": "x = 1"})
        assert getattr(default.messages[0].content, "text", "") == "Review this python code:\nx = 1"
        with pytest.raises(MCPError) as missing:
            await client.get_prompt("review", {})
        assert missing.value.error.code == -32602
        assert "'code'" in missing.value.error.message


@pytest.mark.parametrize("wire", WIRES, ids=str)
async def test_completion_of_a_prompt_argument_and_a_template_variable(
    app: App, wire: Wire, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with connect(app, wire, monkeypatch) as conn:
        client = conn.client
        # The capability is from 2025-03-26; the method is older, and served at 2024-11-05 too.
        declared = conn.client.server_capabilities.completions is not None
        assert declared is (wire.version >= "2025-03-26")
        prompt = types.PromptReference(type="ref/prompt", name="review")
        languages = await client.complete(prompt, {"name": "language", "value": "py"})
        assert languages.completion == types.Completion(
            values=["python", "pyret"], total=2, has_more=False
        )
        none = await client.complete(prompt, {"name": "language", "value": "cobol"})
        assert none.completion.values == []

        template = types.ResourceTemplateReference(type="ref/resource", uri=NOTES)
        names = await client.complete(template, {"name": "name", "value": "b"})
        assert names.completion.values == ["beta", "bravo"]
        chosen = await client.complete(
            template, {"name": "name", "value": "a"}, context_arguments={"prefix": "my-"}
        )
        assert chosen.completion.values == ["my-alpha"]

        with pytest.raises(MCPError) as unknown:
            await client.complete(prompt, {"name": "dialect", "value": ""})
        assert unknown.value.error.code == -32602


# == list_changed ==================================================================================


async def whisper(text: str) -> str:
    """Lower-case a text (added while the client is connected)."""
    return text.lower()


@pytest.mark.parametrize("wire", HANDSHAKE_WIRES, ids=str)
async def test_handshake_client_hears_list_changed_after_remove_tool(
    app: App, wire: Wire, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with connect(app, wire, monkeypatch) as conn:
        client = conn.client
        assert [t.name for t in (await client.list_tools()).tools] == ["add", "place", "shout"]
        app.server.remove_tool("shout")
        assert isinstance(await conn.notification(), types.ToolListChangedNotification)
        assert [t.name for t in (await client.list_tools()).tools] == ["add", "place"]

        app.server.tool()(whisper)
        assert isinstance(await conn.notification(), types.ToolListChangedNotification)
        assert [t.name for t in (await client.list_tools()).tools] == ["add", "place", "whisper"]
        assert (await client.call_tool("whisper", {"text": "HUSH"})).structured_content == (
            {"result": "hush"} if wire.structured else None
        )

        app.server.remove_prompt("review")
        assert isinstance(await conn.notification(), types.PromptListChangedNotification)
        app.server.remove_resource(STATUS)
        assert isinstance(await conn.notification(), types.ResourceListChangedNotification)
        assert [r.uri for r in (await client.list_resources()).resources] == [GREETING, LOGO]


async def test_listen_hears_tools_list_changed_after_remove_tool(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with connect(app, Wire("mcp", "2026-07-28"), monkeypatch) as conn:
        client = conn.client
        assert [t.name for t in (await client.list_tools()).tools] == ["add", "place", "shout"]
        async with client.listen(
            tools_list_changed=True, resource_subscriptions=[GREETING]
        ) as subscription:
            assert subscription.honored.tools_list_changed is True
            app.server.remove_prompt("review")  # not asked for
            app.server.remove_tool("shout")
            assert await next_event(subscription) == ToolsListChanged()
            # The SDK's response cache was evicted by the event: a fresh listing.
            assert [t.name for t in (await client.list_tools()).tools] == ["add", "place"]
            assert await app.server.notify_resource_updated(GREETING) == 1
            assert await next_event(subscription) == ResourceUpdated(uri=GREETING)
            # The SDK filters events by what was honoured; what the server sent is teed to
            # message_handler unfiltered: no prompts/list_changed ahead of the tools one.
            teed = [(await conn.notification()).method for _ in range(2)]
            assert teed == ["notifications/tools/list_changed", "notifications/resources/updated"]


async def test_listen_ends_gracefully_at_server_shutdown(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = build_server()
    info = await nursery.start(server.serve)
    app = App(server, info.url)
    events: list[Any] = []
    async with connect(app, Wire("mcp", "2026-07-28"), monkeypatch) as conn:
        async with conn.client.listen(resource_subscriptions=[GREETING]) as subscription:
            assert await server.notify_resource_updated(GREETING) == 1
            server.shutdown()
            with trio.fail_after(WAIT_S):
                # The result that ends the request is the spec's graceful close: the loop ends
                # (an abrupt end would raise SubscriptionLost), after the events before it.
                events.extend([event async for event in subscription])
    assert events == [ResourceUpdated(uri=GREETING)]


bound_tests(globals(), TEST_TIMEOUT_S)
