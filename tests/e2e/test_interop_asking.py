"""A tool asking the client mid-call, as the official MCP Python SDK client (``mcp`` 2.3.0) sees
it: its ``elicitation_callback``, ``sampling_callback`` and ``list_roots_callback`` answer the
app of test_asking_wire.py (``deploy``, ``summarize``, ``roots``, ``register``).

Wires:

* ``/mcp`` at 2025-11-25 (``Client(mode="legacy")``): our request on the POST's SSE stream, the
  SDK's response POSTed back;
* ``/sse`` at 2025-11-25: the request on the session stream, the response POSTed to /messages;
* ``/mcp`` at 2026-07-28 (``mode="auto"``): the SDK fulfils ``input_required`` itself (its
  SEP-2322 driver, ``mcp/client/_input_required.py``) through the same callbacks, and retries
  with ``inputResponses`` and the byte-exact ``requestState``; ``call_tool`` returns the final
  result. The requests it sent are recorded to prove the rounds happened on the wire.

The SDK runs on anyio, so under pytest-trio it shares Trio's loop with the server.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx2
import mcp_types as types
import pytest
import trio
from mcp import Client
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import MCP_DEFAULT_SSE_READ_TIMEOUT
from mcp.shared.exceptions import MCPError
from pydantic import FileUrl

from tests.e2e.test_asking_wire import (
    AGE,
    CONFIRM,
    NAME,
    SUMMARY_SYSTEM_PROMPT,
    AskingApp,
    start_app,
)
from tests.helpers import AUTH, bound_tests

TEST_TIMEOUT_S = 15


@dataclass(frozen=True)
class Wire:
    transport: str  # "mcp" or "sse"
    version: str

    @property
    def modern(self) -> bool:
        return self.version == "2026-07-28"

    def rounds(self, questions: int) -> int:
        """How often a tool asking ``questions`` runs: once, or once more per question."""
        return questions + 1 if self.modern else 1

    def __str__(self) -> str:
        return f"{self.transport}-{self.version}"


WIRES = [Wire("mcp", "2025-11-25"), Wire("sse", "2025-11-25"), Wire("mcp", "2026-07-28")]


# -- the host: the SDK's callbacks ------------------------------------------------------------


@dataclass
class Host:
    """What the user and the model would answer, and what the SDK handed to each callback."""

    answers: list[types.ElicitResult | types.ErrorData] = field(default_factory=list)
    elicited: list[types.ElicitRequestParams] = field(default_factory=list)
    sampled: list[types.CreateMessageRequestParams] = field(default_factory=list)
    roots_asked: int = 0

    async def elicit(
        self, context: Any, params: types.ElicitRequestParams
    ) -> types.ElicitResult | types.ErrorData:
        self.elicited.append(params)
        return self.answers.pop(0)

    async def sample(
        self, context: Any, params: types.CreateMessageRequestParams
    ) -> types.CreateMessageResult:
        self.sampled.append(params)
        return types.CreateMessageResult(
            role="assistant",
            content=types.TextContent(type="text", text="sdk summary"),
            model="sdk-model",
            stop_reason="endTurn",
        )

    async def list_roots(self, context: Any) -> types.ListRootsResult:
        self.roots_asked += 1
        return types.ListRootsResult(
            roots=[
                types.Root(uri=FileUrl("file:///project"), name="project"),
                types.Root(uri=FileUrl("file:///data")),
            ]
        )


@dataclass
class Connected:
    client: Client
    host: Host
    posted: list[dict[str, Any]]
    """The JSON-RPC messages the SDK POSTed (on /mcp), in order."""
    issued: list[str] = field(default_factory=list)
    """The requestStates the server issued (2026-07-28), in order."""

    def calls(self, name: str) -> list[dict[str, Any]]:
        return [
            m["params"]
            for m in self.posted
            if m.get("method") == "tools/call" and m["params"]["name"] == name
        ]


@pytest.fixture
async def app(nursery: trio.Nursery) -> AskingApp:
    return await start_app(nursery, retry_ms=100)


@asynccontextmanager
async def connect(app: AskingApp, wire: Wire, host: Host) -> AsyncIterator[Connected]:
    posted: list[dict[str, Any]] = []
    issued: list[str] = []

    async def record(request: httpx2.Request) -> None:
        if request.method == "POST" and request.content:
            posted.append(json.loads(request.content))

    async def record_state(response: httpx2.Response) -> None:
        # A JSON answer (never an SSE stream: reading one here would wait for its end).
        if response.headers.get("content-type") == "application/json":
            body = json.loads(await response.aread())
            result = body.get("result", {}) if isinstance(body, dict) else {}
            if result.get("resultType") == "input_required":
                issued.append(result["requestState"])

    options: dict[str, Any] = {
        "mode": "auto" if wire.modern else "legacy",
        "read_timeout_seconds": 10,
        "elicitation_callback": host.elicit,
        "sampling_callback": host.sample,
        "list_roots_callback": host.list_roots,
    }
    if wire.transport == "sse":
        transport: Any = sse_client(app.url + "/sse", headers=AUTH)
        async with Client(transport, **options) as client:
            assert client.protocol_version == wire.version
            yield Connected(client, host, posted, issued)
        return
    timeout = httpx2.Timeout(10, read=MCP_DEFAULT_SSE_READ_TIMEOUT)
    async with httpx2.AsyncClient(
        headers=AUTH,
        timeout=timeout,
        event_hooks={"request": [record], "response": [record_state]},
    ) as http:
        transport = streamable_http_client(app.url + "/mcp", http_client=http)
        async with Client(transport, **options) as client:
            assert client.protocol_version == wire.version
            yield Connected(client, host, posted, issued)


def text_of(result: types.CallToolResult) -> str:
    (block,) = result.content
    assert isinstance(block, types.TextContent)
    return block.text


def form(params: types.ElicitRequestParams) -> tuple[str, dict[str, Any]]:
    assert isinstance(params, types.ElicitRequestFormParams), params
    assert params.mode in (None, "form")
    return params.message, params.requested_schema


OUTCOMES = [
    pytest.param(
        types.ElicitResult(action="accept", content={"confirm": True}), "deployed", id="accept"
    ),
    pytest.param(types.ElicitResult(action="decline"), "declined", id="decline"),
    pytest.param(types.ElicitResult(action="cancel"), "cancelled", id="cancel"),
]


# -- elicitation --------------------------------------------------------------------------------


@pytest.mark.parametrize(("reply", "outcome"), OUTCOMES)
@pytest.mark.parametrize("wire", WIRES, ids=str)
async def test_deploy_asks_the_user_and_acts_on_the_answer(
    app: AskingApp, wire: Wire, reply: types.ElicitResult, outcome: str
) -> None:
    host = Host(answers=[reply])
    async with connect(app, wire, host) as conn:
        result = await conn.client.call_tool("deploy", {"service": "api"})
        assert result.is_error is False
        assert text_of(result) == outcome
        assert result.structured_content == {"result": outcome}
        if wire.modern:
            # Two tools/call POSTs: the first without state, the retry with the answer.
            first, retry = conn.calls("deploy")
            assert "requestState" not in first and "inputResponses" not in first
            assert retry["inputResponses"] == {
                "elicit-1": reply.model_dump(by_alias=True, mode="json", exclude_none=True)
            }
            (state,) = conn.issued
            assert retry["requestState"] == state  # echoed byte for byte
            assert retry["arguments"] == {"service": "api"}
        elif wire.transport == "mcp":
            (call,) = conn.calls("deploy")
            assert "requestState" not in call
    assert [form(p) for p in host.elicited] == [("Deploy api?", CONFIRM)]
    assert host.answers == []
    assert app.runs["deploy"] == wire.rounds(1)
    assert app.deployed == (["api"] if outcome == "deployed" else [])


@pytest.mark.parametrize("wire", WIRES, ids=str)
async def test_two_questions_in_sequence(app: AskingApp, wire: Wire) -> None:
    host = Host(
        answers=[
            types.ElicitResult(action="accept", content={"name": "Ann"}),
            types.ElicitResult(action="accept", content={"age": 36}),
        ]
    )
    async with connect(app, wire, host) as conn:
        result = await conn.client.call_tool("register", {})
        assert text_of(result) == "Ann (36)"
        if wire.modern:
            calls = conn.calls("register")
            assert len(calls) == 3
            assert [c.get("requestState") for c in calls] == [None, *conn.issued]
            assert len(conn.issued) == 2 and conn.issued[0] != conn.issued[1]
            assert [c.get("inputResponses") for c in calls] == [
                None,
                {"elicit-1": {"action": "accept", "content": {"name": "Ann"}}},
                {"elicit-2": {"action": "accept", "content": {"age": 36}}},
            ]
    assert [form(p) for p in host.elicited] == [("Your name?", NAME), ("How old is Ann?", AGE)]
    assert app.runs["register"] == wire.rounds(2)


@pytest.mark.parametrize("wire", WIRES, ids=str)
async def test_an_elicitation_refused_with_an_error(app: AskingApp, wire: Wire) -> None:
    host = Host(answers=[types.ErrorData(code=-1, message="the dialog was closed")])
    async with connect(app, wire, host) as conn:
        if wire.modern:
            # The SDK's driver ends the call itself: nothing is retried.
            with pytest.raises(MCPError) as refused:
                await conn.client.call_tool("deploy", {"service": "api"})
            assert refused.value.error.code == -1
            assert refused.value.error.message == "the dialog was closed"
            assert len(conn.calls("deploy")) == 1
        else:
            # Over the stream the error answer reaches the tool: an isError result.
            result = await conn.client.call_tool("deploy", {"service": "api"})
            assert result.is_error is True
            expected = "the client answered elicitation/create with: the dialog was closed"
            assert text_of(result) == expected
        # The session is still good.
        host.answers.append(types.ElicitResult(action="accept", content={"confirm": True}))
        assert text_of(await conn.client.call_tool("deploy", {"service": "db"})) == "deployed"
    assert app.deployed == ["db"]


# -- sampling and roots ---------------------------------------------------------------------------


@pytest.mark.parametrize("wire", WIRES, ids=str)
async def test_sampling_goes_to_the_sampling_callback(app: AskingApp, wire: Wire) -> None:
    host = Host()
    async with connect(app, wire, host) as conn:
        result = await conn.client.call_tool("summarize", {"text": "a long story"})
        assert result.is_error is False
        assert text_of(result) == "sdk-model: sdk summary"
        if wire.modern:
            _, retry = conn.calls("summarize")
            (state,) = conn.issued
            assert retry["requestState"] == state
            assert retry["inputResponses"] == {
                "sample-1": {
                    "role": "assistant",
                    "content": {"type": "text", "text": "sdk summary"},
                    "model": "sdk-model",
                    "stopReason": "endTurn",
                }
            }
    (params,) = host.sampled
    assert params.max_tokens == 64
    assert params.system_prompt == SUMMARY_SYSTEM_PROMPT
    (message,) = params.messages
    assert message.role == "user"
    assert isinstance(message.content, types.TextContent)
    assert message.content.text == "Summarize: a long story"
    assert app.runs["summarize"] == wire.rounds(1)


@pytest.mark.parametrize("wire", WIRES, ids=str)
async def test_roots_go_to_the_roots_callback(app: AskingApp, wire: Wire) -> None:
    host = Host()
    async with connect(app, wire, host) as conn:
        result = await conn.client.call_tool("roots", {})
        assert result.is_error is False
        assert result.structured_content == {"result": ["file:///project", "file:///data"]}
    assert host.roots_asked == 1
    assert app.runs["roots"] == wire.rounds(1)


bound_tests(globals(), TEST_TIMEOUT_S)
