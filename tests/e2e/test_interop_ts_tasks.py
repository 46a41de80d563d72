"""Durable tasks driven by the official MCP TypeScript SDK v2 client (``@modelcontextprotocol/client``
2.4.0, pinned in tests/interop_ts/package.json) over ``/mcp``, against the app of
test_tasks_wire.py.

The SDK has no task runtime (its typed surface leaves the task methods out; ``callTool``
refuses a ``CreateTaskResult`` at 2025-11-25 and ``resultType: "task"`` at 2026-07-28), so
tests/interop_ts/tasks.mjs drives tasks through its raw request API,
``client.request({method, params}, resultSchema)``, with the SDK's own task schemas
(``specTypeSchemas``) at 2025-11-25; at 2026-07-28 the task is started by ``callTool`` itself and
its id read from the answer the SDK refused (through the transport's ``fetch``), then
``tasks/get`` and ``tasks/cancel`` go out through ``client.request`` (the SDK sets ``Mcp-Name``
from ``params.taskId``). Once per revision:

* a task started and polled to its result (2025-11-25: ``tasks/result``, ``tasks/list``);
* a long one cancelled: the script says it is ready, the host waits until the tool is seen
  running and answers on stdin, the script cancels, and the tool's ``finally`` saw the
  cancellation;
* a failing tool (``failed`` at 2025-11-25; ``completed`` with an ``isError`` result at
  2026-07-28);
* one whose result is read by a new client (same token) after the first has closed;
* no task asked for (2025-11-25: no ``params.task``; 2026-07-28: a client without the
  extension): the tool runs inline, a ``required`` one is -32601 / -32021.

Each revision runs once (a module-scoped fixture with its own ``trio.run``: the server in
process, Node a subprocess on loopback, both under one deadline: tests/interop_ts_harness.py). A
missing Node or npm fails the tests, it does not skip.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
import trio

from tests.e2e.test_tasks_wire import (
    CANCELLED_MESSAGE,
    DEFAULT_TTL_MS,
    POLL_MS,
    RELATED,
    SERVER_INFO,
    TASK_ID,
    TASKS,
    TasksApp,
    build_app,
    reindexed,
    tool_error,
)
from tests.helpers import wait_for
from tests.interop_ts_harness import REVISIONS, ScriptRun, run_script

RUN_TIMEOUT_S = 25  # the whole exchange (a few seconds when all is well)
STEP_TIMEOUT_MS = 5000  # one request, or one wait, in the script


@dataclass(repr=False)
class Run(ScriptRun):
    app: TasksApp
    steps_at_cancel: int = 0
    """How many steps the long tool had finished when the host said go."""
    ended_at_exit: dict[str, str] = field(default_factory=dict)
    steps_at_exit: dict[str, int] = field(default_factory=dict)
    """``app.ended`` and ``app.steps`` when the script exited, before the server stops (which
    would cancel whatever still runs, and so look like a cancellation)."""

    def task_id(self, name: str) -> str:
        task_id: str = self.step(name)["task"]["taskId"]
        return task_id


async def _on_ready(run: Run, proc: trio.Process, ready: dict[str, Any]) -> None:
    """Answer a ready line once its tool runs."""
    assert proc.stdin is not None
    corpus = ready["corpus"]
    await wait_for(lambda: run.app.steps[corpus] >= 2, 5, f"{corpus} to run")
    run.steps_at_cancel = run.app.steps[corpus]
    await proc.stdin.send_all(b"go\n")


def _on_exit(run: Run) -> None:
    run.ended_at_exit = dict(run.app.ended)
    run.steps_at_exit = dict(run.app.steps)


@pytest.fixture(scope="module", params=REVISIONS)
def run(request: pytest.FixtureRequest) -> Run:
    revision = request.param
    return run_script(
        lambda: Run(revision, build_app()),
        "tasks.mjs",
        run_timeout_s=RUN_TIMEOUT_S,
        step_timeout_ms=STEP_TIMEOUT_MS,
        on_ready=_on_ready,
        stdin=True,
        on_exit=_on_exit,
    )


def check_created(run: Run, name: str) -> dict[str, Any]:
    """The task a ``start`` step got, in the revision's CreateTaskResult shape."""
    started = run.step(name)
    task: dict[str, Any] = started["task"]
    assert TASK_ID.match(task["taskId"]), task
    common = {
        "taskId": task["taskId"],
        "status": "working",
        "createdAt": task["createdAt"],
        "lastUpdatedAt": task["createdAt"],
    }
    if run.modern:
        # callTool refused it, and the refused answer was the flat CreateTaskResult.
        assert started["refused"] == {
            "name": "SdkError",
            "message": "Unsupported result type 'task' for tools/call",
            "code": "UNSUPPORTED_RESULT_TYPE",
            "data": {"resultType": "task", "method": "tools/call"},
        }
        assert task == {
            **common,
            "resultType": "task",
            "ttlMs": DEFAULT_TTL_MS,
            "pollIntervalMs": POLL_MS,
            "_meta": SERVER_INFO,
        }
    else:
        assert set(started) == {"task"}
        assert task == {**common, "ttl": 60_000, "pollInterval": POLL_MS}
    return task


def without_meta(value: dict[str, Any]) -> dict[str, Any]:
    """A 2026-07-28 result as the SDK hands it over (``resultType`` lifted), its ``_meta``
    checked and dropped."""
    assert value.pop("_meta") == SERVER_INFO
    assert "resultType" not in value
    return value


# -- connection and declarations ------------------------------------------------------------------


def test_connects_and_sees_the_servers_task_declarations(run: Run) -> None:
    connect = run.step("connect")
    assert connect["protocolVersion"] == run.revision
    capabilities = connect["capabilities"]
    if run.modern:
        assert capabilities["extensions"] == {TASKS: {}}
        assert "tasks" not in capabilities
    else:
        assert capabilities["tasks"] == {
            "list": {},
            "cancel": {},
            "requests": {"tools": {"call": {}}},
        }
    optional = None if run.modern else {"taskSupport": "optional"}
    assert run.step("tools_list") == {
        "reindex": optional,
        "explode": optional,
        "needs_roots": optional,
        "archive": None if run.modern else {"taskSupport": "required"},
        "plain": None,
    }
    assert run.step("close") is True
    assert run.returncode == 0, run.stderr


def test_the_typed_call_tool_has_no_task_runtime(run: Run) -> None:
    if run.modern:
        # callTool refuses resultType "task" (checked on each start by check_created).
        check_created(run, "started")
        assert "call_tool_with_task" not in run.result
    else:
        error = run.error("call_tool_with_task")
        assert error["code"] == "INVALID_RESULT"
        assert "content is required when the body carries 'task'" in error["message"]
        assert "ts-typed" in run.app.started  # the server made it a task all the same


# -- 1. started and polled ------------------------------------------------------------------------


def test_a_task_started_and_polled_to_its_result(run: Run) -> None:
    created = check_created(run, "started")
    first = run.step("first_get")
    polled = run.step("polled")
    task = polled["task"]
    assert polled["seen"][-1] == "completed"
    assert set(polled["seen"]) <= {"working", "completed"}
    expected_time = {"createdAt": created["createdAt"], "lastUpdatedAt": task["lastUpdatedAt"]}
    if run.modern:
        assert without_meta(first) == {
            k: v for k, v in created.items() if k not in ("resultType", "_meta")
        }
        assert without_meta(task) == {
            "taskId": created["taskId"],
            "status": "completed",
            **expected_time,
            "ttlMs": DEFAULT_TTL_MS,
            "pollIntervalMs": POLL_MS,
            "result": reindexed("ts-poll", 50),
        }
    else:
        assert first == created
        assert task == {**created, "status": "completed", **expected_time}
        assert run.step("payload") == {
            **reindexed("ts-poll", 50),
            "_meta": {RELATED: {"taskId": created["taskId"]}},
        }
        listed = run.step("listed")["tasks"]
        assert len(listed) == 2  # the typed call's task, then this one
        assert listed[1] == task
    assert run.app.ended["ts-poll"] == "returned"


# -- 2. cancelled ----------------------------------------------------------------------------------


def test_a_cancel_reaches_the_running_tool(run: Run) -> None:
    created = check_created(run, "cancel_started")
    assert run.ready == [{"event": "ready", "waiting": "cancel", "corpus": "ts-cancel"}]
    assert run.step("go_ahead") == "go"
    cancelled = run.step("cancelled")
    after = run.step("after_cancel")
    if run.modern:
        assert without_meta(cancelled) == {}  # the extension's empty ack
        after = without_meta(after)
    else:
        assert cancelled == {
            **created,
            "status": "cancelled",
            "statusMessage": CANCELLED_MESSAGE,
            "lastUpdatedAt": cancelled["lastUpdatedAt"],
        }
        assert run.error("payload_of_cancelled") == {
            "name": "ProtocolError",
            "message": f"task {created['taskId']} was cancelled; it has no result",
            "code": -32602,
        }
    assert after["status"] == "cancelled"
    assert after["statusMessage"] == CANCELLED_MESSAGE
    assert "result" not in after and "error" not in after
    # The tool's own finally saw trio.Cancelled while the script ran, after it had run a while,
    # and it stopped there (the script ran on for a second or more after its cancel).
    assert run.ended_at_exit["ts-cancel"] == "cancelled"
    assert 2 <= run.steps_at_cancel <= run.steps_at_exit["ts-cancel"] < run.steps_at_cancel + 25


# -- 3. failing ------------------------------------------------------------------------------------


def test_a_failing_tool(run: Run) -> None:
    check_created(run, "failing_started")
    failing = run.step("failing")["task"]
    message = "Tool execution failed: index ts is corrupt"
    assert failing["statusMessage"] == message
    if run.modern:
        assert failing["status"] == "completed"  # the extension: failed is for JSON-RPC errors
        assert failing["result"] == tool_error("index ts is corrupt")
    else:
        assert failing["status"] == "failed"


# -- 4. after the client has gone -----------------------------------------------------------------


def test_the_result_is_read_by_a_new_client_after_the_first_has_closed(run: Run) -> None:
    created = check_created(run, "durable_started")
    assert run.step("durable_before_close")["status"] == "working"  # unfinished when it went
    first, second = run.step("first_closed"), run.step("reconnected")
    if run.modern:
        assert first == second == {"sessionId": None}  # no sessions at 2026-07-28
    else:
        assert isinstance(first["sessionId"], str) and isinstance(second["sessionId"], str)
        assert first["sessionId"] != second["sessionId"]
        assert run.step("durable_payload") == {
            **reindexed("ts-durable", 100),
            "_meta": {RELATED: {"taskId": created["taskId"]}},
        }
    done = run.step("durable_done")["task"]
    assert done["taskId"] == created["taskId"] and done["status"] == "completed"
    if run.modern:
        assert done["result"] == reindexed("ts-durable", 100)
    assert run.app.ended["ts-durable"] == "returned"


# -- 5. no task asked for -------------------------------------------------------------------------


def test_without_a_task_the_tool_runs_inline_and_a_required_one_is_refused(run: Run) -> None:
    assert run.step("plain_connected") is True
    inline = run.step("inline_call")
    if run.modern:
        inline = without_meta(inline)
    assert inline == reindexed("ts-inline")
    assert run.app.ended["ts-inline"] == "returned"
    if run.modern:
        assert run.error("required_call") == {
            "name": "MissingRequiredClientCapabilityError",
            "message": "archive runs only as a task: declare the client capability"
            f" extensions.{TASKS}",
            "code": -32021,
            "data": {"requiredCapabilities": {"extensions": {TASKS: {}}}},
        }
    else:
        assert run.error("required_call") == {
            "name": "ProtocolError",
            "message": "archive must be called as a task (params.task)",
            "code": -32601,
        }
    assert run.step("plain_close") is True


def test_the_sdk_names_the_task_in_mcp_name(run: Run) -> None:
    posts = [p for p in run.result["taskPosts"] if p["method"] != "tasks/list"]
    assert {p["method"] for p in posts} == (
        {"tasks/get", "tasks/cancel"}
        if run.modern
        else {"tasks/get", "tasks/cancel", "tasks/result"}
    )
    for post in posts:
        assert post["taskId"] is not None, post
        if run.modern:
            assert post["mcpName"] == post["taskId"], post
        else:
            assert post["mcpName"] is None, post  # a handshake-era request carries no Mcp-Name


# -- health ----------------------------------------------------------------------------------------


def test_the_sdk_reports_no_error(run: Run) -> None:
    assert run.result["clientErrors"] == []


def test_the_server_logs_no_error(run: Run) -> None:
    assert run.server_errors == []
