"""The DatapulseError tree.

Every error a client can cause is one of these. Each carries the HTTP status it maps to and the
JSON-RPC code it maps to, so the mapping lives here, with the error. Turning one into bytes is done
in one place per style: ``net.http.error_response`` (plain JSON) and ``core.jsonrpc.
encode_exception`` (a JSON-RPC error object, used by the dispatcher and by MCP endpoints).
"""

from __future__ import annotations

from typing import Any, Final

QUOTE_CHARS: Final = 100
"""How much of one piece of client input an error detail quotes (``quote``)."""

MAX_DETAIL_CHARS: Final = 400
"""The longest detail any error carries. Details quote client input (a method name, an id, a
header, a schema error about an argument); this bound holds even where a message was built
without ``quote``, so an error body never grows with what the client sent."""


def quote(value: object, limit: int = QUOTE_CHARS) -> str:
    """``value`` for an error detail: its repr, cut to ``limit`` characters of the input, with
    how many were left out. Client input is quoted with this, never with a bare ``!r``."""
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text) - limit} more characters)"


def clip(detail: str, limit: int = MAX_DETAIL_CHARS) -> str:
    """``detail`` cut to ``limit`` characters (marked), for messages built from client input."""
    if len(detail) <= limit:
        return detail
    return f"{detail[: limit - 30]}... ({len(detail) - limit + 30} more characters)"


class DatapulseError(Exception):
    """Base class: a failure with a short machine-readable name and a human-readable detail.

    The detail is clipped to ``MAX_DETAIL_CHARS`` here, so that no error a client can cause
    echoes its input at length, wherever the error was raised.
    """

    http_status: int = 500
    jsonrpc_code: int = -32603
    error: str = "internal_error"
    request_id: str | int | None = None
    """The JSON-RPC id of the request that failed, when it was read before the failure."""

    def __init__(self, detail: str = "", **extra: Any) -> None:
        detail = clip(detail)
        super().__init__(detail or self.error)
        self.detail = detail
        self.extra = extra

    @property
    def headers(self) -> list[tuple[str, str]]:
        """Extra response headers this error needs (``Allow``, ``Retry-After``, ...)."""
        return []


class BadRequest(DatapulseError):
    http_status = 400
    jsonrpc_code = -32600
    error = "bad_request"


class InvalidParams(BadRequest):
    jsonrpc_code = -32602
    error = "invalid_params"


class Unauthorized(DatapulseError):
    http_status = 401
    jsonrpc_code = -32001
    error = "unauthorized"

    def __init__(self, detail: str = "", *, challenge: str = "Bearer") -> None:
        super().__init__(detail)
        self.challenge = challenge

    @property
    def headers(self) -> list[tuple[str, str]]:
        return [("WWW-Authenticate", self.challenge)]


class Forbidden(DatapulseError):
    http_status = 403
    jsonrpc_code = -32003
    error = "forbidden"


class NotFound(DatapulseError):
    http_status = 404
    jsonrpc_code = -32600
    error = "not_found"


class SessionNotFound(NotFound):
    error = "session_not_found"


class AmbiguousSession(SessionNotFound):
    """For the host program (``Server.publish``): several principals have a session with this
    client-chosen id, and the call did not say whose (``principal=``). A ``SessionNotFound``, so
    a host that skips sessions nobody has opened also skips one it cannot name; it is never sent
    to a client."""

    error = "ambiguous_session"


class MethodNotAllowed(DatapulseError):
    http_status = 405
    jsonrpc_code = -32600
    error = "method_not_allowed"

    def __init__(self, detail: str = "", *, allow: list[str]) -> None:
        super().__init__(detail)
        self.allow = allow

    @property
    def headers(self) -> list[tuple[str, str]]:
        return [("Allow", ", ".join(self.allow))]


class NotAcceptable(DatapulseError):
    http_status = 406
    jsonrpc_code = -32600
    error = "not_acceptable"


class RequestTimeout(DatapulseError):
    http_status = 408
    error = "request_timeout"


class Conflict(DatapulseError):
    http_status = 409
    jsonrpc_code = -32600
    error = "conflict"


class MisdirectedRequest(DatapulseError):
    """A Host header naming a site we do not serve (DNS-rebinding protection)."""

    http_status = 421
    jsonrpc_code = -32600
    error = "misdirected_request"


class PayloadTooLarge(DatapulseError):
    http_status = 413
    jsonrpc_code = -32600
    error = "payload_too_large"


class UnsupportedMediaType(DatapulseError):
    http_status = 415
    jsonrpc_code = -32600
    error = "unsupported_media_type"


class UnprocessableEntity(DatapulseError):
    http_status = 422
    jsonrpc_code = -32602
    error = "unprocessable_entity"


class TooManyRequests(DatapulseError):
    http_status = 429
    jsonrpc_code = -32000
    error = "too_many_requests"

    def __init__(self, detail: str = "", *, retry_after_s: int = 1) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s

    @property
    def headers(self) -> list[tuple[str, str]]:
        return [("Retry-After", str(self.retry_after_s))]


class HeadersTooLarge(DatapulseError):
    http_status = 431
    error = "headers_too_large"


class ServiceUnavailable(DatapulseError):
    http_status = 503
    jsonrpc_code = -32000
    error = "service_unavailable"

    def __init__(self, detail: str = "", *, retry_after_s: int = 1) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s

    @property
    def headers(self) -> list[tuple[str, str]]:
        return [("Retry-After", str(self.retry_after_s))]


class ConnectionLimit(ServiceUnavailable):
    """The server holds ``max_connections``; a new one is answered and closed at once."""

    error = "too_many_connections"


class ConnectionLimitPerAddress(TooManyRequests):
    """One client address holds ``max_connections_per_ip``: its own doing, so not a 503."""

    error = "too_many_connections"


class ToolError(DatapulseError):
    """A tool's own failure: reported to the caller as a result with ``isError``, not a crash."""

    http_status = 502
    error = "tool_error"


class UnknownTool(InvalidParams):
    error = "unknown_tool"


class ResourceNotFound(InvalidParams):
    """``resources/read`` (or subscribe) of a URI nothing serves. -32002 is what every handshake
    revision names; 2026-07-28 answers -32602 (``protocol.methods`` picks per revision). The URI
    goes back in ``data``, quoted to a bound."""

    jsonrpc_code = -32002
    error = "resource_not_found"

    def __init__(self, uri: str) -> None:
        super().__init__(f"resource not found: {quote(uri)}", data={"uri": uri[: QUOTE_CHARS * 20]})
        self.uri = uri


class UnknownPrompt(InvalidParams):
    error = "unknown_prompt"
