"""The 2024-11-05 HTTP+SSE transport: ``GET /sse`` + ``POST /messages?session_id=...``.

``GET /sse`` creates a session and streams it. Its first event is ``event: endpoint`` whose data
is the relative URL to POST to; every server message (responses included) then arrives on the
stream as ``event: message``. A POST is parsed (400 for bad JSON or a non-JSON Content-Type, the
session stays usable), answered 202 at once, and handled as a task of the session. Closing the
GET stream ends the session, as in the official SDKs, so later POSTs get 404. The TypeScript SDK
names the query parameter ``sessionId``; both spellings are accepted.

The stream *is* the session, so the session lives exactly as long as the stream's body runs:
the handler only checks the limits (429/503 while a status can still say so) and the body
creates the session and closes it in its ``finally``. A response whose body never runs (HEAD,
or a client that reset before the head was written) leaves nothing behind to count against its
principal until the TTL.

Tool scopes are judged per POST: each message is checked against the token of the ``/messages``
request that carries it, not the one that opened the stream.
"""

from __future__ import annotations

import logging

import trio

from datapulse.core.sse import encode_data
from datapulse.errors import BadRequest, DatapulseError
from datapulse.live.sessions import LiveSession
from datapulse.live.stream import SSE_HEADERS, control_comment
from datapulse.net.http import BodyStream, Request, Response, StreamingResponse
from datapulse.protocol.session import McpSession, check_batch
from datapulse.transports.context import TransportContext, session_id_from

log = logging.getLogger("datapulse.sse")

KIND = "sse"
MESSAGES_PATH = "/messages"


class LegacySseTransport:
    def __init__(self, context: TransportContext) -> None:
        self.context = context
        self.sessions = context.sessions

    async def get_sse(self, request: Request) -> StreamingResponse:
        sessions = self.sessions
        principal = request.caller
        sessions.admit(principal.id)  # 429/503 now, while the status line can still say so
        if request.method == "HEAD":
            return StreamingResponse(200, list(SSE_HEADERS), _no_body)  # and no session

        async def body(out: BodyStream) -> None:
            try:
                live = await sessions.create(principal.id, KIND)
            except DatapulseError as exc:
                # Lost a race for the last slot since admit(): the 200 is out, so say it here.
                await out.write(control_comment("error", error=exc.error, detail=exc.detail))
                return
            try:
                self.context.auth.bind_ticket(request, live.id, KIND)
                live.protocol = self.context.protocol_session(principal, session_id=live.id)
                self._attach(live, live.protocol)
                endpoint = encode_data(f"{MESSAGES_PATH}?session_id={live.id}", event="endpoint")
                await sessions.stream_session(
                    live, out, resume_after=None, preamble=endpoint, control=control_comment
                )
            finally:
                # The stream is the session: when it ends, so do the session's calls.
                with trio.CancelScope(shield=True), trio.move_on_after(1):
                    await sessions.close(live, "stream_closed")

        return StreamingResponse(200, list(SSE_HEADERS), body)

    async def post_message(self, request: Request) -> Response:
        session_id = session_id_from(request, "session_id", "sessionId")
        if request.media_type() != "application/json":
            raise BadRequest("Content-Type must be application/json")
        live = await self.sessions.get(session_id, request.caller.id, KIND)
        protocol = live.protocol
        if protocol is None:
            # Its stream is held by another instance sharing the store: continue from the
            # state the store holds; what this POST produces reaches that stream through the log.
            protocol = await self.context.restore_protocol(live, request.caller)
            self._attach(live, protocol)
        message = self.context.parse_message(request.body, allow_batch=protocol.batches_allowed)
        if isinstance(message, list):
            check_batch(message)  # 400 now: the batch runs after the 202
        # This POST's token, kept with its message: the call may run after the next POST.
        scopes = self.context.scopes_of(request)

        async def sink(data: bytes) -> None:
            await self.sessions.publish(live, data.decode(), "message")

        async def run() -> None:
            if isinstance(message, list):
                await protocol.handle_batch(message, sink, scopes=scopes)
            else:
                await protocol.handle(message, sink, scopes=scopes)
            await self.sessions.save_protocol(live)

        self.sessions.spawn(live, run)
        return Response(202, [("Content-Type", "text/plain")], b"Accepted")

    def _attach(self, live: LiveSession, protocol: McpSession) -> None:
        """Server notifications go to the session's log, as ``event: message`` on its stream."""

        async def to_stream(data: bytes) -> None:
            await self.sessions.publish(live, data.decode(), "message")

        self.context.dispatcher.notices.attach(protocol, to_stream)


async def _no_body(out: BodyStream) -> None:
    """HEAD: the connection writes only the head and never calls this."""
