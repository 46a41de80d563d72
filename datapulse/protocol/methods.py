"""The MCP methods, one coroutine each: ``(session, call) -> result``.

``protocol.session`` decides which method runs and turns what it returns or raises into the
JSON-RPC reply; the functions here only say what each method means. They read and update the
``McpSession`` they are given and use ``core.mcp`` for every wire shape. ``protocol.dispatch``
lists them in its method tables; this module imports neither it nor anything that imports it.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import trio

from datapulse.core import mcp
from datapulse.core import tasks as core_tasks
from datapulse.core.inputs import BadAnswer, InputRequest, InputRequired
from datapulse.core.jsonrpc import InvalidRequest
from datapulse.core.tokens import has_scope
from datapulse.errors import (
    Forbidden,
    InvalidParams,
    ResourceNotFound,
    ToolError,
    TooManyRequests,
)
from datapulse.protocol.call import Call
from datapulse.protocol.notices import ListenStream
from datapulse.protocol.session import McpSession
from datapulse.protocol.tasks import TaskHandle
from datapulse.tools.registry import Tool, ToolContext

log = logging.getLogger("datapulse.dispatch")


async def initialize(session: McpSession, call: Call) -> dict[str, Any]:
    if session.initialized:
        raise InvalidRequest("the session is already initialized")
    params = call.params
    requested = params.get("protocolVersion")
    if not isinstance(requested, str):
        raise InvalidParams("initialize needs a string protocolVersion")
    capabilities = params.get("capabilities", {})
    info = params.get("clientInfo")
    if not isinstance(capabilities, dict) or not isinstance(info, dict | None):
        raise InvalidParams("capabilities and clientInfo must be objects")
    # No await before this point: two racing initialize requests cannot both succeed.
    session.protocol_version = mcp.negotiate_version(requested)
    session.state.client_capabilities, session.state.client_info = capabilities, info
    session.initialized = True
    session._initialize_id = call.request.id
    d = session.dispatcher
    result = mcp.initialize_result(
        session.protocol_version, d.server_name, d.server_version, d.instructions
    )
    if d.tasks is not None:  # capabilities.tasks at 2025-11-25 (nothing before)
        extra = core_tasks.server_capabilities(session.protocol_version, modern=False)
        core_tasks.merge_capabilities(result["capabilities"], extra)
    return result


async def ping(session: McpSession, call: Call) -> dict[str, Any]:
    return {}


async def discover(session: McpSession, call: Call) -> dict[str, Any]:
    result = mcp.discover_result(session.dispatcher.instructions)
    if session.dispatcher.tasks is not None:  # capabilities.extensions[<the tasks extension>]
        extra = core_tasks.server_capabilities(mcp.MODERN_VERSION, modern=True)
        core_tasks.merge_capabilities(result["capabilities"], extra)
    return result


async def list_tools(session: McpSession, call: Call) -> dict[str, Any]:
    version, modern = session.protocol_version, session.modern
    entries = [
        core_tasks.entry_for_version(t.describe(), t.task_support, version, modern=modern)
        for t in session.dispatcher.registry
    ]
    return _page(session, call, "tools", entries)


def _page(session: McpSession, call: Call, key: str, entries: list[Any]) -> dict[str, Any]:
    """One page of a list method's result (``entries`` already described)."""
    d = session.dispatcher
    page, next_cursor = mcp.paginate(entries, call.params.get("cursor"), d.page_size)
    result: dict[str, Any] = {key: mcp.for_version(page, session.protocol_version, kind=key)}
    if next_cursor is not None:
        result["nextCursor"] = next_cursor
    return mcp.cacheable(result) if session.modern else result


async def list_resources(session: McpSession, call: Call) -> dict[str, Any]:
    resources = session.dispatcher.catalog.resources.resources()
    return _page(session, call, "resources", [r.describe() for r in resources])


async def list_resource_templates(session: McpSession, call: Call) -> dict[str, Any]:
    templates = session.dispatcher.catalog.resources.templates()
    return _page(session, call, "resourceTemplates", [t.describe() for t in templates])


def _uri_of(call: Call) -> str:
    uri = call.params.get("uri")
    if not isinstance(uri, str) or not uri:
        raise InvalidParams(f"{call.request.method} needs a string uri")
    return uri


def _not_found(session: McpSession, exc: ResourceNotFound) -> InvalidParams:
    # 2026-07-28 answers -32602 where every handshake revision named -32002.
    if session.modern:
        return InvalidParams(exc.detail, data=exc.extra["data"])  # the URI, cut to its bound
    return exc


async def read_resource(session: McpSession, call: Call) -> dict[str, Any]:
    uri = _uri_of(call)
    try:
        contents = await session.dispatcher.catalog.resources.read(uri)
    except ResourceNotFound as exc:
        raise _not_found(session, exc) from None
    result = {"contents": contents}
    return mcp.cacheable(result) if session.modern else result


async def subscribe(session: McpSession, call: Call) -> dict[str, Any]:
    uri = _uri_of(call)
    resources = session.dispatcher.catalog.resources
    if not resources.exists(uri):
        raise ResourceNotFound(uri)
    subscriptions = session.state.subscriptions
    if uri not in subscriptions:
        limit = session.dispatcher.max_subscriptions
        if len(subscriptions) >= limit:
            raise InvalidParams(f"at most {limit} resource subscriptions per session")
        subscriptions.append(uri)
    return {}


async def unsubscribe(session: McpSession, call: Call) -> dict[str, Any]:
    uri = _uri_of(call)
    if uri in session.state.subscriptions:
        session.state.subscriptions.remove(uri)
    return {}


async def listen(session: McpSession, call: Call) -> dict[str, Any]:
    """2026-07-28 ``subscriptions/listen``: acknowledge, then relay what the filter asked for
    until the client closes the stream (this call is cancelled) or the server ends it (a
    result: the spec's graceful close)."""
    wanted = mcp.parse_listen_filter(call.params)
    for uri in wanted.resource_subscriptions:
        if not session.dispatcher.catalog.resources.exists(uri):
            raise _not_found(session, ResourceNotFound(uri))
    subscription_id = call.request.id
    stream = ListenStream(subscription_id, wanted, call.send)
    # Registered before the acknowledgment goes out, so nothing that happens after the client
    # reads it is missed; the acknowledgment is the call's first message all the same, because
    # every message goes through the call's one lock, in order.
    with session.dispatcher.notices.listen(stream):
        params = {"notifications": wanted.to_wire()}
        await call.send(
            mcp.listen_notification(
                "notifications/subscriptions/acknowledged", params, subscription_id
            )
        )
        await stream.ended.wait()
    return {"_meta": mcp.listen_meta(subscription_id)}


async def list_prompts(session: McpSession, call: Call) -> dict[str, Any]:
    prompts = session.dispatcher.catalog.prompts
    return _page(session, call, "prompts", [p.describe() for p in prompts])


async def get_prompt(session: McpSession, call: Call) -> dict[str, Any]:
    prompt = session.dispatcher.catalog.prompts.get(call.params.get("name"))
    asking = _Asking(
        session, call, {"name": prompt.name, "arguments": call.params.get("arguments")}
    )
    await asking.load()
    context = tool_context(session, call, prompt.name, asking)
    try:
        return await prompt.render(call.params.get("arguments"), context)
    except BaseException as exc:
        asked = await asking.input_required(exc)
        if asked is None:
            raise
        return asked


async def complete(session: McpSession, call: Call) -> dict[str, Any]:
    return await session.dispatcher.catalog.completions.complete(call.params)


async def set_level(session: McpSession, call: Call) -> dict[str, Any]:
    level = call.params.get("level")
    if not mcp.is_log_level(level):
        raise InvalidParams(f"level must be one of {', '.join(mcp.LOG_LEVELS)}")
    session.log_level = level
    return {}


async def call_tool(session: McpSession, call: Call) -> dict[str, Any]:
    d = session.dispatcher
    name = call.params.get("name")
    if not isinstance(name, str):
        raise InvalidParams("tools/call needs a string name")
    tool = d.registry.get(name)  # UnknownTool: a protocol error (-32602), not an isError result
    if not has_scope(call.scopes, tool.required_scope):
        d.metrics.tool_call(name, "forbidden")
        raise Forbidden(f"{name} needs the scope {tool.required_scope!r}")
    try:
        arguments = d.registry.validate_arguments(name, call.params.get("arguments"))
    except InvalidParams as exc:
        d.metrics.tool_call(name, "invalid_arguments")
        # SEP-1303 (2025-11-25): bad arguments are the model's to fix, so they come back as an
        # isError result it can read; older revisions answered -32602.
        if session.modern or mcp.version_at_least(session.protocol_version, "2025-11-25"):
            return mcp.tool_error_result(str(exc))
        raise
    if d.tasks is not None and d.tasks.wants_task(session, call, tool):

        async def run(handle: TaskHandle) -> dict[str, Any]:
            return await run_tool(session, call, tool, arguments, task=handle)

        defer = math.inf if session.modern and tool.task_detach else None
        created: dict[str, Any] = await d.tasks.start(
            session, call, tool, arguments, run, defer_s=defer
        )
        return created
    limit = session.call_limit
    try:
        # On behalf of the call, not the task: one task may run several sessions' calls in turn.
        limit.acquire_on_behalf_of_nowait(call)
    except trio.WouldBlock:
        d.metrics.rejected("calls_per_session")
        d.metrics.tool_call(name, "refused")
        raise TooManyRequests("too many concurrent calls") from None
    started = time.perf_counter()
    outcome = "cancelled"  # unless it returns or raises: the client or the session went away
    try:
        result = await run_tool(session, call, tool, arguments)
        outcome = "error" if result.get("isError") else "ok"
        return result
    except Exception:
        outcome = "protocol_error"
        raise
    finally:
        limit.release_on_behalf_of(call)
        d.metrics.tool_call(name, outcome, time.perf_counter() - started)


class _Asking:
    """How a request asks the client for input, per era (``core.inputs``): over the stream
    (handshake), or by answering ``input_required`` and continuing on the retry (2026)."""

    def __init__(self, session: McpSession, call: Call, salient: Any) -> None:
        self.session = session
        self.call = call
        self.salient = salient
        self.answers: dict[str, Any] = {}
        self.used: dict[str, Any] = {}
        """The answers this run consumed: what the next round's state keeps."""

    async def load(self) -> None:
        if self.session.modern:
            self.answers = await self.session.dispatcher.round_trips.answers(
                self.call.params, self.session.principal_id, self.call.request.method, self.salient
            )

    async def sink(self, requests: dict[str, InputRequest]) -> dict[str, Any]:
        session = self.session
        if session.modern:
            missing = {k: r for k, r in requests.items() if k not in self.answers}
            if missing:
                raise InputRequired(missing)
            given = {k: self.answers[k] for k in requests}
            self.used.update(given)
            return given
        timeout = session.dispatcher.input_timeout_s
        return {k: await session.ask_client(self.call, r, timeout) for k, r in requests.items()}

    async def input_required(self, exc: BaseException) -> dict[str, Any] | None:
        """The ``input_required`` result if ``exc`` is (or only holds) ``InputRequired``."""
        asked = _input_required_in(exc)
        if asked is None or not self.session.modern:
            return None
        return await self.session.dispatcher.round_trips.input_required(
            asked.requests,
            self.used,
            self.session.principal_id,
            self.call.request.method,
            self.salient,
        )


def _input_required_in(exc: BaseException) -> InputRequired | None:
    if isinstance(exc, InputRequired):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        found, rest = exc.split(InputRequired)
        if found is not None and rest is None:
            leaf: BaseException = found
            while isinstance(leaf, BaseExceptionGroup):
                leaf = leaf.exceptions[0]
            return leaf if isinstance(leaf, InputRequired) else None
    return None


def tool_context(session: McpSession, call: Call, logger: str, asking: _Asking) -> ToolContext:
    async def log_sink(level: str, data: Any) -> None:
        await call.log(logger, level, data)

    if call.meta is not None:
        capabilities = call.meta.client_capabilities
    else:
        capabilities = session.state.client_capabilities or {}
    return ToolContext(
        session_id=session.session_id,
        principal_id=session.principal_id,
        scopes=call.scopes or frozenset(),
        progress_sink=call.progress,
        log_sink=log_sink,
        client_capabilities=capabilities,
        protocol_version=session.protocol_version,
        input_sink=asking.sink,
    )


async def run_tool(
    session: McpSession,
    call: Call,
    tool: Tool,
    arguments: dict[str, Any],
    task: TaskHandle | None = None,
) -> dict[str, Any]:
    d = session.dispatcher
    asking = _Asking(session, call, {"name": tool.name, "arguments": call.params.get("arguments")})
    await asking.load()  # a bad or replayed requestState is refused before the tool runs
    context = tool_context(session, call, tool.name, asking)
    timeout = d.call_timeout_s
    if task is not None:
        # A task asks through its record (input_required + tasks/update, or over tasks/result)
        # once it is one, and is bounded by its TTL rather than by the call timeout.
        context.input_sink = task.input_sink(context.input_sink)
        context.detach_sink, timeout = task.detach, None
    output: Any = None
    with trio.move_on_after(math.inf if timeout is None else timeout) as deadline:
        try:
            output = await d.registry.run(tool, arguments, context)  # validated above
        except (mcp.MissingClientCapability, BadAnswer):
            raise  # protocol errors (-32021, -32602) the client must see as such
        except Exception as exc:
            # Cancelled is a BaseException and passes through untouched; everything a tool can
            # raise on its own becomes text the model can read. No traceback leaves the server.
            if not isinstance(exc, ToolError):
                log.warning("tool %s raised", tool.name, exc_info=True)
            return mcp.tool_error_result(describe(exc))
        except BaseException as exc:
            asked = await asking.input_required(exc)
            if asked is not None:
                return asked
            if isinstance(exc, BaseExceptionGroup) and exc.split(trio.Cancelled)[0] is None:
                # A tool's nursery mixing a question with a failure: the failure is the answer.
                return mcp.tool_error_result(describe(exc))
            raise
    if deadline.cancelled_caught:
        return mcp.tool_error_result(f"{tool.name} timed out after {timeout:g} s")
    problem = d.check_output(tool, output)
    if problem is not None:
        return mcp.tool_error_result(problem)
    try:
        return mcp.tool_call_result(
            output, session.protocol_version, output_schema=tool.output_schema
        )
    except TypeError:
        return mcp.tool_error_result(f"{tool.name} returned a value that is not JSON")


def describe(exc: BaseException) -> str:
    """A failure as one line of text: a ToolError's detail, an exception group's distinct
    leaf messages (a tool's nursery wraps its children's errors), else the message or type."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(dict.fromkeys(describe(e) for e in exc.exceptions))
    if isinstance(exc, ToolError):
        return exc.detail or str(exc)
    return str(exc) or type(exc).__name__
