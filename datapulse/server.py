"""Server: the embeddable datapulse server (tools, sessions, transports, HTTP).

    server = Server(Config(port=0))

    @server.tool("echo", input_schema={...})
    async def echo(arguments, context): ...

    async with trio.open_nursery() as nursery:
        info = await nursery.start(server.serve)   # ServerInfo(url=..., port=..., token=...)
        await server.publish(session_id, {"hello": "world"})

``serve`` runs until its scope is cancelled (a hard stop) or ``shutdown()`` is called (graceful:
streams are told, in-flight requests get ``shutdown_grace_s``).
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from typing import Any

import trio

from datapulse.auth.setup import StartingVerifier, open_configured_verifier
from datapulse.auth.verifier import BearerVerifier, Verifier, is_ready
from datapulse.config import Config
from datapulse.errors import SessionNotFound
from datapulse.live.sessions import SessionManager
from datapulse.metrics import CONTENT_TYPE_LATEST, Metrics
from datapulse.net.http import ErrorStyle, Request, Response
from datapulse.net.server import BoundAddress, HTTPServer
from datapulse.protocol.dispatch import Dispatcher
from datapulse.store import MemorySessionStore, SessionStore
from datapulse.tools.builtin import register_builtins
from datapulse.tools.fetch import FetchPolicy
from datapulse.tools.registry import ToolRegistry
from datapulse.transports.auth_routes import PRM_PATHS, AuthRoutes
from datapulse.transports.context import TransportContext
from datapulse.transports.events import EventsTransport
from datapulse.transports.guard import OriginGuard
from datapulse.transports.health import HealthRoutes
from datapulse.transports.legacy_sse import LegacySseTransport
from datapulse.transports.router import Router
from datapulse.transports.streamable import StreamableTransport
from datapulse.transports.websocket import WebSocketTransport
from datapulse.version import __version__ as VERSION

log = logging.getLogger("datapulse")


@dataclass(frozen=True)
class ServerInfo:
    """What ``serve`` reports once it is listening."""

    host: str
    port: int
    url: str
    token: str | None
    """The local bearer token in force (generated when none was configured), if any."""


class Server:
    def __init__(
        self,
        config: Config | None = None,
        *,
        registry: ToolRegistry | None = None,
        verifier: Verifier | None = None,
        store: SessionStore | None = None,
        builtin_tools: bool = True,
    ) -> None:
        self.config = config or Config()
        self.registry = registry or ToolRegistry()
        if builtin_tools:
            register_builtins(
                self.registry,
                FetchPolicy(
                    allow_private=self.config.fetch_allow_private,
                    timeout_s=self.config.fetch_timeout_s,
                    connect_timeout_s=min(3.0, self.config.fetch_timeout_s),
                ),
            )
        self.token = self.config.token
        # JWT needs discovery (network), so its verifier is built in serve(), before listening.
        self._verifier_pending = verifier is None and self.config.jwt_enabled
        if verifier is None and not self._verifier_pending:
            if self.token is None:
                # Never a well-known default: a fresh random token, printed by the CLI.
                self.token = secrets.token_urlsafe(32)
            verifier = BearerVerifier(self.token)
        self.verifier: Verifier = verifier or StartingVerifier()
        # `is not None`, not `or`: a store may define __len__, and an empty one is falsy.
        self.store = (
            store
            if store is not None
            else MemorySessionStore(self.config.replay_events, self.config.replay_bytes)
        )
        # One set of metrics per Server (its own registry), handed down to every part that counts.
        self.metrics = Metrics()
        self.sessions = SessionManager(self.config, self.store, self.metrics)
        self.dispatcher = Dispatcher(
            self.registry,
            server_name="datapulse",
            server_version=VERSION,
            max_concurrent_calls=self.config.max_calls_per_session,
            call_timeout_s=self.config.call_timeout_s,
            max_depth=self.config.max_json_depth,
            max_batch_items=self.config.max_batch_items,
            metrics=self.metrics,
        )
        self.router = Router(self.verifier, self.metrics)
        self.router.before.append(
            OriginGuard(
                self.config,
                self.config.cors_origins,
                open_paths=PRM_PATHS,
                probe_paths=frozenset({"/healthz", "/readyz"}),
            )
        )
        self.auth = AuthRoutes(
            self.config,
            self.registry,
            self.sessions,
            self.router,
            lambda: self.info.url if self.info is not None else None,
        )
        self.auth.install()
        self.http = HTTPServer(self.router, self.config, self.metrics)
        self.http.on_shutdown.append(lambda: self.sessions.close_all_streams("shutdown"))
        self.info: ServerInfo | None = None
        self.health = HealthRoutes(
            sessions=self.sessions,
            verifier=lambda: self.router.verifier,
            store=self.store,
            listening=lambda: self.info is not None,
            shutting_down=lambda: self.http.shutting_down,
        )
        self._install_routes(
            TransportContext(self.config, self.sessions, self.registry, self.dispatcher, self.auth)
        )
        # /metrics: an authenticated route like any other; --metrics-port adds a loopback
        # listener that serves it (and nothing else) without auth, for a local scraper.
        self.router.add("GET", "/metrics", self._serve_metrics)
        self.metrics_http: HTTPServer | None = None
        if self.config.metrics_port:
            scrape_config = self.config.replace(host="127.0.0.1", port=self.config.metrics_port)
            scrape = Router(self.verifier)
            # Loopback and unauthenticated: the Host/Origin guard keeps a DNS-rebinding page out.
            scrape.before.append(OriginGuard(scrape_config))
            scrape.add("GET", "/metrics", self._serve_metrics, public=True)
            self.metrics_http = HTTPServer(scrape, scrape_config)

    @property
    def tool(self) -> Any:
        """Decorator registering a tool: ``@server.tool("name", input_schema=...)``."""
        return self.registry.tool

    def _install_routes(self, context: TransportContext) -> None:
        mcp_http = StreamableTransport(context)
        for method, handler in (
            ("POST", mcp_http.post),
            ("GET", mcp_http.get),
            ("DELETE", mcp_http.delete),
        ):
            self.router.add(method, "/mcp", handler, errors=ErrorStyle.JSONRPC)
        legacy = LegacySseTransport(context)
        self.router.add("GET", "/sse", legacy.get_sse, ticket=True)
        # The endpoint event names /messages; the Python SDK's own servers use /messages/.
        self.router.add("POST", "/messages", legacy.post_message)
        self.router.add("POST", "/messages/", legacy.post_message)
        websocket = WebSocketTransport(context)
        self.router.add("GET", "/ws", websocket.upgrade)
        self.http.on_shutdown.append(websocket.shutdown)  # close frames (1001) to every /ws
        events = EventsTransport(context)
        # Liveness and readiness: no auth, no session, no limit (transports/health.py).
        self.router.add("GET", "/healthz", self.health.healthz, public=True)
        self.router.add("GET", "/readyz", self.health.readyz, public=True)
        self.router.add("GET", "/events", events.get_events, ticket=True)
        self.router.add("POST", "/message", events.post_message)
        # The browser page at / (transports/page.py): public, it holds no secret; it calls the
        # authenticated API above with a token the user pastes. Imported here to keep this
        # block self-contained.
        from datapulse.transports.page import PageRoutes

        for path, page_handler in PageRoutes().routes():
            self.router.add("GET", path, page_handler, public=True)

    async def _serve_metrics(self, request: Request) -> Response:
        return Response(200, [("Content-Type", CONTENT_TYPE_LATEST)], self.metrics.exposition())

    async def publish(
        self, session_id: str, data: Any, *, event: str | None = None, principal: str | None = None
    ) -> str:
        """Push an event into a live session's stream (under the same bounds and replay rules
        as tool results). Returns the event id. Raises SessionNotFound for an unknown session.

        ``/events`` ids are chosen by clients, in a namespace per principal: two principals may
        each have a session ``demo``. ``principal`` (a ``Principal.id``, e.g.
        ``ToolContext.principal_id``) says whose; without it the id must name exactly one live
        session, else ``AmbiguousSession`` (a SessionNotFound) is raised and nothing is sent."""
        live = self.sessions.lookup(session_id, principal)
        if live is None:
            raise SessionNotFound(f"unknown session: {session_id}")
        logged = await self.sessions.publish(live, data, event)
        return str(logged.seq)

    def shutdown(self) -> None:
        """Begin a graceful stop; ``serve`` returns once streams are closed and requests done."""
        self.http.shutdown()

    async def open_verifier(self) -> None:
        """Build the configured JWT verifier (OIDC discovery); idempotent, called by ``serve``.

        Raises ``AuthStartupError`` with an operator-readable reason for a configuration error;
        an IdP that is down only leaves ``self.verifier.ready`` False (see ``auth.setup``). The
        CLI calls it before opening any nursery so the error reaches it unwrapped.
        """
        if self._verifier_pending:
            self.verifier = await open_configured_verifier(self.config, self.token, self.metrics)
            self.router.verifier = self.verifier
            self._verifier_pending = False

    async def serve(
        self, *, task_status: trio.TaskStatus[ServerInfo] = trio.TASK_STATUS_IGNORED
    ) -> None:
        await self.open_verifier()
        async with trio.open_nursery() as nursery:
            await nursery.start(self.sessions.run)
            if self.metrics_http is not None:
                await nursery.start(self.metrics_http.serve)
            recover = getattr(self.verifier, "run_until_ready", None)
            if recover is not None and not is_ready(self.verifier):
                # The IdP was down at start: retry it in the background (ends once keys load).
                nursery.start_soon(recover)
            # http.serve returns only after a graceful shutdown; the sessions (and their tool
            # tasks) are cancelled after it, once no connection can reach them any more.
            await self.http.serve(task_status=_Relay(self, task_status))
            nursery.cancel_scope.cancel()


class _Relay:
    """Turns the HTTP layer's BoundAddress into the ServerInfo our caller is waiting for."""

    def __init__(self, server: Server, outer: trio.TaskStatus[ServerInfo]) -> None:
        self.server = server
        self.outer = outer

    def started(self, bound: BoundAddress | None = None) -> None:
        assert bound is not None
        info = ServerInfo(bound.host, bound.port, bound.url, self.server.token)
        self.server.info = info
        log.info("datapulse listening on %s", bound.url)
        self.outer.started(info)


async def serve(
    config: Config | None = None,
    *,
    task_status: trio.TaskStatus[ServerInfo] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a Server with the built-in tools on ``config`` (for ``nursery.start(serve, cfg)``)."""
    await Server(config).serve(task_status=task_status)
