"""``McpSession``: one JSON-RPC + MCP conversation, behind every transport.

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

Every DatapulseError a request raises is answered here as a JSON-RPC error object (with
``core.jsonrpc.encode_exception``, which MCP endpoints use for HTTP-level errors too).
The session reads its ``Dispatcher`` through ``DispatcherView``, so this module does not import
``protocol.dispatch`` (which imports the methods, which import this module).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from functools import partial
from typing import Any, Final, Protocol

import trio

from datapulse.core import mcp
from datapulse.core.inputs import ClientDeclined, InputRequest
from datapulse.core.jsonrpc import (
    BatchItem,
    ErrorResponse,
    InvalidRequest,
    Message,
    MethodNotFound,
    Notification,
    Request,
    RequestId,
    Response,
    encode_exception,
    encode_request,
    encode_result,
    parse_message,
)
from datapulse.errors import QUOTE_CHARS, DatapulseError, InvalidParams, ToolError, quote
from datapulse.features.catalog import Catalog
from datapulse.metrics import Metrics
from datapulse.protocol.call import Call, MessageSink
from datapulse.protocol.notices import Notices
from datapulse.protocol.roundtrip import RoundTrips
from datapulse.protocol.state import ProtocolState
from datapulse.tools.registry import Tool, ToolRegistry

log = logging.getLogger("datapulse.dispatch")

Handler = Callable[["McpSession", Call], Awaitable[dict[str, Any]]]

# Requests a handshake session answers before `initialize` has succeeded.
_PRE_INIT: Final = frozenset({"initialize", "ping"})

Scopes = frozenset[str] | None
"""What a request's token grants (``core.tokens.enforced_scopes``); None: no limit."""


class _SessionScopes(Enum):
    """``handle(..., scopes=SESSION_SCOPES)``: the caller has no token of its own per message
    (a WebSocket: its session is its connection, authenticated once)."""

    SESSION = "session"


SESSION_SCOPES: Final = _SessionScopes.SESSION


class DispatcherView(Protocol):
    """What a session and its methods read of the server-wide ``Dispatcher``."""

    registry: ToolRegistry
    catalog: Catalog
    notices: Notices
    max_subscriptions: int
    round_trips: RoundTrips
    input_timeout_s: float
    tasks: Any  # protocol.tasks.TaskRunner | None (that module imports this one)
    server_name: str
    server_version: str
    instructions: str | None
    page_size: int
    max_concurrent_calls: int
    call_timeout_s: float | None
    default_log_level: str | None
    max_depth: int
    max_batch_items: int
    info: dict[str, Any]
    metrics: Metrics
    handshake_methods: dict[str, Handler]
    modern_methods: dict[str, Handler]

    def check_output(self, tool: Tool, output: Any) -> str | None: ...


@dataclass(frozen=True)
class Outcome:
    """What ``handle`` did: whether a response went to the sink, and its error code if any.

    The 2026-07-28 HTTP path needs the code for its status (``mcp_http.modern_http_status``)
    without re-parsing the bytes it was handed.
    """

    responded: bool
    error_code: int | None = None
    error_headers: tuple[tuple[str, str], ...] = ()
    """The failed request's error's own HTTP headers (``Retry-After`` of a 429 or 503), for
    the 2026-07-28 path, whose status follows the error."""


class McpSession:
    """One MCP session (handshake era) or one request's worth of state (``modern=True``).

    What the session knows of its client is ``state`` (plain, storable data).
    Tool scopes are judged per request: ``handle(message, sink, scopes=...)`` is given the
    scopes of the token that carried the message (every HTTP request carries its own, and a
    later one may have more or fewer), and the call keeps them even if it runs later in the
    session's task. ``scopes`` here is only the default for transports whose messages carry no
    token of their own (``SESSION_SCOPES``: a WebSocket). ``None`` means no limit; otherwise a
    tool's ``required_scope`` is enforced (a wildcard grant holds every scope, see
    ``core.tokens.has_scope``). ``call_limit`` bounds
    the running ``tools/call``s; a transport that makes one session per request (2026-07-28)
    shares one limiter across, say, a principal's requests.
    """

    def __init__(
        self,
        dispatcher: DispatcherView,
        *,
        modern: bool = False,
        session_id: str | None = None,
        principal_id: str | None = None,
        scopes: frozenset[str] | None = None,
        call_limit: trio.CapacityLimiter | None = None,
    ) -> None:
        self.dispatcher = dispatcher
        self.modern = modern
        self.session_id = session_id
        self.principal_id = principal_id
        self.scopes = scopes
        self.call_limit = call_limit or trio.CapacityLimiter(dispatcher.max_concurrent_calls)
        self.state = ProtocolState(
            protocol_version=mcp.MODERN_VERSION if modern else None,
            log_level=dispatcher.default_log_level,
        )
        self._in_flight: dict[RequestId, trio.CancelScope] = {}
        self._initialize_id: RequestId | None = None
        self._asking: dict[RequestId, _ClientReply] = {}
        self._asked = 0

    # The three fields every layer reads, kept as attributes of the session itself.

    @property
    def protocol_version(self) -> str | None:
        return self.state.protocol_version

    @protocol_version.setter
    def protocol_version(self, value: str | None) -> None:
        self.state.protocol_version = value

    @property
    def initialized(self) -> bool:
        return self.state.initialized

    @initialized.setter
    def initialized(self, value: bool) -> None:
        self.state.initialized = value

    @property
    def log_level(self) -> str | None:
        return self.state.log_level

    @log_level.setter
    def log_level(self, value: str | None) -> None:
        self.state.log_level = value

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

    async def handle(
        self,
        message: Message,
        sink: MessageSink,
        *,
        scopes: Scopes | _SessionScopes = SESSION_SCOPES,
        can_ask: bool = True,
    ) -> Outcome:
        """Handle one message; a request's tool call is judged against ``scopes``, those of the
        token that carried it (``SESSION_SCOPES``: the session's own). ``can_ask=False``: what
        ``sink`` carries never reaches a client that could answer a request of ours (a JSON
        reply, the original API), so a tool asking for input fails at once instead of waiting."""
        if isinstance(message, Request):
            granted = self.scopes if scopes is SESSION_SCOPES else scopes
            return await self._handle_request(message, sink, granted, can_ask)
        if isinstance(message, Notification):
            self._handle_notification(message)
        elif isinstance(message, Response | ErrorResponse) and message.id is not None:
            # The client answering a request of ours (ask_client); unknown ids are ignored.
            waiting = self._asking.get(message.id)
            if waiting is not None:
                waiting.resolve(message)
        return Outcome(responded=False)

    async def ask_client(self, call: Call, request: InputRequest, timeout_s: float) -> Any:
        """Send ``request`` to the client over ``call``'s stream (the handshake era's way) and
        return its result. ToolError when it answers with an error or not within
        ``timeout_s``; if the call is cancelled meanwhile, the client is told to stop too."""
        if not call.can_ask:
            raise ToolError(f"{request.method} cannot reach the client over this transport")
        self._asked += 1
        request_id = f"datapulse-{self._asked}"
        reply = _ClientReply()
        self._asking[request_id] = reply
        try:
            params = request.params(self.protocol_version)
            await call.send(encode_request(request_id, request.method, params))
            with trio.move_on_after(timeout_s) as waited:
                await reply.answered.wait()
        except BaseException:
            await _tell_cancelled(call, request_id)
            raise
        finally:
            del self._asking[request_id]
        if waited.cancelled_caught:
            await _tell_cancelled(call, request_id)
            raise ToolError(f"the client did not answer {request.method} within {timeout_s:g} s")
        answer = reply.message
        if isinstance(answer, ErrorResponse):
            raise ClientDeclined(
                f"the client answered {request.method} with: {answer.error.message}"
            )
        assert isinstance(answer, Response)
        return answer.result

    async def handle_batch(
        self,
        items: Sequence[BatchItem],
        sink: MessageSink,
        *,
        scopes: Scopes | _SessionScopes = SESSION_SCOPES,
    ) -> None:
        """Run a batch's members concurrently; malformed members get their -32600 first.

        Raises InvalidRequest before doing anything if the batch holds ``initialize`` (clients
        MUST NOT batch it); the transport answers that as a whole (HTTP 400). A transport that
        runs the batch in another task checks ``check_batch`` first, while it can still answer.
        """
        check_batch(items)
        async with trio.open_nursery() as nursery:
            for item in items:
                if isinstance(item, InvalidRequest):
                    await sink(encode_exception(item))
                else:
                    nursery.start_soon(partial(self.handle, item, sink, scopes=scopes))

    async def handle_bytes(self, data: bytes, sink: MessageSink) -> Outcome:
        """Parse and handle one body; for stream transports (WebSocket, legacy SSE, /events)
        where even a parse error is answered in-band rather than by an HTTP status."""
        try:
            parsed = parse_message(
                data,
                allow_batch=self.batches_allowed,
                max_depth=self.dispatcher.max_depth,
                max_batch_items=self.dispatcher.max_batch_items,
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
                self.state.client_ready = True
        elif note.method == "notifications/cancelled":
            params = note.params if isinstance(note.params, dict) else {}
            target = params.get("requestId")
            # initialize MUST NOT be cancelled; unknown or finished ids are ignored (MAY).
            if isinstance(target, bool) or not isinstance(target, str | int):
                return
            if target != self._initialize_id:
                self.cancel(target)

    async def _handle_request(
        self, request: Request, sink: MessageSink, scopes: Scopes, can_ask: bool = True
    ) -> Outcome:
        params = request.params if isinstance(request.params, dict) else {}
        call = Call(self, request, sink, params, scopes=scopes, can_ask=can_ask)
        if request.id in self._in_flight:
            # JSON-RPC ids must be unique among outstanding requests; the running one keeps going.
            return await self._send(call, None, InvalidRequest(f"id {quote(request.id)} is in use"))
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
        call: Call, result: dict[str, Any] | None, error: DatapulseError | None
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
        if error is None:
            return Outcome(responded=True)
        return Outcome(True, error.jsonrpc_code, tuple(error.headers))

    async def _dispatch(self, call: Call) -> dict[str, Any]:
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


class _ClientReply:
    """Where the client's answer to one of our requests lands."""

    __slots__ = ("answered", "message")

    def __init__(self) -> None:
        self.answered = trio.Event()
        self.message: Response | ErrorResponse | None = None

    def resolve(self, message: Response | ErrorResponse) -> None:
        if self.message is None:  # the first answer counts; a repeated id is ignored
            self.message = message
            self.answered.set()


async def _tell_cancelled(call: Call, request_id: str) -> None:
    """Best effort: the client may drop the question it is showing its user."""
    with trio.CancelScope(shield=True), trio.move_on_after(1):
        try:
            await call.notify("notifications/cancelled", {"requestId": request_id})
        except Exception:  # the stream is gone: nothing to tell
            log.debug("could not cancel request %s", request_id, exc_info=True)


def check_batch(items: Sequence[BatchItem]) -> None:
    """InvalidRequest if a batch may not be run at all (it holds ``initialize``)."""
    if any(isinstance(item, Request) and item.method == "initialize" for item in items):
        raise InvalidRequest("initialize must not be sent in a batch")


def _not_found(call: Call) -> MethodNotFound:
    method = call.request.method
    if call.session.modern and method == "initialize":
        # Name what we serve, so a client that insists on the handshake knows to drop the
        # 2026-07-28 envelope (SHOULD, 2026 versioning).
        requested = call.params.get("protocolVersion")
        data: dict[str, Any] = {"supported": list(mcp.ALL_VERSIONS)}
        if isinstance(requested, str):
            data["requested"] = requested[:QUOTE_CHARS]
        return MethodNotFound(
            f"initialize is not part of {mcp.MODERN_VERSION}; use server/discover", data=data
        )
    return MethodNotFound(f"method not found: {quote(method)}")
