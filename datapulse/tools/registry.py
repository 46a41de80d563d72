"""ToolRegistry: one registry of tools behind every transport.

A tool is a name, a description, a JSON Schema for its input (and optionally its output), an
optional OAuth scope it requires, and an async handler ``handler(arguments, context)``. The
registry validates arguments before the handler runs, so handlers can trust their input's shape.

Two ways to write one, both through ``ToolRegistry.tool``:

* **typed**: ``async def add(a: int, b: int = 1) -> int``. The schemas come from the signature
  and the return annotation (``tools.signature``), arguments are validated and converted by
  pydantic, a ``ToolContext`` parameter is injected, and a sync function runs in a worker
  thread so it cannot stall the event loop.
* **raw**: ``async def echo(arguments, context)`` with ``input_schema=`` (or no schema: no
  arguments). Arguments are checked with jsonschema and handed over as the dict they are.

``tool`` tells them apart by the signature (see ``_is_raw``); ``raw=`` overrides the guess. Transports never call handlers directly: the protocol layer
(``datapulse.protocol.methods``) checks arguments with ``validate_arguments`` and runs the tool
with ``run``, so validation and error mapping are the same on every transport.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import jsonschema

from datapulse.core import mcp
from datapulse.core.inputs import (
    Elicitation,
    ElicitResult,
    InputRequest,
    ListRoots,
    Sampling,
    check_answer,
)
from datapulse.core.mcp_http import invalid_header_annotation
from datapulse.core.tasks import TaskSupport, execution_entry, task_support_of
from datapulse.errors import InvalidParams, ToolError, UnknownTool
from datapulse.tools.signature import WRAPPED_KEY as WRAPPED
from datapulse.tools.signature import FunctionSignature

F = TypeVar("F", bound=Callable[..., Any])
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


InputSink = Callable[[dict[str, "InputRequest"]], Awaitable[dict[str, Any]]]


async def _no_detach() -> None:
    return None


async def _no_input(requests: dict[str, InputRequest]) -> dict[str, Any]:
    raise ToolError("this call cannot ask the client for input")


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
    client_capabilities: Mapping[str, Any] = field(default_factory=dict)
    """What the client declared it can do: ``initialize``'s capabilities in the handshake era,
    the request's own ``_meta`` on 2026-07-28."""
    protocol_version: str | None = None
    input_sink: InputSink = _no_input
    detach_sink: Callable[[], Awaitable[None]] = _no_detach
    """Makes the call a task now (``protocol.tasks.TaskHandle.detach``); a no-op otherwise."""
    """Asks the client (``core.inputs``): a request over the stream, or ``input_required``."""
    _asked: int = 0

    # -- asking the client, mid-call ---------------------------------------------------------

    async def request_input(self, requests: Mapping[str, InputRequest]) -> dict[str, Any]:
        """Ask the client several things at once (``{"name": Elicitation(...), ...}``) and
        return its answers by the same keys. On 2026-07-28 the call first answers
        ``input_required`` and the tool runs again, from the start, when the client retries
        with the answers: code before this call runs once per round, so keep it free of side
        effects or make them idempotent. -32021 if the client did not declare a capability
        one of the requests needs."""
        for request in requests.values():
            if not request.supported_by(self.client_capabilities):
                raise mcp.MissingClientCapability(request.capability)
        answers = await self.input_sink(dict(requests))
        return {key: check_answer(request, answers[key]) for key, request in requests.items()}

    def _key(self, kind: str, key: str | None) -> str:
        # The n-th question of a run has the same key in every round of a 2026 call.
        self._asked += 1
        return key or f"{kind}-{self._asked}"

    async def elicit(
        self, message: str, schema: Mapping[str, Any] | None = None, *, key: str | None = None
    ) -> ElicitResult:
        """Ask the user to fill a form (``schema``: flat JSON Schema of primitive fields)."""
        key = self._key("elicit", key)
        answers = await self.request_input({key: Elicitation(message, schema)})
        result: ElicitResult = answers[key]
        return result

    async def elicit_url(
        self, message: str, url: str, *, elicitation_id: str, key: str | None = None
    ) -> ElicitResult:
        """Send the user to ``url`` (2025-11-25 URL mode: the data never passes the client)."""
        key = self._key("elicit", key)
        request = Elicitation(message, mode="url", url=url, elicitation_id=elicitation_id)
        result: ElicitResult = (await self.request_input({key: request}))[key]
        return result

    async def sample(
        self,
        messages: str | list[str | Mapping[str, Any]],
        *,
        max_tokens: int = 1000,
        system_prompt: str | None = None,
        key: str | None = None,
        **params: Any,
    ) -> dict[str, Any]:
        """A completion from the client's model: its ``CreateMessageResult`` (``role``,
        ``content``, ``model``, ``stopReason``). ``params``: further MCP sampling params."""
        key = self._key("sample", key)
        listed = [messages] if isinstance(messages, str) else messages
        request = Sampling(listed, max_tokens, system_prompt, params)
        result: dict[str, Any] = (await self.request_input({key: request}))[key]
        return result

    async def list_roots(self, *, key: str | None = None) -> list[dict[str, Any]]:
        """The client's roots (``roots/list``)."""
        key = self._key("roots", key)
        roots: list[dict[str, Any]] = (await self.request_input({key: ListRoots()}))[key]
        return roots

    async def detach(self) -> None:
        """Go on as a task: the call is answered with a task handle now and the rest of the tool
        runs in the background (a ``task_detach`` tool on 2026-07-28; a no-op otherwise)."""
        await self.detach_sink()

    def require_client_capability(self, capability: str) -> None:
        """Refuse the call unless the client declared ``capability`` (``"sampling"``,
        ``"elicitation"``...): a protocol error (-32021, HTTP 400 on 2026-07-28) rather than a
        request the client cannot answer."""
        if capability not in self.client_capabilities:
            raise mcp.MissingClientCapability(capability)

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
    title: str | None = None
    annotations: Mapping[str, Any] | None = None
    """MCP tool annotations (``readOnlyHint``, ``destructiveHint``...): hints, never trusted."""
    signature: FunctionSignature | None = None
    """Set for a typed tool: its arguments are validated by the signature, not by jsonschema."""
    task_support: TaskSupport = "forbidden"
    """Whether a call may run as a durable task (``protocol.tasks``): 2025-11-25's
    ``execution.taskSupport``; a ``required`` tool runs only as a task."""
    task_detach: bool = False
    """2026-07-28: the call runs inline (its input over the round trip) until the tool calls
    ``context.detach()``, and is a task from then on."""

    def describe(self) -> dict[str, Any]:
        """The MCP ``tools/list`` entry for this tool (``core.mcp`` trims it per revision)."""
        entry: dict[str, Any] = {"name": self.name}
        if self.title is not None:
            entry["title"] = self.title
        entry["description"] = self.description
        entry["inputSchema"] = dict(self.input_schema)
        if self.output_schema is not None:
            entry["outputSchema"] = dict(self.output_schema)
        if self.annotations:
            entry["annotations"] = dict(self.annotations)
        execution = execution_entry(self.task_support)
        if execution is not None:
            entry["execution"] = execution  # core.tasks.entry_for_version keeps it at 2025-11-25
        return entry


def typed_handler(signature: FunctionSignature) -> ToolHandler:
    """The ``(arguments, context)`` handler that calls a typed function with its keyword
    arguments (already validated by ``signature.bind``) and the injected context."""
    injected = tuple(signature.injected)

    async def handler(arguments: dict[str, Any], context: ToolContext) -> Any:
        kwargs = dict(arguments)
        for name in injected:
            kwargs[name] = context
        value = await signature.call(kwargs)
        if signature.output_adapter is None or isinstance(value, mcp.ToolOutput):
            return value  # checked against an explicit outputSchema, if any, by the dispatcher
        structured = signature.to_json(value)  # raises ToolError when it breaks the schema
        shown = structured[WRAPPED] if signature.wrap_output else structured
        return mcp.ToolOutput(content=mcp.text_content(shown), structured_content=structured)

    return handler


def _is_raw(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` is written ``(arguments, context)``: the raw form's two parameters, under
    the names every raw tool uses. A typed tool with exactly those names is told apart with
    ``raw=False``."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False
    return (
        len(params) == 2
        and params[0].name in ("arguments", "args")
        and params[1].name in ("context", "ctx")
    )


class ToolRegistry:
    """Name -> Tool, in registration order (which is also ``tools/list`` order)."""

    def __init__(self) -> None:
        self._tools: dict[str, Tool] = {}
        self._validators: dict[str, jsonschema.protocols.Validator] = {}
        self.on_change: list[Callable[[], None]] = []
        """Called after a tool is added or removed (the server sends ``list_changed``)."""

    def _changed(self) -> None:
        for callback in self.on_change:
            callback()

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
        if tool.signature is None:
            validator_cls = jsonschema.validators.validator_for(tool.input_schema)
            validator_cls.check_schema(dict(tool.input_schema))
            self._validators[tool.name] = validator_cls(dict(tool.input_schema))
        self._tools[tool.name] = tool
        self._changed()
        return tool

    def remove(self, name: str) -> Tool:
        """Unregister a tool (calls already running finish); UnknownTool if there is none."""
        tool = self.get(name)
        del self._tools[name]
        self._validators.pop(name, None)
        self._changed()
        return tool

    def tool(
        self,
        name: str | None = None,
        *,
        title: str | None = None,
        description: str | None = None,
        input_schema: Mapping[str, Any] | None = None,
        output_schema: Mapping[str, Any] | None = None,
        annotations: Mapping[str, Any] | None = None,
        scope: str | None = None,
        raw: bool | None = None,
        task: bool | str = False,
        task_detach: bool = False,
    ) -> Callable[[F], F]:
        """Decorator registering ``fn`` as a tool and returning it unchanged.

        ``@registry.tool()`` over a typed function (schemas from its annotations), or
        ``@registry.tool("name", input_schema={...})`` over ``async def f(arguments, context)``.
        """
        if callable(name):  # used bare, as @registry.tool
            raise TypeError("use @tool() with parentheses")

        def register(fn: F) -> F:
            self.add(
                make_tool(
                    fn,
                    name=name,
                    title=title,
                    description=description,
                    input_schema=input_schema,
                    output_schema=output_schema,
                    annotations=annotations,
                    scope=scope,
                    raw=raw,
                    task=task,
                    task_detach=task_detach,
                )
            )
            return fn

        return register

    def get(self, name: str) -> Tool:
        try:
            return self._tools[name]
        except KeyError:
            raise UnknownTool(f"unknown tool: {name}") from None

    def __iter__(self) -> Iterator[Tool]:
        return iter(list(self._tools.values()))  # a snapshot: tools may come and go meanwhile

    def __len__(self) -> int:
        return len(self._tools)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def validate_arguments(self, name: str, arguments: Any) -> dict[str, Any]:
        """Check ``arguments`` against the tool's input schema; raise InvalidParams naming the field."""
        if name not in self._tools:
            self.get(name)  # raises UnknownTool
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, dict):
            raise InvalidParams(f"arguments for {name} must be an object")
        tool = self._tools[name]
        if tool.signature is not None:
            return tool.signature.bind(arguments, f"arguments for {name}")
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


def make_tool(
    fn: Callable[..., Any],
    *,
    name: str | None = None,
    title: str | None = None,
    description: str | None = None,
    input_schema: Mapping[str, Any] | None = None,
    output_schema: Mapping[str, Any] | None = None,
    annotations: Mapping[str, Any] | None = None,
    scope: str | None = None,
    raw: bool | None = None,
    task: bool | str = False,
    task_detach: bool = False,
) -> Tool:
    """A ``Tool`` for ``fn`` in whichever form it is written (see the module docstring)."""
    name = name or str(getattr(fn, "__name__", ""))
    description = description or inspect.cleandoc(fn.__doc__ or "")
    if raw is None:
        raw = input_schema is not None or _is_raw(fn)
    if raw:
        if not inspect.iscoroutinefunction(inspect.unwrap(fn)):
            raise TypeError(f"tool {name!r}: a raw (arguments, context) tool must be async")
        return Tool(
            name=name,
            description=description,
            handler=fn,
            input_schema=input_schema or dict(EMPTY_OBJECT_SCHEMA),
            output_schema=output_schema,
            required_scope=scope,
            title=title,
            annotations=annotations,
            task_support=task_support_of(task),
            task_detach=task_detach,
        )
    if input_schema is not None:
        raise TypeError(f"tool {name!r}: input_schema= is for raw (arguments, context) tools")
    signature = FunctionSignature.of(fn, inject=(ToolContext,))
    if signature.injected and not signature.is_async:
        raise TypeError(
            f"tool {name!r}: a sync function runs in a worker thread and cannot use a"
            " ToolContext; make it async"
        )
    if output_schema is not None:
        # An explicit schema describes what the function returns, as it returns it.
        signature = dataclasses.replace(
            signature, output_schema=dict(output_schema), wrap_output=False, output_adapter=None
        )
    return Tool(
        name=name,
        description=description,
        handler=typed_handler(signature),
        input_schema=signature.input_schema,
        output_schema=signature.output_schema,
        required_scope=scope,
        title=title,
        annotations=annotations,
        signature=signature,
        task_support=task_support_of(task),
        task_detach=task_detach,
    )
