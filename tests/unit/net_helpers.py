"""Drive ``net.connection.serve_connection`` without sockets: a memory stream pair, a client that
parses responses with h11 (one parser per response, so pipelined responses split correctly),
and a ``ConnectionHost`` that records what the connection told it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import h11
import orjson
import trio
import trio.testing

from datapulse.config import Config
from datapulse.net.connection import App, HTTPConnection, serve_connection

PEER = ("192.0.2.7", 40000)


def small_config(**overrides: Any) -> Config:
    """Limits small enough to reach in a test; timeouts all different, so a test can tell
    which one fired by the (virtual) time it took."""
    base: dict[str, Any] = {
        "max_body_bytes": 100,
        "max_header_count": 10,
        "max_header_bytes": 1024,
        "read_timeout_s": 5.0,
        "keepalive_timeout_s": 2.0,
        "write_timeout_s": 3.0,
    }
    base.update(overrides)
    return Config(**base)


def get(target: str = "/", *headers: str, method: str = "GET", body: bytes = b"") -> bytes:
    """A raw HTTP/1.1 request; ``headers`` are ``"Name: value"`` lines (Host is added)."""
    lines = [f"{method} {target} HTTP/1.1", "Host: test", *headers]
    if body and not any(
        h.lower().startswith(("content-length", "transfer-encoding")) for h in headers
    ):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    raw: bytes
    """The response exactly as it came off the wire (head and framed body)."""
    informational: list[int] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k == name.lower()]
        return ", ".join(values) if values else None

    def json(self) -> Any:
        return orjson.loads(self.body)


class ResponseReader:
    """One response, read event by event (a streamed body chunk by chunk)."""

    def __init__(self, client: HTTPClient, method: str) -> None:
        self._client = client
        self._h11 = h11.Connection(h11.CLIENT)
        # h11 must believe it sent the request to frame the answer (HEAD has no body).
        self._h11.send(h11.Request(method=method, target="/", headers=[("Host", "test")]))
        self._h11.send(h11.EndOfMessage())
        self.raw = bytearray()
        self.informational: list[int] = []

    async def next_event(self) -> h11.Event:
        while True:
            event = self._h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            data = await self._client.take()
            self.raw += data
            self._h11.receive_data(data)

    async def head(self) -> h11.Response:
        while True:
            event = await self.next_event()
            if isinstance(event, h11.InformationalResponse):
                self.informational.append(event.status_code)
            elif isinstance(event, h11.Response):
                return event
            else:
                raise AssertionError(f"expected a response head, got {event!r}")

    async def next_data(self) -> bytes | None:
        """The next body chunk as the server framed it; None at the end of the response."""
        event = await self.next_event()
        if isinstance(event, h11.Data):
            return bytes(event.data)
        if isinstance(event, h11.EndOfMessage):
            self._finish()
            return None
        raise AssertionError(f"expected body data, got {event!r}")

    def _finish(self) -> None:
        # Bytes past this response belong to the next one (pipelining).
        rest = self._h11.trailing_data[0]
        if rest:
            del self.raw[len(self.raw) - len(rest) :]
        self._client.buffer[:0] = rest


class HTTPClient:
    """The client end of a memory stream pair."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def take(self) -> bytes:
        """Buffered bytes, else the next read (b"" at EOF)."""
        if self.buffer:
            data, self.buffer = bytes(self.buffer), bytearray()
            return data
        return bytes(await self.stream.receive_some(65536))

    async def start_response(self, method: str = "GET") -> tuple[h11.Response, ResponseReader]:
        reader = ResponseReader(self, method)
        return await reader.head(), reader

    async def response(self, method: str = "GET") -> Reply:
        head, reader = await self.start_response(method)
        body = bytearray()
        while (chunk := await reader.next_data()) is not None:
            body += chunk
        return Reply(
            head.status_code,
            [(k.decode(), v.decode()) for k, v in head.headers],
            bytes(body),
            bytes(reader.raw),
            reader.informational,
        )

    async def request(self, raw: bytes, method: str = "GET") -> Reply:
        await self.send(raw)
        return await self.response(method)

    async def until_closed(self) -> bytes:
        """Everything the server still sends before it closes the connection."""
        received = bytearray()
        while data := await self.take():
            received += data
        return bytes(received)


class RecordingHost:
    """A ``ConnectionHost`` that records each call."""

    def __init__(self) -> None:
        self.shutting_down = False
        self.opened_with: list[HTTPConnection] = []
        self.closed_with: list[HTTPConnection] = []

    def opened(self, connection: HTTPConnection) -> None:
        self.opened_with.append(connection)

    def closed(self, connection: HTTPConnection) -> None:
        self.closed_with.append(connection)


@dataclass
class Served:
    client: HTTPClient
    host: RecordingHost
    finished: trio.Event

    @property
    def connection(self) -> HTTPConnection:
        return self.host.opened_with[0]


async def serve(
    nursery: trio.Nursery,
    app: App,
    config: Config | None = None,
    host: RecordingHost | None = None,
) -> Served:
    """Start ``serve_connection`` on one end of a memory stream pair; the test holds the other."""
    client_end, server_end = trio.testing.memory_stream_pair()
    host = host or RecordingHost()
    finished = trio.Event()

    async def run() -> None:
        try:
            await serve_connection(
                server_end, app, config or small_config(), client=PEER, host=host
            )
        finally:
            finished.set()

    nursery.start_soon(run)
    await trio.testing.wait_all_tasks_blocked()
    return Served(HTTPClient(client_end), host, finished)
