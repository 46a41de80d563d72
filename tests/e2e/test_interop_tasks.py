"""Durable tasks as the official MCP Python SDK client (``mcp`` 2.3.0) drives them, against the
app of test_tasks_wire.py (``reindex``, ``explode``, ``archive``), on ``/mcp``.

What the SDK offers for tasks, per revision (and so what these tests use):

* 2025-11-25 (``Client(mode="legacy")``): the task types (``mcp_types.GetTaskRequest``,
  ``GetTaskPayloadRequest``, ``ListTasksRequest``, ``CancelTaskRequest`` and their results),
  sent with ``ClientSession.send_request``; ``Tool.execution.task_support`` and
  ``capabilities.tasks`` parsed. No task-augmented ``call_tool``: ``send_request`` validates
  every ``tools/call`` answer at 2025-11-25 as a ``CallToolResult``, so the ``CreateTaskResult``
  would be refused. That one call goes through the session's dispatcher
  (``send_raw_request``), and its answer is parsed with ``mcp_types.CreateTaskResult``.
* 2026-07-28 (``mode="auto"``): no built-in tasks extension, but the SDK's extension interface:
  a ``ClientExtension`` for ``io.modelcontextprotocol/tasks`` (advertised in every request's
  ``_meta``) with a ``ResultClaim`` for ``resultType: "task"``. ``session.call_tool(...,
  allow_claimed=True)`` returns the claimed ``CreateTask``; ``Client.call_tool`` resolves it
  through the claim (polling ``tasks/get``) into the tool's ``CallToolResult``. ``tasks/get`` and
  ``tasks/cancel`` are ``Request`` subclasses whose ``name_param = "taskId"`` makes the SDK send
  ``Mcp-Name``.

Each revision: a task started and polled to its result, one cancelled (the tool's ``finally``
sees the cancellation), and one whose result is fetched after the client has gone, by a new
client with the same token. The SDK runs on anyio, so under pytest-trio it shares Trio's loop
with the server.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

import httpx2
import mcp_types as types
import pytest
import trio
from mcp import Client
from mcp.client.extension import ClaimContext, ClientExtension, ResultClaim
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import MCP_DEFAULT_SSE_READ_TIMEOUT
from mcp.shared.exceptions import MCPError
from mcp_types import Result

from tests.e2e.test_tasks_wire import (
    CANCELLED_MESSAGE,
    DEFAULT_TTL_MS,
    LONG,
    RELATED,
    TASKS,
    TasksApp,
    reindexed,
    start_app,
)
from tests.helpers import AUTH, bound_tests, wait_for

TEST_TIMEOUT_S = 15
HANDSHAKE = "2025-11-25"
MODERN = "2026-07-28"
TERMINAL = ("completed", "failed", "cancelled")


@pytest.fixture
async def app(nursery: trio.Nursery) -> TasksApp:
    return await start_app(nursery)


# -- the 2026-07-28 extension, through the SDK's extension interface ------------------------------


class CreateTask(Result):
    """The flat CreateTaskResult of the extension."""

    result_type: Literal["task"] = "task"
    task_id: str
    status: str
    created_at: str
    last_updated_at: str
    ttl_ms: int | None = None
    poll_interval_ms: int | None = None
    status_message: str | None = None


class DetailedTask(Result):
    """``tasks/get`` of the extension: the task, with its result or error inlined."""

    task_id: str
    status: str
    created_at: str
    last_updated_at: str
    ttl_ms: int | None = None
    poll_interval_ms: int | None = None
    status_message: str | None = None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None


class GetTask(types.Request[types.GetTaskRequestParams, Literal["tasks/get"]]):
    method: Literal["tasks/get"] = "tasks/get"
    params: types.GetTaskRequestParams
    name_param = "taskId"  # SEP-2663: Mcp-Name carries the task id


class CancelTask(types.Request[types.CancelTaskRequestParams, Literal["tasks/cancel"]]):
    method: Literal["tasks/cancel"] = "tasks/cancel"
    params: types.CancelTaskRequestParams
    name_param = "taskId"


async def modern_get(client: Client, task_id: str) -> DetailedTask:
    request = GetTask(params=types.GetTaskRequestParams(task_id=task_id))
    return await client.session.send_request(request, DetailedTask)


async def modern_until(client: Client, task_id: str, status: str) -> DetailedTask:
    with trio.fail_after(5):
        while True:
            task = await modern_get(client, task_id)
            if task.status == status:
                return task
            assert task.status == "working", task
            await trio.sleep(0.02)


class Tasks(ClientExtension):
    """The tasks extension: a call answered with a task is polled until it ends."""

    identifier = TASKS

    def __init__(self) -> None:
        self.resolved: list[str] = []

    def claims(self) -> Any:
        return [ResultClaim(result_type="task", model=CreateTask, resolve=self.resolve)]

    async def resolve(self, created: CreateTask, ctx: ClaimContext) -> types.CallToolResult:
        self.resolved.append(created.task_id)
        with trio.fail_after(5):
            while True:
                request = GetTask(params=types.GetTaskRequestParams(task_id=created.task_id))
                task = await ctx.session.send_request(request, DetailedTask)
                if task.status in TERMINAL:
                    assert task.result is not None, task
                    return types.CallToolResult.model_validate(task.result)
                await trio.sleep(0.02)


# -- connecting -----------------------------------------------------------------------------------


@asynccontextmanager
async def connect(
    app: TasksApp, revision: str, *, extension: ClientExtension | None = None
) -> AsyncIterator[Client]:
    timeout = httpx2.Timeout(10, read=MCP_DEFAULT_SSE_READ_TIMEOUT)
    options: dict[str, Any] = {"mode": "legacy" if revision == HANDSHAKE else "auto"}
    if extension is not None:
        options["extensions"] = [extension]
    async with httpx2.AsyncClient(headers=AUTH, timeout=timeout) as http:
        transport = streamable_http_client(app.url + "/mcp", http_client=http)
        async with Client(transport, read_timeout_seconds=10, **options) as client:
            assert client.protocol_version == revision
            yield client


# -- 2025-11-25 -----------------------------------------------------------------------------------


async def legacy_start(client: Client, tool: str, arguments: dict[str, Any]) -> types.Task:
    params = {"name": tool, "arguments": arguments, "task": {"ttl": 60_000}}
    raw = await client.session._dispatcher.send_raw_request("tools/call", params, {})
    return types.CreateTaskResult.model_validate(raw).task


async def legacy_get(client: Client, task_id: str) -> types.GetTaskResult:
    request = types.GetTaskRequest(params=types.GetTaskRequestParams(task_id=task_id))
    return await client.session.send_request(request, types.GetTaskResult)


async def legacy_result(client: Client, task_id: str) -> types.CallToolResult:
    params = types.GetTaskPayloadRequestParams(task_id=task_id)
    request = types.GetTaskPayloadRequest(params=params)
    return await client.session.send_request(request, types.CallToolResult)


async def legacy_until(client: Client, task_id: str, status: str) -> types.GetTaskResult:
    with trio.fail_after(5):
        while True:
            task = await legacy_get(client, task_id)
            if task.status == status:
                return task
            assert task.status == "working", task
            await trio.sleep(0.02)


def check_result(result: types.CallToolResult, corpus: str, documents: int) -> None:
    expected = reindexed(corpus, documents)
    assert result.is_error is False
    assert [block.model_dump() for block in result.content] == [
        {**expected["content"][0], "annotations": None, "meta": None}
    ]
    assert result.structured_content == expected["structuredContent"]


async def test_2025_the_sdk_sees_the_declarations(app: TasksApp) -> None:
    async with connect(app, HANDSHAKE) as client:
        tasks = client.server_capabilities.tasks
        assert tasks is not None
        assert tasks.model_dump(exclude_none=True) == {
            "list": {},
            "cancel": {},
            "requests": {"tools": {"call": {}}},
        }
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        assert tools["reindex"].execution is not None
        assert tools["reindex"].execution.task_support == "optional"
        assert tools["archive"].execution is not None
        assert tools["archive"].execution.task_support == "required"
        assert tools["plain"].execution is None
        # A required tool called the plain way: the spec's -32601.
        with pytest.raises(MCPError) as refused:
            await client.call_tool("archive", {"label": "sdk"})
        assert refused.value.error.code == -32601
        assert refused.value.error.message == "archive must be called as a task (params.task)"


async def test_2025_a_task_started_polled_and_its_result_fetched(app: TasksApp) -> None:
    async with connect(app, HANDSHAKE) as client:
        task = await legacy_start(client, "reindex", {"corpus": "s1", "steps": 5, "step_s": 0.04})
        assert task.status == "working"
        assert task.ttl == 60_000 and task.poll_interval == 1000
        got = await legacy_get(client, task.task_id)
        assert (got.task_id, got.status, got.created_at) == (
            task.task_id,
            "working",
            task.created_at,
        )
        done = await legacy_until(client, task.task_id, "completed")
        assert done.created_at == task.created_at and done.status_message is None
        result = await legacy_result(client, task.task_id)
        check_result(result, "s1", 50)
        assert result.meta == {RELATED: {"taskId": task.task_id}}
        listed = await client.session.send_request(types.ListTasksRequest(), types.ListTasksResult)
        assert [(t.task_id, t.status) for t in listed.tasks] == [(task.task_id, "completed")]
        assert listed.next_cursor is None
    assert app.ended == {"s1": "returned"}


async def test_2025_a_task_cancelled_through_the_sdk(app: TasksApp) -> None:
    async with connect(app, HANDSHAKE) as client:
        task = await legacy_start(client, "reindex", {"corpus": "s2", **LONG})
        await wait_for(lambda: app.steps["s2"] >= 2, 5, "the tool to be running")
        request = types.CancelTaskRequest(
            params=types.CancelTaskRequestParams(task_id=task.task_id)
        )
        cancelled = await client.session.send_request(request, types.CancelTaskResult)
        at_cancel = app.steps["s2"]
        assert (cancelled.task_id, cancelled.status) == (task.task_id, "cancelled")
        assert cancelled.status_message == CANCELLED_MESSAGE
        await wait_for(lambda: "s2" in app.ended, 3, "the tool to end")
        assert app.ended == {"s2": "cancelled"}
        assert app.steps["s2"] <= at_cancel + 1  # stopped at once
        assert (await legacy_get(client, task.task_id)).status == "cancelled"
        with pytest.raises(MCPError) as no_result:
            await legacy_result(client, task.task_id)
        assert no_result.value.error.code == -32602
        assert (
            no_result.value.error.message == f"task {task.task_id} was cancelled; it has no result"
        )
        with pytest.raises(MCPError) as again:
            await client.session.send_request(request, types.CancelTaskResult)
        assert again.value.error.code == -32602


async def test_2025_the_result_is_fetched_by_a_new_client_after_the_first_has_gone(
    app: TasksApp,
) -> None:
    async with connect(app, HANDSHAKE) as first:
        task = await legacy_start(first, "reindex", {"corpus": "s3", "steps": 10, "step_s": 0.05})
        first_session = first.session
    assert "s3" not in app.ended  # still running, its client gone
    async with connect(app, HANDSHAKE) as second:
        assert second.session is not first_session
        result = await legacy_result(second, task.task_id)  # waits for the end
        check_result(result, "s3", 100)
        assert result.meta == {RELATED: {"taskId": task.task_id}}
        done = await legacy_get(second, task.task_id)
        assert (done.status, done.created_at) == ("completed", task.created_at)
    assert app.ended == {"s3": "returned"}


# -- 2026-07-28 -----------------------------------------------------------------------------------


async def test_2026_call_tool_resolves_the_task_through_the_extension(app: TasksApp) -> None:
    tasks = Tasks()
    async with connect(app, MODERN, extension=tasks) as client:
        extensions = client.server_capabilities.extensions
        assert extensions == {TASKS: {}}
        result = await client.call_tool("reindex", {"corpus": "e1", "steps": 4, "step_s": 0.03})
        check_result(result, "e1", 40)
    (task_id,) = tasks.resolved  # it was a task, polled to its end by the claim
    assert app.ended == {"e1": "returned"}
    assert task_id


async def test_2026_a_task_started_and_polled(app: TasksApp) -> None:
    async with connect(app, MODERN, extension=Tasks()) as client:
        created = await client.session.call_tool(
            "reindex", {"corpus": "e2", "steps": 5, "step_s": 0.04}, allow_claimed=True
        )
        assert isinstance(created, CreateTask)
        assert created.status == "working"
        assert created.ttl_ms == DEFAULT_TTL_MS and created.poll_interval_ms == 1000
        working = await modern_get(client, created.task_id)
        assert (working.status, working.result) == ("working", None)
        done = await modern_until(client, created.task_id, "completed")
        assert done.created_at == created.created_at and done.error is None
        assert done.result is not None
        check_result(types.CallToolResult.model_validate(done.result), "e2", 50)
    assert app.ended == {"e2": "returned"}


async def test_2026_a_task_cancelled_through_the_sdk(app: TasksApp) -> None:
    async with connect(app, MODERN, extension=Tasks()) as client:
        created = await client.session.call_tool(
            "reindex", {"corpus": "e3", **LONG}, allow_claimed=True
        )
        assert isinstance(created, CreateTask)
        await wait_for(lambda: app.steps["e3"] >= 2, 5, "the tool to be running")
        request = CancelTask(params=types.CancelTaskRequestParams(task_id=created.task_id))
        ack = await client.session.send_request(request, types.EmptyResult)
        at_cancel = app.steps["e3"]
        assert isinstance(ack, types.EmptyResult)
        await wait_for(lambda: "e3" in app.ended, 3, "the tool to end")
        assert app.ended == {"e3": "cancelled"}
        assert app.steps["e3"] <= at_cancel + 1  # stopped at once
        cancelled = await modern_get(client, created.task_id)
        assert cancelled.status == "cancelled"
        assert cancelled.status_message == CANCELLED_MESSAGE
        assert cancelled.result is None and cancelled.error is None


async def test_2026_the_result_is_read_by_a_new_client_after_the_first_has_gone(
    app: TasksApp,
) -> None:
    async with connect(app, MODERN, extension=Tasks()) as first:
        created = await first.session.call_tool(
            "reindex", {"corpus": "e4", "steps": 10, "step_s": 0.05}, allow_claimed=True
        )
        assert isinstance(created, CreateTask)
    assert "e4" not in app.ended
    async with connect(app, MODERN, extension=Tasks()) as second:
        done = await modern_until(second, created.task_id, "completed")
        assert done.result is not None
        check_result(types.CallToolResult.model_validate(done.result), "e4", 100)
    assert app.ended == {"e4": "returned"}


async def test_2026_without_the_extension_the_tool_runs_inline(app: TasksApp) -> None:
    async with connect(app, MODERN) as client:
        result = await client.call_tool("reindex", {"corpus": "e5"})
        check_result(result, "e5", 30)
        assert app.ended == {"e5": "returned"}  # before the answer: it ran in the call
        with pytest.raises(MCPError) as refused:
            await client.call_tool("archive", {"label": "e6"})
        assert refused.value.error.code == -32021
        assert refused.value.error.message == (
            f"archive runs only as a task: declare the client capability extensions.{TASKS}"
        )


bound_tests(globals(), TEST_TIMEOUT_S)
