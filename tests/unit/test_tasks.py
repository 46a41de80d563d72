"""Durable tasks, socketless: core.tasks (the wire shapes per revision) and protocol.tasks (the
runner and the task methods), driven through ``McpSession`` as a transport would.

``tools/call`` here is ``call_tool`` below: the hook the lead adds to ``methods.call_tool``
(``wants_task`` then ``start``) around a minimal ``run_tool``; tools carry their ``task_support``
in ``SUPPORT`` until ``Tool`` has the field.
"""

from __future__ import annotations

import math
import re
from collections.abc import AsyncIterator, Callable
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
import trio

from datapulse.core import mcp
from datapulse.core import tasks as wire
from datapulse.core.inputs import ElicitResult
from datapulse.core.jsonrpc import ErrorObject, ErrorResponse, Request, Response
from datapulse.core.tasks import HANDSHAKE, MODERN, TaskState
from datapulse.errors import (
    DatapulseError,
    InvalidParams,
    ServiceUnavailable,
    ToolError,
    TooManyRequests,
)
from datapulse.protocol import tasks
from datapulse.protocol.call import Call
from datapulse.protocol.dispatch import Dispatcher
from datapulse.protocol.session import McpSession
from datapulse.protocol.tasks import TaskHandle, TaskRunner
from datapulse.store.memory import MemorySessionStore
from datapulse.tools.registry import ToolContext, ToolRegistry

EXT: dict[str, Any] = {"extensions": {wire.TASKS_EXTENSION: {}}}
CAPS: dict[str, Any] = {"elicitation": {}, **EXT}
ISO = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")

# -- the fixture tools ------------------------------------------------------------------------

SUPPORT = {
    "greet": "forbidden",
    "slow": "optional",
    "gated": "optional",
    "failing_job": "required",
    "protocol_error_job": "optional",
    "confirm": "optional",
    "two_questions": "optional",
    "stubborn": "optional",
}
gate = {"event": trio.Event()}
cleanups: list[str] = []


class Protocolish(DatapulseError):
    jsonrpc_code = -32042
    error = "protocolish"


def make_registry() -> ToolRegistry:
    registry = ToolRegistry()

    @registry.tool("greet")
    async def greet(args: dict[str, Any], ctx: ToolContext) -> Any:
        return "Hello!"

    @registry.tool(
        "slow", input_schema={"type": "object", "properties": {"seconds": {"type": "number"}}}
    )
    async def slow(args: dict[str, Any], ctx: ToolContext) -> Any:
        try:
            await trio.sleep(args.get("seconds", 0))
            return f"slept {args.get('seconds', 0)}"
        finally:
            cleanups.append("slow")

    @registry.tool("gated")
    async def gated(args: dict[str, Any], ctx: ToolContext) -> Any:
        await gate["event"].wait()
        return {"opened": True}

    @registry.tool("failing_job")
    async def failing_job(args: dict[str, Any], ctx: ToolContext) -> Any:
        raise ToolError("the job failed")

    @registry.tool("protocol_error_job")
    async def protocol_error_job(args: dict[str, Any], ctx: ToolContext) -> Any:
        raise Protocolish("a protocol-level failure", data={"why": "testing"})

    @registry.tool("confirm")
    async def confirm(args: dict[str, Any], ctx: ToolContext) -> Any:
        answer = await ctx.elicit("Delete it?", {"type": "object", "properties": {}}, key="ok")
        return f"{answer.action}: {answer.content}"

    @registry.tool("two_questions")
    async def two_questions(args: dict[str, Any], ctx: ToolContext) -> Any:
        answers: dict[str, ElicitResult] = {}

        async def ask(key: str) -> None:
            answers[key] = await ctx.elicit(f"{key}?", key=key)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask, "first")
            nursery.start_soon(ask, "second")
        return {k: v.content for k, v in sorted(answers.items())}

    @registry.tool("stubborn")
    async def stubborn(args: dict[str, Any], ctx: ToolContext) -> Any:
        with trio.CancelScope(shield=True):  # finishes whatever tasks/cancel says
            await trio.sleep(0.05)
        cleanups.append("stubborn")
        return "finished anyway"

    return registry


async def run_tool(session: McpSession, call: Call, name: str, handle: TaskHandle | None) -> Any:
    """A minimal ``methods.run_tool``: protocol errors (DatapulseError but ToolError) pass."""
    d = session.dispatcher
    tool = d.registry.get(name)
    capabilities = call.meta.client_capabilities if call.meta else {"elicitation": {}}
    context = ToolContext(
        principal_id=session.principal_id,
        client_capabilities=capabilities,
        protocol_version=session.protocol_version,
    )
    if handle is not None:
        context.input_sink = handle.ask
    try:
        output = await d.registry.run(tool, call.params.get("arguments") or {}, context)
    except ToolError as exc:
        return mcp.tool_error_result(exc.detail)
    return mcp.tool_call_result(output, session.protocol_version)


async def call_tool(session: McpSession, call: Call) -> dict[str, Any]:
    """``tools/call`` with the hook the lead adds to ``methods.call_tool``."""
    d = session.dispatcher
    name = call.params["name"]
    tool = SimpleNamespace(name=name, task_support=SUPPORT[name])
    runner: TaskRunner | None = d.tasks  # type: ignore[attr-defined]
    arguments = call.params.get("arguments") or {}
    if runner is not None and runner.wants_task(session, call, tool):

        async def run(handle: TaskHandle) -> dict[str, Any]:
            result: dict[str, Any] = await run_tool(session, call, name, handle)
            return result

        return await runner.start(session, call, tool, arguments, run)
    result: dict[str, Any] = await run_tool(session, call, name, None)
    return result


def make_dispatcher(runner: TaskRunner | None) -> Dispatcher:
    d = Dispatcher(make_registry(), call_timeout_s=None)
    d.tasks = runner  # type: ignore[attr-defined]
    d.handshake_methods.update(tasks.HANDSHAKE_METHODS)
    d.handshake_methods["tools/call"] = call_tool
    d.modern_methods.update(tasks.MODERN_METHODS)
    d.modern_methods["tools/call"] = call_tool
    return d


class Peer:
    """One client: a principal on one revision (a handshake session, or modern requests)."""

    def __init__(self, d: Dispatcher, principal: str, version: str = "2025-11-25") -> None:
        self.d, self.principal, self.version = d, principal, version
        self.modern = version == MODERN
        self.session = McpSession(d, session_id=f"s-{principal}", principal_id=principal)
        if not self.modern:
            self.session.protocol_version = version
            self.session.initialized = True
        self.ids = 0
        self.notifications: list[dict[str, Any]] = []
        self.asked: list[dict[str, Any]] = []
        self.respond: Callable[[dict[str, Any]], Any] | None = None
        """Answers a request of the server's (the result; None: a JSON-RPC error)."""

    async def rpc(
        self, method: str, params: dict[str, Any] | None = None, *, caps: Any = CAPS
    ) -> dict[str, Any]:
        """The reply: ``{"result": ...}`` or ``{"error": ...}``."""
        self.ids += 1
        params = dict(params or {})
        session = self.session
        if self.modern:
            params["_meta"] = {
                mcp.META_PROTOCOL_VERSION: MODERN,
                mcp.META_CLIENT_CAPABILITIES: caps,
            }
            session = McpSession(self.d, modern=True, principal_id=self.principal)
        out: list[dict[str, Any]] = []

        async def sink(data: bytes) -> None:
            message = orjson.loads(data)
            if "method" in message and "id" in message:  # the server asks us something
                self.asked.append(message)
                answer = None if self.respond is None else self.respond(message)
                reply: Response | ErrorResponse = (
                    ErrorResponse(message["id"], ErrorObject(-1, "no, thanks"))
                    if answer is None
                    else Response(message["id"], answer)
                )
                await session.handle(reply, sink)
                return
            (out if "id" in message else self.notifications).append(message)

        await session.handle(Request(self.ids, method, params), sink)
        assert len(out) == 1, out
        return out[0]

    async def ok(self, method: str, params: dict[str, Any] | None = None, **kw: Any) -> Any:
        reply = await self.rpc(method, params, **kw)
        assert "result" in reply, reply
        return reply["result"]

    async def error(self, method: str, params: dict[str, Any] | None = None, **kw: Any) -> Any:
        reply = await self.rpc(method, params, **kw)
        assert "error" in reply, reply
        return reply["error"]

    async def start(self, name: str, arguments: dict[str, Any] | None = None, **task: Any) -> str:
        params: dict[str, Any] = {"name": name, "arguments": arguments or {}}
        if not self.modern:
            params["task"] = task
        result = await self.ok("tools/call", params)
        task_id = result["taskId"] if self.modern else result["task"]["taskId"]
        assert isinstance(task_id, str)
        return task_id

    async def until(self, task_id: str, *statuses: str) -> dict[str, Any]:
        with trio.fail_after(5):
            while True:
                task: dict[str, Any] = await self.ok("tasks/get", {"taskId": task_id})
                if task["status"] in statuses:
                    return task
                await trio.sleep(0.01)


@pytest.fixture(autouse=True)
def _fresh() -> None:
    gate["event"] = trio.Event()
    cleanups.clear()


@pytest.fixture
def store() -> MemorySessionStore:
    return MemorySessionStore(100, 100_000)


@pytest.fixture
async def runner(nursery: trio.Nursery, store: MemorySessionStore) -> AsyncIterator[TaskRunner]:
    runner = TaskRunner(store, poll_interval_ms=10, watch_interval_s=0.02)
    await nursery.start(runner.run)
    yield runner


@pytest.fixture
def d(runner: TaskRunner) -> Dispatcher:
    return make_dispatcher(runner)


# -- core.tasks: declarations ---------------------------------------------------------------


def test_the_task_keyword_maps_to_the_spec_values() -> None:
    assert wire.task_support_of(True) == "optional"
    assert wire.task_support_of(False) == "forbidden"
    assert wire.task_support_of("required") == "required"
    with pytest.raises(ValueError, match="task="):
        wire.task_support_of("sometimes")


def test_execution_is_listed_only_at_2025_11_25_and_only_when_not_forbidden() -> None:
    entry = {"name": "t", "inputSchema": {"type": "object"}, "execution": {"stale": 1}}
    assert wire.entry_for_version(entry, "optional", "2025-11-25", modern=False)["execution"] == {
        "taskSupport": "optional"
    }
    assert "execution" not in wire.entry_for_version(entry, "optional", "2025-06-18", modern=False)
    assert "execution" not in wire.entry_for_version(entry, "required", MODERN, modern=True)
    assert "execution" not in wire.entry_for_version(entry, "forbidden", HANDSHAKE, modern=False)
    assert entry["execution"] == {"stale": 1}  # a copy


def test_capabilities_per_revision() -> None:
    assert wire.server_capabilities("2025-11-25", modern=False) == {
        "tasks": {"list": {}, "cancel": {}, "requests": {"tools": {"call": {}}}}
    }
    assert wire.server_capabilities("2025-06-18", modern=False) == {}
    modern = wire.server_capabilities(MODERN, modern=True)
    assert modern == {"extensions": {wire.TASKS_EXTENSION: {}}} and "tasks" not in modern
    held: dict[str, Any] = {"tools": {}, "extensions": {"io.example/other": {}}}
    merged = wire.merge_capabilities(held, modern)
    assert merged["extensions"] == {"io.example/other": {}, wire.TASKS_EXTENSION: {}}
    assert wire.client_declares_extension(EXT)
    assert not wire.client_declares_extension({"extensions": {wire.TASKS_EXTENSION: True}})
    assert not wire.client_declares_extension(None)


def test_missing_extension_is_32021_naming_the_extension() -> None:
    exc = wire.MissingTasksExtension()
    assert exc.jsonrpc_code == -32021 and exc.http_status == 400
    assert exc.extra["data"] == {"requiredCapabilities": {"extensions": {wire.TASKS_EXTENSION: {}}}}


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, None),
        ({"task": None}, None),
        ({"task": {}}, wire.TaskRequest()),
        ({"task": {"ttl": 60000}}, wire.TaskRequest(60000)),
        ({"task": {"ttl": 60000.0}}, wire.TaskRequest(60000)),
    ],
)
def test_the_task_param_of_2025_11_25(params: dict[str, Any], expected: Any) -> None:
    assert wire.parse_task_request(params) == expected


@pytest.mark.parametrize(
    "task", [[], "yes", {"ttl": -1}, {"ttl": True}, {"ttl": 1.5}, {"ttl": "9"}]
)
def test_a_malformed_task_param_is_32602(task: Any) -> None:
    with pytest.raises(InvalidParams):
        wire.parse_task_request({"task": task})


def test_ttls_are_clamped_and_never_unlimited() -> None:
    assert wire.clamp_ttl_ms(None, 3_600_000, 86_400_000) == 3_600_000
    assert wire.clamp_ttl_ms(10**12, 3_600_000, 86_400_000) == 86_400_000
    assert wire.clamp_ttl_ms(1, 3_600_000, 86_400_000) == 1000
    assert wire.clamp_ttl_ms(None, 10_000, 5_000) == 5_000


def test_timestamps_are_rfc3339_utc_with_milliseconds() -> None:
    assert wire.iso8601(0) == "1970-01-01T00:00:00.000Z"
    assert wire.iso8601(1764066600.25) == "2025-11-25T10:30:00.250Z"
    assert wire.iso8601(59.9996) == "1970-01-01T00:01:00.000Z"  # rounding carries


# -- core.tasks: the record -------------------------------------------------------------------


def new_state(**kw: Any) -> TaskState:
    fields: dict[str, Any] = {
        "task_id": "t1",
        "tool": "slow",
        "created_at": 1000.0,
        "ttl_ms": 60_000,
        "poll_interval_ms": 500,
    }
    return TaskState(**{**fields, **kw})


def test_a_terminal_status_never_changes() -> None:
    state = new_state()
    state.complete({"content": [], "isError": False}, 1001.0)
    moves: list[Callable[[], None]] = [
        lambda: state.cancel(1002.0),
        lambda: state.fail({"code": -32603, "message": "x"}, 1002.0),
        lambda: state.ask({"k": {"method": "m", "params": {}}}, 1002.0),
    ]
    for move in moves:
        with pytest.raises(wire.IllegalTransition):
            move()
    assert state.status == "completed" and state.updated_at == 1001.0
    assert state.answer({"k": {}}, 1003.0) == []


def test_answers_count_only_for_outstanding_keys_and_working_returns_when_none_is_left() -> None:
    state = new_state()
    state.ask({"a": {"method": "elicitation/create", "params": {}}}, 1001.0)
    state.ask({"b": {"method": "elicitation/create", "params": {}}}, 1001.5)
    assert state.status == "input_required" and set(state.input_requests) == {"a", "b"}
    assert state.answer({"a": {"action": "accept"}, "never-asked": {}}, 1002.0) == ["a"]
    assert state.status == "input_required" and list(state.input_requests) == ["b"]
    assert state.answer({"a": {"action": "decline"}}, 1002.5) == []  # answered already
    assert state.answers == {"a": {"action": "accept"}}
    state.decline("b", "no thanks", 1003.0)
    assert state.status == "working" and state.updated_at == 1003.0
    assert state.take(["a", "b"]) == ({"a": {"action": "accept"}}, {"b": "no thanks"})
    assert state.answers == {} and state.declined == {}


def test_the_record_round_trips_as_json_and_refuses_what_it_does_not_know() -> None:
    state = new_state(session_id="s")
    state.ask({"a": {"method": "roots/list", "params": {}}}, 1001.0)
    back = TaskState.from_dict(orjson.loads(orjson.dumps(state.to_dict())))
    assert back == state
    with pytest.raises(ValueError, match="unknown task fields"):
        TaskState.from_dict({**state.to_dict(), "extra": 1})
    with pytest.raises(ValueError, match="status"):
        TaskState.from_dict({**state.to_dict(), "status": "paused"})
    with pytest.raises(ValueError, match="ttl_ms"):
        TaskState.from_dict({**state.to_dict(), "ttl_ms": "60000"})


# -- core.tasks: rendering ---------------------------------------------------------------------


def test_the_two_wires_name_the_fields_differently() -> None:
    state = new_state()
    v1 = wire.task_wire(state, HANDSHAKE)
    assert v1 == {
        "taskId": "t1",
        "status": "working",
        "createdAt": "1970-01-01T00:16:40.000Z",
        "lastUpdatedAt": "1970-01-01T00:16:40.000Z",
        "ttl": 60_000,
        "pollInterval": 500,
    }
    v2 = wire.task_wire(state, MODERN)
    assert v2["ttlMs"] == 60_000 and v2["pollIntervalMs"] == 500
    assert "ttl" not in v2 and "pollInterval" not in v2
    assert wire.create_task_result(state, HANDSHAKE) == {"task": v1}
    assert wire.create_task_result(state, MODERN) == {"resultType": "task", **v2}


def test_a_tool_error_is_failed_on_2025_11_25_and_completed_on_the_extension() -> None:
    state = new_state()
    state.complete(mcp.tool_error_result("nope"), 1001.0)
    assert wire.task_wire(state, HANDSHAKE)["status"] == "failed"
    assert wire.task_wire(state, HANDSHAKE)["statusMessage"] == "Tool execution failed: nope"
    detailed = wire.get_task_result(state, MODERN)
    assert detailed["status"] == "completed" and detailed["result"]["isError"] is True
    assert wire.payload_result(state)["isError"] is True  # tasks/result: the result as it is


def test_the_detailed_task_inlines_what_its_status_carries() -> None:
    working = new_state()
    assert set(wire.detailed_task(working)) == set(wire.task_wire(working, MODERN))
    asking = new_state()
    asking.ask({"k": {"method": "elicitation/create", "params": {"message": "?"}}}, 1001.0)
    assert wire.detailed_task(asking)["inputRequests"] == {
        "k": {"method": "elicitation/create", "params": {"message": "?"}}
    }
    done = new_state()
    meta = {wire.META_RELATED_TASK: {"taskId": "t1"}, "keep": 1}
    done.complete({"content": [], "isError": False, "_meta": meta}, 1001.0)
    inlined = wire.detailed_task(done)
    assert inlined["result"]["_meta"] == {"keep": 1}  # no related-task on the inlined result
    assert "error" not in inlined and "inputRequests" not in inlined
    failed = new_state()
    failed.fail({"code": -32603, "message": "boom"}, 1001.0)
    assert wire.detailed_task(failed)["error"] == {"code": -32603, "message": "boom"}
    assert "result" not in wire.detailed_task(failed)
    for state in (working, asking, done, failed):
        assert "requestState" not in wire.detailed_task(state)


def test_tasks_result_answers_exactly_what_the_call_would_have() -> None:
    done = new_state()
    done.complete({"content": [{"type": "text", "text": "hi"}], "isError": False}, 1001.0)
    assert wire.payload_result(done)["_meta"] == {wire.META_RELATED_TASK: {"taskId": "t1"}}
    failed = new_state()
    failed.fail({"code": -32042, "message": "boom", "data": {"x": 1}}, 1001.0)
    with pytest.raises(wire.StoredError) as raised:
        wire.payload_result(failed)
    assert raised.value.jsonrpc_code == -32042 and str(raised.value) == "boom"
    assert raised.value.extra == {"data": {"x": 1}}
    cancelled = new_state()
    cancelled.cancel(1001.0)
    with pytest.raises(InvalidParams, match="cancelled"):
        wire.payload_result(cancelled)
    with pytest.raises(ValueError):
        wire.payload_result(new_state())


def test_status_notifications_per_revision() -> None:
    state = new_state()
    assert wire.status_notification(state, HANDSHAKE) == (
        "notifications/tasks/status",
        wire.task_wire(state, HANDSHAKE),
    )
    assert wire.status_notification(state, MODERN)[0] == "notifications/tasks"


def test_tasks_list_pages_by_position_not_offset() -> None:
    states = [new_state(task_id=f"t{n}", created_at=1000.0 + n) for n in range(5)]
    first = wire.list_result(states, None, 2)
    assert [t["taskId"] for t in first["tasks"]] == ["t0", "t1"]
    # t0 and t1 expire before the next page is asked for: the page still starts after t1.
    second = wire.list_result(states[2:], first["nextCursor"], 2)
    assert [t["taskId"] for t in second["tasks"]] == ["t2", "t3"]
    last = wire.list_result(states, second["nextCursor"], 2)
    assert [t["taskId"] for t in last["tasks"]] == ["t4"] and "nextCursor" not in last
    for cursor in ("nope", 7, "ZHB0MTpub3BlOng=", ""):
        with pytest.raises(InvalidParams):
            wire.list_result(states, cursor, 2)


# -- wants_task: which calls become tasks ---------------------------------------------------


@pytest.mark.parametrize(
    ("version", "name", "task", "expected"),
    [
        ("2025-11-25", "slow", {}, "task"),
        ("2025-11-25", "slow", None, "inline"),
        ("2025-11-25", "greet", {}, -32601),  # forbidden: SHOULD -32601
        ("2025-11-25", "failing_job", None, -32601),  # required: MUST -32601
        ("2025-06-18", "slow", {}, "inline"),  # no tasks there: the param is ignored
        ("2025-06-18", "failing_job", None, -32601),
    ],
)
async def test_handshake_era_task_rules(
    d: Dispatcher, version: str, name: str, task: Any, expected: Any
) -> None:
    peer = Peer(d, "alice", version)
    params: dict[str, Any] = {"name": name, "arguments": {}}
    if task is not None:
        params["task"] = task
    reply = await peer.rpc("tools/call", params)
    if expected == "task":
        assert set(reply["result"]) == {"task"} and reply["result"]["task"]["status"] == "working"
    elif expected == "inline":
        assert "content" in reply["result"] and "task" not in reply["result"]
    else:
        assert reply["error"]["code"] == expected


@pytest.mark.parametrize(
    ("name", "caps", "extra", "expected"),
    [
        ("slow", EXT, {}, "task"),
        ("slow", {}, {}, "inline"),  # optional, client without the extension: inline
        ("greet", EXT, {"task": {"ttl": 60000}}, "inline"),  # the legacy hint promotes nothing
        ("failing_job", {}, {}, -32021),
        ("failing_job", EXT, {}, "task"),
    ],
)
async def test_extension_task_rules(
    d: Dispatcher, name: str, caps: Any, extra: dict[str, Any], expected: Any
) -> None:
    peer = Peer(d, "alice", MODERN)
    reply = await peer.rpc("tools/call", {"name": name, "arguments": {}, **extra}, caps=caps)
    if expected == "task":
        assert reply["result"]["resultType"] == "task" and "task" not in reply["result"]
    elif expected == "inline":
        assert reply["result"]["resultType"] == "complete" and "taskId" not in reply["result"]
    else:
        assert reply["error"]["code"] == expected
        assert reply["error"]["data"]["requiredCapabilities"]["extensions"] == {
            wire.TASKS_EXTENSION: {}
        }


# -- 2025-11-25 -----------------------------------------------------------------------------------


async def test_handshake_lifecycle_create_get_result_list(d: Dispatcher) -> None:
    alice = Peer(d, "alice")
    created = await alice.ok("tools/call", {"name": "gated", "task": {"ttl": 60_000}})
    task = created["task"]
    assert task["status"] == "working" and task["ttl"] == 60_000
    assert ISO.match(task["createdAt"]) and ISO.match(task["lastUpdatedAt"])
    assert isinstance(task["pollInterval"], int)
    got = await alice.ok("tasks/get", {"taskId": task["taskId"]})
    assert got["status"] == "working" and got["taskId"] == task["taskId"]
    results: list[dict[str, Any]] = []

    async def wait_result() -> None:
        results.append(await alice.rpc("tasks/result", {"taskId": task["taskId"]}))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait_result)
        await trio.sleep(0.05)
        assert results == []  # tasks/result blocks while the task works
        gate["event"].set()
    result = results[0]["result"]
    assert result["content"] == [{"type": "text", "text": '{"opened":true}'}]
    assert result["_meta"] == {wire.META_RELATED_TASK: {"taskId": task["taskId"]}}
    done = await alice.ok("tasks/get", {"taskId": task["taskId"]})
    assert done["status"] == "completed" and wire.META_RELATED_TASK not in done.get("_meta", {})
    listed = await alice.ok("tasks/list")
    assert [t["taskId"] for t in listed["tasks"]] == [task["taskId"]]


async def test_handshake_tool_error_fails_the_task_and_protocol_errors_come_back_as_such(
    d: Dispatcher,
) -> None:
    alice = Peer(d, "alice")
    tool_error = await alice.start("failing_job")
    assert (await alice.until(tool_error, "failed"))["statusMessage"].endswith("the job failed")
    result = await alice.ok("tasks/result", {"taskId": tool_error})
    assert result["isError"] is True
    protocol = await alice.start("protocol_error_job")
    await alice.until(protocol, "failed")
    error = await alice.error("tasks/result", {"taskId": protocol})
    assert error == {
        "code": -32042,
        "message": "a protocol-level failure",
        "data": {"why": "testing"},
    }


async def test_handshake_cancel_stops_the_tool_and_the_task_stays_cancelled(
    d: Dispatcher,
) -> None:
    alice = Peer(d, "alice")
    task_id = await alice.start("slow", {"seconds": 60})
    cancelled = await alice.ok("tasks/cancel", {"taskId": task_id})
    assert cancelled["status"] == "cancelled" and cancelled["statusMessage"]
    with trio.fail_after(2):
        while "slow" not in cleanups:  # the cancellation reached the running tool
            await trio.sleep(0.01)
    assert (await alice.ok("tasks/get", {"taskId": task_id}))["status"] == "cancelled"
    again = await alice.error("tasks/cancel", {"taskId": task_id})
    assert again["code"] == -32602 and "cancelled" in again["message"]
    assert (await alice.error("tasks/result", {"taskId": task_id}))["code"] == -32602
    done = await alice.start("slow", {"seconds": 0})
    await alice.until(done, "completed")
    terminal = await alice.error("tasks/cancel", {"taskId": done})
    assert terminal["code"] == -32602 and "'completed'" in terminal["message"]


async def test_a_tool_that_finishes_after_cancel_leaves_the_task_cancelled(d: Dispatcher) -> None:
    alice = Peer(d, "alice")
    task_id = await alice.start("stubborn")
    await alice.ok("tasks/cancel", {"taskId": task_id})
    with trio.fail_after(2):
        while "stubborn" not in cleanups:
            await trio.sleep(0.01)
    await trio.sleep(0.02)
    assert (await alice.ok("tasks/get", {"taskId": task_id}))["status"] == "cancelled"


async def test_tasks_are_visible_only_to_their_principal_from_any_of_its_sessions(
    d: Dispatcher,
) -> None:
    alice, bob = Peer(d, "alice"), Peer(d, "bob")
    task_id = await alice.start("slow", {"seconds": 60})
    for method in ("tasks/get", "tasks/result", "tasks/cancel"):
        error = await bob.error(method, {"taskId": task_id})
        assert error["code"] == -32602 and "not found" in error["message"], method
    assert (await bob.ok("tasks/list"))["tasks"] == []
    missing = await bob.error("tasks/get", {"taskId": "no-such-task"})
    assert missing["message"].replace("'no-such-task'", "") == error["message"].replace(
        repr(task_id), ""
    )  # someone else's task reads exactly like a missing one
    later = Peer(d, "alice")  # another session of alice's (the first one's connection is gone)
    later.session = McpSession(d, session_id="another", principal_id="alice")
    later.session.protocol_version, later.session.initialized = "2025-11-25", True
    assert (await later.ok("tasks/get", {"taskId": task_id}))["status"] == "working"
    modern = Peer(d, "alice", MODERN)  # and on the other revision
    assert (await modern.ok("tasks/get", {"taskId": task_id}))["ttlMs"] > 0
    await alice.ok("tasks/cancel", {"taskId": task_id})


async def test_each_principal_holds_a_bounded_number_of_tasks(store: MemorySessionStore) -> None:
    runner = TaskRunner(store, max_tasks_per_principal=2)
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        d = make_dispatcher(runner)
        alice, bob = Peer(d, "alice"), Peer(d, "bob")
        for _ in range(2):
            await alice.start("slow", {"seconds": 60})
        error = await alice.error("tools/call", {"name": "slow", "task": {}})
        assert error["code"] == -32000 and "holds 2 tasks" in error["message"]
        await bob.start("slow", {"seconds": 60})  # bob has his own bound
        nursery.cancel_scope.cancel()


async def test_a_task_is_stopped_and_forgotten_once_its_ttl_has_passed(
    store: MemorySessionStore,
) -> None:
    runner = TaskRunner(store, default_ttl_s=0.2, max_ttl_s=0.2, watch_interval_s=None)
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        alice = Peer(make_dispatcher(runner), "alice")
        created = await alice.ok(
            "tools/call", {"name": "slow", "arguments": {"seconds": 60}, "task": {"ttl": 10**9}}
        )
        assert created["task"]["ttl"] == 200  # the server's maximum, not the client's wish
        with trio.fail_after(2):
            while "slow" not in cleanups:
                await trio.sleep(0.01)
        await trio.sleep(0.05)
        assert (await alice.error("tasks/get", {"taskId": created["task"]["taskId"]}))[
            "code"
        ] == -32602
        assert store.task_count() == 0 and runner.running == 0
        nursery.cancel_scope.cancel()


async def test_the_result_outlives_the_request_that_started_the_task(d: Dispatcher) -> None:
    alice = Peer(d, "alice")
    params = {"name": "gated", "arguments": {}, "task": {}}
    replies: list[bytes] = []

    async def sink(data: bytes) -> None:
        replies.append(data)
        raise trio.BrokenResourceError("the client went away")  # nothing more can be sent

    with pytest.raises(trio.BrokenResourceError):
        await alice.session.handle(Request(99, "tools/call", params), sink)
    task_id = orjson.loads(replies[0])["result"]["task"]["taskId"]
    gate["event"].set()
    later = Peer(d, "alice")
    assert (await later.until(task_id, "completed"))["status"] == "completed"
    assert (await later.ok("tasks/result", {"taskId": task_id}))["content"]


async def test_a_tool_asking_for_input_cannot_on_2025_without_a_relay(
    store: MemorySessionStore,
) -> None:
    runner = TaskRunner(store, poll_interval_ms=10, client_asker=None)
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        alice = Peer(make_dispatcher(runner), "alice")
        task_id = await alice.start("confirm")
        await alice.until(task_id, "failed")  # isError: the tool was told it cannot ask
        result = await alice.ok("tasks/result", {"taskId": task_id})
        assert "cannot ask the client" in result["content"][0]["text"]
        nursery.cancel_scope.cancel()


async def test_2025_input_is_asked_over_tasks_result_with_the_related_task(
    d: Dispatcher,
) -> None:
    alice = Peer(d, "alice")
    alice.respond = lambda request: {"action": "accept", "content": {"sure": True}}
    task_id = await alice.start("confirm")
    assert (await alice.until(task_id, "input_required"))["status"] == "input_required"
    assert alice.asked == []  # tasks/get polls: nothing is asked there
    result = await alice.ok("tasks/result", {"taskId": task_id})
    assert result["content"][0]["text"] == "accept: {'sure': True}"
    [request] = alice.asked
    assert request["method"] == "elicitation/create"
    assert request["params"]["message"] == "Delete it?"
    assert request["params"]["_meta"] == {wire.META_RELATED_TASK: {"taskId": task_id}}


async def test_2025_a_client_refusing_to_answer_is_told_to_the_tool(d: Dispatcher) -> None:
    alice = Peer(d, "alice")  # respond is None: every request of ours gets an error
    task_id = await alice.start("confirm")
    await alice.until(task_id, "input_required")
    result = await alice.ok("tasks/result", {"taskId": task_id})
    assert result["isError"] is True and "declined" in result["content"][0]["text"]
    assert len(alice.asked) == 1


async def test_2025_a_custom_asker_relays_each_request(store: MemorySessionStore) -> None:
    asked: list[tuple[str, dict[str, Any]]] = []

    async def asker(session: McpSession, call: Call, method: str, params: dict[str, Any]) -> Any:
        assert call.request.method == "tasks/result"
        asked.append((method, params))
        return {"action": "decline"}

    runner = TaskRunner(store, poll_interval_ms=10, client_asker=asker)
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        alice = Peer(make_dispatcher(runner), "alice")
        task_id = await alice.start("confirm")
        result = await alice.ok("tasks/result", {"taskId": task_id})
        assert result["content"][0]["text"] == "decline: {}"
        [(method, params)] = asked
        assert method == "elicitation/create"
        assert params["_meta"] == {wire.META_RELATED_TASK: {"taskId": task_id}}
        nursery.cancel_scope.cancel()


# -- 2026-07-28 (the extension) ---------------------------------------------------------------


async def test_extension_lifecycle_shapes(d: Dispatcher) -> None:
    alice = Peer(d, "alice", MODERN)
    created = await alice.ok("tools/call", {"name": "gated", "arguments": {}})
    assert created["resultType"] == "task" and ISO.match(created["createdAt"])
    for absent in ("task", "result", "error", "inputRequests", "requestState", "ttl"):
        assert absent not in created
    assert isinstance(created["ttlMs"], int) and isinstance(created["pollIntervalMs"], int)
    working = await alice.ok("tasks/get", {"taskId": created["taskId"]})
    assert working["resultType"] == "complete" and working["status"] == "working"
    assert "result" not in working and "error" not in working
    gate["event"].set()
    done = await alice.until(created["taskId"], "completed")
    assert done["result"]["content"] == [{"type": "text", "text": '{"opened":true}'}]
    assert wire.META_RELATED_TASK not in done["result"].get("_meta", {})
    tool_error = await alice.until(await alice.start("failing_job"), "completed", "failed")
    assert tool_error["status"] == "completed" and tool_error["result"]["isError"] is True
    protocol = await alice.until(await alice.start("protocol_error_job"), "completed", "failed")
    assert protocol["status"] == "failed" and "result" not in protocol
    assert protocol["error"]["code"] == -32042 and protocol["error"]["message"]


async def test_extension_cancel_is_an_empty_ack_also_for_a_terminal_task(d: Dispatcher) -> None:
    alice = Peer(d, "alice", MODERN)
    task_id = await alice.start("slow", {"seconds": 60})
    ack = await alice.ok("tasks/cancel", {"taskId": task_id})
    assert ack["resultType"] == "complete"
    assert not {"taskId", "status", "result", "error", "inputRequests"} & set(ack)
    assert (await alice.until(task_id, "cancelled"))["status"] == "cancelled"
    assert "slow" in cleanups
    again = await alice.ok("tasks/cancel", {"taskId": task_id})
    assert again["resultType"] == "complete" and "status" not in again
    assert (await alice.error("tasks/cancel", {"taskId": "nope"}))["code"] == -32602


async def test_extension_methods_need_the_extension_and_v1_methods_are_gone(
    d: Dispatcher,
) -> None:
    alice = Peer(d, "alice", MODERN)
    for method, params in (
        ("tasks/get", {"taskId": "gate-test"}),
        ("tasks/update", {"taskId": "gate-test", "inputResponses": {}}),
        ("tasks/cancel", {"taskId": "gate-test"}),
    ):
        error = await alice.error(method, params, caps={"sampling": {}})
        assert error["code"] == -32021, method  # before the unknown id is looked at
    assert (await alice.error("tasks/get", {"taskId": "x" * 30}))["code"] == -32602
    assert (await alice.error("tasks/result", {"taskId": "t"}))["code"] == -32601
    assert (await alice.error("tasks/list"))["code"] == -32601
    old = Peer(d, "alice", "2025-06-18")
    assert (await old.error("tasks/get", {"taskId": "t"}))["code"] == -32601


async def test_extension_input_required_and_tasks_update(d: Dispatcher) -> None:
    alice = Peer(d, "alice", MODERN)
    task_id = await alice.start("confirm")
    asking = await alice.until(task_id, "input_required")
    assert asking["inputRequests"]["ok"]["method"] == "elicitation/create"
    ignored = await alice.ok(
        "tasks/update", {"taskId": task_id, "inputResponses": {"unknown-key": {"ignored": True}}}
    )
    assert ignored == {"resultType": "complete", "_meta": ignored["_meta"]}
    assert (await alice.ok("tasks/get", {"taskId": task_id}))["status"] == "input_required"
    bad = await alice.error("tasks/update", {"taskId": task_id, "inputResponses": {"ok": 12345}})
    assert bad["code"] == -32602
    answer = {"action": "accept", "content": {"confirm": True}}
    await alice.ok("tasks/update", {"taskId": task_id, "inputResponses": {"ok": answer}})
    done = await alice.until(task_id, "completed")
    assert done["result"]["content"][0]["text"] == "accept: {'confirm': True}"


async def test_extension_partial_answers_keep_the_task_waiting_for_the_rest(
    d: Dispatcher,
) -> None:
    alice = Peer(d, "alice", MODERN)
    task_id = await alice.start("two_questions")
    with trio.fail_after(5):
        while len((task := await alice.until(task_id, "input_required"))["inputRequests"]) < 2:
            await trio.sleep(0.01)
    assert set(task["inputRequests"]) == {"first", "second"}
    one = {"action": "accept", "content": {"n": 1}}
    await alice.ok("tasks/update", {"taskId": task_id, "inputResponses": {"first": one}})
    partial = await alice.ok("tasks/get", {"taskId": task_id})
    assert partial["status"] == "input_required" and list(partial["inputRequests"]) == ["second"]
    two = {"action": "accept", "content": {"n": 2}}
    await alice.ok("tasks/update", {"taskId": task_id, "inputResponses": {"second": two}})
    done = await alice.until(task_id, "completed")
    assert orjson.loads(done["result"]["content"][0]["text"]) == {
        "first": {"n": 1},
        "second": {"n": 2},
    }


async def test_input_keys_are_unique_over_a_task_lifetime(store: MemorySessionStore) -> None:
    runner = TaskRunner(store, poll_interval_ms=10)
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        d = make_dispatcher(runner)
        alice = Peer(d, "alice", MODERN)
        peer_session = McpSession(d, modern=True, principal_id="alice")
        call = Call(
            peer_session,
            Request(1, "tools/call", {}),
            _discard,
            {},
            meta=mcp.ModernMeta(MODERN, EXT),
        )
        keys_seen: list[list[str]] = []

        async def twice(handle: TaskHandle) -> dict[str, Any]:
            context = ToolContext(client_capabilities={"elicitation": {}}, input_sink=handle.ask)
            for _ in range(2):
                await context.elicit("again?", key="same")
            return mcp.tool_call_result("ok", MODERN)

        tool = SimpleNamespace(name="twice", task_support="optional")
        task_id = (await runner.start(peer_session, call, tool, {}, twice))["taskId"]
        with trio.fail_after(5):
            while len(keys_seen) < 2:
                asking = await alice.until(task_id, "input_required")
                if [list(asking["inputRequests"])] == keys_seen[-1:]:
                    await trio.sleep(0.01)  # the answer to this one is on its way
                    continue
                keys_seen.append(list(asking["inputRequests"]))
                (key,) = asking["inputRequests"]
                response = {key: {"action": "accept"}}
                await alice.ok("tasks/update", {"taskId": task_id, "inputResponses": response})
        assert keys_seen == [["same"], ["same.2"]]
        await alice.until(task_id, "completed")
        nursery.cancel_scope.cancel()


async def _discard(data: bytes) -> None:
    return None


# -- the runner -------------------------------------------------------------------------------


async def test_start_without_a_running_runner_is_503(store: MemorySessionStore) -> None:
    alice = Peer(make_dispatcher(TaskRunner(store)), "alice")
    error = await alice.error("tools/call", {"name": "slow", "task": {}})
    assert error["code"] == ServiceUnavailable.jsonrpc_code and "not being run" in error["message"]


async def test_no_runner_means_no_tasks_methods_and_inline_calls() -> None:
    alice = Peer(make_dispatcher(None), "alice")
    assert (await alice.error("tasks/get", {"taskId": "t"}))["code"] == -32601
    assert "content" in await alice.ok("tools/call", {"name": "slow", "task": {}})


async def test_a_shutdown_records_running_tasks_as_failed(store: MemorySessionStore) -> None:
    runner = TaskRunner(store)
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        alice = Peer(make_dispatcher(runner), "alice")
        task_id = await alice.start("slow", {"seconds": 60})
        await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert "slow" in cleanups
    stored = await store.load_task("alice", task_id)
    assert stored is not None
    state = TaskState.from_dict(stored.data)
    assert state.status == "failed" and state.error is not None
    assert "shut down" in state.error["message"]


async def test_a_cancel_served_by_another_instance_reaches_the_tool(
    store: MemorySessionStore,
) -> None:
    here = TaskRunner(store, watch_interval_s=0.02)
    there = TaskRunner(store)  # another instance sharing the store
    async with trio.open_nursery() as nursery:
        await nursery.start(here.run)
        await nursery.start(there.run)
        task_id = await Peer(make_dispatcher(here), "alice").start("slow", {"seconds": 60})
        elsewhere = Peer(make_dispatcher(there), "alice")
        assert (await elsewhere.ok("tasks/cancel", {"taskId": task_id}))["status"] == "cancelled"
        with trio.fail_after(2):
            while "slow" not in cleanups:
                await trio.sleep(0.01)
        assert here.running == 0
        nursery.cancel_scope.cancel()


async def test_status_changes_are_told_and_heard_by_the_principal_only(
    store: MemorySessionStore,
) -> None:
    told: list[tuple[str, str]] = []
    runner = TaskRunner(store, on_status=lambda p, s: told.append((p, s.status)))
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        d = make_dispatcher(runner)
        alice = Peer(d, "alice", MODERN)
        task_id = await alice.start("gated")
        assert await runner.owned("alice", [task_id, task_id, "nope"]) == [task_id]
        assert await runner.owned("bob", [task_id]) == []
        with (
            runner.subscribe("alice", [task_id]) as mine,
            runner.subscribe("bob", [task_id]) as theirs,
        ):
            gate["event"].set()
            with trio.fail_after(2):
                heard = await mine.receive()
            assert heard["taskId"] == task_id and heard["status"] == "completed"
            assert heard["result"]["content"]
            with pytest.raises(trio.WouldBlock):
                theirs.receive_nowait()
        assert told == [("alice", "completed")]
        assert not runner._subscribers  # unsubscribed on the way out
        nursery.cancel_scope.cancel()


async def test_a_result_that_is_not_json_fails_the_task(runner: TaskRunner) -> None:
    d = make_dispatcher(runner)
    session = McpSession(d, modern=True, principal_id="alice")
    call = Call(
        session, Request(1, "tools/call", {}), _discard, {}, meta=mcp.ModernMeta(MODERN, EXT)
    )

    async def odd(handle: TaskHandle) -> dict[str, Any]:
        return {"content": [], "isError": False, "weird": object()}

    tool = SimpleNamespace(name="odd", task_support="optional")
    task_id = (await runner.start(session, call, tool, {}, odd))["taskId"]
    failed = await Peer(d, "alice", MODERN).until(task_id, "failed")
    assert failed["error"] == {"code": -32603, "message": "internal error"}


def test_the_runner_refuses_nonsense_settings(store: MemorySessionStore) -> None:
    settings: list[dict[str, Any]] = [
        {"default_ttl_s": 0},
        {"default_ttl_s": 10, "max_ttl_s": 5},
        {"max_tasks_per_principal": 0},
        {"poll_interval_ms": 0},
        {"watch_interval_s": 0},
    ]
    for kwargs in settings:
        with pytest.raises(ValueError):
            TaskRunner(store, **kwargs)


# -- deferred creation (2026-07-28: the server decides when a call becomes a task) ------------


def modern_call(d: Dispatcher, principal: str = "alice") -> tuple[McpSession, Call]:
    session = McpSession(d, modern=True, principal_id=principal)
    meta = mcp.ModernMeta(MODERN, CAPS)
    return session, Call(session, Request(1, "tools/call", {}), _discard, {}, meta=meta)


TOOL = SimpleNamespace(name="deferred", task_support="optional")


async def test_a_deferred_call_that_ends_first_answers_inline_and_leaves_no_task(
    runner: TaskRunner, store: MemorySessionStore
) -> None:
    session, call = modern_call(make_dispatcher(runner))

    async def quick(handle: TaskHandle) -> dict[str, Any]:
        assert not handle.is_task
        return mcp.tool_call_result("quick", MODERN)

    result = await runner.start(session, call, TOOL, {}, quick, defer_s=math.inf)
    assert result == {"content": [{"type": "text", "text": "quick"}], "isError": False}
    assert store.task_count() == 0 and runner.running == 0

    async def refused(handle: TaskHandle) -> dict[str, Any]:
        raise mcp.MissingClientCapability("roots")

    with pytest.raises(mcp.MissingClientCapability):  # a protocol error stays the call's
        await runner.start(session, call, TOOL, {}, refused, defer_s=math.inf)
    assert store.task_count() == 0


async def test_a_tool_gathers_input_inline_then_detaches_into_a_task(
    runner: TaskRunner, store: MemorySessionStore
) -> None:
    d = make_dispatcher(runner)
    session, call = modern_call(d)
    inline_asked: list[str] = []

    async def inline(requests: dict[str, Any]) -> dict[str, Any]:
        inline_asked.extend(requests)  # the request's own way (MRTR), before the task exists
        return {key: {"action": "accept", "content": {"name": "Alice"}} for key in requests}

    async def escalate(handle: TaskHandle) -> dict[str, Any]:
        context = ToolContext(
            client_capabilities={"elicitation": {}}, input_sink=handle.input_sink(inline)
        )
        name = (await context.elicit("Your name?", key="user_name")).content["name"]
        await handle.detach()
        assert handle.is_task
        await gate["event"].wait()
        later = await context.elicit("Sure?", key="sure")  # a task now: tasks/update answers
        return mcp.tool_call_result(f"Hello, {name} ({later.action})", MODERN)

    created = await runner.start(session, call, TOOL, {}, escalate, defer_s=math.inf)
    assert created["resultType"] == "task" and inline_asked == ["user_name"]
    assert "requestState" not in created and "inputRequests" not in created
    alice = Peer(d, "alice", MODERN)
    assert (await alice.ok("tasks/get", {"taskId": created["taskId"]}))["status"] == "working"
    gate["event"].set()
    asking = await alice.until(created["taskId"], "input_required")
    assert list(asking["inputRequests"]) == ["sure"]
    response = {"sure": {"action": "accept", "content": {}}}
    await alice.ok("tasks/update", {"taskId": created["taskId"], "inputResponses": response})
    done = await alice.until(created["taskId"], "completed")
    assert done["result"]["content"][0]["text"] == "Hello, Alice (accept)"


async def test_a_deferred_call_still_running_after_the_grace_becomes_a_task(
    runner: TaskRunner,
) -> None:
    d = make_dispatcher(runner)
    session, call = modern_call(d)

    async def slow(handle: TaskHandle) -> dict[str, Any]:
        await gate["event"].wait()
        return mcp.tool_call_result("late", MODERN)

    created = await runner.start(session, call, TOOL, {}, slow, defer_s=0.02)
    assert created["resultType"] == "task"
    gate["event"].set()
    done = await Peer(d, "alice", MODERN).until(created["taskId"], "completed")
    assert done["result"]["content"][0]["text"] == "late"


async def test_a_deferred_call_goes_with_its_request_until_it_is_a_task(
    runner: TaskRunner, store: MemorySessionStore
) -> None:
    session, call = modern_call(make_dispatcher(runner))

    async def forever(handle: TaskHandle) -> dict[str, Any]:
        try:
            await trio.sleep_forever()
        finally:
            cleanups.append("forever")
        raise AssertionError("unreachable")

    with trio.move_on_after(0.05):  # the client went away before the call became a task
        await runner.start(session, call, TOOL, {}, forever, defer_s=math.inf)
    with trio.fail_after(2):
        while "forever" not in cleanups:
            await trio.sleep(0.01)
    assert store.task_count() == 0


async def test_a_call_that_cannot_become_a_task_is_refused_and_stopped(
    store: MemorySessionStore,
) -> None:
    runner = TaskRunner(store, max_tasks_per_principal=1)
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        session, call = modern_call(make_dispatcher(runner))
        await store.create_task("alice", "held", {"x": 1}, 60, limit=1)

        async def slow(handle: TaskHandle) -> dict[str, Any]:
            try:
                await trio.sleep_forever()
            finally:
                cleanups.append("slow")
            raise AssertionError("unreachable")

        with pytest.raises(TooManyRequests):
            await runner.start(session, call, TOOL, {}, slow, defer_s=0.01)
        with trio.fail_after(2):
            while "slow" not in cleanups:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
