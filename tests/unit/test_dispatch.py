"""McpSession / Dispatcher: the protocol behaviour every transport inherits."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import trio
import trio.testing

from datapulse.core import mcp, mcp_http
from datapulse.core.jsonrpc import InvalidRequest, Notification, Request, Response
from datapulse.errors import ToolError
from datapulse.protocol.dispatch import Dispatcher
from datapulse.protocol.session import McpSession, Outcome
from datapulse.protocol.state import ProtocolState
from datapulse.tools.registry import ToolContext, ToolRegistry

cleanups: list[str] = []
late_contexts: list[ToolContext] = []


def make_registry() -> ToolRegistry:
    registry = ToolRegistry()

    @registry.tool(
        "get_time",
        output_schema={
            "type": "object",
            "properties": {"iso": {"type": "string"}},
            "required": ["iso"],
        },
    )
    async def get_time(args: dict[str, Any], ctx: ToolContext) -> Any:
        """The time."""
        return {"iso": "2026-01-01T00:00:00Z"}

    @registry.tool(
        "echo",
        input_schema={
            "type": "object",
            "properties": {"text": {"type": "string"}},
            "required": ["text"],
        },
    )
    async def echo(args: dict[str, Any], ctx: ToolContext) -> Any:
        """Echo."""
        return args["text"]

    @registry.tool("slow")
    async def slow(args: dict[str, Any], ctx: ToolContext) -> Any:
        """Never finishes on its own."""
        try:
            await trio.sleep_forever()
        finally:
            cleanups.append("slow")

    @registry.tool("progress")
    async def progress(args: dict[str, Any], ctx: ToolContext) -> Any:
        """Reports progress, some of it out of order."""
        for value in (0, 50, 50, 30, 100):
            await ctx.report_progress(value, 100, f"at {value}")
        return "done"

    @registry.tool("failing")
    async def failing(args: dict[str, Any], ctx: ToolContext) -> Any:
        """Raises a plain exception."""
        raise RuntimeError("kaput")

    @registry.tool("tool_error")
    async def tool_error(args: dict[str, Any], ctx: ToolContext) -> Any:
        """Raises a ToolError."""
        raise ToolError("upstream said no")

    @registry.tool("chatty")
    async def chatty(args: dict[str, Any], ctx: ToolContext) -> Any:
        """Logs at three levels."""
        for level in ("debug", "info", "error"):
            await ctx.log(level, {"at": level})
        return "ok"

    @registry.tool("late")
    async def late(args: dict[str, Any], ctx: ToolContext) -> Any:
        """Keeps its context so the test can use it after the response."""
        late_contexts.append(ctx)
        return "ok"

    @registry.tool("bad_output", output_schema={"type": "object", "required": ["x"]})
    async def bad_output(args: dict[str, Any], ctx: ToolContext) -> Any:
        """Breaks its own output schema."""
        return {"y": 1}

    @registry.tool("nested")
    async def nested(args: dict[str, Any], ctx: ToolContext) -> Any:
        """Runs child tasks of its own."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.sleep_forever)
                nursery.start_soon(trio.sleep_forever)
        finally:
            cleanups.append("nested")

    @registry.tool("group_fail")
    async def group_fail(args: dict[str, Any], ctx: ToolContext) -> Any:
        """Child tasks that fail together."""

        async def boom() -> None:
            raise ValueError("child failed")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(boom)
            nursery.start_soon(boom)

    @registry.tool("scoped", scope="admin")
    async def scoped(args: dict[str, Any], ctx: ToolContext) -> Any:
        """Needs a scope."""
        return "secret"

    return registry


class Sink:
    """Collects what the session sends, decoded."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    async def __call__(self, data: bytes) -> None:
        self.messages.append(orjson.loads(data))

    @property
    def last(self) -> dict[str, Any]:
        return self.messages[-1]

    def notifications(self, method: str) -> list[dict[str, Any]]:
        return [m["params"] for m in self.messages if m.get("method") == method]


@pytest.fixture(autouse=True)
def _reset() -> None:
    cleanups.clear()
    late_contexts.clear()


def dispatcher(**kwargs: Any) -> Dispatcher:
    kwargs.setdefault("server_name", "test-server")
    kwargs.setdefault("server_version", "9.9")
    return Dispatcher(make_registry(), **kwargs)


async def ready_session(version: str = "2025-11-25", **kwargs: Any) -> McpSession:
    session = McpSession(dispatcher(**kwargs), session_id="s1")
    sink = Sink()
    params = {"protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "t"}}
    await session.handle(Request(0, "initialize", params), sink)
    assert "result" in sink.last
    await session.handle(Notification("notifications/initialized"), sink)
    return session


async def request(session: McpSession, method: str, params: Any = None, id: Any = 1) -> Sink:
    sink = Sink()
    await session.handle(Request(id, method, params), sink)
    return sink


async def call_tool(session: McpSession, name: str, arguments: Any = None, **kw: Any) -> Sink:
    params: dict[str, Any] = {"name": name, **kw}
    if arguments is not None:
        params["arguments"] = arguments
    return await request(session, "tools/call", params)


# -- lifecycle ----------------------------------------------------------------------------------


async def test_initialize_flow() -> None:
    session = McpSession(dispatcher(instructions="be nice"))
    sink = Sink()
    await session.handle(Notification("notifications/initialized"), sink)
    assert not session.state.client_ready  # before initialize it means nothing
    params = {"protocolVersion": "2025-06-18", "capabilities": {"roots": {}}, "clientInfo": {}}
    outcome = await session.handle(Request("init", "initialize", params), sink)
    assert outcome == Outcome(responded=True)
    assert sink.last == {
        "jsonrpc": "2.0",
        "id": "init",
        "result": {
            "protocolVersion": "2025-06-18",
            "capabilities": mcp.server_capabilities("2025-06-18"),
            "serverInfo": {"name": "test-server", "version": "9.9"},
            "instructions": "be nice",
        },
    }
    assert session.initialized and session.protocol_version == "2025-06-18"
    assert session.state.client_capabilities == {"roots": {}}
    await session.handle(Notification("notifications/initialized"), sink)
    assert session.state.client_ready
    assert len(sink.messages) == 1  # notifications are never answered

    again = await request(session, "initialize", params, id=2)
    assert again.last["error"]["code"] == -32600 and again.last["id"] == 2


async def test_initialize_negotiates_unknown_version() -> None:
    session = McpSession(dispatcher())
    sink = await request(session, "initialize", {"protocolVersion": "2099-01-01"})
    assert sink.last["result"]["protocolVersion"] == "2025-11-25"


async def test_initialize_needs_protocol_version() -> None:
    session = McpSession(dispatcher())
    sink = await request(session, "initialize", {"capabilities": {}})
    assert sink.last["error"]["code"] == -32602
    assert not session.initialized


async def test_request_before_initialize() -> None:
    session = McpSession(dispatcher())
    sink = await request(session, "tools/list", id="early")
    assert sink.last["id"] == "early"
    assert sink.last["error"]["code"] == -32600
    assert "before initialization" in sink.last["error"]["message"]


async def test_ping_before_and_after_initialize() -> None:
    session = McpSession(dispatcher())
    assert (await request(session, "ping", id=5)).last == {"jsonrpc": "2.0", "id": 5, "result": {}}
    session = await ready_session()
    assert (await request(session, "ping", id=6)).last["result"] == {}


async def test_unknown_method_carries_id() -> None:
    for session in (McpSession(dispatcher()), await ready_session()):
        sink = await request(session, "sampling/createMessage", id="q")
        assert sink.last["id"] == "q" and sink.last["error"]["code"] == -32601
    sink = await request(await ready_session(), "server/discover")
    assert sink.last["error"]["code"] == -32601  # modern-only method


async def test_array_params_rejected() -> None:
    sink = await request(await ready_session(), "tools/list", [1])
    assert sink.last["error"]["code"] == -32602


async def test_responses_and_unknown_notifications_are_silent() -> None:
    session = await ready_session()
    sink = Sink()
    assert await session.handle(Response(1, {}), sink) == Outcome(responded=False)
    await session.handle(Notification("notifications/whatever", {"x": 1}), sink)
    assert sink.messages == []


# -- tools/list ---------------------------------------------------------------------------------


async def test_tools_list_pages() -> None:
    session = await ready_session(page_size=3)
    names: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {} if cursor is None else {"cursor": cursor}
        result = (await request(session, "tools/list", params)).last["result"]
        pages += 1
        assert all(t["inputSchema"]["type"] == "object" for t in result["tools"])
        names += [t["name"] for t in result["tools"]]
        cursor = result.get("nextCursor")
        if cursor is None:
            break
    assert names == [t.name for t in session.dispatcher.registry]
    assert pages == 4  # 12 tools, 3 a page


async def test_tools_list_invalid_cursor() -> None:
    sink = await request(await ready_session(), "tools/list", {"cursor": "garbage"})
    assert sink.last["error"]["code"] == -32602


# -- tools/call ---------------------------------------------------------------------------------


async def test_call_ok_with_structured_content() -> None:
    sink = await call_tool(await ready_session(), "get_time")
    result = sink.last["result"]
    assert result["isError"] is False
    assert result["structuredContent"] == {"iso": "2026-01-01T00:00:00Z"}
    assert orjson.loads(result["content"][0]["text"]) == result["structuredContent"]


async def test_call_echo_text() -> None:
    sink = await call_tool(await ready_session(), "echo", {"text": "hi"})
    assert sink.last["result"] == {"content": [{"type": "text", "text": "hi"}], "isError": False}


async def test_call_unknown_tool_is_protocol_error() -> None:
    sink = await call_tool(await ready_session(), "nope")
    assert sink.last["id"] == 1 and sink.last["error"]["code"] == -32602


async def test_call_without_name() -> None:
    sink = await request(await ready_session(), "tools/call", {"arguments": {}})
    assert sink.last["error"]["code"] == -32602


async def test_bad_arguments_by_revision() -> None:
    new = await call_tool(await ready_session("2025-11-25"), "echo", {"text": 5})
    assert new.last["result"]["isError"] is True
    assert "text" in new.last["result"]["content"][0]["text"]
    old = await call_tool(await ready_session("2025-06-18"), "echo", {"text": 5})
    assert old.last["error"]["code"] == -32602


async def test_failing_tool_is_error_result() -> None:
    session = await ready_session()
    result = (await call_tool(session, "failing")).last["result"]
    assert result == {"content": [{"type": "text", "text": "kaput"}], "isError": True}
    result = (await call_tool(session, "tool_error")).last["result"]
    assert result["isError"] and result["content"][0]["text"] == "upstream said no"
    assert "Traceback" not in orjson.dumps(result).decode()


async def test_output_schema_enforced() -> None:
    result = (await call_tool(await ready_session(), "bad_output")).last["result"]
    assert result["isError"] is True and "outputSchema" in result["content"][0]["text"]


async def test_required_scope() -> None:
    d = dispatcher()
    for scopes, ok in ((frozenset(), False), (frozenset({"admin"}), True), (None, True)):
        session = McpSession(d, scopes=scopes)
        await request(session, "initialize", {"protocolVersion": "2025-11-25"}, id=0)
        sink = await call_tool(session, "scoped")
        assert ("result" in sink.last) is ok
        if not ok:
            assert sink.last["error"]["code"] == -32003


# -- cancellation -------------------------------------------------------------------------------


async def test_cancelled_notification_stops_call_without_response() -> None:
    session = await ready_session()
    sink = Sink()
    outcomes: list[Outcome] = []

    async def run() -> None:
        outcomes.append(await session.handle(Request(42, "tools/call", {"name": "slow"}), sink))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)
        await trio.testing.wait_all_tasks_blocked()
        assert session.in_flight == 1
        # Unknown ids and the initialize id are ignored.
        await session.handle(Notification("notifications/cancelled", {"requestId": 999}), sink)
        await session.handle(Notification("notifications/cancelled", {"requestId": 0}), sink)
        await trio.testing.wait_all_tasks_blocked()
        assert session.in_flight == 1 and cleanups == []
        params = {"requestId": 42, "reason": "user"}
        await session.handle(Notification("notifications/cancelled", params), sink)
    assert cleanups == ["slow"]
    assert outcomes == [Outcome(responded=False)]
    assert sink.messages == []
    assert session.in_flight == 0


async def test_cancel_reaches_tool_child_tasks() -> None:
    session = await ready_session()
    sink = Sink()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(session.handle, Request("n", "tools/call", {"name": "nested"}), sink)
        await trio.testing.wait_all_tasks_blocked()
        await session.handle(Notification("notifications/cancelled", {"requestId": "n"}), sink)
    assert cleanups == ["nested"] and sink.messages == []


async def test_exception_group_is_error_result() -> None:
    result = (await call_tool(await ready_session(), "group_fail")).last["result"]
    assert result["content"] == [{"type": "text", "text": "child failed"}]
    assert result["isError"] is True


async def test_outer_cancellation_propagates(autojump_clock: trio.testing.MockClock) -> None:
    session = await ready_session()
    sink = Sink()
    with trio.move_on_after(1) as scope:
        await session.handle(Request(1, "tools/call", {"name": "slow"}), sink)
    assert scope.cancelled_caught  # Cancelled reached the caller's scope
    assert cleanups == ["slow"] and sink.messages == [] and session.in_flight == 0


async def test_duplicate_in_flight_id() -> None:
    session = await ready_session()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(session.handle, Request(7, "tools/call", {"name": "slow"}), Sink())
        await trio.testing.wait_all_tasks_blocked()
        sink = await call_tool(session, "echo", {"text": "x"})  # id 1: fine
        assert "result" in sink.last
        dup = Sink()
        await session.handle(Request(7, "ping"), dup)
        assert dup.last["id"] == 7 and dup.last["error"]["code"] == -32600
        assert session.cancel(7)
    assert not session.cancel(7)


# -- progress and logging -----------------------------------------------------------------------


async def test_progress_strictly_increasing_then_response() -> None:
    session = await ready_session()
    sink = await call_tool(session, "progress", _meta={"progressToken": "tok"})
    progress = sink.notifications("notifications/progress")
    assert [p["progress"] for p in progress] == [0, 50, 100]
    assert all(p["progressToken"] == "tok" and p["total"] == 100 for p in progress)
    assert progress[1]["message"] == "at 50"
    assert sink.last["id"] == 1 and sink.last["result"]["content"][0]["text"] == "done"


async def test_no_progress_without_token() -> None:
    sink = await call_tool(await ready_session(), "progress")
    assert len(sink.messages) == 1 and "result" in sink.last


async def test_nothing_after_response() -> None:
    session = await ready_session()
    sink = await call_tool(session, "late", _meta={"progressToken": 1})
    assert len(sink.messages) == 1
    (ctx,) = late_contexts
    await ctx.report_progress(10)
    await ctx.log("emergency", "too late")
    assert len(sink.messages) == 1


async def test_log_default_sends_all_levels() -> None:
    sink = await call_tool(await ready_session(), "chatty")
    logs = sink.notifications("notifications/message")
    assert [m["level"] for m in logs] == ["debug", "info", "error"]
    assert logs[0] == {"level": "debug", "logger": "chatty", "data": {"at": "debug"}}
    assert "result" in sink.last


async def test_set_level_filters() -> None:
    session = await ready_session()
    bad = await request(session, "logging/setLevel", {"level": "loud"})
    assert bad.last["error"]["code"] == -32602
    ok = await request(session, "logging/setLevel", {"level": "warning"})
    assert ok.last["result"] == {}
    sink = await call_tool(session, "chatty")
    assert [m["level"] for m in sink.notifications("notifications/message")] == ["error"]


# -- limits -------------------------------------------------------------------------------------


async def test_concurrency_limit() -> None:
    session = await ready_session(max_concurrent_calls=2)
    async with trio.open_nursery() as nursery:
        for i in (10, 11):
            nursery.start_soon(session.handle, Request(i, "tools/call", {"name": "slow"}), Sink())
        await trio.testing.wait_all_tasks_blocked()
        sink = await call_tool(session, "echo", {"text": "x"})
        assert sink.last["id"] == 1
        assert sink.last["error"] == {"code": -32000, "message": "too many concurrent calls"}
        assert "result" in (await request(session, "ping", id=2)).last  # not a tool call
        nursery.cancel_scope.cancel()
    assert session.call_limit.borrowed_tokens == 0
    assert "result" in (await call_tool(session, "echo", {"text": "x"})).last


async def test_shared_call_limit() -> None:
    d = dispatcher()
    limit = trio.CapacityLimiter(1)
    a = McpSession(d, modern=True, call_limit=limit)
    b = McpSession(d, modern=True, call_limit=limit)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.handle, Request(1, "tools/call", modern_params(name="slow")), Sink())
        await trio.testing.wait_all_tasks_blocked()
        sink = await request(b, "tools/call", modern_params(name="echo", arguments={"text": "x"}))
        assert sink.last["error"]["code"] == -32000
        nursery.cancel_scope.cancel()
    assert limit.borrowed_tokens == 0  # the cancelled call gave its token back
    sink = await request(b, "tools/call", modern_params(name="echo", arguments={"text": "x"}))
    assert "result" in sink.last


async def test_protocol_state_is_plain_data() -> None:
    session = McpSession(dispatcher())
    params = {"protocolVersion": "2025-06-18", "capabilities": {"roots": {}}, "clientInfo": {}}
    await session.handle(Request(1, "initialize", params), Sink())
    await session.handle(Notification("notifications/initialized"), Sink())
    assert session.state.to_dict() == {
        "protocol_version": "2025-06-18",
        "initialized": True,
        "client_info": {},
        "client_capabilities": {"roots": {}},
        "client_ready": True,
        "log_level": "debug",
        "subscriptions": [],
    }
    restored = McpSession(dispatcher())
    restored.state = ProtocolState.from_dict(session.state.to_dict())
    assert restored.initialized and restored.protocol_version == "2025-06-18"
    assert "result" in (await request(restored, "tools/list")).last


async def test_timeout(autojump_clock: trio.testing.MockClock) -> None:
    session = await ready_session(call_timeout_s=5)
    start = trio.current_time()
    sink = await call_tool(session, "slow")
    assert trio.current_time() - start == pytest.approx(5)
    assert sink.last["result"] == {
        "content": [{"type": "text", "text": "slow timed out after 5 s"}],
        "isError": True,
    }
    assert cleanups == ["slow"]


# -- batches and raw bytes ----------------------------------------------------------------------


async def test_handle_bytes_parse_error() -> None:
    session = await ready_session()
    sink = Sink()
    outcome = await session.handle_bytes(b"{nope", sink)
    assert outcome == Outcome(responded=True, error_code=-32700)
    assert sink.last["id"] is None and sink.last["error"]["code"] == -32700


async def test_batch_on_0326() -> None:
    session = await ready_session("2025-03-26")
    assert session.batches_allowed
    sink = Sink()
    body = orjson.dumps(
        [
            {"jsonrpc": "2.0", "id": 1, "method": "ping"},
            {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "get_time"}},
            {"jsonrpc": "2.0", "method": "notifications/whatever"},
            {"jsonrpc": "2.0", "id": 3},
        ]
    )
    assert (await session.handle_bytes(body, sink)).responded
    by_id = {m["id"]: m for m in sink.messages}
    assert by_id[1]["result"] == {}
    assert by_id[2]["result"]["isError"] is False
    assert by_id[3]["error"]["code"] == -32600
    assert len(sink.messages) == 3


async def test_batch_with_initialize_rejected() -> None:
    session = McpSession(dispatcher())
    with pytest.raises(InvalidRequest):
        await session.handle_batch([Request(1, "initialize", {"protocolVersion": "x"})], Sink())
    assert not session.initialized


async def test_batch_refused_on_newer_revisions() -> None:
    session = await ready_session("2025-06-18")
    sink = Sink()
    await session.handle_bytes(b'[{"jsonrpc":"2.0","id":1,"method":"ping"}]', sink)
    assert sink.last["error"]["code"] == -32600 and sink.last["id"] is None


# -- 2026-07-28 per-request mode ----------------------------------------------------------------


def modern_params(meta: dict[str, Any] | None = None, **params: Any) -> dict[str, Any]:
    envelope = {
        mcp.META_PROTOCOL_VERSION: mcp.MODERN_VERSION,
        mcp.META_CLIENT_CAPABILITIES: {},
        **(meta or {}),
    }
    return {**params, "_meta": envelope}


async def modern(method: str, params: Any, **kwargs: Any) -> tuple[Sink, Outcome]:
    session = McpSession(dispatcher(**kwargs), modern=True)
    sink = Sink()
    outcome = await session.handle(Request("m1", method, params), sink)
    return sink, outcome


async def test_modern_discover() -> None:
    sink, outcome = await modern("server/discover", modern_params())
    result = sink.last["result"]
    assert outcome == Outcome(responded=True)
    assert result["resultType"] == "complete"
    assert mcp.MODERN_VERSION in result["supportedVersions"]
    assert result["capabilities"]["tools"] == {"listChanged": True}
    assert isinstance(result["ttlMs"], int) and result["cacheScope"] == "private"
    server_info = result["_meta"][mcp.META_SERVER_INFO]
    assert server_info == {"name": "test-server", "version": "9.9"}


async def test_modern_results_are_stamped() -> None:
    sink, _ = await modern("tools/list", modern_params())
    result = sink.last["result"]
    assert result["resultType"] == "complete" and "ttlMs" in result and "cacheScope" in result
    assert mcp.META_SERVER_INFO in result["_meta"]
    sink, _ = await modern("tools/call", modern_params(name="get_time"))
    result = sink.last["result"]
    assert result["resultType"] == "complete" and result["structuredContent"]["iso"]
    assert mcp.META_SERVER_INFO in result["_meta"]


async def test_modern_bad_arguments_is_error_result() -> None:
    sink, _ = await modern("tools/call", modern_params(name="echo", arguments={}))
    assert sink.last["result"]["isError"] is True


@pytest.mark.parametrize(
    "params",
    [
        None,
        {"name": "x"},
        {"_meta": {mcp.META_PROTOCOL_VERSION: mcp.MODERN_VERSION}},
        {"_meta": {mcp.META_CLIENT_CAPABILITIES: {}}},
    ],
)
async def test_modern_meta_required(params: Any) -> None:
    sink, outcome = await modern("server/discover", params)
    assert sink.last["id"] == "m1" and sink.last["error"]["code"] == -32602
    assert mcp_http.modern_http_status(outcome.error_code) == 400


async def test_modern_client_info_optional() -> None:
    meta = {mcp.META_CLIENT_INFO: {"name": "c", "version": "1"}}
    with_info, _ = await modern("server/discover", modern_params(meta))
    without, _ = await modern("server/discover", modern_params())
    assert "result" in with_info.last and "result" in without.last


async def test_modern_unsupported_version() -> None:
    params = modern_params({mcp.META_PROTOCOL_VERSION: "2099-01-01"})
    sink, outcome = await modern("tools/list", params)
    error = sink.last["error"]
    assert sink.last["id"] == "m1" and error["code"] == -32022
    assert error["data"]["requested"] == "2099-01-01"
    assert mcp.MODERN_VERSION in error["data"]["supported"]
    assert mcp_http.modern_http_status(outcome.error_code) == 400


@pytest.mark.parametrize("method", ["initialize", "ping", "logging/setLevel", "nope/nope"])
async def test_modern_removed_methods(method: str) -> None:
    params = modern_params(protocolVersion="2025-11-25")
    sink, outcome = await modern(method, params)
    assert sink.last["id"] == "m1" and sink.last["error"]["code"] == -32601
    assert mcp_http.modern_http_status(outcome.error_code) == 404
    if method == "initialize":
        data = sink.last["error"]["data"]
        assert mcp.MODERN_VERSION in data["supported"] and data["requested"] == "2025-11-25"


async def test_modern_logs_only_with_log_level() -> None:
    silent, _ = await modern("tools/call", modern_params(name="chatty"))
    assert silent.notifications("notifications/message") == []
    meta = {mcp.META_LOG_LEVEL: "info"}
    loud, _ = await modern("tools/call", modern_params(meta, name="chatty"))
    levels = [m["level"] for m in loud.notifications("notifications/message")]
    assert levels == ["info", "error"]


async def test_modern_progress() -> None:
    sink, _ = await modern("tools/call", modern_params({"progressToken": 3}, name="progress"))
    assert [p["progress"] for p in sink.notifications("notifications/progress")] == [0, 50, 100]
    assert sink.last["result"]["resultType"] == "complete"


async def test_modern_ignores_handshake_notification() -> None:
    session = McpSession(dispatcher(), modern=True)
    sink = Sink()
    await session.handle(Notification("notifications/initialized"), sink)
    assert sink.messages == [] and not session.batches_allowed


# -- construction -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"page_size": 0},
        {"call_timeout_s": 0},
        {"default_log_level": "loud"},
        {"max_concurrent_calls": 0},
    ],
)
def test_dispatcher_rejects_bad_config(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        dispatcher(**kwargs)


# -- interop with the official Python SDK client ------------------------------------------------


@pytest.mark.filterwarnings("ignore:The logging capability is deprecated")
async def test_python_sdk_client_round_trip() -> None:
    """The mcp SDK's ClientSession, over memory streams, against McpSession.handle_bytes."""
    import anyio  # installed with mcp (the test extra)
    from mcp.client.session import ClientSession
    from mcp.shared.message import SessionMessage
    from mcp_types.jsonrpc import jsonrpc_message_adapter

    c2s_send, c2s_recv = anyio.create_memory_object_stream[Any](16)
    s2c_send, s2c_recv = anyio.create_memory_object_stream[Any](16)
    session = McpSession(dispatcher())

    async def sink(data: bytes) -> None:
        await s2c_send.send(SessionMessage(jsonrpc_message_adapter.validate_json(data)))

    async def serve() -> None:
        async with trio.open_nursery() as nursery:
            async for item in c2s_recv:
                body = item.message.model_dump_json(by_alias=True, exclude_none=True).encode()
                nursery.start_soon(session.handle_bytes, body, sink)

    logs: list[Any] = []

    async def on_log(params: Any) -> None:
        logs.append(params.level)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        async with ClientSession(s2c_recv, c2s_send, logging_callback=on_log) as client:
            init = await client.initialize()
            assert init.protocol_version == "2025-11-25"
            assert init.server_info.name == "test-server"
            await client.send_ping()
            listed = await client.list_tools()
            assert [t.name for t in listed.tools][:2] == ["get_time", "echo"]

            seen: list[float] = []

            async def on_progress(
                progress: float, total: float | None, message: str | None
            ) -> None:
                seen.append(progress)

            result = await client.call_tool("progress", {}, progress_callback=on_progress)
            assert result.content[0].text == "done" and seen == [0, 50, 100]  # type: ignore[union-attr]
            timed = await client.call_tool("get_time", {})
            assert timed.structured_content == {"iso": "2026-01-01T00:00:00Z"}
            failed = await client.call_tool("failing", {})
            assert failed.is_error

            await client.set_logging_level("error")
            await client.call_tool("chatty", {})
            assert logs == ["error"]

            # Cancelling a call on the client side sends notifications/cancelled.
            with trio.move_on_after(0.2):
                await client.call_tool("slow", {})
            with trio.fail_after(5):
                while not cleanups:
                    await trio.sleep(0.01)
            assert session.in_flight == 0
        nursery.cancel_scope.cancel()


def test_registry_refuses_bad_x_mcp_header_annotations() -> None:
    """Checklist 118: our own x-mcp-header annotations are RFC 9110 tokens on simple properties."""
    import pytest

    from datapulse.tools.registry import Tool, ToolRegistry

    async def handler(arguments: dict, context: object) -> None:  # type: ignore[type-arg]
        return None

    registry = ToolRegistry()
    bad = {"type": "object", "properties": {"r": {"type": "string", "x-mcp-header": "not a token"}}}
    with pytest.raises(ValueError, match="token"):
        registry.add(Tool("bad", "", handler, input_schema=bad))  # type: ignore[arg-type]
    good = {"type": "object", "properties": {"r": {"type": "string", "x-mcp-header": "Region"}}}
    registry.add(Tool("good", "", handler, input_schema=good))  # type: ignore[arg-type]


async def test_a_tool_can_require_a_client_capability() -> None:
    """ToolContext.require_client_capability: -32021 when the request's client lacks it (the
    2026-07-28 _meta, or initialize's capabilities), the tool runs when it has it."""
    registry = ToolRegistry()

    @registry.tool()
    async def needs_sampling(context: ToolContext) -> str:
        context.require_client_capability("sampling")
        return "sampled"

    async def call(session: McpSession, params: dict[str, Any]) -> dict[str, Any]:
        sink = Sink()
        await session.handle(Request("c", "tools/call", params), sink)
        return sink.last

    modern_session = McpSession(Dispatcher(registry), modern=True)
    refused = await call(modern_session, modern_params(name="needs_sampling"))
    assert refused["error"]["code"] == -32021
    assert refused["error"]["data"] == {"requiredCapabilities": {"sampling": {}}}
    granted = modern_params({mcp.META_CLIENT_CAPABILITIES: {"sampling": {}}}, name="needs_sampling")
    assert (await call(modern_session, granted))["result"]["structuredContent"] == {
        "result": "sampled"
    }
    handshake = McpSession(Dispatcher(registry))
    init = {"protocolVersion": "2025-11-25", "capabilities": {"sampling": {}}, "clientInfo": {}}
    await handshake.handle(Request(0, "initialize", init), Sink())
    assert (await call(handshake, {"name": "needs_sampling"}))["result"]["isError"] is False
