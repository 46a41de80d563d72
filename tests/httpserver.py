"""A tiny canned-response HTTP/1.1 server on 127.0.0.1 for the fetch_url tests (Trio + h11).

Each path maps to a ``Canned`` response; every request that reaches the server is recorded, so a
test can prove that a refused fetch sent nothing. One response per connection (``Connection:
close``) keeps it simple. ``serve_raw_recorder`` records the first bytes of each connection
without speaking HTTP at all (used to read a TLS ClientHello's SNI).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import h11
import trio

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


@dataclass(frozen=True)
class Recorded:
    method: str
    target: str
    headers: dict[str, str]


@dataclass
class CannedServer:
    routes: dict[str, Canned | Route] = field(default_factory=dict)
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
            self.requests.append(
                Recorded(
                    request.method.decode(),
                    request.target.decode(),
                    {k.decode(): v.decode() for k, v in request.headers},
                )
            )
            route = self.routes.get(request.target.decode().split("?")[0], Canned(404))
            canned = route if isinstance(route, Canned) else route(self.port)
            await self._respond(conn, stream, canned)
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            pass  # the client left, which is what several tests make it do
        finally:
            await stream.aclose()

    async def _respond(self, conn: h11.Connection, stream: trio.SocketStream, c: Canned) -> None:
        await trio.sleep(c.delay_s)
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
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(65536))
        elif isinstance(event, h11.Request):
            return event
        else:
            return None  # ConnectionClosed before a request


@dataclass
class RawRecorder:
    """Accepts connections, records their first bytes, and hangs up."""

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
