"""Interop with the official MCP Python SDK (``mcp`` 2.3.0), over every wire it can speak to us.

The SDK runs on anyio, so under pytest-trio it runs on Trio, in the same event loop as our
server. Wires:

* Streamable HTTP (``/mcp``) with each handshake revision. ``Client(mode="legacy")`` always
  offers ``LATEST_HANDSHAKE_VERSION`` in ``initialize``; the SDK has no knob for it, so the test
  patches that module constant to pin 2025-03-26 or 2025-06-18 (the server echoes what it is
  offered, and the SDK then validates every result against that revision's schema).
* Streamable HTTP at 2026-07-28: ``mode="auto"`` probes ``server/discover`` and stays modern.
* HTTP+SSE (``/sse`` + ``/messages``) at 2024-11-05 (pinned the same way) and 2025-11-25.

Per wire: connect, list tools, call ``get_time``, call an unknown tool, cancel a call that sleeps
forever (its ``finally`` must run), receive progress. On the handshake wires also: a POST stream
cut after its first event is resumed by the SDK itself (``GET`` + ``Last-Event-ID``), and a
stream started with raw httpx is picked up by the SDK from its resumption token.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import httpx2
import mcp_types as types
import pytest
import trio
from mcp import Client
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import MCP_DEFAULT_SSE_READ_TIMEOUT
from mcp.shared.exceptions import MCPError
from mcp.shared.message import ClientMessageMetadata

from tests.helpers import AUTH, Env, SSEReader, bound_tests

TEST_TIMEOUT_S = 15
RETRY_MS = 100  # what the ``env`` fixture (helpers.make_env) configures


@dataclass(frozen=True)
class Wire:
    transport: str  # "mcp" or "sse"
    version: str  # what the session must end up on

    @property
    def handshake(self) -> bool:
        return self.version != "2026-07-28"

    def __str__(self) -> str:
        return f"{self.transport}-{self.version}"


STREAMABLE_HANDSHAKE = [Wire("mcp", v) for v in ("2025-03-26", "2025-06-18", "2025-11-25")]
WIRES = [
    *STREAMABLE_HANDSHAKE,
    Wire("mcp", "2026-07-28"),
    Wire("sse", "2024-11-05"),
    Wire("sse", "2025-11-25"),
]


def sdk_http(
    transport: httpx2.AsyncBaseTransport | None = None, **hooks: Any
) -> httpx2.AsyncClient:
    """What ``create_mcp_http_client`` builds, plus our bearer token, a transport and hooks."""
    return httpx2.AsyncClient(
        headers=AUTH,
        timeout=httpx2.Timeout(10, read=MCP_DEFAULT_SSE_READ_TIMEOUT),
        transport=transport,
        event_hooks={name: [hook] for name, hook in hooks.items()},
    )


@asynccontextmanager
async def connect(
    env: Env,
    wire: Wire,
    monkeypatch: pytest.MonkeyPatch,
    http: httpx2.AsyncClient | None = None,
) -> AsyncIterator[Client]:
    if wire.handshake and wire.version != "2025-11-25":
        # The SDK offers its newest handshake revision; pin the one under test.
        monkeypatch.setattr("mcp.client.session.LATEST_HANDSHAKE_VERSION", wire.version)
    mode = "legacy" if wire.handshake else "auto"
    if wire.transport == "sse":
        transport: Any = sse_client(env.url + "/sse", headers=AUTH)
        async with Client(transport, mode=mode, read_timeout_seconds=10) as client:
            yield client
        return
    async with http or sdk_http() as owned:
        transport = streamable_http_client(env.url + "/mcp", http_client=owned)
        async with Client(transport, mode=mode, read_timeout_seconds=10) as client:
            yield client


def text_of(result: types.CallToolResult) -> str:
    block = result.content[0]
    assert isinstance(block, types.TextContent)
    return block.text


# -- every wire -----------------------------------------------------------------------------------


@pytest.mark.parametrize("wire", WIRES, ids=str)
async def test_connect_list_and_call(env: Env, wire: Wire, monkeypatch: pytest.MonkeyPatch) -> None:
    async with connect(env, wire, monkeypatch) as client:
        assert client.protocol_version == wire.version
        assert client.server_info is not None
        assert client.server_info.name == "datapulse"
        listed = await client.list_tools()
        by_name = {tool.name: tool for tool in listed.tools}
        assert {"get_time", "fetch_url", "sleeper", "progress"} <= set(by_name)
        assert by_name["get_time"].input_schema["type"] == "object"
        result = await client.call_tool("get_time", {})
        assert result.is_error is False
        assert text_of(result).startswith('{"time":"')
        if wire.version >= "2025-06-18":
            assert result.structured_content is not None
            assert result.structured_content["time"].endswith("Z")
        with pytest.raises(MCPError) as unknown:
            await client.call_tool("no_such_tool", {})
        assert unknown.value.error.code == -32602
        # The session is still good after the error.
        assert (await client.call_tool("get_time", {})).is_error is False


@pytest.mark.parametrize("wire", WIRES, ids=str)
async def test_cancelling_a_call_runs_the_tools_cleanup(
    env: Env, wire: Wire, monkeypatch: pytest.MonkeyPatch
) -> None:
    requests: list[httpx2.Request] = []

    async def record(request: httpx2.Request) -> None:
        requests.append(request)

    async with connect(env, wire, monkeypatch, sdk_http(request=record)) as client:
        cancel = trio.CancelScope()

        async def call() -> None:
            with cancel:
                await client.call_tool("sleeper", {})
            assert cancel.cancelled_caught  # it never returns on its own

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call)
            await env.probe.started.wait()
            # Handshake wires send notifications/cancelled; 2026-07-28 closes the POST instead.
            cancel.cancel()
        await env.probe.cleaned.wait()
        # The client does not poll a dead stream afterwards (-32800 ended it, see streamable.py).
        seen = len(requests)
        await trio.sleep(3 * RETRY_MS / 1000)
        assert not [r for r in requests[seen:] if r.headers.get("last-event-id")]
        assert (await client.call_tool("get_time", {})).is_error is False


@pytest.mark.parametrize("wire", WIRES, ids=str)
async def test_progress_reaches_the_callback(
    env: Env, wire: Wire, monkeypatch: pytest.MonkeyPatch
) -> None:
    updates: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        updates.append((progress, total, message))

    async with connect(env, wire, monkeypatch) as client:
        result = await client.call_tool("progress", {}, progress_callback=on_progress)
        assert text_of(result) == '{"steps":3}'
    # 2024-11-05 has no progress message field; we leave it out there.
    messages = [None] * 3 if wire.version == "2024-11-05" else [f"step {i}" for i in (1, 2, 3)]
    assert updates == [(i, 3, m) for i, m in zip((1, 2, 3), messages, strict=True)]


# -- resumption (handshake-era Streamable HTTP) ---------------------------------------------------


class _CutAfterFirstEvent(httpx2.AsyncByteStream):
    """Delivers a response body up to the end of its first SSE event with an id, then ends it
    as a dropped connection would (the rest is never read; the socket is closed)."""

    def __init__(self, inner: httpx2.AsyncByteStream, cut: trio.Event) -> None:
        self.inner = inner
        self.cut = cut

    async def __aiter__(self) -> AsyncIterator[bytes]:
        seen = b""
        async for chunk in self.inner:
            seen += chunk
            for end in _event_ends(seen):
                if _has_id(seen[:end]):
                    yield seen[:end]
                    await self.inner.aclose()
                    self.cut.set()
                    return
        yield seen  # pragma: no cover - the stream ended before any id

    async def aclose(self) -> None:
        await self.inner.aclose()


def _event_ends(raw: bytes) -> list[int]:
    ends, start = [], 0
    while (found := raw.find(b"\n\n", start)) != -1:
        ends.append(found + 2)
        start = found + 2
    return ends


def _has_id(raw: bytes) -> bool:
    last_event = raw[:-2].rsplit(b"\n\n", 1)[-1]
    return any(line.startswith(b"id: ") for line in last_event.split(b"\n"))


class _DropFirstGatedPost(httpx2.AsyncBaseTransport):
    def __init__(self) -> None:
        self.inner = httpx2.AsyncHTTPTransport()
        self.cut = trio.Event()
        self.resumed_with: list[str] = []

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        response = await self.inner.handle_async_request(request)
        if request.method == "GET" and "last-event-id" in request.headers:
            self.resumed_with.append(request.headers["last-event-id"])
        if request.method == "POST" and b'"gated"' in request.content and not self.cut.is_set():
            return httpx2.Response(
                response.status_code,
                headers=response.headers,
                stream=_CutAfterFirstEvent(response.stream, self.cut),  # type: ignore[arg-type]
                extensions=response.extensions,
            )
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.mark.parametrize("wire", STREAMABLE_HANDSHAKE, ids=str)
async def test_sdk_resumes_a_dropped_post_stream(
    env: Env, wire: Wire, monkeypatch: pytest.MonkeyPatch
) -> None:
    dropper = _DropFirstGatedPost()
    updates: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        updates.append(progress)

    async with connect(env, wire, monkeypatch, sdk_http(dropper)) as client:
        async with trio.open_nursery() as nursery:
            results: list[types.CallToolResult] = []

            async def call() -> None:
                results.append(await client.call_tool("gated", {}, progress_callback=on_progress))

            nursery.start_soon(call)
            await dropper.cut.wait()
            await env.probe.started.wait()
            # The POST's connection is gone; the call lives on in the session. Let it finish:
            # the SDK waits `retry` ms, re-GETs with Last-Event-ID and reads the rest.
            env.probe.gate.set()
        assert text_of(results[0]) == '{"released":true}'
        assert updates == [1, 2]
        # 2025-11-25 resumes from the priming event, older revisions from the first progress.
        assert dropper.resumed_with
        assert dropper.resumed_with[0].endswith("-0" if wire.version == "2025-11-25" else "-1")


async def test_sdk_picks_up_a_stream_from_its_resumption_token(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    wire = Wire("mcp", "2025-11-25")
    session_ids: list[str] = []

    async def remember(response: httpx2.Response) -> None:
        if sid := response.headers.get("mcp-session-id"):
            session_ids.append(sid)

    async with connect(env, wire, monkeypatch, sdk_http(response=remember)) as client:
        # A first client process starts the call over raw HTTP, keeps the priming id, and dies.
        headers = {
            **AUTH,
            "Accept": "application/json, text/event-stream",
            "Content-Type": "application/json",
            "Mcp-Session-Id": session_ids[0],
            "MCP-Protocol-Version": wire.version,
        }
        body = {
            "jsonrpc": "2.0",
            "id": "before-the-crash",
            "method": "tools/call",
            "params": {"name": "gated", "arguments": {}, "_meta": {"progressToken": "raw"}},
        }
        async with httpx.AsyncClient(base_url=env.url, timeout=5) as raw:
            async with raw.stream("POST", "/mcp", headers=headers, json=body) as response:
                priming = await SSEReader(response).next_data()
                assert priming.data == ""
                assert priming.id
        env.probe.gate.set()
        # The SDK resumes with the token instead of sending the request again.
        request = types.CallToolRequest(
            params=types.CallToolRequestParams(name="gated", arguments={})
        )
        result = await client.session.send_request(
            request,
            types.CallToolResult,
            metadata=ClientMessageMetadata(resumption_token=priming.id),
        )
        assert text_of(result) == '{"released":true}'


# Every test runs under a deadline (the SDK's own timeouts are longer).
bound_tests(globals(), TEST_TIMEOUT_S)
