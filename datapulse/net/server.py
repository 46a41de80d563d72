"""Accepting connections: listeners, the connection limit, graceful shutdown.

``HTTPServer.serve`` binds, reports the bound address through ``task_status``, and runs one task
per connection in its handler nursery. Over ``max_connections`` a new connection is answered 503
with ``Retry-After`` and closed at once, so the limit costs the refused client one round trip,
not a hung socket. One client address may hold at most ``max_connections_per_ip`` of them; past
that it is answered 429 the same way (its own doing, so not a 503 that blames the server).
``shutdown()`` stops accepting, closes idle keep-alive connections, runs the ``on_shutdown``
hooks (streams say goodbye once their calls are done) and gives the rest ``shutdown_grace_s``
before cancelling them; ``serve`` returns as soon as the last connection is gone.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

import trio

from datapulse.config import Config
from datapulse.errors import ConnectionLimit, ConnectionLimitPerAddress, DatapulseError
from datapulse.net.connection import App, HTTPConnection, serve_connection
from datapulse.net.http import encode_raw_response

log = logging.getLogger("datapulse.server")


@dataclass(frozen=True)
class BoundAddress:
    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


def _peer(stream: trio.abc.Stream) -> tuple[str, int] | None:
    sock = getattr(stream, "socket", None)
    if sock is None:
        return None
    try:
        peer = sock.getpeername()
    except OSError:
        return None
    return (str(peer[0]), int(peer[1]))


class HTTPServer:
    def __init__(self, app: App, config: Config) -> None:
        self.app = app
        self.config = config
        self.connections: set[HTTPConnection] = set()
        self.per_address: dict[str, int] = {}
        """Open connections per client address (what ``max_connections_per_ip`` counts)."""
        self._shutdown = trio.Event()
        self.shutting_down = False
        self.on_shutdown: list[Callable[[], None]] = []

    def shutdown(self) -> None:
        """Begin a graceful stop (idempotent). ``serve`` returns when it is done."""
        self._shutdown.set()

    # -- ConnectionHost: what each connection needs of us -------------------------------------

    def opened(self, connection: HTTPConnection) -> None:
        self.connections.add(connection)

    def closed(self, connection: HTTPConnection) -> None:
        self.connections.discard(connection)

    @staticmethod
    async def _refuse(stream: trio.SocketStream, refusal: DatapulseError) -> None:
        """Answer before reading anything, then close: one round trip for the refused client."""
        with (
            trio.move_on_after(1),
            contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError),
        ):
            await stream.send_all(encode_raw_response(refusal))
        await trio.aclose_forcefully(stream)

    async def _handle(self, stream: trio.SocketStream) -> None:
        cfg = self.config
        peer = _peer(stream)
        address = peer[0] if peer else "-"
        if len(self.connections) >= cfg.max_connections:
            log.warning("connection limit (%d) reached; refusing", cfg.max_connections)
            await self._refuse(stream, ConnectionLimit("server is at its connection limit"))
            return
        open_here = self.per_address.get(address, 0)
        if open_here >= cfg.max_connections_per_ip:
            log.warning("%s holds %d connections (limit per address); refusing", address, open_here)
            await self._refuse(
                stream, ConnectionLimitPerAddress("too many open connections from your address")
            )
            return
        # No checkpoint between the checks and these counts: accepts cannot race past a limit.
        self.per_address[address] = open_here + 1
        try:
            await serve_connection(stream, self.app, self.config, client=peer, host=self)
        finally:
            left = self.per_address[address] - 1
            if left:
                self.per_address[address] = left
            else:
                del self.per_address[address]

    async def serve(
        self, *, task_status: trio.TaskStatus[BoundAddress] = trio.TASK_STATUS_IGNORED
    ) -> None:
        listeners = await trio.open_tcp_listeners(self.config.port, host=self.config.host)
        sockname = listeners[0].socket.getsockname()
        bound = BoundAddress(self.config.host, int(sockname[1]))
        async with trio.open_nursery() as handlers:
            accepting = trio.CancelScope()
            handlers.start_soon(self._accept, listeners, handlers, accepting)
            task_status.started(bound)
            await self._shutdown.wait()
            # Graceful stop: no new connections; idle keep-alives close now; everything else
            # (streams told to finish by on_shutdown hooks, in-flight requests) gets the grace.
            self.shutting_down = True
            accepting.cancel()
            for listener in listeners:
                await listener.aclose()
            for hook in self.on_shutdown:
                hook()
            for connection in list(self.connections):
                if connection.idle_scope is not None:
                    connection.idle_scope.cancel()
            handlers.cancel_scope.deadline = trio.current_time() + self.config.shutdown_grace_s
        log.info("server stopped")

    async def _accept(
        self,
        listeners: list[trio.SocketListener],
        handlers: trio.Nursery,
        accepting: trio.CancelScope,
    ) -> None:
        with accepting:
            await trio.serve_listeners(self._handle, listeners, handler_nursery=handlers)
