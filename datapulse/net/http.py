"""HTTP request/response values and the one place errors become HTTP responses.

Handlers receive a ``Request`` and return a ``Response`` (a complete body) or a
``StreamingResponse`` (a body produced by an async function, sent chunked). ``error_response``
is the only function that maps a ``DatapulseError`` to a status, so every error body has the
same short JSON shape: ``{"error": "<name>", "detail": "<human text>"}``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs

import orjson

from datapulse.errors import DatapulseError

log = logging.getLogger("datapulse.http")

Headers = list[tuple[str, str]]
BodyWriter = Callable[[bytes], Awaitable[None]]

JSON_HEADERS: Headers = [("Content-Type", "application/json")]


@dataclass
class Request:
    method: str
    target: str
    path: str
    query: dict[str, list[str]]
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""
    client: tuple[str, int] | None = None
    http_version: str = "1.1"
    # Filled in by the router after authentication.
    principal: Any = None
    # ``start_task(fn, *args)``: run fn for this request; it is cancelled when the client
    # disconnects or once the response is complete. Set by the connection.
    start_task: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

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
        path, _, query = target.partition("?")
        return cls(
            method=method,
            target=target,
            path=path,
            query=parse_qs(query, keep_blank_values=True),
            headers=headers,
            client=client,
            http_version=http_version,
        )

    def _header_map(self) -> dict[str, list[str]]:
        # Built once per request on first use: a request is asked for a dozen headers (auth,
        # Host, Origin, Accept, Content-Type, MCP's) and scanning the list each time adds up.
        cached: dict[str, list[str]] | None = self.extra.get("_headers")
        if cached is None:
            cached = {}
            for key, value in self.headers:
                cached.setdefault(key.decode("latin-1"), []).append(value.decode("latin-1"))
            self.extra["_headers"] = cached
        return cached

    def header(self, name: str) -> str | None:
        """The value of a header (case-insensitive name); several fields are joined by ', '."""
        values = self._header_map().get(name.lower())
        if not values:
            return None
        return values[0] if len(values) == 1 else ", ".join(values)

    def header_values(self, name: str) -> list[str]:
        return [v.strip() for v in self._header_map().get(name.lower(), [])]

    def query_param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None

    def json(self) -> Any:
        return orjson.loads(self.body)

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
    body: Callable[[BodyWriter], Awaitable[None]]


@dataclass
class Upgrade:
    """Hand the connection to another protocol (WebSocket): ``run(stream)`` owns it from here.

    The stream given to ``run`` first replays the request head the HTTP layer already consumed,
    so the other protocol's handshake code can read the request as if it were first.
    """

    run: Callable[[Any], Awaitable[None]]


def json_body(obj: Any) -> bytes:
    return orjson.dumps(obj)


def json_response(status: int, obj: Any, headers: Headers | None = None) -> Response:
    return Response(status, [*JSON_HEADERS, *(headers or [])], json_body(obj))


def error_body(error: str, detail: str) -> bytes:
    return json_body({"error": error, "detail": detail})


def error_response(exc: DatapulseError) -> Response:
    """The only mapping from a DatapulseError to an HTTP response."""
    return Response(
        exc.http_status,
        [*JSON_HEADERS, *exc.headers],
        error_body(exc.error, exc.detail or exc.error.replace("_", " ")),
    )


def internal_error_response() -> Response:
    """For bugs: a fixed body, because nothing about the exception may reach the client."""
    return Response(500, list(JSON_HEADERS), error_body("internal_error", "internal server error"))


def encode_raw_response(
    status: int, error: str, detail: str, headers: Headers | None = None
) -> bytes:
    """A complete ``Connection: close`` response as bytes, for errors h11 cannot frame.

    Used when the request could not be read (timeout, protocol error, too many connections): at
    that point h11's state machine may not allow a response, yet the client deserves one.
    """
    body = error_body(error, detail)
    reason = HTTPStatus(status).phrase
    lines = [
        f"HTTP/1.1 {status} {reason}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *(f"{k}: {v}" for k, v in headers or []),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
