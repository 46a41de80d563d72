"""Streamable HTTP at ``/mcp``: ``StreamableTransport``, the one class the server installs for
the endpoint, and the handshake era (2025-03-26 .. 2025-11-25) it serves itself.

Which era a request belongs to is decided here, by its ``MCP-Protocol-Version`` header, as the
official SDKs do: absent or a handshake version -> the session-based path below; anything else ->
the per-request (2026-07-28) path, whose POSTs go to ``ModernRequests``
(``streamable_modern.py``, which owns that path whole) and whose GET and DELETE answer 405 here.
What a POST waits on while its request runs (``RequestRun``, ``RequestLog``) is in
``request_run.py``. The split keeps each module to one job: this one owns sessions on ``/mcp``.

Handshake era
* ``initialize`` (without ``Mcp-Session-Id``) creates a session and answers with its id.
* Every other POST needs the id (400 without it, 404 for an unknown or someone else's session).
* A request is run as a task of its *session* (a dropped POST stream does not cancel it, as the
  transport spec asks) and its messages go into a request stream log in the store
  (``RequestLog``). If the reply is ready within ``JSON_WAIT_S`` and nothing came before it, it
  is sent as ``application/json``; otherwise the response becomes an SSE stream (priming event
  for 2025-11-25 clients, keep-alive pings) that ends after the reply. Ids are
  ``<stream>-<seq>``, so a client that lost the stream resumes it with ``GET`` +
  ``Last-Event-ID``. ``--json-response`` forces JSON always.
* ``GET`` opens the session's standalone stream. One at a time: a second GET takes over (the
  older stream gets the SSE comment ``: close {"reason":"superseded"}`` and ends where it is, the
  newer one carries on from there), so a client whose stream died at a proxy before we noticed
  is not locked out of its session. ``DELETE`` ends the session.
* Every POST is judged on its own token: a ``tools/call`` is checked against the scopes of the
  request that carries it (``TransportContext.scopes_of``), not those of the one that made the
  session, also when it runs later in the session's task.

Errors on this endpoint are JSON-RPC error objects (``{"jsonrpc":"2.0","id":null,"error":...}``),
which is what MCP clients parse: the route is added with ``ErrorStyle.JSONRPC`` and handlers just
raise (an error raised after the request's id was read carries it as ``exc.request_id``).
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from datapulse.core import mcp
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
    MethodNotAllowed,
    NotAcceptable,
    UnsupportedMediaType,
    quote,
)
from datapulse.live.sessions import LiveSession
from datapulse.live.stream import SSE_HEADERS, control_comment
from datapulse.net.http import JSON_HEADERS, BodyStream, Response, StreamingResponse
from datapulse.net.http import Request as HttpRequest
from datapulse.protocol.call import MessageSink
from datapulse.protocol.session import McpSession, Scopes
from datapulse.store.base import LogKey, UnknownLog
from datapulse.transports.context import TransportContext, checked_session_id
from datapulse.transports.request_run import (
    JSON_WAIT_S,
    RequestLog,
    RequestRun,
    is_response,
    json_reply,
)
from datapulse.transports.streamable_modern import ModernRequests

log = logging.getLogger("datapulse.mcp")

KIND = "mcp"
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
        self.modern = ModernRequests(context)

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
            protocol = await self.context.restore_protocol(live, principal)
            self._attach(live, protocol)
        return live, protocol

    def _attach(self, live: LiveSession, protocol: McpSession) -> None:
        """Server notifications (list changes, resource updates) go to the session's own log,
        which its GET stream reads (and replays, when the client reconnects)."""

        async def to_session_log(data: bytes) -> None:
            await self.sessions.publish(live, data.decode())

        self.context.dispatcher.notices.attach(protocol, to_session_log)

    # -- POST ----------------------------------------------------------------------------------

    async def post(self, request: HttpRequest) -> Response | StreamingResponse:
        self._check_post_headers(request)
        if self._is_modern(request):
            return await self.modern.post(request)
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
        self._attach(live, protocol)
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
                    replied = await self._handle_request(
                        protocol, message, note, scopes, can_ask=False
                    )
                finally:
                    progress.finish(replied=replied)
                # After the reply is out: on a network store this write takes a round trip.
                await sessions.save_protocol(live)

            sessions.spawn(live, answer)
            await progress.wait(first_message=False)
            return json_reply(progress)
        log = RequestLog(sessions, live)

        async def sink(data: bytes) -> None:
            await log.push(data)
            progress.note(data)

        async def run() -> None:
            replied = False
            try:
                replied = await self._handle_request(protocol, message, sink, scopes)
            finally:
                # Finished before the state is saved: the waiting POST must see a complete
                # answer as one (JSON), not switch to SSE while a network store writes.
                progress.finish(replied=replied)
                if log.finish():  # the log is in the store: close it there, even when cancelled
                    with trio.CancelScope(shield=True), trio.move_on_after(1):
                        await log.close()
            await sessions.save_protocol(live)

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
        protocol: McpSession,
        message: Request,
        sink: MessageSink,
        scopes: Scopes,
        *,
        can_ask: bool = True,
    ) -> bool:
        """Run a handshake-era request, judged on ``scopes`` (its own POST's); True once its
        response went to ``sink`` (always, unless it failed: a cancelled request is answered
        REQUEST_CANCELLED)."""
        outcome = await protocol.handle(message, sink, scopes=scopes, can_ask=can_ask)
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


async def _discard(data: bytes) -> None:
    return None
