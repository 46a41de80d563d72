"""ToolRegistry: one registry of tools behind every transport.

A tool is a name, a description, a JSON Schema for its input (and optionally its output), an
optional OAuth scope it requires, and an async handler ``handler(arguments, context)``. The
registry validates arguments against the input schema before the handler runs, so handlers can
trust their input's shape. Transports never call handlers directly: the protocol layer
(``datapulse.protocol.methods``) checks arguments with ``validate_arguments`` and runs the tool
with ``run``, so validation and error mapping are the same on every transport.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jsonschema

from datapulse.core.mcp_http import invalid_header_annotation
from datapulse.errors import InvalidParams, UnknownTool

ToolHandler = Callable[[dict[str, Any], "ToolContext"], Awaitable[Any]]
ProgressSink = Callable[[float, float | None, str | None], Awaitable[None]]
LogSink = Callable[[str, Any], Awaitable[None]]

# MCP 2025-11-25 recommends 1-128 characters from this set; we enforce it at registration, with
# fullmatch (``$`` alone would let a trailing newline through).
_TOOL_NAME = re.compile(r"[A-Za-z0-9_.-]{1,128}")

EMPTY_OBJECT_SCHEMA: Mapping[str, Any] = {"type": "object", "properties": {}}


async def _discard_progress(progress: float, total: float | None, message: str | None) -> None:
    return None


async def _discard_log(level: str, data: Any) -> None:
    return None


@dataclass
class ToolContext:
    """What a running tool may know and do besides reading its arguments.

    The transport fills in the sinks: progress goes to the caller only when it asked for progress
    (an MCP ``progressToken``); log messages go out as ``notifications/message`` when the session's
    log level lets them through. Both are no-ops otherwise, so tools call them unconditionally.
    """

    session_id: str | None = None
    principal_id: str | None = None
    scopes: frozenset[str] = frozenset()
    progress_sink: ProgressSink = _discard_progress
    log_sink: LogSink = _discard_log

    async def report_progress(
        self, progress: float, total: float | None = None, message: str | None = None
    ) -> None:
        await self.progress_sink(progress, total, message)

    async def log(self, level: str, data: Any) -> None:
        await self.log_sink(level, data)


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    handler: ToolHandler
    input_schema: Mapping[str, Any] = field(default_factory=lambda: dict(EMPTY_OBJECT_SCHEMA))
    output_schema: Mapping[str, Any] | None = None
    required_scope: str | None = None

    def describe(self) -> dict[str, Any]:
        """The MCP ``tools/list`` entry for this tool."""
        entry: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "inputSchema": dict(self.input_schema),
        }
        if self.output_schema is not None:
            entry["outputSchema"] = dict(self.output_schema)
        return entry


class ToolRegistry:
    """Name -> Tool, in registration order (which is also ``tools/list`` order)."""

    def __init__(self) -> None:
        self._tools: dict[str, Tool] = {}
        self._validators: dict[str, jsonschema.protocols.Validator] = {}

    def add(self, tool: Tool) -> Tool:
        if not _TOOL_NAME.fullmatch(tool.name):
            raise ValueError(f"tool name {tool.name!r} must be 1-128 of A-Z a-z 0-9 _ . -")
        if tool.name in self._tools:
            raise ValueError(f"tool {tool.name!r} is already registered")
        if tool.input_schema.get("type") != "object":
            raise ValueError(f"tool {tool.name!r}: inputSchema must have type 'object'")
        problem = invalid_header_annotation(dict(tool.input_schema))
        if problem is not None:
            raise ValueError(f"tool {tool.name!r}: {problem}")
        validator_cls = jsonschema.validators.validator_for(tool.input_schema)
        validator_cls.check_schema(dict(tool.input_schema))
        self._validators[tool.name] = validator_cls(dict(tool.input_schema))
        self._tools[tool.name] = tool
        return tool

    def tool(
        self,
        name: str | None = None,
        *,
        description: str | None = None,
        input_schema: Mapping[str, Any] | None = None,
        output_schema: Mapping[str, Any] | None = None,
        scope: str | None = None,
    ) -> Callable[[ToolHandler], ToolHandler]:
        """Decorator: ``@registry.tool("name", input_schema={...})`` over ``async def f(args, ctx)``."""

        def register(handler: ToolHandler) -> ToolHandler:
            self.add(
                Tool(
                    name=name or handler.__name__,
                    description=description or (handler.__doc__ or "").strip(),
                    handler=handler,
                    input_schema=input_schema or dict(EMPTY_OBJECT_SCHEMA),
                    output_schema=output_schema,
                    required_scope=scope,
                )
            )
            return handler

        return register

    def get(self, name: str) -> Tool:
        try:
            return self._tools[name]
        except KeyError:
            raise UnknownTool(f"unknown tool: {name}") from None

    def __iter__(self) -> Any:
        return iter(self._tools.values())

    def __len__(self) -> int:
        return len(self._tools)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def validate_arguments(self, name: str, arguments: Any) -> dict[str, Any]:
        """Check ``arguments`` against the tool's input schema; raise InvalidParams naming the field."""
        self.get(name)
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, dict):
            raise InvalidParams(f"arguments for {name} must be an object")
        validator = self._validators[name]
        # is_valid stops at the first failure and builds no error objects: the common case (valid
        # arguments) costs a fraction of iter_errors + best_match, which only bad input pays for.
        if validator.is_valid(arguments):
            return arguments
        error = jsonschema.exceptions.best_match(validator.iter_errors(arguments))
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path) or "(root)"
            raise InvalidParams(f"invalid arguments for {name} at {where}: {error.message}")
        return arguments

    async def run(self, tool: Tool, checked_arguments: dict[str, Any], context: ToolContext) -> Any:
        """Run a tool whose arguments ``validate_arguments`` already accepted (no second check)."""
        return await tool.handler(checked_arguments, context)
