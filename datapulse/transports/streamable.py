"""Streamable HTTP at ``/mcp``: the handshake era (2025-03-26 .. 2025-11-25) and 2026-07-28.

Which era a request belongs to is decided by its ``MCP-Protocol-Version`` header, as the official
SDKs do: absent or a handshake version -> the session-based path; anything else -> the
per-request (2026-07-28) path.

Handshake era
* ``initialize`` (without ``Mcp-Session-Id``) creates a session and answers with its id.
* Every other POST needs the id (400 without it, 404 for an unknown or someone else's session).
* A request is run as a task of its *session* (a dropped POST stream does not cancel it, as the
  transport spec asks) and its messages go into a ``MessageBuffer``. If the reply is ready within
  ``JSON_WAIT_S`` and nothing came before it, it is sent as ``application/json``; otherwise the
  response becomes an SSE stream (priming event for 2025-11-25 clients, keep-alive pings) that
  ends after the reply. Ids are ``<stream>-<seq>``, so a client that lost the stream resumes it
  with ``GET`` + ``Last-Event-ID``. ``--json-response`` forces JSON always.
* ``GET`` opens the session's standalone stream (one at a time: 409 for a second); ``DELETE``
  ends the session.

2026-07-28
* No session: each POST carries its version, client info and capabilities in ``params._meta``
  and mirrors method and name in headers; mismatches are 400 with -32020, error codes map to HTTP
  statuses (``core.mcp.modern_http_status``). The request runs in the *connection's* task
  nursery, so closing the response cancels it. GET and DELETE answer 405.

Errors on this endpoint are JSON-RPC error objects (``{"jsonrpc":"2.0","id":null,"error":...}``),
which is what MCP clients parse.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
import trio

from datapulse.core import mcp
from datapulse.core.eventlog import parse_event_id
from datapulse.core.jsonrpc import (
    InvalidRequest,
    Notification,
    Request,
    encode_error,
    parse_message,
)
from datapulse.dispatch import CallLimit, McpSession, encode_exception
from datapulse.errors import (
    BadRequest,
    Conflict,
    DatapulseError,
    MethodNotAllowed,
    NotAcceptable,
    SessionNotFound,
    Unauthorized,
    UnsupportedMediaType,
)
from datapulse.net.http import BodyWriter, Response, StreamingResponse
from datapulse.net.http import Request as HttpRequest
from datapulse.net.sessions import LiveSession
from datapulse.net.streaming import SSE_HEADERS, MessageBuffer, control_comment, stream_session

if TYPE_CHECKING:
    from datapulse.server import Server

log = logging.getLogger("datapulse.mcp")

KIND = "mcp"
STATE_KEY = "mcp"
JSON_WAIT_S = 0.5
"""How long a POST waits for a bare reply before committing to an SSE response."""
KEPT_STREAMS = 32
"""POST streams per session kept for Last-Event-ID resumption (oldest dropped first)."""
JSON_HEADERS = [("Content-Type", "application/json")]
ROUTING_HEADERS = ("mcp-protocol-version", "mcp-method", "mcp-name")
REQUEST_CANCELLED = -32800
"""Ends the POST stream of a request cancelled by ``notifications/cancelled`` (handshake era).

That wire ends a request's stream only with a response; without one, a client that resumes the
stream (the Python SDK does, from the priming id) polls for it forever. The Python SDK's server
answers with this code for the same reason; clients ignore replies to requests they cancelled."""


@dataclass(eq=False)
class McpHttpSession:
    protocol: McpSession
    buffers: OrderedDict[int, MessageBuffer] = field(default_factory=OrderedDict)
    next_stream: int = 1

    def new_buffer(self, max_events: int, max_bytes: int) -> MessageBuffer:
        buffer = MessageBuffer(self.next_stream, max_events, max_bytes)
        self.buffers[self.next_stream] = buffer
        self.next_stream += 1
        while len(self.buffers) > KEPT_STREAMS:
            self.buffers.popitem(last=False)
        return buffer


def jsonrpc_error(exc: DatapulseError, request_id: Any = None) -> Response:
    return Response(
        exc.http_status, [*JSON_HEADERS, *exc.headers], encode_exception(exc, request_id)
    )


def _media_types(accept: str | None) -> set[str]:
    """The media ranges an Accept header admits; ``q=0`` means "not acceptable" (RFC 9110)."""
    if accept is None:
        return {"*/*"}
    types = set()
    for part in accept.split(","):
        media, _, params = part.partition(";")
        media = media.strip().lower()
        if media and not _refused(params):
            types.add(media)
    return types


def _refused(params: str) -> bool:
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            try:
                return float(value.strip()) == 0
            except ValueError:
                return False
    return False


def accepts(accept: str | None, wanted: str) -> bool:
    types = _media_types(accept)
    major = wanted.split("/", maxsplit=1)[0]
    return bool({wanted, "*/*", f"{major}/*"} & types)


def is_response(message: bytes) -> bool:
    """A reply (has ``result``/``error``), as opposed to a notification we sent before it."""
    decoded = orjson.loads(message)
    return isinstance(decoded, dict) and "method" not in decoded


class StreamableTransport:
    def __init__(self, server: Server) -> None:
        self.server = server
        self.config = server.config
        # 2026-07-28 requests have no session; the concurrency limit is per principal instead.
        self._modern_limits: dict[str, CallLimit] = {}

    # -- helpers -------------------------------------------------------------------------------

    def _check_content_type(self, request: HttpRequest) -> None:
        content_type = (request.header("content-type") or "").split(";")[0].strip().lower()
        if content_type != "application/json":
            raise UnsupportedMediaType("Content-Type must be application/json")

    def _check_post_accept(self, request: HttpRequest) -> None:
        accept = request.header("accept")
        if not accepts(accept, "application/json"):
            raise NotAcceptable("Accept must include application/json")
        if not self.config.json_response and not accepts(accept, "text/event-stream"):
            raise NotAcceptable("Accept must include both application/json and text/event-stream")

    @staticmethod
    def _is_modern(request: HttpRequest) -> bool:
        version = request.header("mcp-protocol-version")
        return version is not None and version.strip() not in mcp.SUPPORTED_VERSIONS

    async def _session(self, request: HttpRequest) -> tuple[LiveSession, McpHttpSession]:
        session_id = request.header("mcp-session-id")
        if not session_id:
            raise BadRequest("Mcp-Session-Id header required (initialize first)")
        live = await self.server.sessions.get(session_id.strip(), request.principal.id, KIND)
        state = live.state.get(STATE_KEY)
        if not isinstance(state, McpHttpSession):  # pragma: no cover - created together
            raise SessionNotFound("unknown session")
        version = request.header("mcp-protocol-version")
        if version is not None and version.strip() not in mcp.SUPPORTED_VERSIONS:
            raise BadRequest(f"unsupported MCP-Protocol-Version: {version}")
        return live, state

    # -- POST ----------------------------------------------------------------------------------

    async def post(self, request: HttpRequest) -> Response | StreamingResponse:
        try:
            self._check_content_type(request)
            self._check_post_accept(request)
            if self._is_modern(request):
                return await self._post_modern(request)
            return await self._post_handshake(request)
        except Unauthorized:
            raise
        except DatapulseError as exc:
            return jsonrpc_error(exc, getattr(exc, "request_id", None))

    async def _post_handshake(self, request: HttpRequest) -> Response | StreamingResponse:
        if not request.header("mcp-session-id"):
            message = parse_message(request.body, max_depth=self.server.dispatcher.max_depth)
            if isinstance(message, Request) and message.method == "initialize":
                return await self._initialize(request, message)
            raise BadRequest("Mcp-Session-Id header required (initialize first)")
        live, state = await self._session(request)
        parsed = parse_message(
            request.body,
            allow_batch=state.protocol.batches_allowed,
            max_depth=self.server.dispatcher.max_depth,
        )
        if isinstance(parsed, list):
            return await self._batch(live, state, parsed)
        if not isinstance(parsed, Request):
            await state.protocol.handle(parsed, _discard)
            return Response(202, [], b"")
        return await self._request(live, state, parsed)

    async def _initialize(self, request: HttpRequest, message: Request) -> Response:
        principal = request.principal
        live = await self.server.sessions.create(principal.id, KIND)
        protocol = self.server.dispatcher_session(session_id=live.id, principal=principal)
        state = McpHttpSession(protocol)
        live.state[STATE_KEY] = state
        replies: list[bytes] = []

        async def collect(data: bytes) -> None:
            replies.append(data)

        outcome = await protocol.handle(message, collect)
        body = replies[-1] if replies else b""
        if outcome.error_code is not None or not protocol.initialized:
            # A failed initialize leaves no session behind and names none.
            await self.server.sessions.close(live, "initialize_failed")
            return Response(200, list(JSON_HEADERS), body)
        return Response(200, [*JSON_HEADERS, ("Mcp-Session-Id", live.id)], body)

    async def _request(
        self, live: LiveSession, state: McpHttpSession, message: Request
    ) -> Response | StreamingResponse:
        cfg = self.config
        buffer = state.new_buffer(cfg.replay_events, cfg.replay_bytes)

        async def run() -> None:
            try:
                outcome = await state.protocol.handle(message, buffer.push)
                if not outcome.responded:
                    await buffer.push(
                        encode_error(message.id, REQUEST_CANCELLED, "request cancelled")
                    )
            finally:
                buffer.finish()

        self.server.sessions.spawn(live, run)
        if cfg.json_response:
            await buffer.wait_for(10**18)  # until done; notifications are dropped in JSON mode
            return self._json_reply(buffer)
        with trio.move_on_after(JSON_WAIT_S):
            await buffer.wait_for(1)
        if buffer.done and buffer.count == 1:
            state.buffers.pop(buffer.number, None)  # answered in full; nothing to resume
            return self._json_reply(buffer)
        priming = mcp.version_at_least(state.protocol.protocol_version, "2025-11-25")
        return self._sse_reply(buffer, priming=priming)

    def _json_reply(self, buffer: MessageBuffer) -> Response:
        # What the log still holds: the response is the newest event, which is never evicted,
        # however many notifications (dropped in JSON mode) came before it.
        held = buffer.log.events_after(buffer.log.oldest_seq - 1)
        for event in reversed(held):
            payload = _payload(event.wire)
            if is_response(payload):
                return Response(200, list(JSON_HEADERS), payload)
        return Response(204, [], b"")  # cancelled: the client asked for no reply

    def _sse_reply(
        self, buffer: MessageBuffer, *, priming: bool, after: int = 0
    ) -> StreamingResponse:
        cfg = self.config

        async def body(write: BodyWriter) -> None:
            head = f"retry: {cfg.retry_ms}\n\n".encode()
            if priming and after == 0:
                # 2025-11-25: an id with empty data, so a client can resume even before the
                # first real message.
                head += f"id: {buffer.number}-0\ndata: \n\n".encode()
            await write(head)
            await buffer.write_to(write, after=after, ping_interval_s=cfg.ping_interval_s)

        return StreamingResponse(200, list(SSE_HEADERS), body)

    async def _batch(self, live: LiveSession, state: McpHttpSession, items: list[Any]) -> Response:
        if all(
            isinstance(i, Notification) or not isinstance(i, Request | InvalidRequest)
            for i in items
        ):
            await state.protocol.handle_batch(items, _discard)
            return Response(202, [], b"")
        replies: list[bytes] = []

        async def collect(data: bytes) -> None:
            if is_response(data):
                replies.append(data)

        await state.protocol.handle_batch(items, collect)
        return Response(200, list(JSON_HEADERS), b"[" + b",".join(replies) + b"]")

    # -- 2026-07-28 ------------------------------------------------------------------------------

    async def _post_modern(self, request: HttpRequest) -> Response | StreamingResponse:
        message = parse_message(request.body, max_depth=self.server.dispatcher.max_depth)
        if isinstance(message, Notification):
            return Response(202, [], b"")
        if not isinstance(message, Request):
            raise InvalidRequest("clients must not send responses on the 2026-07-28 path")
        headers: dict[str, str] = {}
        for name in ROUTING_HEADERS:
            values = request.header_values(name)
            if len(values) > 1:
                return jsonrpc_error(mcp.HeaderMismatch(f"{name} header sent twice"), message.id)
            if values:
                headers[name] = values[0]
        try:
            # The SDKs' order: envelope shape, headers against the body, version, Mcp-Param-*.
            meta = mcp.parse_modern_meta(message.params)
            mcp.check_routing_headers(message, headers)
            mcp.check_modern_version(meta.protocol_version)
            self._check_param_headers(request, message)
        except DatapulseError as exc:
            return jsonrpc_error(exc, message.id)
        principal = request.principal
        limit = self._modern_limits.setdefault(
            principal.id, CallLimit(self.config.max_calls_per_session)
        )
        protocol = self.server.dispatcher_session(
            principal=principal, modern=True, call_limit=limit
        )
        buffer = MessageBuffer(0, self.config.replay_events, self.config.replay_bytes)
        outcome_codes: list[int | None] = []

        async def run() -> None:
            try:
                outcome = await protocol.handle(message, buffer.push)
                outcome_codes.append(outcome.error_code)
            finally:
                buffer.finish()

        # The connection's task nursery: a closed response cancels the call (2026-07-28 rule).
        request.start_task(run)
        with trio.move_on_after(JSON_WAIT_S):
            await buffer.wait_for(1)
        if buffer.done and buffer.count <= 1:
            status = mcp.modern_http_status(outcome_codes[0] if outcome_codes else None)
            reply = self._json_reply(buffer)
            reply.status = status if reply.status == 200 else reply.status
            return reply
        return self._sse_reply(buffer, priming=False)

    def _check_param_headers(self, request: HttpRequest, message: Request) -> None:
        """``Mcp-Param-*`` must mirror the arguments the tool's schema annotates (SEP-2243)."""
        params = message.params if isinstance(message.params, dict) else {}
        name = params.get("name")
        registry = self.server.registry
        if message.method != "tools/call" or not isinstance(name, str) or name not in registry:
            return  # an unknown tool is the dispatcher's -32602
        arguments = params.get("arguments")
        sent: dict[str, list[str]] = {}
        for key, value in request.headers:
            if key.lower().startswith(b"mcp-param-"):
                sent.setdefault(key.lower().decode("latin-1"), []).append(
                    value.decode("latin-1").strip()
                )
        mcp.check_param_headers(
            registry.get(name).input_schema, arguments if isinstance(arguments, dict) else {}, sent
        )

    # -- GET / DELETE ----------------------------------------------------------------------------

    async def get(self, request: HttpRequest) -> Response | StreamingResponse:
        try:
            if self._is_modern(request):
                raise MethodNotAllowed("2026-07-28 has no GET stream", allow=["POST"])
            if not accepts(request.header("accept"), "text/event-stream"):
                raise NotAcceptable("Accept must include text/event-stream")
            live, state = await self._session(request)
            last_event_id = (request.header("last-event-id") or "").strip()
            if last_event_id and "-" in last_event_id:
                return self._resume_post_stream(state, last_event_id)
            resume_after = parse_event_id(last_event_id) if last_event_id else None
            if last_event_id and resume_after is None:
                raise BadRequest(f"Last-Event-ID {last_event_id!r} is not ours")
            if live.attachment is not None:
                raise Conflict("this session already has a GET stream open")
        except Unauthorized:
            raise
        except DatapulseError as exc:
            return jsonrpc_error(exc)
        cfg = self.config

        async def body(write: BodyWriter) -> None:
            await stream_session(
                self.server.sessions,
                live,
                write,
                resume_after=resume_after,
                ping_interval_s=cfg.ping_interval_s,
                retry_ms=cfg.retry_ms,
                control=control_comment,
            )

        return StreamingResponse(200, list(SSE_HEADERS), body)

    def _resume_post_stream(self, state: McpHttpSession, last_event_id: str) -> StreamingResponse:
        number_text, _, seq_text = last_event_id.partition("-")
        number, seq = parse_event_id(number_text), parse_event_id(seq_text)
        buffer = state.buffers.get(number) if number is not None else None
        if buffer is None or seq is None:
            # Not 404: that would tell the client its whole session is gone.
            raise BadRequest(f"stream of event {last_event_id} is no longer held")
        return self._sse_reply(buffer, priming=False, after=seq)

    async def delete(self, request: HttpRequest) -> Response:
        try:
            if self._is_modern(request):
                raise MethodNotAllowed("2026-07-28 has no sessions to delete", allow=["POST"])
            live, _ = await self._session(request)
        except Unauthorized:
            raise
        except DatapulseError as exc:
            return jsonrpc_error(exc)
        await self.server.sessions.close(live, "session_deleted")
        return Response(200, [], b"")


async def _discard(data: bytes) -> None:
    return None


def _payload(wire: bytes) -> bytes:
    """The JSON of a single-line SSE event as framed by the log (``id:`` then ``data:``)."""
    start = wire.index(b"data: ") + 6
    return wire[start : wire.index(b"\n", start)]
