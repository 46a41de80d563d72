"""What the tests share: start here before writing a test helper of your own.

* the server under test: ``TOKEN``/``AUTH``, ``make_config``, ``start_server``, ``make_env``/``Env``
  (a server with the ``tests/mcp_tools.py`` tools and an httpx client), ``start_auth_server``
* deadlines and waiting: ``bound_tests`` (a ``fail_after`` around every test of a module),
  ``wait_for`` (poll a condition under a deadline; never sleep as synchronisation)
* JSON-RPC messages: ``rpc``, ``note``, and ``wire`` for their bytes; MCP request builders
  ``handshake_headers``, ``mcp_session`` (an initialized /mcp session), ``modern_call``
* clients: ``SSEReader`` (SSE over an httpx stream), ``raw_exchange`` (bytes in, bytes out),
  ``RawClient`` (one socket, h11 client side, tiny receive buffers, RST), ``RawWebSocket``
* counted test tools: ``add_counted_tools`` -> ``CountedTools`` (``hang``, ``gated``, ``nap``)
* a fake upstream: ``CannedServer`` (h11, canned responses, records every request), used by the
  fetch_url and browser tests and by the IdP stand-in (tests/idp.py); ``RawRecorder``

Fixtures built from these live in ``tests/conftest.py`` (both suites) and
``tests/e2e/conftest.py`` (e2e only).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import inspect
import os
import resource
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import h11
import httpx
import orjson
import psutil
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Request, TextMessage

from datapulse import Config, Server, ServerInfo
from datapulse.auth.verifier import Principal
from datapulse.core import mcp
from datapulse.core.sse import SSEEvent, SSEParser
from datapulse.errors import Unauthorized
from datapulse.tools.registry import ToolContext
from tests.mcp_tools import Probe, add_test_tools

if TYPE_CHECKING:
    from tests.idp import IdP

TOKEN = "test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
AUTH_HEADER = ("Authorization", f"Bearer {TOKEN}")
AUDIENCE = "https://mcp.example.test/mcp"  # the resource the IdP's tokens are minted for
MODERN = mcp.MODERN_VERSION
BOTH = "application/json, text/event-stream"
MCP_HEADERS = {"Accept": BOTH, "Content-Type": "application/json"}  # a POST to /mcp, no auth
MiB = 1024 * 1024


# -- the server under test -----------------------------------------------------------------------


def make_config(**overrides: Any) -> Config:
    base: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "token": TOKEN,
        "ping_interval_s": 5.0,
        "read_timeout_s": 5.0,
        "keepalive_timeout_s": 5.0,
        "shutdown_grace_s": 1.0,
    }
    base.update(overrides)
    return Config(**base)


async def start_server(nursery: trio.Nursery, **overrides: Any) -> tuple[Server, ServerInfo]:
    server = Server(builtin_tools=True, config=make_config(**overrides))
    info = await nursery.start(server.serve)
    return server, info


@dataclass
class Env:
    """A running server with the ``tests/mcp_tools.py`` tools, and an httpx client for it."""

    server: Server
    url: str
    port: int
    http: httpx.AsyncClient
    probe: Probe


@asynccontextmanager
async def make_env(nursery: trio.Nursery, **overrides: Any) -> AsyncIterator[Env]:
    """The ``env`` fixture (tests/e2e/conftest.py) with other settings; retries every 100 ms."""
    settings: dict[str, Any] = {"ping_interval_s": 5.0, "retry_ms": 100}
    settings.update(overrides)
    server, info = await start_server(nursery, **settings)
    probe = Probe()
    add_test_tools(server.registry, probe)
    async with httpx.AsyncClient(base_url=info.url, timeout=5) as http:
        yield Env(server, info.url, info.port, http, probe)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def secret_tool(arguments: dict[str, Any], context: ToolContext) -> dict[str, Any]:
    return {"secret": 42}


async def echo_tool(arguments: dict[str, Any], context: ToolContext) -> dict[str, Any]:
    return {"n": arguments.get("n")}


async def start_auth_server(
    nursery: trio.Nursery, idp: IdP | None, **overrides: Any
) -> tuple[Server, ServerInfo]:
    """A server with JWT from ``idp`` (if given), the local TOKEN unless ``token=None``, and
    test tools: ``secret`` (scope data:read), ``writer`` (data:write), ``echo`` (no scope)."""
    if idp is not None:
        overrides = {"jwt_issuer": idp.issuer, "jwt_audience": AUDIENCE, **overrides}
    server = Server(builtin_tools=True, config=make_config(**overrides))
    server.tool("secret", scope="data:read")(secret_tool)
    server.tool("writer", scope="data:write")(secret_tool)
    server.tool("sync", scope="offline_access")(secret_tool)
    server.tool("echo", input_schema={"type": "object", "properties": {"n": {"type": "integer"}}})(
        echo_tool
    )
    info = await nursery.start(server.serve)
    return server, info


def client_for(server: Server, *, timeout: float = 10, **kwargs: Any) -> httpx.AsyncClient:
    assert server.info is not None
    return httpx.AsyncClient(base_url=server.info.url, timeout=timeout, **kwargs)


class ServedApp(Protocol):
    """A test app (test_asking_wire.py's, test_tasks_wire.py's): its server and where it listens."""

    server: Server
    url: str
    port: int


App = TypeVar("App", bound=ServedApp)


async def serve_app(nursery: trio.Nursery, app: App) -> App:
    """Serve ``app.server`` in ``nursery``; ``app.url`` and ``app.port`` say where."""
    info = await nursery.start(app.server.serve)
    app.url, app.port = info.url, info.port
    return app


@asynccontextmanager
async def client_of(app: ServedApp, **kwargs: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=app.url, timeout=5, **kwargs) as http:
        yield http


class TwoUsers:
    """A verifier for two users: bearer ``alice`` and bearer ``bob``, each its own principal."""

    async def verify(self, authorization: str | None) -> Principal:
        token = (authorization or "").removeprefix("Bearer ")
        if token in ("alice", "bob"):
            return Principal(id=token, subject=token)
        raise Unauthorized("who?")


# -- deadlines and waiting -----------------------------------------------------------------------


def bound_tests(namespace: dict[str, Any], timeout_s: float) -> None:
    """Wrap every ``async def test_*`` in ``namespace`` in ``trio.fail_after(timeout_s)``; call
    it last in a module, with ``globals()``. (pytest-timeout's longer deadline stays behind it.)"""

    def bounded(test: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
        @functools.wraps(test)
        async def run(*args: Any, **kwargs: Any) -> None:
            with trio.fail_after(timeout_s):
                await test(*args, **kwargs)

        return run

    for name, test in list(namespace.items()):
        if name.startswith("test_") and inspect.iscoroutinefunction(test):
            namespace[name] = bounded(test)


async def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` until it holds; fail saying ``what`` was awaited after ``timeout`` s.
    For state the server changes on its own (a connection closing, a session expiring) where
    there is no event to await."""
    with trio.move_on_after(timeout):
        while not condition():
            await trio.sleep(0.01)
    assert condition(), f"timed out after {timeout}s waiting for {what}"


# -- JSON-RPC and MCP messages -------------------------------------------------------------------


def rpc(method: str, params: dict[str, Any] | None = None, id: int | str = 1) -> dict[str, Any]:
    body: dict[str, Any] = {"jsonrpc": "2.0", "id": id, "method": method}
    if params is not None:
        body["params"] = params
    return body


def note(method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """A notification (no id)."""
    body: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        body["params"] = params
    return body


def wire(message: Any) -> bytes:
    """A message's bytes, for raw clients."""
    return orjson.dumps(message)


def modern_call(
    name: str, arguments: dict[str, Any] | None = None, id: int | str = 1
) -> tuple[list[tuple[str, str]], bytes]:
    """Headers and body of a 2026-07-28 ``tools/call`` (routing headers mirror the body)."""
    meta = {mcp.META_PROTOCOL_VERSION: MODERN, mcp.META_CLIENT_CAPABILITIES: {}}
    body = wire(rpc("tools/call", {"name": name, "arguments": arguments or {}, "_meta": meta}, id))
    headers = [
        AUTH_HEADER,
        ("Content-Type", "application/json"),
        ("Accept", BOTH),
        ("MCP-Protocol-Version", MODERN),
        ("Mcp-Method", "tools/call"),
        ("Mcp-Name", name),
    ]
    return headers, body


def handshake_headers(session_id: str | None = None, version: str = "2025-11-25") -> dict[str, str]:
    headers = {
        "Authorization": f"Bearer {TOKEN}",
        "Content-Type": "application/json",
        "Accept": BOTH,
    }
    if session_id is not None:
        headers["Mcp-Session-Id"] = session_id
        headers["MCP-Protocol-Version"] = version
    return headers


async def mcp_session(
    http: httpx.AsyncClient,
    version: str = "2025-11-25",
    *,
    capabilities: dict[str, Any] | None = None,
) -> dict[str, str]:
    """Initialize a handshake-era /mcp session (its client declaring ``capabilities``, default
    none); returns the headers its requests carry."""
    params = {
        "protocolVersion": version,
        "capabilities": capabilities or {},
        "clientInfo": {"name": "t"},
    }
    response = await http.post("/mcp", headers=handshake_headers(), json=rpc("initialize", params))
    assert response.status_code == 200, response.text
    headers = handshake_headers(response.headers["mcp-session-id"], version)
    ack = await http.post("/mcp", headers=headers, json=note("notifications/initialized"))
    assert ack.status_code == 202
    return headers


# -- clients -------------------------------------------------------------------------------------


class SSEReader:
    """Reads an httpx streaming response as SSE events (our WHATWG parser)."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.parser = SSEParser()
        self.pending: list[SSEEvent] = []
        self.raw = b""
        self._chunks = response.aiter_raw()

    async def next(self, timeout: float = 5.0) -> SSEEvent:
        with trio.fail_after(timeout):
            while not self.pending:
                chunk = await self._chunks.__anext__()
                self.raw += chunk
                self.pending.extend(self.parser.feed(chunk))
            return self.pending.pop(0)

    async def read_until(self, marker: bytes, count: int = 1, timeout: float = 5.0) -> None:
        """Read raw bytes until ``marker`` has been seen ``count`` times (events are kept)."""
        with trio.fail_after(timeout):
            while self.raw.count(marker) < count:
                chunk = await self._chunks.__anext__()
                self.raw += chunk
                self.pending.extend(self.parser.feed(chunk))

    async def next_data(self, timeout: float = 5.0) -> SSEEvent:
        """The next event that carries data (skipping the retry-only hint)."""
        while True:
            event = await self.next(timeout)
            if event.data is not None:
                return event


async def next_message(reader: SSEReader, timeout: float = 5.0) -> dict[str, Any]:
    """The next JSON-RPC message on an SSE stream (priming events and hints skipped)."""
    while True:
        event = await reader.next_data(timeout)
        if event.data:
            message: dict[str, Any] = orjson.loads(event.data)
            return message


async def raw_exchange(port: int, payload: bytes, *, read_timeout: float = 5.0) -> bytes:
    """Send raw bytes, return everything the server sends until it closes (or the timeout)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    received = b""
    async with stream:
        if payload:
            await stream.send_all(payload)
        with trio.move_on_after(read_timeout):
            while True:
                try:
                    chunk = await stream.receive_some(65536)
                except trio.BrokenResourceError:
                    break
                if not chunk:
                    break
                received += chunk
    return received


class RawClient:
    """One connection, requests written by hand, responses read with h11 (client side)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)
        self.sse = SSEParser()
        self.events: list[SSEEvent] = []
        self.response: h11.Response | None = None
        self.body = b""
        self.ended = False  # EndOfMessage or the server closed
        self.complete = False  # EndOfMessage: the response ended properly (not cut off)

    @classmethod
    async def connect(cls, port: int, *, rcvbuf: int | None = None) -> RawClient:
        sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
        if rcvbuf is not None:
            # Before connect, so the window the server sees is small from the first segment.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        try:
            await sock.connect(("127.0.0.1", port))
        except BaseException:
            sock.close()
            raise
        return cls(trio.SocketStream(sock))

    def request_bytes(
        self, method: str, target: str, headers: Sequence[tuple[str, str]] = (), body: bytes = b""
    ) -> bytes:
        all_headers = [("Host", "localhost"), *headers]
        if body or method == "POST":
            all_headers.append(("Content-Length", str(len(body))))
        data = self.conn.send(h11.Request(method=method, target=target, headers=all_headers))
        data = data or b""
        if body:
            data += self.conn.send(h11.Data(data=body)) or b""
        return data + (self.conn.send(h11.EndOfMessage()) or b"")

    async def send(
        self, method: str, target: str, headers: Sequence[tuple[str, str]] = (), body: bytes = b""
    ) -> None:
        await self.stream.send_all(self.request_bytes(method, target, headers, body))

    async def exchange(
        self, method: str, target: str, headers: Sequence[tuple[str, str]] = (), body: bytes = b""
    ) -> h11.Response:
        """A whole request and its whole response, leaving the connection ready for the next."""
        if self.conn.our_state is h11.DONE:
            self.conn.start_next_cycle()
            self.response, self.body, self.ended, self.complete = None, b"", False, False
        await self.send(method, target, headers, body)
        await self.read_to_end()
        assert self.response is not None
        return self.response

    def feed(self, data: bytes) -> None:
        self.conn.receive_data(data)
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Response):
                self.response = event
            elif isinstance(event, h11.Data):
                self.body += event.data
                self.events.extend(self.sse.feed(bytes(event.data)))
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                self.complete = self.complete or isinstance(event, h11.EndOfMessage)
                self.ended = True
                return

    async def receive(self, max_bytes: int = 65536) -> bool:
        """One read; False once the server has closed (or reset) the connection."""
        try:
            data = await self.stream.receive_some(max_bytes)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        try:
            self.feed(data)
        except h11.RemoteProtocolError:
            self.ended = True  # a cut-off chunked body: the server closed mid-response
        if not data:
            self.ended = True
        return bool(data)

    async def read_until(self, done: Callable[[RawClient], bool], timeout: float = 10) -> None:
        with trio.fail_after(timeout):
            while not done(self) and not self.ended:
                await self.receive()
        assert done(self), (self.response, self.body[-500:])

    async def read_to_end(self, timeout: float = 10) -> None:
        await self.read_until(lambda c: c.ended, timeout)

    async def drain_available(self) -> None:
        """Read whatever the kernel already holds (the server has closed: ends with EOF)."""
        with trio.fail_after(10):
            while await self.receive():
                pass

    def data_events(self) -> list[SSEEvent]:
        return [e for e in self.events if e.data is not None]

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)

    async def abort(self) -> None:
        """Close with a RST (SO_LINGER 0), as a crashed client or a dropped network would."""
        with_linger = struct.pack("ii", 1, 0)
        with contextlib.suppress(OSError):
            self.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, with_linger)
        await trio.aclose_forcefully(self.stream)


async def open_events_stream(
    port: int, session_id: str, *, rcvbuf: int | None = None, last_event_id: str | None = None
) -> RawClient:
    client = await RawClient.connect(port, rcvbuf=rcvbuf)
    headers = [AUTH_HEADER, ("Accept", "text/event-stream")]
    if last_event_id is not None:
        headers.append(("Last-Event-ID", last_event_id))
    await client.send("GET", f"/events?session_id={session_id}", headers)
    return client


def rss() -> int:
    gc.collect()
    return int(psutil.Process(os.getpid()).memory_info().rss)


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class RawWebSocket:
    """A WebSocket client on a ``RawClient`` (wsproto), so that it can also vanish without a
    close frame."""

    def __init__(self, client: RawClient) -> None:
        self.client = client
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.messages: list[dict[str, Any]] = []
        self._text = ""

    @classmethod
    async def connect(cls, port: int) -> RawWebSocket:
        self = cls(await RawClient.connect(port))
        request = Request(
            host="localhost",
            target="/ws",
            subprotocols=["mcp"],
            extra_headers=[(b"authorization", f"Bearer {TOKEN}".encode())],
        )
        await self.client.stream.send_all(self.ws.send(request))
        with trio.fail_after(5):
            while not await self._pump(AcceptConnection):
                pass
        return self

    async def _pump(self, wanted: type) -> bool:
        data = await self.client.stream.receive_some(65536)
        self.ws.receive_data(data or None)
        found = False
        for event in self.ws.events():
            if isinstance(event, wanted):
                found = True
            if isinstance(event, TextMessage):
                self._text += event.data
                if event.message_finished:
                    self.messages.append(orjson.loads(self._text))
                    self._text = ""
            if isinstance(event, CloseConnection):
                found = True
        if not data:
            raise EOFError
        return found

    async def send(self, body: bytes) -> None:
        await self.client.stream.send_all(self.ws.send(TextMessage(data=body.decode())))

    async def next_message(self, timeout: float = 5) -> dict[str, Any]:
        with trio.fail_after(timeout):
            while not self.messages:
                await self._pump(TextMessage)
        return self.messages.pop(0)

    async def initialize(self) -> None:
        params = {"protocolVersion": "2025-06-18", "capabilities": {}}
        await self.send(wire(rpc("initialize", params, id=0)))
        assert "result" in await self.next_message()
        await self.send(wire(note("notifications/initialized")))


# -- counted test tools ----------------------------------------------------------------------


@dataclass
class CountedTools:
    """Counts what the test tools did, so a test can prove every started call was cleaned up."""

    started: int = 0
    cleaned: int = 0
    finished: int = 0
    gate: trio.Event = field(default_factory=trio.Event)
    tags: set[str] = field(default_factory=set)
    """The ``tag`` arguments of calls that have started (to wait for one particular call)."""

    async def until(self, condition: Callable[[CountedTools], bool], timeout: float = 5) -> None:
        await wait_for(lambda: condition(self), timeout, "the tools")


def add_counted_tools(server: Server) -> CountedTools:
    """``hang`` sleeps until cancelled; ``gated`` waits for ``probe.gate``; ``nap`` sleeps
    ``seconds``. All three count starts and cleanups (``finally``); ``finished`` counts returns.
    A ``tag`` argument is recorded in ``probe.tags`` when the call starts."""
    probe = CountedTools()
    tag = {"tag": {"type": "string"}}
    schema = {"type": "object", "properties": tag}
    nap_schema = {"type": "object", "properties": {**tag, "seconds": {"type": "number"}}}

    def counted(body: Callable[[dict[str, Any]], Awaitable[Any]]) -> Any:
        async def handler(arguments: dict[str, Any], context: ToolContext) -> Any:
            probe.started += 1
            if "tag" in arguments:
                probe.tags.add(arguments["tag"])
            try:
                result = await body(arguments)
                probe.finished += 1
                return result
            finally:
                probe.cleaned += 1

        return handler

    async def hang(arguments: dict[str, Any]) -> None:
        await trio.sleep_forever()

    async def gated(arguments: dict[str, Any]) -> dict[str, bool]:
        await probe.gate.wait()
        return {"released": True}

    async def nap(arguments: dict[str, Any]) -> dict[str, float]:
        await trio.sleep(arguments.get("seconds", 0.05))
        return {"slept": arguments.get("seconds", 0.05)}

    server.registry.tool("hang", input_schema=schema)(counted(hang))
    server.registry.tool("gated", input_schema=schema)(counted(gated))
    server.registry.tool("nap", input_schema=nap_schema)(counted(nap))
    return probe


# -- a fake upstream HTTP server ----------------------------------------------------------------

Route = Callable[[int], "Canned"]  # port -> response, so redirects can point back at us


@dataclass(frozen=True)
class Canned:
    status: int = 200
    headers: tuple[tuple[str, str], ...] = (("Content-Type", "text/plain; charset=utf-8"),)
    body: bytes = b""
    delay_s: float = 0.0  # before the response headers
    # Sent after the headers, once every ``drip_s`` (0: as fast as possible), until the client
    # goes away: a body with no end.
    endless_chunk: bytes | None = None
    drip_s: float = 0.0
    hang_up: bool = False  # close the connection (after ``delay_s``) without answering


@dataclass(frozen=True)
class Recorded:
    method: str
    target: str
    headers: dict[str, str]

    @property
    def path(self) -> str:
        return self.target.split("?")[0]


@dataclass
class CannedServer:
    """A tiny canned-response HTTP/1.1 server on 127.0.0.1 (Trio + h11).

    Each path maps to a ``Canned`` response (or a ``Route`` building one); a path not in
    ``routes`` goes to ``answer`` (default: 404). Every request that reaches the server is
    recorded, so a test can prove that a refused fetch sent nothing. One response per
    connection (``Connection: close``) keeps it simple.
    """

    routes: dict[str, Canned | Route] = field(default_factory=dict)
    answer: Callable[[Recorded], Canned] = field(default=lambda request: Canned(404))
    requests: list[Recorded] = field(default_factory=list)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            request = await _next_request(conn, stream)
            if request is None:
                return
            recorded = Recorded(
                request.method.decode(),
                request.target.decode(),
                {k.decode(): v.decode() for k, v in request.headers},
            )
            self.requests.append(recorded)
            route = self.routes.get(recorded.path)
            if route is None:
                canned = self.answer(recorded)
            else:
                canned = route if isinstance(route, Canned) else route(self.port)
            await self._respond(conn, stream, canned)
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            pass  # the client left, which is what several tests make it do
        finally:
            await stream.aclose()

    async def _respond(self, conn: h11.Connection, stream: trio.SocketStream, c: Canned) -> None:
        await trio.sleep(c.delay_s)
        if c.hang_up:
            return
        headers = [*c.headers, ("Connection", "close")]
        if c.endless_chunk is None:
            headers.append(("Content-Length", str(len(c.body))))
        await stream.send_all(conn.send(h11.Response(status_code=c.status, headers=headers)))
        if c.endless_chunk is None:
            await stream.send_all(conn.send(h11.Data(data=c.body)))
            await stream.send_all(conn.send(h11.EndOfMessage()))
            return
        while True:
            await stream.send_all(conn.send(h11.Data(data=c.endless_chunk)))
            await trio.sleep(c.drip_s)


async def _next_request(conn: h11.Connection, stream: trio.SocketStream) -> h11.Request | None:
    """The request once its body has been read; None if the client left before that."""
    request = None
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(65536))
        elif isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.EndOfMessage):
            return request
        elif not isinstance(event, h11.Data):
            return None  # ConnectionClosed before a whole request


@dataclass
class RawRecorder:
    """Accepts connections, records their first bytes, and hangs up (to read a TLS
    ClientHello's SNI without speaking TLS)."""

    received: list[bytes] = field(default_factory=list)
    port: int = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        try:
            with trio.move_on_after(2):
                self.received.append(await stream.receive_some(65536))
        finally:
            await stream.aclose()


async def read_stderr_until(proc: trio.Process, *markers: bytes, timeout_s: float = 15) -> bytes:
    """What a subprocess wrote to stderr until every marker has appeared in it (the CLI's
    announcement, a log line); fails if the process closes stderr first, or after timeout_s."""
    assert proc.stderr is not None
    text = b""
    with trio.fail_after(timeout_s):
        while not all(marker in text for marker in markers):
            chunk = await proc.stderr.receive_some(4096)
            assert chunk, text
            text += chunk
    return text


# Debian's Chromium, driven by Playwright (never a downloaded browser). Without the background
# networking flags it tries to reach Google's hosts at every start, which this machine refuses.
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
