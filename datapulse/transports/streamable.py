"""Streamable HTTP at ``/mcp``: the handshake era (2025-03-26 .. 2025-11-25) and 2026-07-28.

Which era a request belongs to is decided by its ``MCP-Protocol-Version`` header, as the official
SDKs do: absent or a handshake version -> the session-based path; anything else -> the
per-request (2026-07-28) path.

Handshake era
* ``initialize`` (without ``Mcp-Session-Id``) creates a session and answers with its id.
* Every other POST needs the id (400 without it, 404 for an unknown or someone else's session).
* A request is run as a task of its *session* (a dropped POST stream does not cancel it, as the
  transport spec asks) and its messages go into a request stream log in the store. If the reply is ready within
  ``JSON_WAIT_S`` and nothing came before it, it is sent as ``application/json``; otherwise the
  response becomes an SSE stream (priming event for 2025-11-25 clients, keep-alive pings) that
  ends after the reply. Ids are ``<stream>-<seq>``, so a client that lost the stream resumes it
  with ``GET`` + ``Last-Event-ID``. ``--json-response`` forces JSON always.
* ``GET`` opens the session's standalone stream. One at a time: a second GET takes over (the
  older stream gets the SSE comment ``: close {"reason":"superseded"}`` and ends where it is, the
  newer one carries on from there), so a client whose stream died at a proxy before we noticed
  is not locked out of its session. ``DELETE`` ends the session.
* Every POST is judged on its own token: a ``tools/call`` is checked against the scopes of the
  request that carries it (``TransportContext.scopes_of``), not those of the one that made the
  session, also when it runs later in the session's task.

2026-07-28
* No session: each POST carries its version, client info and capabilities in ``params._meta``
  and mirrors method and name in headers; mismatches are 400 with -32020, error codes map to HTTP
  statuses (``core.mcp_http.modern_http_status``). The request runs in the *connection's* task
  nursery, so closing the response cancels it. GET and DELETE answer 405.

Errors on this endpoint are JSON-RPC error objects (``{"jsonrpc":"2.0","id":null,"error":...}``),
which is what MCP clients parse: the route is added with ``ErrorStyle.JSONRPC`` and handlers just
raise (an error raised after the request's id was read carries it as ``exc.request_id``).
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any

import trio

from datapulse.core import mcp, mcp_http
from datapulse.core.eventlog import parse_event_id
from datapulse.core.jsonrpc import (
    InvalidRequest,
    Notification,
    Request,
    encode_error,
)
from datapulse.core.media import accepts
from datapulse.core.sse import encode_data, encode_retry
from datapulse.errors import (
    BadRequest,
    DatapulseError,
    MethodNotAllowed,
    NotAcceptable,
    UnsupportedMediaType,
    quote,
)
from datapulse.live.sessions import LiveSession, SessionManager
from datapulse.live.stream import SSE_HEADERS, LocalLog, LogStream, control_comment
from datapulse.net.http import JSON_HEADERS, BodyStream, Response, StreamingResponse
from datapulse.net.http import Request as HttpRequest
from datapulse.protocol.call import MessageSink
from datapulse.protocol.session import McpSession, Scopes
from datapulse.protocol.state import ProtocolState
from datapulse.store.base import LogKey, UnknownLog
from datapulse.transports.context import TransportContext, checked_session_id
from datapulse.transports.request_run import JSON_WAIT_S, RequestRun, is_response, json_reply

log = logging.getLogger("datapulse.mcp")

KIND = "mcp"
ROUTING_HEADERS = ("mcp-protocol-version", "mcp-method", "mcp-name")
REQUEST_CANCELLED = -32800
"""Ends the POST stream of a request cancelled by ``notifications/cancelled`` (handshake era).

That wire ends a request's stream only with a response; without one, a client that resumes the
stream (the Python SDK does, from the priming id) polls for it forever. The Python SDK's server
answers with this code for the same reason; clients ignore replies to requests they cancelled."""


class StreamableTransport:
    def __init__(self, context: TransportContext) -> None:
        self.context = context
        self.sessions = context.sessions
        self.config = context.config
        # 2026-07-28 requests have no session; the concurrency limit is per principal instead.
        # An entry lives while its principal has requests running, so the dict stays bounded.
        self._modern_limits: dict[str, _SharedLimit] = {}

    # -- helpers -------------------------------------------------------------------------------

    def _check_post_headers(self, request: HttpRequest) -> None:
        if request.media_type() != "application/json":
            raise UnsupportedMediaType("Content-Type must be application/json")
        accept = request.header("accept")
        if not accepts(accept, "application/json"):
            raise NotAcceptable("Accept must include application/json")
        if not self.config.json_response and not accepts(accept, "text/event-stream"):
            raise NotAcceptable("Accept must include both application/json and text/event-stream")

    @staticmethod
    def _is_modern(request: HttpRequest) -> bool:
        version = request.header("mcp-protocol-version")
        return version is not None and version.strip() not in mcp.SUPPORTED_VERSIONS

    def _parse(self, request: HttpRequest, *, allow_batch: bool = False) -> Any:
        return self.context.parse_message(request.body, allow_batch=allow_batch)

    async def _session(self, request: HttpRequest) -> tuple[LiveSession, McpSession]:
        session_id = request.header("mcp-session-id")
        if not session_id:
            raise BadRequest("Mcp-Session-Id header required (initialize first)")
        principal = request.caller
        live = await self.sessions.get(checked_session_id(session_id.strip()), principal.id, KIND)
        protocol = live.protocol
        if protocol is None:
            # Not created here (or forgotten): continue from the state the store holds.
            protocol = self.context.protocol_session(principal, session_id=live.id)
            saved = await self.sessions.store.load_protocol(live.key)
            if saved is not None:
                protocol.state = ProtocolState.from_dict(saved)
            live.protocol = protocol
        return live, protocol

    # -- POST ----------------------------------------------------------------------------------

    async def post(self, request: HttpRequest) -> Response | StreamingResponse:
        self._check_post_headers(request)
        if self._is_modern(request):
            return await self._post_modern(request)
        if not request.header("mcp-session-id"):
            message = self._parse(request)
            if isinstance(message, Request) and message.method == "initialize":
                return await self._initialize(request, message)
            raise BadRequest("Mcp-Session-Id header required (initialize first)")
        live, protocol = await self._session(request)
        parsed = self._parse(request, allow_batch=protocol.batches_allowed)
        scopes = self.context.scopes_of(request)
        if isinstance(parsed, list):
            return await self._batch(live, protocol, parsed, scopes)
        if not isinstance(parsed, Request):
            await protocol.handle(parsed, _discard, scopes=scopes)
            await self.sessions.save_protocol(live)
            return Response(202, [], b"")
        return await self._request(live, protocol, parsed, scopes)

    async def _initialize(self, request: HttpRequest, message: Request) -> Response:
        principal = request.caller
        live = await self.sessions.create(principal.id, KIND)
        protocol = self.context.protocol_session(principal, session_id=live.id)
        live.protocol = protocol
        replies: list[bytes] = []

        async def collect(data: bytes) -> None:
            replies.append(data)

        outcome = await protocol.handle(message, collect)
        body = replies[-1] if replies else b""
        if outcome.error_code is not None or not protocol.initialized:
            # A failed initialize leaves no session behind and names none.
            await self.sessions.close(live, "initialize_failed")
            return Response(200, list(JSON_HEADERS), body)
        await self.sessions.save_protocol(live)
        return Response(200, [*JSON_HEADERS, ("Mcp-Session-Id", live.id)], body)

    async def _request(
        self, live: LiveSession, protocol: McpSession, message: Request, scopes: Scopes
    ) -> Response | StreamingResponse:
        cfg = self.config
        sessions = self.sessions
        progress = RequestRun()
        if cfg.json_response:
            # Notifications are dropped and the reply can only be JSON: nothing to resume, so
            # no log either.
            async def note(data: bytes) -> None:
                progress.note(data)

            async def answer() -> None:
                replied = False
                try:
                    replied = await self._handle_request(protocol, message, note, scopes)
                    await sessions.save_protocol(live)
                finally:
                    progress.finish(replied=replied)

            sessions.spawn(live, answer)
            await progress.wait(first_message=False)
            return json_reply(progress)
        log = _RequestLog(sessions, live)

        async def sink(data: bytes) -> None:
            await log.push(data)
            progress.note(data)

        async def run() -> None:
            replied = False
            try:
                replied = await self._handle_request(protocol, message, sink, scopes)
                await sessions.save_protocol(live)
            finally:
                progress.finish(replied=replied)
                if log.finish():  # the log is in the store: close it there, even when cancelled
                    with trio.CancelScope(shield=True), trio.move_on_after(1):
                        await log.close()

        sessions.spawn(live, run)
        with trio.move_on_after(JSON_WAIT_S):
            await progress.wait(first_message=True)
        if progress.done and progress.messages == 1:
            return json_reply(progress)  # answered in full: its log was never needed
        key = await log.open()
        priming = mcp.version_at_least(protocol.protocol_version, "2025-11-25")
        return self._sse_reply(live, key, priming=priming)

    @staticmethod
    async def _handle_request(
        protocol: McpSession, message: Request, sink: MessageSink, scopes: Scopes
    ) -> bool:
        """Run a handshake-era request, judged on ``scopes`` (its own POST's); True once its
        response went to ``sink`` (always, unless it failed: a cancelled request is answered
        REQUEST_CANCELLED)."""
        outcome = await protocol.handle(message, sink, scopes=scopes)
        if not outcome.responded:
            await sink(encode_error(message.id, REQUEST_CANCELLED, "request cancelled"))
        return True

    def _sse_reply(
        self, live: LiveSession, key: LogKey, *, priming: bool, after: int = 0
    ) -> StreamingResponse:
        head = encode_retry(self.config.retry_ms)
        if priming and after == 0:
            # 2025-11-25: an id with empty data, so a client can resume even before the first
            # real message.
            head += encode_data("", event_id=f"{key.stream}-0")

        async def body(out: BodyStream) -> None:
            await self.sessions.stream_request_log(live, key, out, after=after, head=head)

        return StreamingResponse(200, list(SSE_HEADERS), body)

    async def _batch(
        self, live: LiveSession, protocol: McpSession, items: list[Any], scopes: Scopes
    ) -> Response:
        if all(
            isinstance(i, Notification) or not isinstance(i, Request | InvalidRequest)
            for i in items
        ):
            await protocol.handle_batch(items, _discard, scopes=scopes)
            await self.sessions.save_protocol(live)
            return Response(202, [], b"")
        replies: list[bytes] = []

        async def collect(data: bytes) -> None:
            if is_response(data):
                replies.append(data)

        await protocol.handle_batch(items, collect, scopes=scopes)
        await self.sessions.save_protocol(live)
        return Response(200, list(JSON_HEADERS), b"[" + b",".join(replies) + b"]")

    # -- 2026-07-28 ------------------------------------------------------------------------------

    async def _post_modern(self, request: HttpRequest) -> Response | StreamingResponse:
        message = self._parse(request)
        if isinstance(message, Notification):
            return Response(202, [], b"")
        if not isinstance(message, Request):
            raise InvalidRequest("clients must not send responses on the 2026-07-28 path")
        try:
            # The SDKs' order: envelope shape, headers against the body, version, Mcp-Param-*.
            headers = _routing_headers(request)
            meta = mcp.parse_modern_meta(message.params)
            mcp_http.check_routing_headers(message, headers)
            mcp.check_modern_version(meta.protocol_version)
            self._check_param_headers(request, message)
        except DatapulseError as exc:
            exc.request_id = message.id
            raise
        principal = request.caller
        shared = self._modern_limits.get(principal.id)
        if shared is None:
            shared = _SharedLimit(trio.CapacityLimiter(self.config.max_calls_per_session))
            self._modern_limits[principal.id] = shared
        shared.users += 1
        protocol = self.context.protocol_session(principal, modern=True, call_limit=shared.limiter)
        local = LocalLog(self.config.replay_events, self.config.replay_bytes)
        progress = RequestRun()

        async def sink(data: bytes) -> None:
            local.append(data.decode())
            progress.note(data)

        async def run() -> None:
            replied = False
            try:
                outcome = await protocol.handle(message, sink)
                progress.error_code = outcome.error_code
                replied = outcome.responded
            finally:
                progress.finish(replied=replied)
                local.close()
                shared.users -= 1
                if shared.users == 0:
                    del self._modern_limits[principal.id]

        # The connection's task nursery: a closed response cancels the call (2026-07-28 rule).
        request.start_task(run)
        with trio.move_on_after(JSON_WAIT_S):
            await progress.wait(first_message=True)
        if progress.done and progress.messages <= 1:
            reply = json_reply(progress)
            if reply.status == 200:
                reply.status = mcp_http.modern_http_status(progress.error_code)
            return reply
        pinger = self.sessions.pinger

        async def body(out: BodyStream) -> None:
            stream = LogStream(local, out, pinger, control=control_comment, ends_with_log=True)
            local.reader = stream
            await stream.run(0, head=encode_retry(self.config.retry_ms))

        return StreamingResponse(200, list(SSE_HEADERS), body)

    def _check_param_headers(self, request: HttpRequest, message: Request) -> None:
        """``Mcp-Param-*`` must mirror the arguments the tool's schema annotates (SEP-2243)."""
        params = message.params if isinstance(message.params, dict) else {}
        name = params.get("name")
        registry = self.context.registry
        if message.method != "tools/call" or not isinstance(name, str) or name not in registry:
            return  # an unknown tool is the dispatcher's -32602
        arguments = params.get("arguments")
        sent: dict[str, list[str]] = {}
        for key, value in request.headers:
            if key.lower().startswith(b"mcp-param-"):
                sent.setdefault(key.lower().decode("latin-1"), []).append(
                    value.decode("latin-1").strip()
                )
        mcp_http.check_param_headers(
            registry.get(name).input_schema, arguments if isinstance(arguments, dict) else {}, sent
        )

    # -- GET / DELETE ----------------------------------------------------------------------------

    async def get(self, request: HttpRequest) -> StreamingResponse:
        if self._is_modern(request):
            raise MethodNotAllowed("2026-07-28 has no GET stream", allow=["POST"])
        if not accepts(request.header("accept"), "text/event-stream"):
            raise NotAcceptable("Accept must include text/event-stream")
        live, _ = await self._session(request)
        last_event_id = (request.header("last-event-id") or "").strip()
        if last_event_id and "-" in last_event_id:
            return await self._resume_request_stream(live, last_event_id)
        resume_after = parse_event_id(last_event_id) if last_event_id else None
        if last_event_id and resume_after is None:
            raise BadRequest(f"Last-Event-ID {quote(last_event_id)} is not ours")

        async def body(out: BodyStream) -> None:
            # A newer GET takes over from the stream attached now, if any (exclusive: what the
            # old one had not sent goes out on this one only).
            await self.sessions.stream_session(
                live, out, resume_after=resume_after, control=control_comment, exclusive=True
            )

        return StreamingResponse(200, list(SSE_HEADERS), body)

    async def _resume_request_stream(
        self, live: LiveSession, last_event_id: str
    ) -> StreamingResponse:
        number_text, _, seq_text = last_event_id.partition("-")
        number, seq = parse_event_id(number_text), parse_event_id(seq_text)
        if number is not None and number > 0 and seq is not None:
            key = LogKey(live.key, number)
            try:
                await self.sessions.store.last_seq(key)
            except UnknownLog:
                pass
            else:
                return self._sse_reply(live, key, priming=False, after=seq)
        # Not 404: that would tell the client its whole session is gone.
        raise BadRequest(f"stream of event {quote(last_event_id)} is no longer held")

    async def delete(self, request: HttpRequest) -> Response:
        if self._is_modern(request):
            raise MethodNotAllowed("2026-07-28 has no sessions to delete", allow=["POST"])
        live, _ = await self._session(request)
        await self.sessions.close(live, "session_deleted")
        return Response(200, [], b"")


class _RequestLog:
    """A handshake-era request's messages: held here until its POST commits to an SSE answer,
    then in the store, where a GET with ``Last-Event-ID`` can resume them on any instance.

    Most requests are answered as bare JSON within ``JSON_WAIT_S`` and never need a log: they
    cost the store nothing. Exactly one of ``open`` (the POST) and ``finish``/``close`` (the
    request's task) closes the log in the store, whichever sees the other's step: neither awaits
    between setting its flag and reading the other's.
    """

    def __init__(self, sessions: SessionManager, live: LiveSession) -> None:
        self._sessions = sessions
        self._live = live
        self._held: deque[bytes] = deque()
        self._key: LogKey | None = None
        self._finished = False

    async def push(self, data: bytes) -> None:
        if self._key is None:
            self._held.append(data)
        else:
            await self._sessions.push(self._live, self._key, data)

    async def open(self) -> LogKey:
        key = await self._sessions.open_request_log(self._live)
        while self._held:  # messages may still arrive while we copy: until none is left
            await self._sessions.push(self._live, key, self._held.popleft())
        self._key = key
        if self._finished:
            await self._sessions.finish_request_log(self._live, key)
        return key

    def finish(self) -> bool:
        """The request is done; True if its log is in the store and must be closed there (the
        common case, a bare JSON answer, needs no await at all)."""
        self._finished = True
        return self._key is not None

    async def close(self) -> None:
        assert self._key is not None
        await self._sessions.finish_request_log(self._live, self._key)


class _SharedLimit:
    """One principal's concurrency limit on the 2026-07-28 path, and how many requests use it
    (the requests started it, so one that has not reached its call yet still counts)."""

    def __init__(self, limiter: trio.CapacityLimiter) -> None:
        self.limiter = limiter
        self.users = 0


def _routing_headers(request: HttpRequest) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name in ROUTING_HEADERS:
        values = request.header_values(name)
        if len(values) > 1:
            raise mcp_http.HeaderMismatch(f"{name} header sent twice")
        if values:
            headers[name] = values[0]
    return headers


async def _discard(data: bytes) -> None:
    return None
