"""The original API: ``GET /events`` streams a session, ``POST /message`` queues a request.

Wire format, kept exactly as the seed defined it:
  request  {"type": "list_tools" | "call_tool", "request_id": "...", "data": {...}}
  ack      202 {"status": "queued", "request_id": "..."}
  results  {"type": "list_tools", "request_id": ..., "data": [...]}
           {"type": "tool_result", "request_id": ..., "data": {...}}
           {"type": "error", "request_id": ..., "error": "..."}
For ``call_tool`` the tool's arguments are either ``data.arguments`` or, as the seed's examples
send them, the other keys of ``data`` beside ``name`` (``{"name": "fetch_url", "url": "..."}``).

Session ids are the client's: ``session_id=demo`` names the caller's own session ``demo``
(opened on first use). Every principal has its own namespace of ids (``core.session``), so the
same id for two principals is two sessions, and nothing another principal does with an id
(open it first, or not at all) shows. The host program addresses one with
``Server.publish(id, ..., principal=...)``.

The envelope is checked synchronously (400/422 naming the field, 400 past ``--max-json-depth``:
a deep value would only fail later, inside the tool's schema check); everything about the tool
itself (unknown tool, bad arguments, the tool failing) is reported on the stream, because the
request was accepted and queued. Requests are translated to JSON-RPC (``tools/list``,
``tools/call`` with the request id as id and progress token) and run by the same dispatcher as
every MCP transport; the replies are translated back into this format.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

import orjson

from datapulse.auth.verifier import Principal
from datapulse.core import mcp
from datapulse.core.eventlog import parse_event_id
from datapulse.core.jsonrpc import DEFAULT_MAX_DEPTH, too_deep
from datapulse.core.jsonrpc import Request as JsonRpcRequest
from datapulse.errors import BadRequest, UnprocessableEntity, quote
from datapulse.live.sessions import LiveSession
from datapulse.live.stream import SSE_HEADERS
from datapulse.net.http import BodyStream, Request, Response, StreamingResponse, json_response
from datapulse.protocol.session import McpSession, Scopes
from datapulse.transports.context import TransportContext, session_id_from

log = logging.getLogger("datapulse.events")

KIND = "events"
REQUEST_TYPES = ("list_tools", "call_tool")


def resume_point(request: Request) -> int | None:
    """Last-Event-ID from the header (EventSource) or ``last_event_id`` query (a fresh page)."""
    raw = request.header("last-event-id")
    if raw is None:
        raw = request.query_param("last_event_id")
    if raw is None or raw.strip() == "":
        return None
    seq = parse_event_id(raw)
    if seq is None:
        raise BadRequest(f"Last-Event-ID {quote(raw)} is not an event id of this server")
    return seq


def parse_message(body: bytes, max_depth: int = DEFAULT_MAX_DEPTH) -> dict[str, Any]:
    try:
        message = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BadRequest("body is not valid JSON") from None
    if too_deep(message, max_depth):
        raise BadRequest(f"JSON nests deeper than {max_depth} levels")
    if not isinstance(message, dict):
        raise UnprocessableEntity("body must be a JSON object")
    for name in ("type", "request_id"):
        if name not in message:
            raise UnprocessableEntity(f"missing field: {name}")
    if message["type"] not in REQUEST_TYPES:
        raise UnprocessableEntity(f"field 'type' must be one of {', '.join(REQUEST_TYPES)}")
    if not isinstance(message["request_id"], str) or not message["request_id"]:
        raise UnprocessableEntity("field 'request_id' must be a non-empty string")
    data = message.setdefault("data", {})
    if data is None:
        message["data"] = {}
    elif not isinstance(data, dict):
        raise UnprocessableEntity("field 'data' must be an object")
    return message


def tool_arguments(data: dict[str, Any]) -> Any:
    if "arguments" in data:
        return data["arguments"]
    return {k: v for k, v in data.items() if k != "name"}


class EventsTransport:
    def __init__(self, context: TransportContext) -> None:
        self.context = context
        self.sessions = context.sessions

    async def get_events(self, request: Request) -> StreamingResponse:
        session_id = session_id_from(request, "session_id")
        resume_after = resume_point(request)
        if request.method == "HEAD":
            # What a GET would answer, without opening a session nobody will read.
            return StreamingResponse(200, list(SSE_HEADERS), _no_body)
        live = await self.sessions.get_or_create(session_id, request.caller.id, KIND)
        self.context.auth.bind_ticket(request, live.id, KIND)
        # A partial, not a closure: it is held by every idle stream, and is smaller.
        body = partial(self.sessions.stream_session, live, resume_after=resume_after)
        return StreamingResponse(200, list(SSE_HEADERS), body)

    async def post_message(self, request: Request) -> Response:
        session_id = session_id_from(request, "session_id")
        principal = request.caller
        live = await self.sessions.get(session_id, principal.id, KIND)
        message = parse_message(request.body, self.context.config.max_json_depth)
        if message["type"] == "call_tool":
            # Checked before queueing: a missing scope is a 403 step-up challenge, not a
            # stream error (the token, not the request, must change).
            self.context.auth.require_tool_scope(request, message["data"].get("name"))
        protocol = self._protocol(live, principal)
        # This request's token, kept with its message (a later request's must not count).
        scopes = self.context.scopes_of(request)

        async def run() -> None:
            await self._run(live, protocol, message, scopes)

        self.sessions.spawn(live, run)
        return json_response(202, {"status": "queued", "request_id": message["request_id"]})

    def _protocol(self, live: LiveSession, principal: Principal) -> McpSession:
        """The session's MCP protocol state. The original API has no handshake, so the session
        starts initialized at our newest handshake revision."""
        protocol = live.protocol
        if protocol is None:
            protocol = self.context.protocol_session(principal, session_id=live.id)
            protocol.initialized = True
            protocol.protocol_version = mcp.LATEST_HANDSHAKE_VERSION
            live.protocol = protocol
        return protocol

    async def _run(
        self, live: LiveSession, protocol: McpSession, message: dict[str, Any], scopes: Scopes
    ) -> None:
        """Translate one original-API request to JSON-RPC, run it, translate the replies back."""
        request_id = message["request_id"]
        sessions = self.sessions
        if message["type"] == "list_tools":
            tools: list[Any] = []
            cursor = None
            while True:
                params: dict[str, Any] = {"cursor": cursor} if cursor else {}
                reply = await self._call(protocol, request_id, "tools/list", params, live, scopes)
                if "error" in reply:
                    await sessions.publish(live, _error(request_id, reply["error"]["message"]))
                    return
                tools.extend(reply["result"]["tools"])
                cursor = reply["result"].get("nextCursor")
                if not cursor:
                    break
            await sessions.publish(
                live, {"type": "list_tools", "request_id": request_id, "data": tools}
            )
            return
        data = message["data"]
        name = data.get("name")
        if not isinstance(name, str):
            await sessions.publish(live, _error(request_id, "call_tool needs data.name"))
            return
        params = {
            "name": name,
            "arguments": tool_arguments(data),
            "_meta": {"progressToken": request_id},
        }
        reply = await self._call(protocol, request_id, "tools/call", params, live, scopes)
        if reply is None:
            return  # cancelled: nothing to say
        if "error" in reply:
            await sessions.publish(live, _error(request_id, reply["error"]["message"]))
            return
        result = reply["result"]
        if result.get("isError"):
            await sessions.publish(live, _error(request_id, _text(result)))
            return
        output = result["structuredContent"] if "structuredContent" in result else _output(result)
        await sessions.publish(
            live, {"type": "tool_result", "request_id": request_id, "data": output}
        )

    async def _call(
        self,
        protocol: McpSession,
        request_id: str,
        method: str,
        params: dict[str, Any],
        live: LiveSession,
        scopes: Scopes,
    ) -> Any:
        """Run one JSON-RPC request through the dispatcher; progress goes out as it happens."""
        reply: list[Any] = []

        async def sink(data: bytes) -> None:
            decoded = orjson.loads(data)
            if decoded.get("method") == "notifications/progress":
                update = decoded["params"]
                await self.sessions.publish(
                    live,
                    {
                        "type": "progress",
                        "request_id": request_id,
                        "data": {
                            "progress": update.get("progress"),
                            "total": update.get("total"),
                            "message": update.get("message"),
                        },
                    },
                )
            elif "method" not in decoded:
                reply.append(decoded)

        request = JsonRpcRequest(request_id, method, params)
        # /message has no way to answer a request of ours: a tool asking for input fails fast.
        await protocol.handle(request, sink, scopes=scopes, can_ask=False)
        return reply[0] if reply else None


def _error(request_id: str, text: str) -> dict[str, Any]:
    return {"type": "error", "request_id": request_id, "error": text}


def _text(result: dict[str, Any]) -> str:
    return " ".join(b.get("text", "") for b in result.get("content", []) if b.get("type") == "text")


def _output(result: dict[str, Any]) -> Any:
    """A tool without an outputSchema: its JSON text decoded again, else the text itself."""
    text = _text(result)
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


async def _no_body(out: BodyStream) -> None:
    """HEAD: the connection writes only the head and never calls this."""
