"""The one JSON-RPC + MCP dispatcher behind every transport.

A transport owns bytes and connections; this module owns meaning. The transport parses a body
(``datapulse.core.jsonrpc.parse_message``), picks the ``McpSession`` it belongs to, and awaits
``session.handle(message, sink)``. Everything the server says about that message goes through
``sink``: progress and log notifications while it runs, then exactly one response, then nothing.
Notifications and client responses produce no output. The transport decides where the bytes go
(an SSE stream, a WebSocket, a JSON body) and whether it runs ``handle`` inline or in a nursery.

``handle`` awaits the whole request, tool included, so a transport that must keep reading (to
see ``notifications/cancelled``) runs it with ``nursery.start_soon``. Cancellation follows Trio:
a cancelled caller cancels the request; ``notifications/cancelled`` cancels only the request's
own scope, after which nothing is sent for it.

This is also the only place DatapulseErrors become JSON-RPC error objects (``encode_exception``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import jsonschema
import trio

from datapulse import methods
from datapulse.core import mcp
from datapulse.core.jsonrpc import (
    DEFAULT_MAX_DEPTH,
    BatchItem,
    InvalidRequest,
    Message,
    MethodNotFound,
    Notification,
    Request,
    RequestId,
    encode_error,
    encode_notification,
    encode_result,
    parse_message,
)
from datapulse.errors import DatapulseError, InvalidParams
from datapulse.tools.registry import Tool, ToolRegistry

log = logging.getLogger(__name__)

MessageSink = Callable[[bytes], Awaitable[None]]
Handler = Callable[["McpSession", "_Call"], Awaitable[dict[str, Any]]]

# Requests a handshake session answers before `initialize` has succeeded.
_PRE_INIT: Final = frozenset({"initialize", "ping"})


@dataclass(frozen=True)
class Outcome:
    """What ``handle`` did: whether a response went to the sink, and its error code if any.

    The 2026-07-28 HTTP path needs the code for its status (``mcp.modern_http_status``) without
    re-parsing the bytes it was handed.
    """

    responded: bool
    error_code: int | None = None


def encode_exception(exc: DatapulseError, request_id: RequestId | None = None) -> bytes:
    """A DatapulseError as a JSON-RPC error message. ``data=...`` given to the error is sent as
    ``error.data``; an InvalidRequest that read the id answers with it."""
    if request_id is None and isinstance(exc, InvalidRequest):
        request_id = exc.request_id
    return encode_error(request_id, exc.jsonrpc_code, str(exc), exc.extra.get("data"))


class CallLimit:
    """Counts running ``tools/call``s. One per session by default; a transport that makes one
    session per request (2026-07-28) can share one across, say, a principal's requests."""

    def __init__(self, maximum: int) -> None:
        if maximum < 1:
            raise ValueError("maximum must be at least 1")
        self.maximum = maximum
        self.active = 0


class Dispatcher:
    """Server-wide configuration and the method tables; sessions come from ``session()``."""

    def __init__(
        self,
        registry: ToolRegistry,
        *,
        server_name: str = "datapulse",
        server_version: str = "0.1.0",
        instructions: str | None = None,
        page_size: int = 50,
        max_concurrent_calls: int = 16,
        call_timeout_s: float | None = 60.0,
        default_log_level: str | None = "debug",
        max_depth: int = DEFAULT_MAX_DEPTH,
    ) -> None:
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        if call_timeout_s is not None and not call_timeout_s > 0:
            raise ValueError("call_timeout_s must be positive")
        if default_log_level is not None and not mcp.is_log_level(default_log_level):
            raise ValueError(f"unknown log level {default_log_level!r}")
        self.registry = registry
        self.server_name = server_name
        self.server_version = server_version
        self.instructions = instructions
        self.page_size = page_size
        self.max_concurrent_calls = max_concurrent_calls
        self.call_timeout_s = call_timeout_s
        # Both SDKs send every level until the client calls logging/setLevel; so do we by default.
        self.default_log_level = default_log_level
        self.max_depth = max_depth
        self.info = mcp.server_info(server_name, server_version)
        self._output_validators: dict[str, Any] = {}
        self.handshake_methods: dict[str, Handler] = {
            "initialize": methods.initialize,
            "ping": methods.ping,
            "tools/list": methods.list_tools,
            "tools/call": methods.call_tool,
            "logging/setLevel": methods.set_level,
        }
        # 2026-07-28 removed initialize, ping and logging/setLevel: they answer -32601 there.
        self.modern_methods: dict[str, Handler] = {
            "server/discover": methods.discover,
            "tools/list": methods.list_tools,
            "tools/call": methods.call_tool,
        }

    def check_output(self, tool: Tool, output: Any) -> str | None:
        """Why ``output`` breaks the tool's outputSchema (the spec's MUST), or None if it fits."""
        if tool.output_schema is None or isinstance(output, mcp.ToolOutput):
            return None
        validator = self._output_validators.get(tool.name)
        if validator is None:
            schema = dict(tool.output_schema)
            validator = jsonschema.validators.validator_for(schema)(schema)
            self._output_validators[tool.name] = validator
        if validator.is_valid(output):  # the common case builds no error objects
            return None
        error = jsonschema.exceptions.best_match(validator.iter_errors(output))
        if error is None:
            return None
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        return f"{tool.name} returned output that does not match its outputSchema at {where}"


@dataclass(eq=False)
class _Call:
    """One request in flight: where its messages go, and what may still be sent."""

    session: McpSession
    request: Request
    sink: MessageSink
    params: dict[str, Any]
    meta: mcp.ModernMeta | None = None
    token: str | int | None = None
    last_progress: float = -math.inf
    # Set (under the lock) just before the response goes out; nothing is sent after it.
    closed: bool = False
    lock: trio.Lock = field(default_factory=trio.Lock)

    async def notify(self, method: str, params: dict[str, Any]) -> None:
        async with self.lock:
            if not self.closed:
                await self.sink(encode_notification(method, params))

    async def progress(self, progress: float, total: float | None, message: str | None) -> None:
        if self.token is None:
            return  # the client did not ask for progress
        params = mcp.progress_params(
            self.token, progress, total, message, self.session.protocol_version
        )
        if params is None:
            return
        async with self.lock:
            # Progress MUST increase; a tool repeating itself is dropped, not an error.
            if self.closed or not progress > self.last_progress:
                return
            self.last_progress = progress
            await self.sink(encode_notification("notifications/progress", params))

    async def log(self, logger: str, level: str, data: Any) -> None:
        if not mcp.is_log_level(level):
            raise ValueError(f"unknown log level {level!r}; use one of {mcp.LOG_LEVELS}")
        # 2026-07-28: only a request's own _meta logLevel opts in (MUST NOT send otherwise).
        threshold = self.meta.log_level if self.meta is not None else self.session.log_level
        if mcp.log_level_allows(threshold, level):
            params = {"level": level, "logger": logger, "data": data}
            await self.notify("notifications/message", params)


class McpSession:
    """One MCP session (handshake era) or one request's worth of state (``modern=True``).

    ``initialized`` turns true once ``initialize`` has been answered, which is when the Python SDK
    starts serving requests too; ``client_ready`` records ``notifications/initialized``.
    ``scopes=None`` means authorization is off; otherwise a tool's ``required_scope`` is enforced.
    """

    def __init__(
        self,
        dispatcher: Dispatcher,
        *,
        modern: bool = False,
        session_id: str | None = None,
        principal_id: str | None = None,
        scopes: frozenset[str] | None = None,
        call_limit: CallLimit | None = None,
    ) -> None:
        self.dispatcher = dispatcher
        self.modern = modern
        self.session_id = session_id
        self.principal_id = principal_id
        self.scopes = scopes
        self.call_limit = call_limit or CallLimit(dispatcher.max_concurrent_calls)
        self.protocol_version: str | None = mcp.MODERN_VERSION if modern else None
        self.initialized = False
        self.client_ready = False
        self.client_info: dict[str, Any] | None = None
        self.client_capabilities: dict[str, Any] | None = None
        self.log_level: str | None = dispatcher.default_log_level
        self._in_flight: dict[RequestId, trio.CancelScope] = {}
        self._initialize_id: RequestId | None = None

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    @property
    def batches_allowed(self) -> bool:
        return not self.modern and mcp.batches_allowed(self.protocol_version)

    def cancel(self, request_id: RequestId) -> bool:
        """Cancel a running request (no response will be sent for it); False if none runs."""
        scope = self._in_flight.get(request_id)
        if scope is None:
            return False
        scope.cancel()
        return True

    async def handle(self, message: Message, sink: MessageSink) -> Outcome:
        if isinstance(message, Request):
            return await self._handle_request(message, sink)
        if isinstance(message, Notification):
            self._handle_notification(message)
        # Responses: we never send requests, so no one is waiting for them.
        return Outcome(responded=False)

    async def handle_batch(self, items: Sequence[BatchItem], sink: MessageSink) -> None:
        """Run a batch's members concurrently; malformed members get their -32600 first.

        Raises InvalidRequest before doing anything if the batch holds ``initialize`` (clients
        MUST NOT batch it); the transport answers that as a whole (HTTP 400).
        """
        if any(isinstance(item, Request) and item.method == "initialize" for item in items):
            raise InvalidRequest("initialize must not be sent in a batch")
        async with trio.open_nursery() as nursery:
            for item in items:
                if isinstance(item, InvalidRequest):
                    await sink(encode_exception(item))
                else:
                    nursery.start_soon(self.handle, item, sink)

    async def handle_bytes(self, data: bytes, sink: MessageSink) -> Outcome:
        """Parse and handle one body; for stream transports (WebSocket, legacy SSE, /events)
        where even a parse error is answered in-band rather than by an HTTP status."""
        try:
            parsed = parse_message(
                data, allow_batch=self.batches_allowed, max_depth=self.dispatcher.max_depth
            )
        except DatapulseError as exc:
            await sink(encode_exception(exc))
            return Outcome(responded=True, error_code=exc.jsonrpc_code)
        if not isinstance(parsed, list):
            return await self.handle(parsed, sink)
        await self.handle_batch(parsed, sink)
        return Outcome(responded=any(not isinstance(i, Notification) for i in parsed))

    def _handle_notification(self, note: Notification) -> None:
        if note.method == "notifications/initialized":
            # Before initialize it means nothing; ignored rather than letting it skip the handshake.
            if self.initialized:
                self.client_ready = True
        elif note.method == "notifications/cancelled":
            params = note.params if isinstance(note.params, dict) else {}
            target = params.get("requestId")
            # initialize MUST NOT be cancelled; unknown or finished ids are ignored (MAY).
            if isinstance(target, bool) or not isinstance(target, str | int):
                return
            if target != self._initialize_id:
                self.cancel(target)

    async def _handle_request(self, request: Request, sink: MessageSink) -> Outcome:
        params = request.params if isinstance(request.params, dict) else {}
        call = _Call(self, request, sink, params)
        if request.id in self._in_flight:
            # JSON-RPC ids must be unique among outstanding requests; the running one keeps going.
            return await self._send(call, None, InvalidRequest(f"id {request.id!r} is in use"))
        scope = trio.CancelScope()
        self._in_flight[request.id] = scope
        result: dict[str, Any] | None = None
        error: DatapulseError | None = None
        try:
            with scope:
                try:
                    result = await self._dispatch(call)
                except DatapulseError as exc:
                    error = exc
                except Exception:
                    log.exception("handler for %s failed", request.method)
                    error = DatapulseError("internal error")
        finally:
            del self._in_flight[request.id]
        if scope.cancel_called:
            call.closed = True  # cancelled by notifications/cancelled: the receiver stays silent
            return Outcome(responded=False)
        return await self._send(call, result, error)

    @staticmethod
    async def _send(
        call: _Call, result: dict[str, Any] | None, error: DatapulseError | None
    ) -> Outcome:
        request_id = call.request.id
        if error is None:
            try:
                reply = encode_result(request_id, result)
            except TypeError:
                log.exception("result for request %r is not JSON", request_id)
                error = DatapulseError("internal error")
        if error is not None:
            reply = encode_exception(error, request_id)
        async with call.lock:
            call.closed = True
            await call.sink(reply)
        return Outcome(responded=True, error_code=None if error is None else error.jsonrpc_code)

    async def _dispatch(self, call: _Call) -> dict[str, Any]:
        method, d = call.request.method, self.dispatcher
        if self.modern:
            # Same order as the SDK's ladder: envelope shape, then version, then the method.
            call.meta = mcp.parse_modern_meta(call.request.params)
            mcp.check_modern_version(call.meta.protocol_version)
            handler = d.modern_methods.get(method)
            if handler is None:
                raise _not_found(call)
        else:
            handler = d.handshake_methods.get(method)
            if handler is None:
                raise _not_found(call)
            if not self.initialized and method not in _PRE_INIT:
                raise InvalidRequest(f"received {method} before initialization was complete")
        if isinstance(call.request.params, list):
            raise InvalidParams("MCP params must be an object")
        call.token = mcp.progress_token(call.params)
        result = await handler(self, call)
        return mcp.modern_result(result, d.info) if self.modern else result


def _not_found(call: _Call) -> MethodNotFound:
    method = call.request.method
    if call.session.modern and method == "initialize":
        # Name what we serve, so a client that insists on the handshake knows to drop the
        # 2026-07-28 envelope (SHOULD, 2026 versioning).
        requested = call.params.get("protocolVersion")
        data: dict[str, Any] = {"supported": list(mcp.ALL_VERSIONS)}
        if isinstance(requested, str):
            data["requested"] = requested
        return MethodNotFound(
            f"initialize is not part of {mcp.MODERN_VERSION}; use server/discover", data=data
        )
    return MethodNotFound(f"method not found: {method}")
