"""The original API: ``GET /events`` streams a session, ``POST /message`` queues a request.

Wire format, kept exactly as the seed defined it:
  request  {"type": "list_tools" | "call_tool", "request_id": "...", "data": {...}}
  ack      202 {"status": "queued", "request_id": "..."}
  results  {"type": "list_tools", "request_id": ..., "data": [...]}
           {"type": "tool_result", "request_id": ..., "data": {...}}
           {"type": "error", "request_id": ..., "error": "..."}
For ``call_tool`` the tool's arguments are either ``data.arguments`` or, as the seed's examples
send them, the other keys of ``data`` beside ``name`` (``{"name": "fetch_url", "url": "..."}``).

The envelope is checked synchronously (400/422 naming the field); everything about the tool
itself (unknown tool, bad arguments, the tool failing) is reported on the stream, because the
request was accepted and queued.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import orjson

from datapulse.core.eventlog import parse_event_id
from datapulse.core.session import valid_session_id
from datapulse.errors import BadRequest, DatapulseError, UnprocessableEntity
from datapulse.net.http import Request, Response, StreamingResponse, json_response
from datapulse.net.sessions import LiveSession
from datapulse.net.streaming import SSE_HEADERS, stream_session
from datapulse.tools.registry import ToolContext

if TYPE_CHECKING:
    from datapulse.server import Server

log = logging.getLogger("datapulse.events")

KIND = "events"
REQUEST_TYPES = ("list_tools", "call_tool")


def session_id_from(request: Request) -> str:
    session_id = request.query_param("session_id")
    if not session_id:
        raise BadRequest("missing query parameter: session_id")
    if not valid_session_id(session_id):
        raise BadRequest("session_id must be 1-128 visible ASCII characters")
    return session_id


def resume_point(request: Request) -> int | None:
    """Last-Event-ID from the header (EventSource) or ``last_event_id`` query (a fresh page)."""
    raw = request.header("last-event-id")
    if raw is None:
        raw = request.query_param("last_event_id")
    if raw is None or raw.strip() == "":
        return None
    seq = parse_event_id(raw)
    if seq is None:
        raise BadRequest(f"Last-Event-ID {raw!r} is not an event id of this server")
    return seq


def parse_message(body: bytes) -> dict[str, Any]:
    try:
        message = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BadRequest("body is not valid JSON") from None
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
    def __init__(self, server: Server) -> None:
        self.server = server

    async def get_events(self, request: Request) -> StreamingResponse:
        session_id = session_id_from(request)
        resume_after = resume_point(request)
        live = await self.server.sessions.get_or_create(session_id, request.principal.id, KIND)
        config = self.server.config

        async def body(write: Any) -> None:
            await stream_session(
                self.server.sessions,
                live,
                write,
                resume_after=resume_after,
                ping_interval_s=config.ping_interval_s,
                retry_ms=config.retry_ms,
            )

        return StreamingResponse(200, list(SSE_HEADERS), body)

    async def post_message(self, request: Request) -> Response:
        session_id = session_id_from(request)
        live = await self.server.sessions.get(session_id, request.principal.id, KIND)
        message = parse_message(request.body)
        self.server.sessions.spawn(live, self._run, live, message, request.principal)
        return json_response(202, {"status": "queued", "request_id": message["request_id"]})

    async def _run(self, live: LiveSession, message: dict[str, Any], principal: Any) -> None:
        request_id = message["request_id"]
        sessions = self.server.sessions
        registry = self.server.registry
        try:
            if message["type"] == "list_tools":
                result: dict[str, Any] = {
                    "type": "list_tools",
                    "request_id": request_id,
                    "data": [tool.describe() for tool in registry],
                }
            else:
                data = message["data"]
                name = data.get("name")
                if not isinstance(name, str):
                    raise BadRequest("call_tool needs data.name")

                async def progress(done: float, total: float | None, text: str | None) -> None:
                    update = {"progress": done, "total": total, "message": text}
                    await sessions.publish(
                        live, {"type": "progress", "request_id": request_id, "data": update}
                    )

                context = ToolContext(
                    session_id=live.id,
                    principal_id=principal.id,
                    scopes=principal.scopes,
                    progress_sink=progress,
                )
                output = await self.server.call_tool(name, tool_arguments(data), context)
                result = {"type": "tool_result", "request_id": request_id, "data": output}
        except DatapulseError as exc:
            result = {"type": "error", "request_id": request_id, "error": str(exc)}
        except Exception as exc:
            log.exception("tool call %s in session %s failed", request_id, live.id)
            result = {"type": "error", "request_id": request_id, "error": f"tool failed: {exc}"}
        await sessions.publish(live, result)
