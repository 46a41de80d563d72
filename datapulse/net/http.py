"""HTTP request/response values and the one place errors become HTTP responses.

Handlers receive a ``Request`` and return a ``Response`` (a complete body), a
``StreamingResponse`` (a body produced by an async function, sent chunked) or an ``Upgrade``.

A request target in absolute form (``GET http://host:port/path?q HTTP/1.1``, RFC 9112 3.2.2) is
routed by its path and query like the origin form; its authority is kept in
``Request.authority``, which the Host check applies to as well as to the Host header.

Errors: a ``DatapulseError`` carries its own HTTP status and JSON-RPC code. Two functions turn
one into a response, and a route picks one of them (``ErrorStyle``): ``error_response`` gives
every plain-HTTP endpoint the same short JSON body, ``{"error": "<name>", "detail": "<text>"}``;
``jsonrpc_error_response`` gives MCP endpoints a JSON-RPC error object, which is what MCP
clients parse. ``encode_raw_response`` frames the first kind as bytes for the cases h11 cannot
(an unreadable request, a refused connection).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import Enum
from http import HTTPStatus
from typing import Any, Protocol
from urllib.parse import parse_qs

import orjson
import trio

from datapulse.auth.verifier import Principal
from datapulse.core.jsonrpc import RequestId, encode_exception
from datapulse.core.media import media_type
from datapulse.errors import BadRequest, DatapulseError, Unauthorized

log = logging.getLogger("datapulse.http")

Headers = list[tuple[str, str]]
TaskStarter = Callable[[], Awaitable[object]]

JSON_HEADERS: Headers = [("Content-Type", "application/json")]


class BodyStream(Protocol):
    """A streamed response body as its producer sees it (the connection implements it).

    Only the producer's task awaits ``write`` and ``wait``; any task may ``try_write`` (a
    publisher, the pinger) and ``wake`` it. Every write goes through the connection's one
    ``SocketWriter``, so chunks never interleave.
    """

    async def write(self, chunk: bytes) -> None:
        """Write a chunk, waiting at most ``write_timeout_s``; ``ClientGone`` if it cannot.
        An empty chunk only flushes what a partial ``try_write`` left behind."""

    def try_write(self, chunk: bytes) -> bool:
        """Write a chunk now if the socket takes it without waiting; False if not written."""

    @property
    def needs_flush(self) -> bool:
        """A ``try_write`` left part of its chunk unsent: the producer must ``write(b"")``."""

    def wake(self) -> None:
        """End the producer's current (or next) ``wait``; callable from any task."""

    async def wait(self) -> bool:
        """Idle until ``wake`` (True) or until the client has gone (False)."""


class ErrorStyle(Enum):
    """How a route answers errors: plain JSON (``error_response``) or JSON-RPC."""

    HTTP = "http"
    JSONRPC = "jsonrpc"


@dataclass(frozen=True)
class StreamTicket:
    """The stream ticket a request was authenticated with (rules in ``auth.tickets``).

    ``first_use``: this request spent it; the transport binds it to the session its stream
    opens, once that has succeeded, so a refused open (404, 429) leaves nothing behind.
    """

    value: str
    first_use: bool


def _no_connection(fn: TaskStarter) -> None:
    raise RuntimeError("this request is not being served by a connection")


_ABSOLUTE_SCHEMES = ("http://", "https://")


def split_target(target: str) -> tuple[str | None, str]:
    """``(authority, origin-form)`` of a request target: ``(None, target)`` for the origin form;
    for the absolute form (RFC 9112 3.2.2, what a proxy is sent, and any client may send) its
    authority and the path and query after it (``/`` when the path is empty).

    Raises ``BadRequest`` for an absolute form without a host or with userinfo (RFC 9110 4.2.4:
    a sender must not generate one; it is a phishing device, not an address).
    """
    head = target[:8].lower()
    for scheme in _ABSOLUTE_SCHEMES:
        if head.startswith(scheme):
            rest = target[len(scheme) :]
            end = len(rest)
            for separator in "/?#":
                found = rest.find(separator)
                if found != -1:
                    end = min(end, found)
            authority, tail = rest[:end], rest[end:]
            if not authority or "@" in authority or tail.startswith("#"):
                raise BadRequest("invalid absolute-form request target")
            return authority, tail if tail.startswith("/") else "/" + tail
    return None, target


@dataclass(slots=True)
class Request:
    method: str
    target: str
    path: str
    query: dict[str, list[str]]
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""
    client: tuple[str, int] | None = None
    http_version: str = "1.1"
    principal: Principal | None = None
    """Set by the router once the request is authenticated (None only on public routes)."""
    start_task: Callable[[TaskStarter], None] = _no_connection
    """``start_task(fn)``: run ``fn()`` for this request; it is cancelled when the client
    disconnects or once the response is complete. Set by the connection."""
    ticket: StreamTicket | None = None
    """Set by the router when a ``?ticket=`` authenticated the request (browser streams)."""
    authority: str | None = None
    """The host (and port) of an absolute-form target; None for the usual origin form."""
    proxy: str | None = None
    """The socket peer's address when it is a trusted proxy (``--trusted-proxies``); ``client``
    is then the client it forwarded for. Set by the server before the router sees the head."""
    scheme: str = "http"
    """The scheme the client used: ``http``, or what a trusted proxy says (X-Forwarded-Proto)."""
    forwarded_host: str | None = None
    """The Host the client used, as a trusted proxy says (X-Forwarded-Host, ``host=``)."""
    _header_cache: dict[str, list[str]] | None = field(default=None, repr=False)

    @classmethod
    def from_target(
        cls,
        method: str,
        target: str,
        headers: list[tuple[bytes, bytes]],
        *,
        client: tuple[str, int] | None = None,
        http_version: str = "1.1",
    ) -> Request:
        authority, origin_form = split_target(target)
        path, _, query = origin_form.partition("?")
        return cls(
            method=method,
            target=target,
            path=path,
            query=parse_qs(query, keep_blank_values=True),
            headers=headers,
            client=client,
            http_version=http_version,
            authority=authority,
        )

    def _header_map(self) -> dict[str, list[str]]:
        # Built once per request on first use: a request is asked for a dozen headers (auth,
        # Host, Origin, Accept, Content-Type, MCP's) and scanning the list each time adds up.
        cached = self._header_cache
        if cached is None:
            cached = {}
            for key, value in self.headers:
                cached.setdefault(key.decode("latin-1"), []).append(value.decode("latin-1"))
            self._header_cache = cached
        return cached

    def header(self, name: str) -> str | None:
        """The value of a header (case-insensitive name); several fields are joined by ', '."""
        values = self._header_map().get(name.lower())
        if not values:
            return None
        return values[0] if len(values) == 1 else ", ".join(values)

    def header_lists(self, *names: str) -> dict[str, list[str]]:
        """The raw values of the named (lowercase) headers, for sans-IO parsers."""
        headers = self._header_map()
        return {name: headers[name] for name in names if name in headers}

    def header_values(self, name: str) -> list[str]:
        return [v.strip() for v in self._header_map().get(name.lower(), [])]

    def query_param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None

    @property
    def caller(self) -> Principal:
        """The authenticated principal; only handlers of authenticated routes may ask."""
        if self.principal is None:
            raise Unauthorized("authentication required")
        return self.principal

    def media_type(self) -> str:
        """The Content-Type without parameters, lowercased ('' when absent)."""
        return media_type(self.header("content-type"))

    @property
    def client_host(self) -> str:
        return self.client[0] if self.client else "-"


@dataclass
class Response:
    status: int
    headers: Headers = field(default_factory=list)
    body: bytes = b""


@dataclass
class StreamingResponse:
    """A response whose body is written by ``body(write)`` until it returns or is cancelled.

    The connection owns the cancel scope the body runs in: a client disconnect cancels it.
    """

    status: int
    headers: Headers
    body: Callable[[BodyStream], Awaitable[None]]


@dataclass
class Upgrade:
    """Hand the connection to another protocol (WebSocket): ``run(stream)`` owns it from here.

    The stream given to ``run`` first replays the request head the HTTP layer already consumed,
    so the other protocol's handshake code can read the request as if it were first.
    """

    run: Callable[[trio.abc.Stream], Awaitable[None]]


AppResponse = Response | StreamingResponse | Upgrade
Handler = Callable[[Request], Awaitable[AppResponse]]
"""Answers a request whose body has been read: a route's handler, the app's second phase."""


def json_body(obj: Any) -> bytes:
    return orjson.dumps(obj)


def json_response(status: int, obj: Any, headers: Headers | None = None) -> Response:
    return Response(status, [*JSON_HEADERS, *(headers or [])], json_body(obj))


def error_body(error: str, detail: str) -> bytes:
    return json_body({"error": error, "detail": detail})


def error_response(exc: DatapulseError) -> Response:
    """A DatapulseError as a plain-HTTP response: its status, its headers, the JSON body."""
    return Response(
        exc.http_status,
        [*JSON_HEADERS, *exc.headers],
        error_body(exc.error, exc.detail or exc.error.replace("_", " ")),
    )


def jsonrpc_error_response(exc: DatapulseError, request_id: RequestId | None = None) -> Response:
    """A DatapulseError as an MCP endpoint answers it: its status, a JSON-RPC error body."""
    return Response(
        exc.http_status, [*JSON_HEADERS, *exc.headers], encode_exception(exc, request_id)
    )


def styled_error_response(
    exc: DatapulseError, style: ErrorStyle, request_id: RequestId | None = None
) -> Response:
    if style is ErrorStyle.JSONRPC and not isinstance(exc, Unauthorized):
        # 401s stay plain on every route: their WWW-Authenticate challenge is what clients read.
        return jsonrpc_error_response(exc, request_id)
    return error_response(exc)


def internal_error_response() -> Response:
    """For bugs: a fixed body, because nothing about the exception may reach the client."""
    return Response(500, list(JSON_HEADERS), error_body("internal_error", "internal server error"))


def encode_raw_response(exc: DatapulseError) -> bytes:
    """``error_response(exc)`` as complete ``Connection: close`` bytes, for when h11 cannot frame
    it: the request could not be read (timeout, protocol error), or the connection is refused
    before anything was read (too many connections). The client still deserves an answer."""
    body = error_body(exc.error, exc.detail or exc.error.replace("_", " "))
    reason = HTTPStatus(exc.http_status).phrase
    lines = [
        f"HTTP/1.1 {exc.http_status} {reason}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *(f"{k}: {v}" for k, v in exc.headers),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
