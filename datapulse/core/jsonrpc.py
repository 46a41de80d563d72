"""JSON-RPC 2.0 framing: bytes in, message objects out, and back.

Sans-IO like ``h11``: ``parse_message`` turns one body (or WebSocket frame, or SSE ``data``) into
small frozen dataclasses, and the ``encode_*`` helpers turn replies into bytes. Nothing here knows
about MCP methods or transports; ``datapulse.core.mcp`` and ``datapulse.protocol`` build on it.

Every way a body can be unreadable ends in one of two typed errors, so callers need exactly two
``except`` clauses: ``ParseError`` (-32700, not JSON at all, or nested past orjson's own limit)
and ``InvalidRequest`` (-32600, JSON of the wrong shape). ``InvalidRequest.request_id`` carries the
id when it could be read, because an error for a readable request must echo its id.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

import orjson

from datapulse.errors import BadRequest, DatapulseError, NotFound

RequestId = str | int
Params = dict[str, Any] | list[Any] | None

# Deep enough for any real MCP message (the envelope uses 3 levels: message, params, arguments),
# shallow enough that walking a hostile body stays cheap.
DEFAULT_MAX_DEPTH: Final = 64

# A batch fans out into that many concurrent requests; a few dozen is far more than any client
# batches in practice, and the cap keeps one body from becoming thousands of tasks.
DEFAULT_MAX_BATCH_ITEMS: Final = 50


# orjson rejects non-str keys by default; JSON only has string keys, so stringify instead of
# failing a whole response because a tool returned {1: "x"}.
_DUMP_OPTIONS: Final = orjson.OPT_NON_STR_KEYS


class ParseError(BadRequest):
    """The bytes are not JSON (or not UTF-8, or nested beyond what the decoder allows)."""

    jsonrpc_code = -32700
    error = "parse_error"


class InvalidRequest(BadRequest):
    """Valid JSON that is not a JSON-RPC 2.0 message (or not one we accept here)."""

    jsonrpc_code = -32600
    error = "invalid_request"

    def __init__(self, detail: str = "", *, request_id: RequestId | None = None) -> None:
        super().__init__(detail)
        self.request_id = request_id


class MethodNotFound(NotFound):
    """The method does not exist here (-32601; HTTP 404 on the 2026-07-28 path)."""

    jsonrpc_code = -32601
    error = "method_not_found"


@dataclass(frozen=True, slots=True)
class Request:
    id: RequestId
    method: str
    params: Params = None


@dataclass(frozen=True, slots=True)
class Notification:
    method: str
    params: Params = None


@dataclass(frozen=True, slots=True)
class Response:
    id: RequestId
    result: Any


@dataclass(frozen=True, slots=True)
class ErrorObject:
    code: int
    message: str
    data: Any = None


@dataclass(frozen=True, slots=True)
class ErrorResponse:
    # None when the peer could not tell which request failed (JSON-RPC sends "id": null then).
    id: RequestId | None
    error: ErrorObject


Message = Request | Notification | Response | ErrorResponse
# Inside a batch a malformed element does not sink its siblings: it stays in place as the
# InvalidRequest the caller answers with, as JSON-RPC 2.0 section 6 prescribes.
BatchItem = Message | InvalidRequest


def _is_id(value: object) -> bool:
    # bool is an int subclass; true/false are not ids. Floats (also 2**64 and up, which orjson
    # decodes as float) are rejected: MCP ids are strings or integers.
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def too_deep(value: Any, limit: int) -> bool:
    """Whether containers nest more than ``limit`` levels (iterative: no recursion to exhaust).

    Also for bodies that are JSON but not JSON-RPC (the original API's ``POST /message``): a
    deep value reaches the tool registry, whose schema errors repr it recursively."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        children: Iterable[Any]
        if isinstance(node, dict):
            children = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def _classify(obj: Any) -> Message:
    """One decoded JSON value -> a message, or InvalidRequest naming what is wrong."""
    if not isinstance(obj, dict):
        raise InvalidRequest("a JSON-RPC message must be a JSON object")
    raw_id = obj.get("id")
    known_id = raw_id if _is_id(raw_id) else None
    if obj.get("jsonrpc") != "2.0":
        raise InvalidRequest('"jsonrpc" must be exactly "2.0"', request_id=known_id)

    if "method" in obj:
        method = obj["method"]
        if not isinstance(method, str):
            raise InvalidRequest('"method" must be a string', request_id=known_id)
        # null params is read as omitted: not strictly JSON-RPC, but the MCP SDKs accept it and
        # rejecting it would only break clients, never protect us.
        params = obj.get("params")
        if params is not None and not isinstance(params, dict | list):
            raise InvalidRequest('"params" must be an object or an array', request_id=known_id)
        if "id" not in obj:
            return Notification(method, params)
        if known_id is None:
            raise InvalidRequest('"id" must be a string or an integer')
        return Request(known_id, method, params)

    has_result, has_error = "result" in obj, "error" in obj
    if has_result == has_error:
        raise InvalidRequest(
            'a message needs "method", or exactly one of "result" and "error"', request_id=known_id
        )
    if has_result:
        if known_id is None:
            raise InvalidRequest('a result needs a string or integer "id"')
        return Response(known_id, obj["result"])
    if raw_id is not None and known_id is None:
        raise InvalidRequest('"id" must be a string, an integer or null')
    error = obj["error"]
    if not isinstance(error, dict):
        raise InvalidRequest('"error" must be an object', request_id=known_id)
    code, message = error.get("code"), error.get("message")
    if not isinstance(code, int) or isinstance(code, bool) or not isinstance(message, str):
        raise InvalidRequest(
            '"error" needs an integer "code" and a string "message"', request_id=known_id
        )
    return ErrorResponse(known_id, ErrorObject(code, message, error.get("data")))


def parse_message(
    data: bytes | bytearray | memoryview | str,
    *,
    allow_batch: bool = False,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_batch_items: int = DEFAULT_MAX_BATCH_ITEMS,
) -> Message | list[BatchItem]:
    """Decode one JSON-RPC body.

    Returns a single message, or (only with ``allow_batch``) a non-empty list whose elements are
    messages or ``InvalidRequest`` instances for the malformed ones. Raises ``ParseError`` or
    ``InvalidRequest`` when the body as a whole is unusable; the body-level InvalidRequest of a
    batch always has ``request_id`` None. Batches are legal only in 2024-11-05/2025-03-26, so the
    caller decides (see ``datapulse.core.mcp.batches_allowed``). A batch longer than
    ``max_batch_items`` is refused whole with InvalidRequest (``Config.max_batch_items``: each
    caller passes its server's limits, like ``max_depth``).
    """
    try:
        decoded = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ParseError(f"invalid JSON: {exc}") from None
    if too_deep(decoded, max_depth):
        raise InvalidRequest(f"JSON nests deeper than {max_depth} levels")
    if not isinstance(decoded, list):
        return _classify(decoded)
    if not allow_batch:
        raise InvalidRequest("JSON-RPC batches are not accepted here")
    if not decoded:
        raise InvalidRequest("an empty batch is not a valid request")
    if len(decoded) > max_batch_items:
        raise InvalidRequest(
            f"a batch of {len(decoded)} messages exceeds the limit of {max_batch_items}"
        )
    items: list[BatchItem] = []
    for element in decoded:
        try:
            items.append(_classify(element))
        except InvalidRequest as exc:
            items.append(exc)
    return items


def _dump(obj: dict[str, Any]) -> bytes:
    return orjson.dumps(obj, option=_DUMP_OPTIONS)


def encode_request(request_id: RequestId, method: str, params: Params = None) -> bytes:
    obj: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
    if params is not None:
        obj["params"] = params
    return _dump(obj)


def encode_notification(method: str, params: Params = None) -> bytes:
    obj: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        obj["params"] = params
    return _dump(obj)


def encode_result(request_id: RequestId, result: Any) -> bytes:
    return _dump({"jsonrpc": "2.0", "id": request_id, "result": result})


def encode_error(request_id: RequestId | None, code: int, message: str, data: Any = None) -> bytes:
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return _dump({"jsonrpc": "2.0", "id": request_id, "error": error})


def encode_exception(exc: DatapulseError, request_id: RequestId | None = None) -> bytes:
    """A DatapulseError as a JSON-RPC error message: the one place an error gets its JSON-RPC
    shape (its code comes from the error class). ``data=...`` given to the error is sent as
    ``error.data``; without ``request_id``, an error that read the request's id answers with it.
    """
    if request_id is None:
        request_id = exc.request_id
    return encode_error(request_id, exc.jsonrpc_code, str(exc), exc.extra.get("data"))
