"""Typed tools through the protocol layer (McpSession + Dispatcher), and the raw form beside them."""

from __future__ import annotations

import inspect
from typing import Any

import pydantic
import pytest

from datapulse.core.jsonrpc import Notification, Request
from datapulse.errors import UnknownTool
from datapulse.protocol.dispatch import Dispatcher
from datapulse.protocol.session import McpSession
from datapulse.tools.registry import ToolContext, ToolRegistry, make_tool
from tests.unit.test_dispatch import Sink, call_tool, modern_params, request


class Point(pydantic.BaseModel):
    x: int
    y: int = 0


ADD_ANNOTATIONS = {"readOnlyHint": True}
ADD_INPUT = {
    "properties": {
        "a": {"title": "A", "type": "integer"},
        "b": {"default": 1, "title": "B", "type": "integer"},
    },
    "required": ["a"],
    "type": "object",
}
ADD_OUTPUT = {
    "type": "object",
    "properties": {"result": {"type": "integer"}},
    "required": ["result"],
}


def make_registry() -> ToolRegistry:
    registry = ToolRegistry()

    @registry.tool(title="Add", annotations=ADD_ANNOTATIONS)
    async def add(a: int, b: int = 1) -> int:
        """Adds two numbers."""
        return a + b

    @registry.tool()
    async def move(p: Point, dx: int) -> Point:
        """Moves a point."""
        return Point(x=p.x + dx, y=p.y)

    @registry.tool()
    def shout(text: str) -> str:
        """A sync tool."""
        return text.upper()

    @registry.tool()
    async def whoami(ctx: ToolContext) -> str:
        """Reads its injected context."""
        return f"{ctx.session_id}/{ctx.principal_id}"

    @registry.tool()
    async def liar() -> int:
        """Breaks its own return annotation."""
        return "not a number"  # type: ignore[return-value]

    @registry.tool()
    async def untyped_result(n: int) -> Any:
        """Declares no output schema."""
        return {"n": n}

    @registry.tool(
        "echo",
        input_schema={
            "type": "object",
            "properties": {"text": {"type": "string"}},
            "required": ["text"],
        },
    )
    async def echo(arguments: dict[str, Any], context: ToolContext) -> Any:
        """Raw echo."""
        return arguments["text"]

    return registry


def dispatcher(registry: ToolRegistry | None = None, **kwargs: Any) -> Dispatcher:
    return Dispatcher(registry if registry is not None else make_registry(), **kwargs)


async def session_for(version: str, d: Dispatcher | None = None, **kwargs: Any) -> McpSession:
    session = McpSession(d if d is not None else dispatcher(), **kwargs)
    sink = Sink()
    params = {"protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "t"}}
    await session.handle(Request(0, "initialize", params), sink)
    assert sink.last["result"]["protocolVersion"] == version
    await session.handle(Notification("notifications/initialized"), sink)
    return session


async def listed(session: McpSession) -> dict[str, dict[str, Any]]:
    sink = await request(session, "tools/list")
    return {tool["name"]: tool for tool in sink.last["result"]["tools"]}


# -- tools/list ---------------------------------------------------------------------------------


async def test_typed_entry_on_the_newest_revision() -> None:
    tools = await listed(await session_for("2025-11-25"))
    assert list(tools) == ["add", "move", "shout", "whoami", "liar", "untyped_result", "echo"]
    assert tools["add"] == {
        "name": "add",
        "title": "Add",
        "description": "Adds two numbers.",
        "inputSchema": ADD_INPUT,
        "outputSchema": ADD_OUTPUT,
        "annotations": ADD_ANNOTATIONS,
    }
    assert tools["whoami"]["inputSchema"] == {"properties": {}, "type": "object"}
    assert "outputSchema" not in tools["untyped_result"]
    assert "outputSchema" not in tools["echo"]
    assert tools["move"]["outputSchema"]["properties"]["x"] == {"title": "X", "type": "integer"}


@pytest.mark.parametrize(
    ("version", "kept"),
    [
        ("2024-11-05", set()),
        ("2025-03-26", {"annotations"}),
        ("2025-06-18", {"annotations", "title", "outputSchema"}),
        ("2025-11-25", {"annotations", "title", "outputSchema"}),
    ],
)
async def test_entry_fields_per_revision(version: str, kept: set[str]) -> None:
    tools = await listed(await session_for(version))
    optional = {"annotations", "title", "outputSchema"}
    assert set(tools["add"]) == {"name", "description", "inputSchema"} | kept
    assert set(tools["add"]) & optional == kept
    assert tools["add"]["inputSchema"] == ADD_INPUT  # never trimmed


# -- tools/call ---------------------------------------------------------------------------------


async def test_wrapped_result_has_text_and_structured_content() -> None:
    sink = await call_tool(await session_for("2025-11-25"), "add", {"a": 2, "b": 3})
    assert sink.last["result"] == {
        "content": [{"type": "text", "text": "5"}],
        "structuredContent": {"result": 5},
        "isError": False,
    }


async def test_model_result_is_the_structured_content() -> None:
    sink = await call_tool(await session_for("2025-11-25"), "move", {"p": {"x": 1}, "dx": 2})
    assert sink.last["result"] == {
        "content": [{"type": "text", "text": '{"x":3,"y":0}'}],
        "structuredContent": {"x": 3, "y": 0},
        "isError": False,
    }


async def test_structured_content_only_from_0618() -> None:
    sink = await call_tool(await session_for("2025-03-26"), "add", {"a": 2})
    assert sink.last["result"] == {"content": [{"type": "text", "text": "3"}], "isError": False}


async def test_sync_tool_and_string_result() -> None:
    sink = await call_tool(await session_for("2025-11-25"), "shout", {"text": "hi"})
    assert sink.last["result"] == {
        "content": [{"type": "text", "text": "HI"}],
        "structuredContent": {"result": "HI"},
        "isError": False,
    }


async def test_context_is_injected() -> None:
    session = await session_for("2025-11-25", session_id="sess-1", principal_id="alice")
    sink = await call_tool(session, "whoami")
    assert sink.last["result"]["structuredContent"] == {"result": "sess-1/alice"}


async def test_no_output_schema_means_text_only() -> None:
    sink = await call_tool(await session_for("2025-11-25"), "untyped_result", {"n": 4})
    assert sink.last["result"] == {
        "content": [{"type": "text", "text": '{"n":4}'}],
        "isError": False,
    }


async def test_output_breaking_the_annotation_is_an_error_result() -> None:
    sink = await call_tool(await session_for("2025-11-25"), "liar")
    result = sink.last["result"]
    assert result["isError"] is True
    assert "structuredContent" not in result
    assert result["content"][0]["text"].startswith(
        "liar returned output that does not match its outputSchema: '(root)': Input should be"
        " a valid integer"
    )


async def test_invalid_arguments_by_revision() -> None:
    message = (
        "invalid arguments for add: 'a': Input should be a valid integer,"
        " unable to parse string as an integer"
    )
    new = await call_tool(await session_for("2025-11-25"), "add", {"a": "two"})
    assert new.last["result"] == {"content": [{"type": "text", "text": message}], "isError": True}
    old = await call_tool(await session_for("2025-06-18"), "add", {"a": "two"})
    assert old.last["error"] == {"code": -32602, "message": message}
    missing = await call_tool(await session_for("2025-06-18"), "move", {"p": {"y": 1}})
    assert missing.last["error"]["message"] == (
        "invalid arguments for move: 'p.x': Field required; 'dx': Field required"
    )


async def test_arguments_must_be_an_object() -> None:
    sink = await call_tool(await session_for("2025-06-18"), "add", [1, 2])
    assert sink.last["error"] == {"code": -32602, "message": "arguments for add must be an object"}


async def test_modern_typed_call() -> None:
    session = McpSession(dispatcher(), modern=True)
    sink = await request(session, "tools/call", modern_params(name="add", arguments={"a": 40}))
    result = sink.last["result"]
    assert result["structuredContent"] == {"result": 41}
    assert result["content"] == [{"type": "text", "text": "41"}]
    assert result["isError"] is False and result["resultType"] == "complete"


# -- the raw form -------------------------------------------------------------------------------


async def test_raw_tool_with_input_schema_still_works() -> None:
    session = await session_for("2025-11-25")
    ok = await call_tool(session, "echo", {"text": "hello"})
    assert ok.last["result"] == {"content": [{"type": "text", "text": "hello"}], "isError": False}
    bad = await call_tool(session, "echo", {"text": 5})
    assert bad.last["result"]["isError"] is True
    assert bad.last["result"]["content"][0]["text"] == (
        "invalid arguments for echo at text: 5 is not of type 'string'"
    )


async def raw_long(arguments: dict[str, Any], context: ToolContext) -> Any:
    return arguments


async def raw_short(args: dict[str, Any], ctx: ToolContext) -> Any:
    return args


async def typed_pair(arguments: int, context: str) -> int:
    return arguments


async def two_plain(a: Any, b: Any) -> Any:
    return a


@pytest.mark.parametrize(
    ("fn", "raw", "is_raw"),
    [
        (raw_long, None, True),
        (raw_short, None, True),
        (two_plain, None, False),
        (typed_pair, False, False),
        (two_plain, True, True),
    ],
)
def test_raw_detection(fn: Any, raw: bool | None, is_raw: bool) -> None:
    tool = make_tool(fn, raw=raw)
    assert (tool.signature is None) is is_raw
    if is_raw:
        assert tool.handler is fn
        assert tool.input_schema == {"type": "object", "properties": {}}
    else:
        assert list(tool.input_schema["properties"]) == list(inspect.signature(fn).parameters)


def test_typed_pair_schema_with_raw_false() -> None:
    tool = make_tool(typed_pair, raw=False)
    assert tool.input_schema["properties"] == {
        "arguments": {"title": "Arguments", "type": "integer"},
        "context": {"title": "Context", "type": "string"},
    }
    assert tool.output_schema == ADD_OUTPUT


def test_input_schema_means_raw() -> None:
    schema = {"type": "object", "properties": {"q": {"type": "string"}}}
    tool = make_tool(two_plain, input_schema=schema)
    assert tool.signature is None and tool.handler is two_plain
    assert tool.input_schema == schema


def test_raw_form_mistakes_are_refused() -> None:
    def sync_raw(arguments: dict[str, Any], context: ToolContext) -> Any:
        return arguments

    with pytest.raises(TypeError, match=r"^tool 'sync_raw': a raw \(arguments, context\) tool"):
        make_tool(sync_raw)
    with pytest.raises(TypeError, match=r"^tool 'two_plain': input_schema= is for raw"):
        make_tool(two_plain, input_schema={"type": "object"}, raw=False)
    registry = ToolRegistry()
    with pytest.raises(TypeError, match=r"use @tool\(\) with parentheses"):
        registry.tool(two_plain)  # type: ignore[arg-type]


def test_name_and_description_default_from_the_function() -> None:
    async def fancy_name(a: int) -> int:
        """First line.

        More.
        """
        return a

    tool = make_tool(fancy_name)
    assert tool.name == "fancy_name"
    assert tool.description == "First line.\n\nMore."
    named = make_tool(fancy_name, name="other", description="given")
    assert (named.name, named.description) == ("other", "given")


# -- explicit output schema on a typed tool -----------------------------------------------------


async def test_explicit_output_schema_replaces_the_annotation() -> None:
    registry = ToolRegistry()
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}

    @registry.tool(output_schema=schema)
    async def counted(n: int) -> dict[str, Any]:
        return {"n": n} if n >= 0 else {"m": n}

    assert registry.get("counted").output_schema == schema
    session = await session_for("2025-11-25", dispatcher(registry))
    ok = await call_tool(session, "counted", {"n": 2})
    assert ok.last["result"] == {
        "content": [{"type": "text", "text": '{"n":2}'}],
        "structuredContent": {"n": 2},
        "isError": False,
    }
    bad = await call_tool(session, "counted", {"n": -1})
    assert bad.last["result"] == {
        "content": [
            {
                "type": "text",
                "text": "counted returned output that does not match its outputSchema at (root)",
            }
        ],
        "isError": True,
    }


# -- remove and on_change -----------------------------------------------------------------------


async def test_remove_and_on_change() -> None:
    registry = make_registry()
    changes: list[int] = []
    registry.on_change.append(lambda: changes.append(len(registry)))
    session = await session_for("2025-11-25", dispatcher(registry))

    removed = registry.remove("add")
    assert removed.name == "add" and changes == [6]
    assert "add" not in await listed(session)
    sink = await call_tool(session, "add", {"a": 1})
    assert sink.last["error"] == {"code": -32602, "message": "unknown tool: add"}
    with pytest.raises(UnknownTool):
        registry.remove("add")
    assert changes == [6]  # a failed remove changes nothing

    @registry.tool()
    async def add(a: int) -> int:
        return a * 10

    assert changes == [6, 7]
    assert list(await listed(session))[-1] == "add"  # back, at the end
    sink = await call_tool(session, "add", {"a": 4})
    assert sink.last["result"]["structuredContent"] == {"result": 40}


async def test_readded_tool_is_checked_against_its_own_output_schema() -> None:
    # Regression test (fixed; it was: protocol/dispatch.py, Dispatcher.check_output): output validators are cached by tool
    # name in ``_output_validators`` and never dropped, so a tool removed and registered again
    # under the same name is checked against the schema of the one it replaced.
    registry = ToolRegistry()

    @registry.tool("t", output_schema={"type": "object", "required": ["x"]})
    async def first(arguments: dict[str, Any], context: ToolContext) -> Any:
        return {"x": 1}

    session = await session_for("2025-11-25", dispatcher(registry))
    assert (await call_tool(session, "t")).last["result"]["isError"] is False
    registry.remove("t")

    @registry.tool("t", output_schema={"type": "object", "required": ["y"]})
    async def second(arguments: dict[str, Any], context: ToolContext) -> Any:
        return {"y": 1}

    sink = await call_tool(session, "t")
    assert sink.last["result"] == {
        "content": [{"type": "text", "text": '{"y":1}'}],
        "structuredContent": {"y": 1},
        "isError": False,
    }
