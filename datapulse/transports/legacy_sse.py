"""The 2024-11-05 HTTP+SSE transport: ``GET /sse`` + ``POST /messages?session_id=...``.

``GET /sse`` creates a session and streams it. Its first event is ``event: endpoint`` whose data
is the relative URL to POST to; every server message (responses included) then arrives on the
stream as ``event: message``. A POST is parsed (400 for bad JSON or a non-JSON Content-Type, the
session stays usable), answered 202 at once, and handled as a task of the session. Closing the
GET stream ends the session, as in the official SDKs, so later POSTs get 404. The TypeScript SDK
names the query parameter ``sessionId``; both spellings are accepted.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from datapulse.core.jsonrpc import parse_message
from datapulse.core.session import valid_session_id
from datapulse.core.sse import encode_data
from datapulse.dispatch import McpSession
from datapulse.errors import BadRequest, SessionNotFound
from datapulse.net.http import BodyWriter, Request, Response, StreamingResponse
from datapulse.net.sessions import LiveSession
from datapulse.net.streaming import SSE_HEADERS, control_comment, stream_session

if TYPE_CHECKING:
    from datapulse.server import Server

log = logging.getLogger("datapulse.sse")

KIND = "sse"
STATE_KEY = "legacy"
MESSAGES_PATH = "/messages"


class LegacySseTransport:
    def __init__(self, server: Server) -> None:
        self.server = server

    async def get_sse(self, request: Request) -> StreamingResponse:
        sessions = self.server.sessions
        live = await sessions.create(request.principal.id, KIND)
        on_created = request.extra.get("on_session_created")  # a ticket binds to the session
        if on_created is not None:
            on_created(live)
        live.state[STATE_KEY] = self.server.dispatcher_session(
            principal=request.principal, session_id=live.id
        )
        endpoint = encode_data(f"{MESSAGES_PATH}?session_id={live.id}", event="endpoint")
        config = self.server.config

        async def body(write: BodyWriter) -> None:
            try:
                await stream_session(
                    sessions,
                    live,
                    write,
                    resume_after=None,
                    ping_interval_s=config.ping_interval_s,
                    retry_ms=config.retry_ms,
                    preamble=endpoint,
                    control=control_comment,
                )
            finally:
                # The stream is the session: when it ends, so do the session's calls.
                await sessions.close(live, "stream_closed")

        return StreamingResponse(200, list(SSE_HEADERS), body)

    async def post_message(self, request: Request) -> Response:
        session_id = request.query_param("session_id") or request.query_param("sessionId")
        if not session_id:
            raise BadRequest("missing query parameter: session_id")
        if not valid_session_id(session_id):
            raise BadRequest("session_id must be 1-128 visible ASCII characters")
        content_type = (request.header("content-type") or "").split(";")[0].strip().lower()
        if content_type != "application/json":
            raise BadRequest("Content-Type must be application/json")
        live = await self.server.sessions.get(session_id, request.principal.id, KIND)
        protocol = live.state.get(STATE_KEY)
        if not isinstance(protocol, McpSession):  # pragma: no cover - created together
            raise SessionNotFound("unknown session")
        message = parse_message(
            request.body,
            allow_batch=protocol.batches_allowed,
            max_depth=self.server.dispatcher.max_depth,
        )

        async def sink(data: bytes) -> None:
            await self.server.sessions.publish(live, data.decode(), "message")

        async def run() -> None:
            if isinstance(message, list):
                await protocol.handle_batch(message, sink)
            else:
                await protocol.handle(message, sink)

        self.server.sessions.spawn(live, run)
        return Response(202, [("Content-Type", "text/plain")], b"Accepted")

    @staticmethod
    def session_of(live: LiveSession) -> McpSession | None:
        state = live.state.get(STATE_KEY)
        return state if isinstance(state, McpSession) else None
