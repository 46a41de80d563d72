"""Test tools shared by the MCP test files: a sleeper whose cleanup is recorded, progress
reporters, a failing tool, a tool with required arguments, a logger, and one with x-mcp-header
annotations. ``Probe`` lets a test wait on what they did."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import trio

from datapulse.errors import ToolError
from datapulse.tools.registry import ToolContext, ToolRegistry


@dataclass
class Probe:
    """What the test tools did, so tests can wait on them and check their cleanup."""

    started: trio.Event = field(default_factory=trio.Event)
    gate: trio.Event = field(default_factory=trio.Event)
    cleaned: trio.Event = field(default_factory=trio.Event)


def add_test_tools(registry: ToolRegistry, probe: Probe) -> None:
    @registry.tool("sleeper", description="Sleeps until cancelled; records its cleanup.")
    async def sleeper(arguments: dict[str, Any], context: ToolContext) -> None:
        probe.started.set()
        try:
            await trio.sleep_forever()
        finally:
            probe.cleaned.set()

    @registry.tool(
        "progress",
        description="Reports progress 1..steps of steps, then returns.",
        input_schema={"type": "object", "properties": {"steps": {"type": "integer"}}},
    )
    async def progress(arguments: dict[str, Any], context: ToolContext) -> dict[str, int]:
        steps = arguments.get("steps", 3)
        for step in range(1, steps + 1):
            await context.report_progress(step, steps, f"step {step}")
        return {"steps": steps}

    @registry.tool("gated", description="Reports progress, waits for the test's gate, returns.")
    async def gated(arguments: dict[str, Any], context: ToolContext) -> dict[str, bool]:
        await context.report_progress(1, 2, "waiting")
        probe.started.set()
        await probe.gate.wait()
        await context.report_progress(2, 2, "released")
        return {"released": True}

    @registry.tool("failing", description="Always fails.")
    async def failing(arguments: dict[str, Any], context: ToolContext) -> None:
        raise ToolError("the disk is full")

    @registry.tool(
        "needs_n",
        description="Needs an integer n.",
        input_schema={
            "type": "object",
            "properties": {"n": {"type": "integer"}},
            "required": ["n"],
        },
    )
    async def needs_n(arguments: dict[str, Any], context: ToolContext) -> dict[str, int]:
        return {"n": arguments["n"]}

    @registry.tool("chatty", description="Logs at debug, info and error.")
    async def chatty(arguments: dict[str, Any], context: ToolContext) -> str:
        for level in ("debug", "info", "error"):
            await context.log(level, {"said": level})
        return "ok"

    @registry.tool(
        "regional",
        description="Mirrors arguments into Mcp-Param-* headers (2026-07-28).",
        input_schema={
            "type": "object",
            "properties": {
                "region": {"type": "string", "x-mcp-header": "Region"},
                "count": {"type": "integer", "x-mcp-header": "Count"},
                "dry": {"type": "boolean", "x-mcp-header": "Dry"},
            },
        },
    )
    async def regional(arguments: dict[str, Any], context: ToolContext) -> dict[str, Any]:
        return dict(arguments)
