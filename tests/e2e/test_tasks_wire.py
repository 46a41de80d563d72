"""Durable tasks on the wire: raw httpx against a real server on loopback, exact messages.

The app (``build_app``, also served by test_interop_tasks.py and test_interop_ts_tasks.py):

* ``reindex(corpus, steps, step_s)`` (``task=True``): reports progress, sleeps ``steps`` times
  ``step_s``, returns ``{"corpus", "documents"}``; its ``finally`` records how it ended
  (``returned``, ``cancelled``: it saw ``trio.Cancelled``, or ``interrupted``) in ``app.ended``;
* ``explode(reason)`` (``task=True``): a tool execution error (an ``isError`` result);
* ``needs_roots()`` (``task=True``): a protocol error (-32021: the client lacks ``roots``);
* ``archive(label)`` (``task="required"``): runs only as a task;
* ``plain(text)``: no task support.

2025-11-25 (``/mcp`` sessions): ``tools/call`` with ``params.task`` answers ``CreateTaskResult``;
``tasks/get``, ``tasks/result`` (blocks until terminal, then the tool's own result or error),
``tasks/list`` (paged, oldest first), ``tasks/cancel`` (reaches the running tool);
``notifications/tasks/status`` on the creating session's GET stream; ``execution.taskSupport`` in
``tools/list``; -32601 for a ``required`` tool called without a task (and for a task on a tool
that forbids one); records keyed by principal (another one reads a missing task, -32602), bounded
per principal (-32000), expiring after their TTL; results fetched from a new session and
connection after the first is gone.

2026-07-28 (the ``io.modelcontextprotocol/tasks`` extension, declared in the request's
``_meta``): ``resultType: "task"``, ``tasks/get`` inlining the result or error, ``tasks/cancel``
(an empty ack), ``Mcp-Name`` mirroring ``taskId`` (400 / -32020 otherwise); without the extension
the tool runs inline and a ``required`` one is 400 / -32021.

"Cancellation reaches the tool" means its ``finally`` saw ``trio.Cancelled`` and it stopped at
once: at most one more step after the ``tasks/cancel`` answer (not at the runner's next re-read
of the record, a second later). A task's progress after its ``CreateTaskResult`` is dropped
(docs/mcp.md, "Not yet"), so only the task's own notifications are asserted on the GET stream.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest
import trio

from datapulse import Server, ToolContext
from datapulse.auth.verifier import Verifier
from datapulse.errors import ToolError
from datapulse.version import __version__
from tests.helpers import (
    BOTH,
    TOKEN,
    SSEReader,
    TwoUsers,
    bound_tests,
    client_of,
    make_config,
    next_message,
    note,
    rpc,
    serve_app,
    wait_for,
)

TEST_TIMEOUT_S = 10
HANDSHAKE = "2025-11-25"
OLDER = "2025-06-18"
MODERN = "2026-07-28"
TASKS = "io.modelcontextprotocol/tasks"
RELATED = "io.modelcontextprotocol/related-task"
SERVER_INFO = {"io.modelcontextprotocol/serverInfo": {"name": "datapulse", "version": __version__}}
DEFAULT_TTL_MS = 3_600_000  # --task-ttl's default, 1 h
MAX_TTL_MS = 86_400_000
POLL_MS = 1000
CANCELLED_MESSAGE = "The task was cancelled by request."
TASK_ID = re.compile(r"^[A-Za-z0-9_-]{32}$")  # secrets.token_urlsafe(24)
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
LONG = {"steps": 2000, "step_s": 0.02}  # 40 s: only cancellation (or a TTL) ends it in a test


# -- the app ------------------------------------------------------------------------------------


@dataclass
class TasksApp:
    server: Server
    url: str = ""
    port: int = 0
    started: list[str] = field(default_factory=list)
    """The corpora whose reindex began, in order."""
    steps: Counter[str] = field(default_factory=Counter)
    """Steps each reindex finished."""
    ended: dict[str, str] = field(default_factory=dict)
    """corpus -> how its reindex ended, written by its ``finally``."""


def build_app(*, verifier: Verifier | None = None, **overrides: Any) -> TasksApp:
    server = Server(make_config(**overrides), builtin_tools=False, verifier=verifier)
    app = TasksApp(server)

    @server.tool(task=True)
    async def reindex(
        corpus: str, context: ToolContext, steps: int = 3, step_s: float = 0.02
    ) -> dict[str, Any]:
        """Rebuild the index of a corpus, one step at a time (may run as a task)."""
        app.started.append(corpus)
        outcome = "interrupted"
        try:
            for step in range(steps):
                await context.report_progress(step + 1, steps, f"{corpus}: {step + 1}/{steps}")
                await trio.sleep(step_s)
                app.steps[corpus] += 1
            outcome = "returned"
            return {"corpus": corpus, "documents": 10 * steps}
        except trio.Cancelled:
            outcome = "cancelled"
            raise
        finally:
            app.ended[corpus] = outcome

    @server.tool(task=True)
    async def explode(reason: str) -> str:
        """Fails as a tool (an isError result)."""
        raise ToolError(f"index {reason} is corrupt")

    @server.tool(task=True)
    async def needs_roots(context: ToolContext) -> list[str]:
        """Fails as a protocol error unless the client has roots."""
        context.require_client_capability("roots")
        return [root["uri"] for root in await context.list_roots()]

    @server.tool(task="required")
    async def archive(label: str) -> str:
        """Runs only as a task."""
        return f"archived {label}"

    @server.tool()
    async def plain(text: str) -> str:
        """No task support."""
        return text.upper()

    return app


async def start_app(
    nursery: trio.Nursery, *, verifier: Verifier | None = None, **overrides: Any
) -> TasksApp:
    return await serve_app(nursery, build_app(verifier=verifier, **overrides))


@pytest.fixture
async def app(nursery: trio.Nursery) -> TasksApp:
    return await start_app(nursery)


# -- checks ---------------------------------------------------------------------------------------


def epoch(timestamp: str) -> float:
    assert TIMESTAMP.match(timestamp), timestamp
    parsed = datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%S.%fZ")
    return parsed.replace(tzinfo=UTC).timestamp()


def check_new_task(task: dict[str, Any], before: float, *, ttl: int, modern: bool = False) -> str:
    """A task as created: ``working``, its timestamps equal and now; returns its id."""
    task_id = task["taskId"]
    assert TASK_ID.match(task_id), task_id
    names = ("ttlMs", "pollIntervalMs") if modern else ("ttl", "pollInterval")
    assert task == {
        "taskId": task_id,
        "status": "working",
        "createdAt": task["createdAt"],
        "lastUpdatedAt": task["createdAt"],
        names[0]: ttl,
        names[1]: POLL_MS,
    }
    assert before - 1 <= epoch(task["createdAt"]) <= time.time() + 1
    return str(task_id)


def moved(
    created: dict[str, Any], now: dict[str, Any], status: str, message: str | None = None
) -> dict[str, Any]:
    """``created`` as it reads once it is ``status`` (its lastUpdatedAt taken from ``now``)."""
    assert epoch(now["lastUpdatedAt"]) >= epoch(created["createdAt"])
    expected = {**created, "status": status, "lastUpdatedAt": now["lastUpdatedAt"]}
    if message is not None:
        expected["statusMessage"] = message
    return expected


def reindexed(corpus: str, documents: int = 30) -> dict[str, Any]:
    """reindex's CallToolResult."""
    text = orjson.dumps({"corpus": corpus, "documents": documents}).decode()
    return {
        "content": [{"type": "text", "text": text}],
        "structuredContent": {"corpus": corpus, "documents": documents},
        "isError": False,
    }


def tool_error(text: str) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": text}], "isError": True}


def related(task_id: str) -> dict[str, Any]:
    return {RELATED: {"taskId": task_id}}


def not_found(task_id: str) -> dict[str, Any]:
    return {"code": -32602, "message": f"Failed to retrieve task: task not found: '{task_id}'"}


ROOTS_MESSAGE = "this request needs the client capability 'roots'"
ROOTS_ERROR: dict[str, Any] = {
    "code": -32021,
    "message": ROOTS_MESSAGE,
    "data": {"requiredCapabilities": {"roots": {}}},
}


# == 2025-11-25 ===================================================================================


@dataclass
class Legacy:
    """One initialized /mcp session: POSTs a request, checks the JSON-RPC envelope."""

    http: httpx.AsyncClient
    headers: dict[str, str]
    last_id: int = 0

    async def post(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        self.last_id += 1
        response = await self.http.post(
            "/mcp", headers=self.headers, json=rpc(method, params, self.last_id)
        )
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/json"
        body: dict[str, Any] = response.json()
        assert body["jsonrpc"] == "2.0" and body["id"] == self.last_id, body
        return body

    async def result(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        body = await self.post(method, params)
        assert set(body) == {"jsonrpc", "id", "result"}, body
        result: dict[str, Any] = body["result"]
        return result

    async def error(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        body = await self.post(method, params)
        assert set(body) == {"jsonrpc", "id", "error"}, body
        error: dict[str, Any] = body["error"]
        return error

    async def start(
        self, tool: str, arguments: dict[str, Any], task: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """A task-augmented tools/call: the ``task`` of its CreateTaskResult."""
        params = {"name": tool, "arguments": arguments, "task": {} if task is None else task}
        result = await self.result("tools/call", params)
        assert set(result) == {"task"}, result
        created: dict[str, Any] = result["task"]
        return created

    async def get(self, task_id: str) -> dict[str, Any]:
        return await self.result("tasks/get", {"taskId": task_id})

    async def until(self, task_id: str, status: str, timeout: float = 5) -> dict[str, Any]:
        """Poll tasks/get until the task is ``status`` (failing on another terminal status)."""
        with trio.fail_after(timeout):
            while True:
                task = await self.get(task_id)
                if task["status"] == status:
                    return task
                assert task["status"] == "working", task
                await trio.sleep(0.02)


def legacy_headers(
    token: str, session_id: str | None = None, version: str = HANDSHAKE
) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    headers["Accept"] = BOTH
    if session_id is not None:
        headers["Mcp-Session-Id"] = session_id
        headers["MCP-Protocol-Version"] = version
    return headers


async def open_legacy(
    http: httpx.AsyncClient,
    token: str = TOKEN,
    version: str = HANDSHAKE,
    capabilities: dict[str, Any] | None = None,
) -> tuple[Legacy, dict[str, Any]]:
    """An initialized session and its initialize result."""
    params = {"protocolVersion": version, "capabilities": capabilities or {}}
    params["clientInfo"] = {"name": "tasks-wire", "version": "1"}
    response = await http.post(
        "/mcp", headers=legacy_headers(token), json=rpc("initialize", params)
    )
    assert response.status_code == 200, response.text
    headers = legacy_headers(token, response.headers["mcp-session-id"], version)
    ack = await http.post("/mcp", headers=headers, json=note("notifications/initialized"))
    assert ack.status_code == 202
    result: dict[str, Any] = response.json()["result"]
    return Legacy(http, headers), result


@asynccontextmanager
async def get_stream(session: Legacy) -> AsyncIterator[SSEReader]:
    """The session's GET stream."""
    headers = {**session.headers, "Accept": "text/event-stream"}
    async with session.http.stream("GET", "/mcp", headers=headers) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        yield SSEReader(response)


# -- declarations -------------------------------------------------------------------------------


async def test_initialize_declares_the_tasks_capability_at_2025_11_25_only(app: TasksApp) -> None:
    async with client_of(app) as http:
        _, result = await open_legacy(http)
        assert result["capabilities"]["tasks"] == {
            "list": {},
            "cancel": {},
            "requests": {"tools": {"call": {}}},
        }
        _, older = await open_legacy(http, version=OLDER)
        assert older["protocolVersion"] == OLDER
        assert "tasks" not in older["capabilities"]
        assert "extensions" not in older["capabilities"]


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        pytest.param(
            HANDSHAKE,
            {
                "reindex": {"taskSupport": "optional"},
                "explode": {"taskSupport": "optional"},
                "needs_roots": {"taskSupport": "optional"},
                "archive": {"taskSupport": "required"},
                "plain": None,
            },
            id="2025-11-25",
        ),
        pytest.param(OLDER, dict.fromkeys(["reindex", "archive", "plain"]), id="2025-06-18"),
    ],
)
async def test_tools_list_says_task_support_at_2025_11_25_only(
    app: TasksApp, version: str, expected: dict[str, Any]
) -> None:
    async with client_of(app) as http:
        session, _ = await open_legacy(http, version=version)
        tools = {t["name"]: t for t in (await session.result("tools/list"))["tools"]}
    for name, execution in expected.items():
        assert tools[name].get("execution") == execution, tools[name]


# -- the lifecycle --------------------------------------------------------------------------------


async def test_create_poll_and_fetch_the_result(app: TasksApp) -> None:
    async with client_of(app) as http:
        session, _ = await open_legacy(http)
        before = time.time()
        created = await session.start(
            "reindex", {"corpus": "alpha", "steps": 5, "step_s": 0.05}, {"ttl": 60_000}
        )
        task_id = check_new_task(created, before, ttl=60_000)
        assert app.started == ["alpha"]
        assert await session.get(task_id) == created  # still working, nothing changed
        done = await session.until(task_id, "completed")
        assert done == moved(created, done, "completed")
        assert app.ended == {"alpha": "returned"} and app.steps["alpha"] == 5
        result = await session.result("tasks/result", {"taskId": task_id})
        assert result == {**reindexed("alpha", 50), "_meta": related(task_id)}
        # It stays there until its TTL: the same answer again.
        assert await session.result("tasks/result", {"taskId": task_id}) == result
        assert await session.get(task_id) == done


async def test_tasks_result_blocks_until_the_tool_has_returned(app: TasksApp) -> None:
    async with client_of(app) as http:
        session, _ = await open_legacy(http)
        created = await session.start("reindex", {"corpus": "slow", "steps": 6, "step_s": 0.05})
        task_id = created["taskId"]
        started = trio.current_time()
        result = await session.result("tasks/result", {"taskId": task_id})
        waited = trio.current_time() - started
        assert app.ended == {"slow": "returned"}  # the answer came after the tool returned
        assert waited >= 0.15, waited
        assert result == {**reindexed("slow", 60), "_meta": related(task_id)}
        assert (await session.get(task_id))["status"] == "completed"


@pytest.mark.parametrize(
    ("task", "ttl"),
    [
        pytest.param({}, DEFAULT_TTL_MS, id="none-asked"),
        pytest.param({"ttl": 10}, 1000, id="raised-to-1s"),
        pytest.param({"ttl": 120_000}, 120_000, id="as-asked"),
        pytest.param({"ttl": 10**12}, MAX_TTL_MS, id="capped-at-24h"),
    ],
)
async def test_the_ttl_is_what_was_asked_within_bounds(
    app: TasksApp, task: dict[str, Any], ttl: int
) -> None:
    async with client_of(app) as http:
        session, _ = await open_legacy(http)
        created = await session.start("reindex", {"corpus": "t"}, task)
        check_new_task(created, time.time() - 5, ttl=ttl)


@pytest.mark.parametrize(
    ("task", "message"),
    [
        pytest.param(5, "task must be an object", id="not-an-object"),
        pytest.param(
            {"ttl": -1}, "task.ttl must be a non-negative integer (milliseconds)", id="neg"
        ),
        pytest.param(
            {"ttl": "1"}, "task.ttl must be a non-negative integer (milliseconds)", id="str"
        ),
        pytest.param(
            {"ttl": 1.5}, "task.ttl must be a non-negative integer (milliseconds)", id="frac"
        ),
    ],
)
async def test_a_bad_task_param_is_32602_and_nothing_runs(
    app: TasksApp, task: Any, message: str
) -> None:
    async with client_of(app) as http:
        session, _ = await open_legacy(http)
        params = {"name": "reindex", "arguments": {"corpus": "bad"}, "task": task}
        assert await session.error("tools/call", params) == {"code": -32602, "message": message}
        assert await session.result("tasks/list") == {"tasks": []}
    assert app.started == []


async def test_tasks_list_pages_oldest_first(nursery: trio.Nursery) -> None:
    app = await start_app(nursery)
    app.server.dispatcher.page_size = 2
    async with client_of(app) as http:
        session, _ = await open_legacy(http)
        assert await session.result("tasks/list") == {"tasks": []}
        ids = []
        for corpus in ("l1", "l2", "l3"):
            ids.append((await session.start("reindex", {"corpus": corpus, **LONG}))["taskId"])
            await trio.sleep(0.002)  # distinct creation times (they order the list)
        first = await session.result("tasks/list")
        assert set(first) == {"tasks", "nextCursor"}
        assert [t["taskId"] for t in first["tasks"]] == ids[:2]
        assert all(t["status"] == "working" for t in first["tasks"])
        assert first["tasks"][0] == await session.get(ids[0])
        second = await session.result("tasks/list", {"cursor": first["nextCursor"]})
        assert set(second) == {"tasks"}  # the last page has no nextCursor
        assert [t["taskId"] for t in second["tasks"]] == ids[2:]
        # A cancelled task is still listed, with its new status.
        await session.result("tasks/cancel", {"taskId": ids[0]})
        again = await session.result("tasks/list")
        assert [(t["taskId"], t["status"]) for t in again["tasks"]] == [
            (ids[0], "cancelled"),
            (ids[1], "working"),
        ]
        bad = await session.error("tasks/list", {"cursor": "not-a-cursor"})
        assert bad == {"code": -32602, "message": "invalid cursor"}


# -- cancellation ---------------------------------------------------------------------------------


async def test_cancel_reaches_the_running_tool(app: TasksApp) -> None:
    async with client_of(app) as http:
        session, _ = await open_legacy(http)
        created = await session.start("reindex", {"corpus": "doomed", **LONG})
        task_id = created["taskId"]
        await wait_for(lambda: app.steps["doomed"] >= 2, 5, "the tool to be running")
        cancelled = await session.result("tasks/cancel", {"taskId": task_id})
        at_cancel = app.steps["doomed"]
        assert cancelled == moved(created, cancelled, "cancelled", CANCELLED_MESSAGE)
        # The tool's own finally saw trio.Cancelled: the cancellation reached it, at once (not
        # at the runner's next re-read of the record, a second later).
        await wait_for(lambda: "doomed" in app.ended, 3, "the tool to end")
        assert app.ended == {"doomed": "cancelled"}
        steps = app.steps["doomed"]
        assert steps <= at_cancel + 1, (at_cancel, steps)
        assert await session.get(task_id) == cancelled
        assert await session.error("tasks/result", {"taskId": task_id}) == {
            "code": -32602,
            "message": f"task {task_id} was cancelled; it has no result",
        }
        assert await session.error("tasks/cancel", {"taskId": task_id}) == {
            "code": -32602,
            "message": "Cannot cancel task: already in terminal status 'cancelled'",
        }
        await trio.sleep(0.1)
        assert app.steps["doomed"] == steps  # it does not run on


async def test_a_waiting_tasks_result_ends_when_the_task_is_cancelled(app: TasksApp) -> None:
    async with client_of(app) as http, client_of(app) as other:
        session, _ = await open_legacy(http)
        canceller = Legacy(other, session.headers, last_id=100)
        task_id = (await session.start("reindex", {"corpus": "waited", **LONG}))["taskId"]
        outcome: dict[str, Any] = {}

        async def wait_result() -> None:
            outcome["error"] = await session.error("tasks/result", {"taskId": task_id})

        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait_result)
            await wait_for(lambda: app.steps["waited"] >= 2, 5, "the tool to be running")
            assert outcome == {}  # still waiting
            await canceller.result("tasks/cancel", {"taskId": task_id})
            at_cancel = app.steps["waited"]
    assert outcome["error"] == {
        "code": -32602,
        "message": f"task {task_id} was cancelled; it has no result",
    }
    await wait_for(lambda: "waited" in app.ended, 3, "the tool to end")
    assert app.ended == {"waited": "cancelled"}
    assert app.steps["waited"] <= at_cancel + 1


async def test_a_completed_task_cannot_be_cancelled(app: TasksApp) -> None:
    async with client_of(app) as http:
        session, _ = await open_legacy(http)
        task_id = (await session.start("reindex", {"corpus": "done"}))["taskId"]
        done = await session.until(task_id, "completed")
        assert await session.error("tasks/cancel", {"taskId": task_id}) == {
            "code": -32602,
            "message": "Cannot cancel task: already in terminal status 'completed'",
        }
        assert await session.get(task_id) == done
    assert app.ended == {"done": "returned"}


# -- failures -------------------------------------------------------------------------------------


async def test_a_tool_error_makes_the_task_failed(app: TasksApp) -> None:
    async with client_of(app) as http:
        session, _ = await open_legacy(http)
        created = await session.start("explode", {"reason": "beta"})
        task_id = created["taskId"]
        failed = await session.until(task_id, "failed")
        message = "Tool execution failed: index beta is corrupt"
        assert failed == moved(created, failed, "failed", message)
        # tasks/result answers what the call would have: the isError result.
        result = await session.result("tasks/result", {"taskId": task_id})
        assert result == {**tool_error("index beta is corrupt"), "_meta": related(task_id)}


async def test_a_protocol_error_makes_the_task_failed_and_tasks_result_that_error(
    app: TasksApp,
) -> None:
    async with client_of(app) as http:
        session, _ = await open_legacy(http)
        created = await session.start("needs_roots", {})
        failed = await session.until(created["taskId"], "failed")
        assert failed == moved(created, failed, "failed", ROOTS_MESSAGE)
        assert await session.error("tasks/result", {"taskId": created["taskId"]}) == ROOTS_ERROR


@pytest.mark.parametrize("method", ["tasks/get", "tasks/result", "tasks/cancel"])
async def test_unknown_and_malformed_task_ids_are_32602(app: TasksApp, method: str) -> None:
    async with client_of(app) as http:
        session, _ = await open_legacy(http)
        assert await session.error(method, {"taskId": "nope"}) == not_found("nope")
        for params in ({}, {"taskId": ""}, {"taskId": 7}):
            assert await session.error(method, params) == {
                "code": -32602,
                "message": "params.taskId must be a non-empty string",
            }
        long_id = await session.error(method, {"taskId": "x" * 129})
        assert long_id["code"] == -32602
        assert long_id["message"].startswith("unknown task: 'xxx")


# -- which tools run as tasks ---------------------------------------------------------------------


async def test_a_required_tool_without_a_task_is_32601(app: TasksApp) -> None:
    async with client_of(app) as http:
        session, _ = await open_legacy(http)
        refused = await session.error(
            "tools/call", {"name": "archive", "arguments": {"label": "x"}}
        )
        assert refused == {
            "code": -32601,
            "message": "archive must be called as a task (params.task)",
        }
        created = await session.start("archive", {"label": "x"})
        await session.until(created["taskId"], "completed")
        result = await session.result("tasks/result", {"taskId": created["taskId"]})
        assert result == {
            "content": [{"type": "text", "text": "archived x"}],
            "structuredContent": {"result": "archived x"},
            "isError": False,
            "_meta": related(created["taskId"]),
        }


async def test_a_task_on_a_tool_without_task_support_is_32601(app: TasksApp) -> None:
    async with client_of(app) as http:
        session, _ = await open_legacy(http)
        params = {"name": "plain", "arguments": {"text": "a"}, "task": {}}
        assert await session.error("tools/call", params) == {
            "code": -32601,
            "message": "plain does not support task-augmented execution",
        }
        assert await session.result("tasks/list") == {"tasks": []}


async def test_an_optional_tool_without_a_task_runs_inline(app: TasksApp) -> None:
    async with client_of(app) as http:
        session, _ = await open_legacy(http)
        result = await session.result(
            "tools/call", {"name": "reindex", "arguments": {"corpus": "i"}}
        )
        assert result == reindexed("i")
        assert app.ended == {"i": "returned"}
        assert await session.result("tasks/list") == {"tasks": []}


async def test_before_2025_11_25_there_are_no_tasks(app: TasksApp) -> None:
    async with client_of(app) as http:
        session, _ = await open_legacy(http, version=OLDER)
        refused = await session.error(
            "tools/call", {"name": "archive", "arguments": {"label": "o"}}
        )
        assert refused == {
            "code": -32601,
            "message": "archive runs only as a task, which protocol version 2025-06-18 does not have",
        }
        # params.task means nothing there: the call runs inline.
        params = {"name": "reindex", "arguments": {"corpus": "o"}, "task": {"ttl": 60_000}}
        assert await session.result("tools/call", params) == reindexed("o")
        for method in ("tasks/get", "tasks/result", "tasks/cancel"):
            assert await session.error(method, {"taskId": "nope"}) == {
                "code": -32601,
                "message": f"{method} is not part of protocol version 2025-06-18",
            }


# -- principals, bounds and TTLs ------------------------------------------------------------------


async def test_another_principal_cannot_see_get_wait_for_or_cancel_a_task(
    nursery: trio.Nursery,
) -> None:
    app = await start_app(nursery, verifier=TwoUsers())
    async with client_of(app) as http:
        alice, _ = await open_legacy(http, "alice")
        bob, _ = await open_legacy(http, "bob")
        created = await alice.start("reindex", {"corpus": "alices", **LONG})
        task_id = created["taskId"]
        await wait_for(lambda: app.steps["alices"] >= 1, 5, "the tool to be running")
        # To bob it is exactly a task that does not exist.
        for method in ("tasks/get", "tasks/result", "tasks/cancel"):
            assert await bob.error(method, {"taskId": task_id}) == not_found(task_id), method
        assert await bob.result("tasks/list") == {"tasks": []}
        # Nothing of it changed: still alice's, still running.
        assert "alices" not in app.ended
        assert await alice.get(task_id) == created
        assert [t["taskId"] for t in (await alice.result("tasks/list"))["tasks"]] == [task_id]
        await alice.result("tasks/cancel", {"taskId": task_id})
        await wait_for(lambda: "alices" in app.ended, 3, "the tool to end")
    assert app.ended == {"alices": "cancelled"}


async def test_the_bound_per_principal(nursery: trio.Nursery) -> None:
    app = await start_app(nursery, verifier=TwoUsers(), max_tasks_per_principal=2, task_ttl_s=1.0)
    async with client_of(app) as http:
        alice, _ = await open_legacy(http, "alice")
        bob, _ = await open_legacy(http, "bob")
        first = await alice.start("reindex", {"corpus": "a1"})
        await alice.until(first["taskId"], "completed")  # a finished task still counts
        second = await alice.start("reindex", {"corpus": "a2", **LONG})
        await alice.result("tasks/cancel", {"taskId": second["taskId"]})  # so does a cancelled one
        refused = await alice.error(
            "tools/call", {"name": "reindex", "arguments": {"corpus": "a3"}, "task": {}}
        )
        assert refused == {
            "code": -32000,
            "message": "this principal holds 2 tasks, the most it may; wait for one to expire"
            " (each lives for its ttl from creation)",
        }
        assert "a3" not in app.started  # refused before the tool ran
        # Bob's own bound is untouched by alice's.
        check_new_task(await bob.start("reindex", {"corpus": "b1"}), time.time() - 5, ttl=1000)
        # Once alice's expire, she may create again.
        with trio.fail_after(5):
            while (await alice.result("tasks/list"))["tasks"]:
                await trio.sleep(0.05)
        again = await alice.start("reindex", {"corpus": "a4"})
        assert again["status"] == "working"
    assert app.started == ["a1", "a2", "b1", "a4"]


async def test_a_task_expires_after_its_ttl(nursery: trio.Nursery) -> None:
    app = await start_app(nursery, task_ttl_s=0.5)
    async with client_of(app) as http:
        session, _ = await open_legacy(http)
        created = await session.start("reindex", {"corpus": "brief"})
        task_id = check_new_task(created, time.time() - 5, ttl=500)
        born = trio.current_time()
        await session.until(task_id, "completed")
        with trio.fail_after(5):
            while "error" not in await session.post("tasks/get", {"taskId": task_id}):
                await trio.sleep(0.02)
        assert trio.current_time() - born >= 0.4
        for method in ("tasks/get", "tasks/result", "tasks/cancel"):
            assert await session.error(method, {"taskId": task_id}) == not_found(task_id)
        assert await session.result("tasks/list") == {"tasks": []}


async def test_a_tool_still_running_at_its_ttl_is_stopped(nursery: trio.Nursery) -> None:
    app = await start_app(nursery, task_ttl_s=0.5)
    async with client_of(app) as http:
        session, _ = await open_legacy(http)
        task_id = (await session.start("reindex", {"corpus": "overdue", **LONG}))["taskId"]
        born = trio.current_time()
        await wait_for(lambda: "overdue" in app.ended, 5, "the tool to be stopped")
        assert app.ended == {"overdue": "cancelled"}
        assert trio.current_time() - born >= 0.4
        assert await session.error("tasks/get", {"taskId": task_id}) == not_found(task_id)


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        pytest.param("max_tasks_per_principal", 0, id="no-tasks-at-all"),
        pytest.param("task_ttl_s", 86_400.5, id="ttl-past-24h"),
    ],
)
def test_task_settings_out_of_range_are_config_errors(setting: str, value: float) -> None:
    # Config refuses them (the CLI prints "datapulse: <message>"), rather than the server
    # failing later, at Server() with a traceback from TaskRunner.
    with pytest.raises(ValueError, match=setting):
        make_config(**{setting: value})


# -- status notifications -------------------------------------------------------------------------


async def test_status_notifications_arrive_on_the_creating_sessions_get_stream(
    app: TasksApp,
) -> None:
    async with client_of(app) as http:
        session, _ = await open_legacy(http)
        other, _ = await open_legacy(http)
        async with get_stream(session) as stream, get_stream(other) as others:
            quick = await session.start("reindex", {"corpus": "n1"})
            message = await next_message(stream)
            done = await session.get(quick["taskId"])
            assert done["status"] == "completed"
            assert message == {
                "jsonrpc": "2.0",
                "method": "notifications/tasks/status",
                "params": done,
            }
            doomed = await session.start("reindex", {"corpus": "n2", **LONG})
            cancelled = await session.result("tasks/cancel", {"taskId": doomed["taskId"]})
            assert await next_message(stream) == {
                "jsonrpc": "2.0",
                "method": "notifications/tasks/status",
                "params": cancelled,
            }
            failing = await other.start("explode", {"reason": "n3"})
            # The other session hears only of its own task: this is its first message.
            failed = await next_message(others)
            assert failed["method"] == "notifications/tasks/status"
            assert failed["params"] == await other.get(failing["taskId"])
            assert failed["params"]["status"] == "failed"


async def test_a_status_change_while_no_get_stream_is_open_arrives_when_one_opens(
    app: TasksApp,
) -> None:
    async with client_of(app) as http:
        session, _ = await open_legacy(http)
        created = await session.start("reindex", {"corpus": "n4"})
        done = await session.until(created["taskId"], "completed")
        async with get_stream(session) as stream:
            assert await next_message(stream) == {
                "jsonrpc": "2.0",
                "method": "notifications/tasks/status",
                "params": done,
            }


# -- surviving the connection ---------------------------------------------------------------------


@pytest.mark.parametrize("how", ["connection-closed", "session-deleted"])
async def test_the_result_is_fetched_from_a_new_session_and_connection(
    app: TasksApp, how: str
) -> None:
    async with client_of(app) as first_http:
        first, _ = await open_legacy(first_http)
        created = await first.start("reindex", {"corpus": "durable", "steps": 10, "step_s": 0.05})
        task_id = created["taskId"]
        if how == "session-deleted":
            deleted = await first_http.delete("/mcp", headers=first.headers)
            assert deleted.status_code == 200
    assert "durable" not in app.ended  # the tool runs on without the connection
    async with client_of(app) as second_http:
        if how == "session-deleted":
            gone = await second_http.post("/mcp", headers=first.headers, json=rpc("tasks/list"))
            assert gone.status_code == 404
        second, _ = await open_legacy(second_http)
        assert second.headers["Mcp-Session-Id"] != first.headers["Mcp-Session-Id"]
        listed = await second.result("tasks/list")
        assert [t["taskId"] for t in listed["tasks"]] == [task_id]
        result = await second.result("tasks/result", {"taskId": task_id})
        assert result == {**reindexed("durable", 100), "_meta": related(task_id)}
        done = await second.get(task_id)
        assert done == moved(created, done, "completed")
    assert app.ended == {"durable": "returned"}


# == 2026-07-28: the io.modelcontextprotocol/tasks extension ======================================

AUTO = object()


def modern_meta(extension: bool = True) -> dict[str, Any]:
    capabilities: dict[str, Any] = {"extensions": {TASKS: {}}} if extension else {}
    return {
        "io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientCapabilities": capabilities,
    }


async def modern(
    http: httpx.AsyncClient,
    method: str,
    params: dict[str, Any],
    *,
    token: str = TOKEN,
    name: Any = AUTO,
    extension: bool = True,
) -> httpx.Response:
    """A 2026-07-28 request; ``Mcp-Name`` mirrors the tool name or the task id unless given."""
    headers = {
        "Authorization": f"Bearer {token}",
        "Content-Type": "application/json",
        "Accept": BOTH,
        "MCP-Protocol-Version": MODERN,
        "Mcp-Method": method,
    }
    if name is AUTO:
        name = params.get("name") if method == "tools/call" else params.get("taskId")
    if name is not None:
        headers["Mcp-Name"] = name
    body = rpc(method, {**params, "_meta": modern_meta(extension)})
    return await http.post("/mcp", headers=headers, json=body)


def answer(response: httpx.Response, result_type: str = "complete") -> dict[str, Any]:
    """A 2026-07-28 result, without its ``resultType`` and ``_meta`` (checked here)."""
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"jsonrpc", "id", "result"}, body
    result: dict[str, Any] = dict(body["result"])
    assert result.pop("resultType") == result_type, body
    assert result.pop("_meta") == SERVER_INFO
    return result


def refusal(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"jsonrpc", "id", "error"} and body["id"] == 1, body
    error: dict[str, Any] = body["error"]
    return error


async def modern_start(
    http: httpx.AsyncClient, tool: str, arguments: dict[str, Any], token: str = TOKEN
) -> dict[str, Any]:
    """A tools/call that became a task: the flat CreateTaskResult (``resultType`` "task")."""
    response = await modern(http, "tools/call", {"name": tool, "arguments": arguments}, token=token)
    return answer(response, "task")


async def modern_get(http: httpx.AsyncClient, task_id: str, token: str = TOKEN) -> dict[str, Any]:
    return answer(await modern(http, "tasks/get", {"taskId": task_id}, token=token))


async def modern_until(
    http: httpx.AsyncClient, task_id: str, status: str, token: str = TOKEN
) -> dict[str, Any]:
    with trio.fail_after(5):
        while True:
            task = await modern_get(http, task_id, token)
            if task["status"] == status:
                return task
            assert task["status"] == "working", task
            await trio.sleep(0.02)


async def test_modern_discover_declares_the_extension(app: TasksApp) -> None:
    async with client_of(app) as http:
        result = answer(await modern(http, "server/discover", {}, name=None))
    assert result["capabilities"]["extensions"] == {TASKS: {}}
    assert "tasks" not in result["capabilities"]


@pytest.mark.parametrize("extension", [True, False])
async def test_modern_tools_list_has_no_execution_field(app: TasksApp, extension: bool) -> None:
    async with client_of(app) as http:
        listed = answer(await modern(http, "tools/list", {}, name=None, extension=extension))
    assert {t["name"] for t in listed["tools"]} == {
        "reindex",
        "explode",
        "needs_roots",
        "archive",
        "plain",
    }
    assert [t for t in listed["tools"] if "execution" in t] == []


async def test_modern_a_declared_extension_makes_a_task_polled_to_its_inlined_result(
    app: TasksApp,
) -> None:
    async with client_of(app) as http:
        before = time.time()
        created = await modern_start(http, "reindex", {"corpus": "m1", "steps": 5, "step_s": 0.05})
        task_id = check_new_task(created, before, ttl=DEFAULT_TTL_MS, modern=True)
        assert await modern_get(http, task_id) == created
        done = await modern_until(http, task_id, "completed")
        # The result inlined, without related-task _meta (the task id is right there).
        assert done == {**moved(created, done, "completed"), "result": reindexed("m1", 50)}
    assert app.ended == {"m1": "returned"}


async def test_modern_cancel_reaches_the_running_tool(app: TasksApp) -> None:
    async with client_of(app) as http:
        created = await modern_start(http, "reindex", {"corpus": "m2", **LONG})
        task_id = created["taskId"]
        await wait_for(lambda: app.steps["m2"] >= 2, 5, "the tool to be running")
        assert answer(await modern(http, "tasks/cancel", {"taskId": task_id})) == {}
        at_cancel = app.steps["m2"]
        await wait_for(lambda: "m2" in app.ended, 3, "the tool to end")
        assert app.ended == {"m2": "cancelled"}
        assert app.steps["m2"] <= at_cancel + 1  # stopped at once
        cancelled = await modern_get(http, task_id)
        assert cancelled == moved(created, cancelled, "cancelled", CANCELLED_MESSAGE)
        # Terminal already: still an empty ack, and nothing changes.
        assert answer(await modern(http, "tasks/cancel", {"taskId": task_id})) == {}
        assert await modern_get(http, task_id) == cancelled


async def test_modern_a_tool_error_is_completed_and_a_protocol_error_failed(
    app: TasksApp,
) -> None:
    async with client_of(app) as http:
        created = await modern_start(http, "explode", {"reason": "m3"})
        done = await modern_until(http, created["taskId"], "completed")
        message = "Tool execution failed: index m3 is corrupt"
        assert done == {
            **moved(created, done, "completed", message),
            "result": tool_error("index m3 is corrupt"),
        }
        created = await modern_start(http, "needs_roots", {})
        failed = await modern_until(http, created["taskId"], "failed")
        assert failed == {
            **moved(created, failed, "failed", ROOTS_MESSAGE),
            "error": ROOTS_ERROR,
        }


@pytest.mark.parametrize("method", ["tasks/get", "tasks/cancel", "tasks/update"])
@pytest.mark.parametrize("header", ["other-task", None], ids=["mismatch", "missing"])
async def test_modern_mcp_name_must_be_the_task_id(
    app: TasksApp, method: str, header: str | None
) -> None:
    async with client_of(app) as http:
        created = await modern_start(http, "reindex", {"corpus": "m4", **LONG})
        params: dict[str, Any] = {"taskId": created["taskId"]}
        if method == "tasks/update":
            params["inputResponses"] = {}
        response = await modern(http, method, params, name=header)
        assert refusal(response, 400) == {
            "code": -32020,
            "message": "Mcp-Name header does not match params.taskId",
        }
        assert await modern_get(http, created["taskId"]) == created  # untouched
    assert "m4" not in app.ended


async def test_modern_without_the_extension_the_tool_runs_inline(app: TasksApp) -> None:
    async with client_of(app) as http:
        params = {"name": "reindex", "arguments": {"corpus": "m5"}}
        result = answer(await modern(http, "tools/call", params, extension=False))
        assert result == reindexed("m5")
        assert app.ended == {"m5": "returned"}
        # A 2025-11-25 task hint changes nothing at 2026-07-28: the server decides.
        params = {"name": "reindex", "arguments": {"corpus": "m6"}, "task": {"ttl": 60_000}}
        assert answer(await modern(http, "tools/call", params, extension=False)) == reindexed("m6")


async def test_modern_without_the_extension_a_required_tool_and_task_methods_are_32021(
    app: TasksApp,
) -> None:
    required: dict[str, Any] = {"requiredCapabilities": {"extensions": {TASKS: {}}}}
    async with client_of(app) as http:
        params = {"name": "archive", "arguments": {"label": "m7"}}
        response = await modern(http, "tools/call", params, extension=False)
        assert refusal(response, 400) == {
            "code": -32021,
            "message": "archive runs only as a task: declare the client capability"
            f" extensions.{TASKS}",
            "data": required,
        }
        created = await modern_start(http, "archive", {"label": "m7"})
        for method in ("tasks/get", "tasks/cancel"):
            response = await modern(http, method, {"taskId": created["taskId"]}, extension=False)
            assert refusal(response, 400) == {
                "code": -32021,
                "message": f"{method} needs the client capability extensions.{TASKS}",
                "data": required,
            }
        done = await modern_until(http, created["taskId"], "completed")
        assert done["result"] == {
            "content": [{"type": "text", "text": "archived m7"}],
            "structuredContent": {"result": "archived m7"},
            "isError": False,
        }


@pytest.mark.parametrize("method", ["tasks/result", "tasks/list"])
async def test_modern_tasks_result_and_list_are_not_methods(app: TasksApp, method: str) -> None:
    async with client_of(app) as http:
        created = await modern_start(http, "reindex", {"corpus": "m8"})
        response = await modern(http, method, {"taskId": created["taskId"]})
        assert refusal(response, 404) == {
            "code": -32601,
            "message": f"method not found: '{method}'",
        }


async def test_modern_unknown_task_is_400_32602(app: TasksApp) -> None:
    async with client_of(app) as http:
        for method in ("tasks/get", "tasks/cancel"):
            response = await modern(http, method, {"taskId": "nope"})
            assert refusal(response, 400) == not_found("nope")


async def test_modern_another_principal_cannot_see_or_cancel_a_task(nursery: trio.Nursery) -> None:
    app = await start_app(nursery, verifier=TwoUsers())
    async with client_of(app) as http:
        created = await modern_start(http, "reindex", {"corpus": "m9", **LONG}, token="alice")
        task_id = created["taskId"]
        await wait_for(lambda: app.steps["m9"] >= 1, 5, "the tool to be running")
        for method in ("tasks/get", "tasks/cancel"):
            response = await modern(http, method, {"taskId": task_id}, token="bob")
            assert refusal(response, 400) == not_found(task_id), method
        assert "m9" not in app.ended
        assert await modern_get(http, task_id, "alice") == created
        assert answer(await modern(http, "tasks/cancel", {"taskId": task_id}, token="alice")) == {}
        await wait_for(lambda: "m9" in app.ended, 3, "the tool to end")
    assert app.ended == {"m9": "cancelled"}


async def test_modern_the_bound_per_principal_is_429(nursery: trio.Nursery) -> None:
    app = await start_app(nursery, max_tasks_per_principal=1)
    async with client_of(app) as http:
        await modern_start(http, "reindex", {"corpus": "m10"})
        params = {"name": "reindex", "arguments": {"corpus": "m11"}}
        refused = await modern(http, "tools/call", params)
        assert refusal(refused, 429) == {
            "code": -32000,
            "message": "this principal holds 1 tasks, the most it may; wait for one to expire"
            " (each lives for its ttl from creation)",
        }
        assert refused.headers["retry-after"] == "5"  # as every other 429 of ours says
    assert app.started == ["m10"]


async def test_modern_the_result_is_read_after_the_creating_connection_is_gone(
    app: TasksApp,
) -> None:
    async with client_of(app) as first:
        created = await modern_start(
            first, "reindex", {"corpus": "m12", "steps": 10, "step_s": 0.05}
        )
    assert "m12" not in app.ended
    async with client_of(app) as second:
        done = await modern_until(second, created["taskId"], "completed")
    assert done == {**moved(created, done, "completed"), "result": reindexed("m12", 100)}
    assert app.ended == {"m12": "returned"}


async def test_a_task_reads_in_the_shape_of_each_revision(app: TasksApp) -> None:
    """One record, two wires: created on a 2025-11-25 session, read at 2026-07-28 and back."""
    async with client_of(app) as http:
        session, _ = await open_legacy(http)
        created = await session.start("reindex", {"corpus": "x1"}, {"ttl": 60_000})
        done = await session.until(created["taskId"], "completed")
        modern_view = await modern_get(http, created["taskId"])
        assert modern_view == {
            "taskId": done["taskId"],
            "status": "completed",
            "createdAt": done["createdAt"],
            "lastUpdatedAt": done["lastUpdatedAt"],
            "ttlMs": 60_000,
            "pollIntervalMs": POLL_MS,
            "result": reindexed("x1"),
        }


bound_tests(globals(), TEST_TIMEOUT_S)
