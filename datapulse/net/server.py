"""Accepting connections: listeners, the connection limit, graceful shutdown.

``HTTPServer.serve`` binds, reports the bound address through ``task_status``, and runs one task
per connection in its handler nursery. Over ``max_connections`` a new connection is answered 503
with ``Retry-After`` and closed at once, so the limit costs the refused client one round trip,
not a hung socket. One client address may hold at most ``max_connections_per_ip`` of them; past
that it is answered 429 the same way (its own doing, so not a 503 that blames the server).
A connection from a trusted proxy (``--trusted-proxies``) is not counted against the proxy's
address at accept time: each request's head names its client (``core.forwarded``), and the
connection counts against that client's address from then on (a keep-alive connection reused for
another client moves to it). A request whose client already holds ``max_connections_per_ip`` is
answered 429 and its connection closed. The first refusal of an address logs one WARNING naming
the setting; it logs again only after the address has dropped below the cap.
``shutdown()`` stops accepting, closes idle keep-alive connections, runs the ``on_shutdown``
hooks (streams say goodbye once their calls are done) and gives the rest ``shutdown_grace_s``
before cancelling them; ``serve`` returns as soon as the last connection is gone.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass

import trio

from datapulse.config import Config
from datapulse.core.forwarded import is_trusted, parse_networks, resolve
from datapulse.errors import ConnectionLimit, ConnectionLimitPerAddress, DatapulseError
from datapulse.metrics import Metrics
from datapulse.net.connection import App, HTTPConnection, serve_connection
from datapulse.net.http import Handler, Request, Response, encode_raw_response, error_response
from datapulse.net.reading import StagedApp

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


_PROXY_HEADERS = ("forwarded", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host")


class _ProxiedConnection:
    """The app as one trusted proxy's connection sees it: each head first names its client."""

    def __init__(self, server: HTTPServer, app: App, proxy: str) -> None:
        self.server = server
        self.proxy = proxy
        self.inner = app
        self.counted: str | None = None
        """The client address this connection counts against now (None: none yet)."""

    async def admit(self, request: Request) -> Response | Handler:
        server = self.server
        said = resolve(
            self.proxy,
            server.trusted,
            server.config.proxy_headers,
            request.header_lists(*_PROXY_HEADERS),
        )
        assert said is not None  # only connections from trusted peers get here
        request.proxy = self.proxy
        request.client = (said.client, said.port)
        if said.scheme is not None:
            request.scheme = said.scheme
        request.forwarded_host = said.host
        if said.client != self.counted:
            if self.counted is not None:
                server.release(self.counted)
                self.counted = None
            if not server.take(said.client):
                return error_response(
                    ConnectionLimitPerAddress("too many open connections from your address")
                )
            self.counted = said.client
        if isinstance(self.inner, StagedApp):
            return await self.inner.admit(request)
        return self.inner

    def release(self) -> None:
        if self.counted is not None:
            self.server.release(self.counted)
            self.counted = None


class HTTPServer:
    def __init__(self, app: App, config: Config, metrics: Metrics | None = None) -> None:
        self.app = app
        self.config = config
        self.inherited_socket: socket.socket | None = None
        """A listening socket to serve instead of binding one (``datapulse.workers``)."""
        self.metrics = metrics if metrics is not None else Metrics()
        self.trusted = parse_networks(config.trusted_proxies)
        self.connections: set[HTTPConnection] = set()
        self.per_address: dict[str, int] = {}
        """Open connections per client address (what ``max_connections_per_ip`` counts); a
        trusted proxy's connections count against the client each one last carried."""
        self._capped: set[str] = set()
        """Addresses whose refusal has been logged since they last were below the cap."""
        self._shutdown = trio.Event()
        self.shutting_down = False
        self.on_shutdown: list[Callable[[], None]] = []
        self.bound: BoundAddress | None = None
        """Where ``serve`` listens, once it does."""
        self.metrics.count_connections(lambda: len(self.connections))

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

    def take(self, address: str) -> bool:
        """Count one more connection against ``address``; False (and nothing counted) if it
        already holds ``max_connections_per_ip``. No checkpoint: accepts cannot race past it."""
        open_here = self.per_address.get(address, 0)
        cap = self.config.max_connections_per_ip
        if open_here >= cap:
            self.metrics.rejected("connections_per_ip")
            if address not in self._capped:
                self._capped.add(address)
                log.warning(
                    "%s holds %d connections, the --max-connections-per-ip limit; refusing more%s",
                    address,
                    open_here,
                    ""
                    if self.trusted
                    else " (behind a reverse proxy, name it in --trusted-proxies so each client"
                    " counts on its own)",
                )
            return False
        self.per_address[address] = open_here + 1
        return True

    def release(self, address: str) -> None:
        left = self.per_address[address] - 1
        if left:
            self.per_address[address] = left
        else:
            del self.per_address[address]
        if left < self.config.max_connections_per_ip:
            self._capped.discard(address)

    async def _handle(self, stream: trio.SocketStream) -> None:
        cfg = self.config
        peer = _peer(stream)
        address = peer[0] if peer else "-"
        if len(self.connections) >= cfg.max_connections:
            log.warning("connection limit (%d) reached; refusing", cfg.max_connections)
            self.metrics.rejected("connections")
            await self._refuse(stream, ConnectionLimit("server is at its connection limit"))
            return
        if self.trusted and is_trusted(address, self.trusted):
            # Counted per forwarded client, request by request (see the module docstring).
            proxied = _ProxiedConnection(self, self.app, address)
            try:
                await serve_connection(stream, proxied, self.config, client=peer, host=self)
            finally:
                proxied.release()
            return
        if not self.take(address):
            await self._refuse(
                stream, ConnectionLimitPerAddress("too many open connections from your address")
            )
            return
        try:
            await serve_connection(stream, self.app, self.config, client=peer, host=self)
        finally:
            self.release(address)

    async def serve(
        self, *, task_status: trio.TaskStatus[BoundAddress] = trio.TASK_STATUS_IGNORED
    ) -> None:
        if self.inherited_socket is not None:  # a worker: the supervisor's listening socket
            listeners = [trio.SocketListener(trio.socket.from_stdlib_socket(self.inherited_socket))]
        else:
            listeners = await trio.open_tcp_listeners(self.config.port, host=self.config.host)
        sockname = listeners[0].socket.getsockname()
        bound = self.bound = BoundAddress(self.config.host, int(sockname[1]))
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
