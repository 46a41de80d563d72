"""Interop with the official MCP TypeScript SDK v2 client (``@modelcontextprotocol/client``,
pinned in tests/interop_ts/package.json) over Streamable HTTP (``/mcp``).

One app, registered through the public decorators (typed tools, a text, a blob and a template
resource, a prompt, completions for a prompt argument and a template variable), serves a Node
process running tests/interop_ts/client.mjs once per revision:

* ``2025-11-25``: the SDK's ``initialize`` handshake; ``resources/subscribe``, and the
  notifications on the session's GET stream; list_changed through the SDK's ``listChanged``
  option (notification -> its own refreshed ``tools/list``).
* ``2026-07-28``: ``versionNegotiation`` pinned (``server/discover``, per-request ``_meta``);
  ``subscriptions/listen`` with ``resourceSubscriptions`` and ``toolsListChanged`` carries
  both kinds of notification.

The script prints JSON lines. When it is subscribed it says so (``ready``) and this side pushes
``notify_resource_updated``; then it asks for a tool to be removed, and later one to be added,
and waits for each ``notifications/tools/list_changed``. Its last line holds what every step saw
(a step that threw is recorded as its error), and each test below asserts on one part of it.

Each revision runs once (a module-scoped fixture with its own ``trio.run``: the server runs in
process, the client is a subprocess on loopback, both under one deadline). The packages (and a
Node >= 22 for machines without one) come from ``npm ci`` in tests/interop_ts, through
``tests/node_tools.py`` (``.ci/run`` runs it first; here it is a no-op then); the harness is
``tests/interop_ts_harness.py``. A missing Node or npm fails the tests, it does not skip them.
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass, field
from typing import Any

import pydantic
import pytest
import trio

from datapulse import Server, ToolContext
from tests.helpers import make_config
from tests.interop_ts_harness import REVISIONS, ScriptRun, run_script

RUN_TIMEOUT_S = 20  # the whole exchange (well under a second when all is well)
STEP_TIMEOUT_MS = 3000  # one request, or one wait for a notification, in the script

SUBSCRIPTION_ID = "io.modelcontextprotocol/subscriptionId"
SUBSCRIBED = "pulse://clock"
BLOB_URI = "pulse://logo.png"
BLOB = b"\x89PNG\r\n\x1a\n\x00\x01\xfe\xff datapulse"
LANGUAGES = ["python", "pyret", "rust", "ruby"]
NOTES = ["alpha", "beta", "bravo"]


# -- the app ------------------------------------------------------------------------------------


class Point(pydantic.BaseModel):
    """A nested model argument: a $ref into $defs in the input schema."""

    x: float
    y: float


@dataclass
class Placed:
    """An object return type: the output schema itself (not wrapped in "result"). (Not a
    typing.TypedDict: pydantic refuses those before Python 3.12.)"""

    label: str
    norm: float


@dataclass
class App:
    server: Server
    reads: list[str] = field(default_factory=list)  # URIs read, in order


def build_app() -> App:
    server = Server(make_config(), builtin_tools=False)
    app = App(server)

    @server.tool()
    async def add(a: int, b: int = 1) -> int:
        """Add two integers."""
        return a + b

    @server.tool(name="shout", title="Shout", annotations={"readOnlyHint": True})
    def shout(text: str) -> str:
        """Upper-case a text (sync: runs in a worker thread)."""
        return text.upper()

    @server.tool()
    async def describe_point(point: Point, context: ToolContext, label: str = "") -> Placed:
        """Label a point with its norm; the context parameter is injected, not in the schema."""
        await context.report_progress(1, 1, "described")  # no progressToken: nothing is sent
        return Placed(label=label, norm=math.hypot(point.x, point.y))

    clock = {"tick": 0}

    @server.resource(SUBSCRIBED, mime_type="application/json", title="Clock")
    async def read_clock() -> dict[str, int]:
        """A tick count, one higher on every read."""
        app.reads.append(SUBSCRIBED)
        clock["tick"] += 1
        return {"tick": clock["tick"]}

    @server.resource(BLOB_URI, mime_type="image/png")
    async def logo() -> bytes:
        """Some bytes."""
        return BLOB

    @server.resource("notes://{name}", mime_type="text/plain", description="A note by name.")
    async def note(name: str) -> str:
        return f"note {name}"

    @server.prompt(title="Code review")
    async def review(code: str, language: str = "python") -> str:
        """Ask for a code review."""
        return f"Review this {language} code:\n{code}"

    @server.completion(prompt="review", argument="language")
    async def languages(value: str) -> list[str]:
        return [name for name in LANGUAGES if name.startswith(value)]

    @server.completion(resource="notes://{name}", argument="name")
    async def note_names(value: str, arguments: dict[str, str]) -> list[str]:
        return [name for name in NOTES if name.startswith(value)]

    return app


async def whisper(text: str) -> str:
    """Lower-case a text (added while the client is connected)."""
    return text.lower()


# -- running the script ------------------------------------------------------------------------


@dataclass(repr=False)
class Run(ScriptRun):
    app: App
    actions: list[str] = field(default_factory=list)  # what the host did in answer

    def __repr__(self) -> str:
        return f"Run({self.revision!r}, exit {self.returncode}, actions {self.actions})"

    def error(self, name: str) -> dict[str, Any]:
        """A step's error; fails if the step did not throw."""
        value = self.result[name]
        assert isinstance(value, dict) and "error" in value, f"{name} did not throw: {value}"
        error: dict[str, Any] = value["error"]
        return error


async def _on_ready(run: Run, proc: trio.Process, ready: dict[str, Any]) -> None:
    run.actions.append(await _answer(run.app, ready))


async def _answer(app: App, ready: dict[str, Any]) -> str:
    """The host side of one ready line."""
    if ready["waiting"] == "resource_updated":
        told = await app.server.notify_resource_updated(ready["uri"])
        return f"notify_resource_updated {ready['uri']}: {told} told"
    if "remove" in ready:
        app.server.remove_tool(ready["remove"])
        return f"remove_tool {ready['remove']}"
    app.server.tool(name=ready["add"])(whisper)
    return f"tool {ready['add']}"


@pytest.fixture(scope="module", params=REVISIONS)
def run(request: pytest.FixtureRequest) -> Run:
    revision = request.param
    return run_script(
        lambda: Run(revision, build_app()),
        "client.mjs",
        run_timeout_s=RUN_TIMEOUT_S,
        step_timeout_ms=STEP_TIMEOUT_MS,
        on_ready=_on_ready,
    )


# -- connection -----------------------------------------------------------------------------------


def test_connects_at_the_revision_with_the_capabilities(run: Run) -> None:
    connect = run.step("connect")
    assert connect["protocolVersion"] == run.revision
    assert connect["era"] == ("modern" if run.revision == "2026-07-28" else "legacy")
    assert connect["serverInfo"]["name"] == "datapulse"
    capabilities = connect["capabilities"]
    assert capabilities["tools"] == {"listChanged": True}
    assert capabilities["prompts"]["listChanged"] is True
    assert capabilities["resources"]["listChanged"] is True
    assert capabilities["completions"] == {}
    if run.revision != "2026-07-28":
        assert capabilities["resources"]["subscribe"] is True
    assert run.returncode == 0, run.stderr


# -- tools -----------------------------------------------------------------------------------------


def test_typed_tool_schemas_as_the_client_sees_them(run: Run) -> None:
    tools = run.step("tools_list")
    assert set(tools) == {"add", "shout", "describe_point"}

    add = tools["add"]
    assert add["description"] == "Add two integers."
    schema = add["inputSchema"]
    assert schema["type"] == "object"
    assert schema["properties"]["a"]["type"] == "integer"
    assert schema["properties"]["b"]["type"] == "integer"
    assert schema["properties"]["b"]["default"] == 1
    assert schema["required"] == ["a"]
    output = add["outputSchema"]
    assert output["type"] == "object"
    assert output["properties"]["result"]["type"] == "integer"
    assert output["required"] == ["result"]

    shout = tools["shout"]
    assert shout["title"] == "Shout"
    assert shout["annotations"] == {"readOnlyHint": True}
    assert shout["inputSchema"]["properties"]["text"]["type"] == "string"
    assert shout["inputSchema"]["required"] == ["text"]

    described = tools["describe_point"]
    schema = described["inputSchema"]
    assert set(schema["properties"]) == {"point", "label"}  # no "context"
    assert schema["required"] == ["point"]
    assert schema["properties"]["label"]["default"] == ""
    ref = schema["properties"]["point"]["$ref"]
    assert ref.startswith("#/$defs/")
    point = schema["$defs"][ref.removeprefix("#/$defs/")]
    assert point["properties"]["x"]["type"] == "number"
    assert point["properties"]["y"]["type"] == "number"
    assert sorted(point["required"]) == ["x", "y"]
    output = described["outputSchema"]
    assert output["type"] == "object"
    assert output["properties"]["label"]["type"] == "string"
    assert output["properties"]["norm"]["type"] == "number"
    assert sorted(output["required"]) == ["label", "norm"]


def test_a_typed_tool_returns_structured_content(run: Run) -> None:
    # The SDK validates structuredContent against the listed outputSchema (AJV): it would throw.
    added = run.step("tools_call_add")
    assert added["isError"] is False
    assert added["structuredContent"] == {"result": 5}
    assert added["content"] == [{"type": "text", "text": "5"}]
    assert run.step("tools_call_add_default")["structuredContent"] == {"result": 42}
    described = run.step("tools_call_describe")
    assert described["isError"] is False
    assert described["structuredContent"] == {"label": "p", "norm": 2.5}


def test_bad_arguments_to_a_typed_tool_are_an_is_error_result(run: Run) -> None:
    # SEP-1303 (2025-11-25 on): the model reads what to fix, argument by name.
    bad = run.step("tools_call_add_bad")
    assert bad["isError"] is True
    assert "structuredContent" not in bad
    (block,) = bad["content"]
    assert block["type"] == "text"
    assert block["text"].startswith(
        "invalid arguments for add: 'a': Input should be a valid integer"
    )


# -- resources -------------------------------------------------------------------------------------


def test_resources_and_templates_are_listed(run: Run) -> None:
    resources = {r["uri"]: r for r in run.step("resources_list")}
    assert set(resources) == {SUBSCRIBED, BLOB_URI}
    clock = resources[SUBSCRIBED]
    assert clock["name"] == "read_clock"
    assert clock["title"] == "Clock"
    assert clock["mimeType"] == "application/json"
    assert clock["description"] == "A tick count, one higher on every read."
    assert resources[BLOB_URI]["mimeType"] == "image/png"
    templates = run.step("resource_templates_list")
    assert len(templates) == 1
    assert templates[0]["uriTemplate"] == "notes://{name}"
    assert templates[0]["name"] == "note"
    assert templates[0]["mimeType"] == "text/plain"
    assert templates[0]["description"] == "A note by name."


def test_resources_read_text_blob_and_template(run: Run) -> None:
    (text,) = run.step("read_text")["contents"]
    assert text["uri"] == SUBSCRIBED
    assert text["mimeType"] == "application/json"
    assert json.loads(text["text"]) == {"tick": 1}
    (blob,) = run.step("read_blob")["contents"]
    assert blob["uri"] == BLOB_URI
    assert blob["mimeType"] == "image/png"
    assert "text" not in blob
    assert base64.b64decode(blob["blob"]) == BLOB
    (note,) = run.step("read_template")["contents"]
    assert note == {"uri": "notes://alpha", "mimeType": "text/plain", "text": "note alpha"}


def test_reading_an_unknown_resource_is_an_error(run: Run) -> None:
    # On the wire -32002 (handshake revisions) or -32602 (2026-07-28), both with data.uri; the
    # SDK raises its ResourceNotFoundError for either (and reports code -32602 for both).
    error = run.error("read_missing")
    assert error["name"] == "ResourceNotFoundError", error
    assert error["data"] == {"uri": "nowhere://x"}
    assert error["message"] == "resource not found: 'nowhere://x'"


def test_a_subscription_receives_the_update_the_host_pushes(run: Run) -> None:
    subscribed = run.step("subscribe")
    if run.revision == "2026-07-28":
        assert subscribed["honoredFilter"]["resourceSubscriptions"] == [SUBSCRIBED]
        assert subscribed["honoredFilter"]["toolsListChanged"] is True
    else:
        assert subscribed == {}
    assert run.actions[0] == f"notify_resource_updated {SUBSCRIBED}: 1 told"
    (update,) = run.step("resource_updated")
    if run.revision == "2026-07-28":
        # On the listen stream, stamped with the listen request's id (the SDK's "listen:0").
        assert update == {"uri": SUBSCRIBED, "_meta": {SUBSCRIPTION_ID: "listen:0"}}
    else:
        assert update == {"uri": SUBSCRIBED}
    # A read after the update sees the next tick (the app counts every read).
    (content,) = run.step("read_after_update")["contents"]
    assert json.loads(content["text"]) == {"tick": 2}
    assert run.app.reads == [SUBSCRIBED, SUBSCRIBED]


# -- prompts and completions -----------------------------------------------------------------------


def test_prompts_list_and_get_with_arguments(run: Run) -> None:
    (prompt,) = run.step("prompts_list")
    assert prompt["name"] == "review"
    assert prompt["title"] == "Code review"
    assert prompt["description"] == "Ask for a code review."
    arguments = {a["name"]: a for a in prompt["arguments"]}
    assert set(arguments) == {"code", "language"}
    assert arguments["code"]["required"] is True
    assert arguments["language"].get("required", False) is False
    got = run.step("prompts_get")
    assert got["messages"] == [
        {"role": "user", "content": {"type": "text", "text": "Review this rust code:\nprint(1)"}}
    ]
    default = run.step("prompts_get_default")
    assert default["messages"][0]["content"]["text"] == "Review this python code:\nx = 1"


def test_completion_for_a_prompt_argument_and_a_template_variable(run: Run) -> None:
    prompt = run.step("complete_prompt")["completion"]
    assert prompt["values"] == ["python", "pyret"]
    template = run.step("complete_template")["completion"]
    assert template["values"] == ["beta", "bravo"]


# -- list_changed ----------------------------------------------------------------------------------


def test_tools_list_changed_after_the_host_removes_and_adds_a_tool(run: Run) -> None:
    assert run.actions[1:] == ["remove_tool shout", "tool whisper"]
    removed = run.step("tools_list_changed_removed")
    assert sorted(removed["tools"]) == ["add", "describe_point"]
    assert run.error("tools_call_removed").get("code") == -32602
    added = run.step("tools_list_changed_added")
    assert sorted(added["tools"]) == ["add", "describe_point", "whisper"]
    assert run.step("tools_call_added")["structuredContent"] == {"result": "quiet"}
    # Exactly one notification per change.
    assert len(run.result["toolLists"]) == 2
    if run.revision == "2026-07-28":
        # Both came on the listen stream, and nothing else did (the filter asked for no more).
        stamped = {"_meta": {SUBSCRIPTION_ID: "listen:0"}}
        assert (
            run.result["notifications"]
            == [{"method": "notifications/tools/list_changed", "params": stamped}] * 2
        )
        assert run.step("unsubscribe") == {"closed": "local"}
    assert run.step("close") is True


def test_the_sdk_reports_no_error(run: Run) -> None:
    # client.onerror: a response it could not use, a stream that broke, an unknown message id.
    assert run.result["clientErrors"] == []


def test_the_server_logs_no_error(run: Run) -> None:
    # A client closing its listen stream (or any stream) is routine, not an ERROR line.
    assert run.server_errors == []
