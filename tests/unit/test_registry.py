"""tools.registry: registration rules and argument checks, without a server."""

from __future__ import annotations

from typing import Any

import pytest

from datapulse.errors import InvalidParams, UnknownTool
from datapulse.tools.registry import Tool, ToolContext, ToolRegistry


async def _noop(args: dict[str, Any], ctx: ToolContext) -> Any:
    return None


@pytest.mark.parametrize("name", ["a", "get_time", "ns.tool-1", "x" * 128])
def test_valid_tool_names(name: str) -> None:
    ToolRegistry().add(Tool(name, "", _noop))


@pytest.mark.parametrize("name", ["", "x" * 129, "has space", "tool\n", "tool\r\n", "é"])
def test_invalid_tool_names(name: str) -> None:
    # "tool\n" passed re.match(r"^...$"): $ also matches before a trailing newline.
    with pytest.raises(ValueError, match="must be 1-128"):
        ToolRegistry().add(Tool(name, "", _noop))


def test_duplicate_and_bad_schemas_refused() -> None:
    registry = ToolRegistry()
    registry.add(Tool("t", "", _noop))
    with pytest.raises(ValueError, match="already registered"):
        registry.add(Tool("t", "", _noop))
    with pytest.raises(ValueError, match="type 'object'"):
        registry.add(Tool("u", "", _noop, input_schema={"type": "string"}))
    annotated = {"type": "object", "properties": {"a": {"type": "object", "x-mcp-header": "A"}}}
    with pytest.raises(ValueError, match="x-mcp-header"):
        registry.add(Tool("v", "", _noop, input_schema=annotated))


def test_validate_arguments() -> None:
    registry = ToolRegistry()
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    registry.add(Tool("t", "", _noop, input_schema=schema))
    assert registry.validate_arguments("t", {"n": 1}) == {"n": 1}
    with pytest.raises(InvalidParams, match="at \\(root\\)"):
        registry.validate_arguments("t", None)
    with pytest.raises(InvalidParams, match="must be an object"):
        registry.validate_arguments("t", [1])
    with pytest.raises(UnknownTool):
        registry.validate_arguments("nope", {})
