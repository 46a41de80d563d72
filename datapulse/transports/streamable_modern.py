"""The 2026-07-28 per-request path of ``/mcp``: ``ModernRequests``, which ``StreamableTransport``
hands every POST whose ``MCP-Protocol-Version`` is not a handshake version.

Split from ``streamable.py`` because it shares nothing with the handshake era but the endpoint:
no session, no store, no resumable stream. This module owns that path's whole POST (envelope and
header checks, the per-principal concurrency limit, the JSON-or-SSE answer); ``streamable.py``
owns the era decision, the handshake-era POST, GET and DELETE (which answer 405 here).

* No session: each POST carries its version, client info and capabilities in ``params._meta``
  and mirrors method and name in headers; mismatches are 400 with -32020, error codes map to HTTP
  statuses (``core.mcp_http.modern_http_status``). ``Mcp-Param-*`` headers must mirror the
  arguments the tool's schema annotates (SEP-2243).
* The request runs in the *connection's* task nursery, so closing the response cancels it. Its
  messages go to a ``LocalLog`` (process-local, not resumable, by the spec).
* The concurrency limit (``--max-calls-per-session``) is per principal, shared by the requests it
  has running; errors raised after the request's id was read carry it as ``exc.request_id``.
"""

from __future__ import annotations

import trio

from datapulse.core import mcp, mcp_http
from datapulse.core.jsonrpc import InvalidRequest, Notification, Request
from datapulse.core.media import accepts
from datapulse.core.sse import encode_retry
from datapulse.errors import DatapulseError, NotAcceptable
from datapulse.live.stream import SSE_HEADERS, LocalLog, LogStream, control_comment
from datapulse.net.http import BodyStream, Response, StreamingResponse
from datapulse.net.http import Request as HttpRequest
from datapulse.transports.context import TransportContext
from datapulse.transports.request_run import JSON_WAIT_S, RequestRun, json_reply


class ModernRequests:
    """The 2026-07-28 POSTs of one ``/mcp`` endpoint (one per ``StreamableTransport``)."""

    def __init__(self, context: TransportContext) -> None:
        self.context = context
        self.sessions = context.sessions
        self.config = context.config
        # 2026-07-28 requests have no session; the concurrency limit is per principal instead.
        # An entry lives while its principal has requests running, so the dict stays bounded.
        self._limits: dict[str, _SharedLimit] = {}

    async def post(self, request: HttpRequest) -> Response | StreamingResponse:
        """A POST whose Content-Type and Accept ``StreamableTransport`` has already checked."""
        message = self.context.parse_message(request.body)
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
            if message.method == "subscriptions/listen" and not accepts(
                request.header("accept"), "text/event-stream"
            ):
                raise NotAcceptable("subscriptions/listen answers with an SSE stream only")
        except DatapulseError as exc:
            exc.request_id = message.id
            raise
        principal = request.caller
        shared = self._limits.get(principal.id)
        if shared is None:
            shared = _SharedLimit(trio.CapacityLimiter(self.config.max_calls_per_session))
            self._limits[principal.id] = shared
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
                progress.error_headers = outcome.error_headers
                replied = outcome.responded
            finally:
                progress.finish(replied=replied)
                local.close()
                shared.users -= 1
                if shared.users == 0:
                    del self._limits[principal.id]

        # The connection's task nursery: a closed response cancels the call (2026-07-28 rule).
        request.start_task(run)
        with trio.move_on_after(JSON_WAIT_S):
            await progress.wait(first_message=True)
        if progress.done and progress.messages <= 1:
            reply = json_reply(progress)
            if reply.status == 200:
                reply.status = mcp_http.modern_http_status(progress.error_code)
                if reply.status != 200:  # e.g. Retry-After with a 429, as every other 429 has
                    reply.headers.extend(progress.error_headers)
            return reply
        pinger = self.sessions.pinger
        metrics = self.sessions.streams.stream_metrics("mcp_modern")

        async def body(out: BodyStream) -> None:
            stream = LogStream(
                local, out, pinger, control=control_comment, ends_with_log=True, metrics=metrics
            )
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


class _SharedLimit:
    """One principal's concurrency limit on the 2026-07-28 path, and how many requests use it
    (the requests started it, so one that has not reached its call yet still counts)."""

    def __init__(self, limiter: trio.CapacityLimiter) -> None:
        self.limiter = limiter
        self.users = 0


def _routing_headers(request: HttpRequest) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name in mcp_http.ROUTING_HEADERS:
        values = request.header_values(name)
        if len(values) > 1:
            raise mcp_http.HeaderMismatch(f"{name} header sent twice")
        if values:
            headers[name] = values[0]
    return headers
