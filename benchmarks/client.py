"""Trio side of the load generator: raw sockets plus the protocol steps each scenario needs.

``HttpConnection`` is one keep-alive TCP connection used for one request at a time. ``EventStream``
reads an SSE response body as it arrives. The ``open_*`` functions perform the handshake of each
stream *kind*:

* ``events`` -- the original API: ``GET /events?session_id=ID``; publish with ``POST /message``.
* ``sse``    -- legacy MCP HTTP+SSE: ``GET /sse``, wait for the ``endpoint`` event; publish with
  JSON-RPC ``POST`` to that endpoint (after an ``initialize`` handshake, see ``initialize_legacy``).
* ``mcp``    -- Streamable HTTP: ``POST /mcp`` initialize, then ``GET /mcp`` with the session id.

``McpSession`` is a Streamable HTTP client for ``tools/call`` in JSON or SSE response mode.
All waits are bounded by the caller's ``trio.fail_after``.
"""

from __future__ import annotations

import itertools
import json
import socket as stdlib_socket
import uuid
from dataclasses import dataclass, field
from typing import Any

import trio

from benchmarks.wire import (
    BodyDecoder,
    ResponseHead,
    SSEEvent,
    SSEParser,
    WireError,
    body_decoder,
    build_request,
    parse_head,
)

RECV_BYTES = 65536
MCP_PROTOCOL_VERSION = "2025-11-25"
LEGACY_PROTOCOL_VERSION = "2024-11-05"
CLIENT_INFO = {"name": "datapulse-bench", "version": "1"}


class StreamEnded(Exception):
    """The server ended an SSE response or closed the connection."""


class HttpStatusError(Exception):
    def __init__(self, status: int, what: str) -> None:
        super().__init__(f"{what}: HTTP {status}")
        self.status = status


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    token: str

    @property
    def authority(self) -> str:
        return f"{self.host}:{self.port}"


class HttpConnection:
    """One TCP connection; callers serialise requests on it (no pipelining)."""

    def __init__(self, sock: trio.socket.SocketType, target: Target) -> None:
        self.sock = sock
        self.target = target
        self.buffer = b""  # bytes received but not consumed yet
        self.recv_bytes = RECV_BYTES
        self.recv_delay_s = 0.0  # slow-consumer mode: pause before each socket read

    @classmethod
    async def open(cls, target: Target, *, rcvbuf: int | None = None) -> HttpConnection:
        sock = trio.socket.socket(stdlib_socket.AF_INET, stdlib_socket.SOCK_STREAM)
        try:
            sock.setsockopt(stdlib_socket.IPPROTO_TCP, stdlib_socket.TCP_NODELAY, 1)
            if rcvbuf is not None:
                sock.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_RCVBUF, rcvbuf)
            await sock.connect((target.host, target.port))
        except BaseException:
            sock.close()
            raise
        return cls(sock, target)

    def close(self) -> None:
        self.sock.close()

    async def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            sent = await self.sock.send(view)
            view = view[sent:]

    async def receive_some(self) -> bytes:
        if self.buffer:
            data, self.buffer = self.buffer, b""
            return data
        if self.recv_delay_s:
            await trio.sleep(self.recv_delay_s)
        data = await self.sock.recv(self.recv_bytes)
        if not data:
            raise StreamEnded("connection closed by server")
        return data

    async def read_head(self) -> ResponseHead:
        buffer = b""
        while True:
            buffer += await self.receive_some()
            parsed = parse_head(buffer)
            if parsed is not None:
                head, self.buffer = parsed
                if head.status == 100:
                    buffer, self.buffer = self.buffer, b""
                    continue
                return head

    async def read_body(self, decoder: BodyDecoder) -> bytes:
        parts = []
        while not decoder.done:
            try:
                data = await self.receive_some()
            except StreamEnded:
                decoder.feed_eof()
                break
            parts.append(decoder.feed(data))
        self.buffer = decoder.leftover
        return b"".join(parts)

    def request_bytes(
        self, method: str, path: str, headers: list[tuple[str, str]], body: bytes = b""
    ) -> bytes:
        all_headers = [("Authorization", f"Bearer {self.target.token}"), *headers]
        return build_request(method, path, self.target.authority, all_headers, body)

    async def request(
        self, method: str, path: str, headers: list[tuple[str, str]], body: bytes = b""
    ) -> tuple[ResponseHead, bytes]:
        await self.send(self.request_bytes(method, path, headers, body))
        head = await self.read_head()
        return head, await self.read_body(body_decoder(head, request_method=method))


class EventStream:
    """An open SSE response; ``receive()`` returns the events that arrived, at least one."""

    def __init__(self, conn: HttpConnection, head: ResponseHead) -> None:
        self.conn = conn
        self.head = head
        self.decoder = body_decoder(head)
        self.parser = SSEParser()
        self.ended = False
        self.post_path = ""  # where this stream's session takes requests
        self.session_id = ""

    async def receive(self) -> list[SSEEvent]:
        while True:
            if self.ended:
                raise StreamEnded("SSE response ended")
            try:
                raw = await self.conn.receive_some()
            except StreamEnded:
                self.ended = True
                raise
            events = self.parser.feed(self.decoder.feed(raw))
            if self.decoder.done:
                self.ended = True
                self.conn.buffer = self.decoder.leftover
            if events:
                return events

    def close(self) -> None:
        self.conn.close()


JSON_HEADERS = [("Content-Type", "application/json")]
MCP_ACCEPT = ("Accept", "application/json, text/event-stream")


def jsonrpc(method: str, params: dict[str, Any], request_id: int | None = None) -> bytes:
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "params": params}
    if request_id is not None:
        message["id"] = request_id
    return json.dumps(message, separators=(",", ":")).encode()


def call_get_time(request_id: int) -> bytes:
    return jsonrpc("tools/call", {"name": "get_time", "arguments": {}}, request_id)


def seed_call(request_id: str) -> bytes:
    message = {"type": "call_tool", "request_id": request_id, "data": {"name": "get_time"}}
    return json.dumps(message, separators=(",", ":")).encode()


def response_id(event: SSEEvent) -> Any:
    """The JSON-RPC id (MCP) or request_id (original API) an event answers, else None."""
    if event.comment or not event.data.startswith(b"{"):
        return None
    try:
        message = json.loads(event.data)
    except ValueError:
        return None
    if not isinstance(message, dict):
        return None
    return message.get("id", message.get("request_id"))


async def open_stream(target: Target, kind: str, *, rcvbuf: int | None = None) -> EventStream:
    conn = await HttpConnection.open(target, rcvbuf=rcvbuf)
    try:
        if kind == "events":
            return await _open_events(conn)
        if kind == "sse":
            return await _open_legacy(conn)
        if kind == "mcp":
            return await _open_streamable_get(conn)
        raise ValueError(f"unknown stream kind {kind!r}")
    except BaseException:
        conn.close()
        raise


async def _open_events(conn: HttpConnection) -> EventStream:
    session_id = uuid.uuid4().hex
    await conn.send(
        conn.request_bytes(
            "GET", f"/events?session_id={session_id}", [("Accept", "text/event-stream")]
        )
    )
    head = await conn.read_head()
    if head.status != 200:
        raise HttpStatusError(head.status, "GET /events")
    stream = EventStream(conn, head)
    stream.session_id = session_id
    stream.post_path = f"/message?session_id={session_id}"
    return stream


async def _open_legacy(conn: HttpConnection) -> EventStream:
    await conn.send(conn.request_bytes("GET", "/sse", [("Accept", "text/event-stream")]))
    head = await conn.read_head()
    if head.status != 200:
        raise HttpStatusError(head.status, "GET /sse")
    stream = EventStream(conn, head)
    while not stream.post_path:
        for event in await stream.receive():
            if event.event == b"endpoint":
                stream.post_path = event.data.decode()
    return stream


async def initialize_legacy(stream: EventStream, poster: HttpConnection, request_id: int) -> None:
    """The legacy handshake: initialize (answer arrives on the stream), then initialized."""
    params = {
        "protocolVersion": LEGACY_PROTOCOL_VERSION,
        "capabilities": {},
        "clientInfo": CLIENT_INFO,
    }
    body = jsonrpc("initialize", params, request_id)
    head, _ = await poster.request("POST", stream.post_path, JSON_HEADERS, body)
    if head.status >= 300:
        raise HttpStatusError(head.status, "POST initialize (legacy)")
    answered = False
    while not answered:
        answered = any(response_id(e) == request_id for e in await stream.receive())
    head, _ = await poster.request(
        "POST", stream.post_path, JSON_HEADERS, jsonrpc("notifications/initialized", {})
    )
    if head.status >= 300:
        raise HttpStatusError(head.status, "POST notifications/initialized (legacy)")


async def _open_streamable_get(conn: HttpConnection) -> EventStream:
    session = McpSession(conn)
    await session.initialize()
    await conn.send(conn.request_bytes("GET", "/mcp", [*session.headers, MCP_SSE_ACCEPT]))
    head = await conn.read_head()
    if head.status != 200:
        raise HttpStatusError(head.status, "GET /mcp")
    stream = EventStream(conn, head)
    stream.session_id = session.session_id
    return stream


MCP_SSE_ACCEPT = ("Accept", "text/event-stream")


@dataclass
class McpSession:
    """A Streamable HTTP client session on one keep-alive connection."""

    conn: HttpConnection
    session_id: str = ""
    protocol_version: str = MCP_PROTOCOL_VERSION
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    answers: dict[str, int] = field(default_factory=dict)  # tools/call answers by framing

    @property
    def headers(self) -> list[tuple[str, str]]:
        return [
            ("Mcp-Session-Id", self.session_id),
            ("MCP-Protocol-Version", self.protocol_version),
        ]

    async def initialize(self) -> None:
        params = {
            "protocolVersion": MCP_PROTOCOL_VERSION,
            "capabilities": {},
            "clientInfo": CLIENT_INFO,
        }
        await self.conn.send(
            self.conn.request_bytes(
                "POST", "/mcp", [*JSON_HEADERS, MCP_ACCEPT], jsonrpc("initialize", params, 0)
            )
        )
        head = await self.conn.read_head()
        if head.status != 200:
            raise HttpStatusError(head.status, "POST /mcp initialize")
        self.session_id = head.headers.get("mcp-session-id", "")
        if not self.session_id:
            raise WireError("initialize answer carries no Mcp-Session-Id")
        result = await self._read_answer(head, 0)
        self.protocol_version = str(
            result.get("result", {}).get("protocolVersion", MCP_PROTOCOL_VERSION)
        )
        head, _ = await self.conn.request(
            "POST",
            "/mcp",
            [*JSON_HEADERS, MCP_ACCEPT, *self.headers],
            jsonrpc("notifications/initialized", {}),
        )
        if head.status >= 300:
            raise HttpStatusError(head.status, "POST /mcp notifications/initialized")

    async def call_get_time(self) -> None:
        """One tools/call, answer read to the end of its body (the connection is reusable)."""
        request_id = next(self.ids)
        await self.conn.send(
            self.conn.request_bytes(
                "POST",
                "/mcp",
                [*JSON_HEADERS, MCP_ACCEPT, *self.headers],
                call_get_time(request_id),
            )
        )
        head = await self.conn.read_head()
        if head.status != 200:
            raise HttpStatusError(head.status, "POST /mcp tools/call")
        framing = "sse" if head.is_sse else "json"
        self.answers[framing] = self.answers.get(framing, 0) + 1
        answer = await self._read_answer(head, request_id)
        if "result" not in answer:
            raise WireError(f"tools/call failed: {str(answer)[:200]}")

    async def _read_answer(self, head: ResponseHead, request_id: int) -> dict[str, Any]:
        if not head.is_sse:
            body = await self.conn.read_body(body_decoder(head))
            answer: dict[str, Any] = json.loads(body)
            return answer
        stream = EventStream(self.conn, head)
        while True:
            for event in await stream.receive():
                if response_id(event) == request_id:
                    await self._drain(stream)
                    answer = json.loads(event.data)
                    return answer

    async def _drain(self, stream: EventStream) -> None:
        try:
            while not stream.ended:
                await stream.receive()
        except StreamEnded:
            pass
        if not stream.decoder.done:
            raise StreamEnded("server closed the connection after an SSE answer")
