"""Server: the embeddable datapulse server (tools, sessions, transports, HTTP).

    server = Server(Config(port=0))

    @server.tool()
    async def add(a: int, b: int = 1) -> int: ...

    @server.resource("notes://{name}")
    async def note(name: str) -> str: ...

    async with trio.open_nursery() as nursery:
        info = await nursery.start(server.serve)   # ServerInfo(url=..., port=..., token=...)
        await server.publish(session_id, {"hello": "world"})     # an /events session
        await server.notify_resource_updated("notes://todo")     # every subscriber

``serve`` runs until its scope is cancelled (a hard stop) or ``shutdown()`` is called (graceful:
streams are told, in-flight requests get ``shutdown_grace_s``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import trio

from datapulse.auth.redact import add_secret
from datapulse.auth.setup import StartingVerifier, open_configured_verifier
from datapulse.auth.verifier import BearerVerifier, Verifier, is_ready
from datapulse.config import Config
from datapulse.core import mcp
from datapulse.core import tasks as core_tasks
from datapulse.core.jsonrpc import encode_notification
from datapulse.core.tasks import TaskState
from datapulse.errors import SessionNotFound
from datapulse.features.catalog import Catalog
from datapulse.features.clock import register_clock
from datapulse.features.clock import tick as tick_clock
from datapulse.live.sessions import LiveSession, SessionManager
from datapulse.metrics import CONTENT_TYPE_LATEST, Metrics
from datapulse.net.http import ErrorStyle, Request, Response
from datapulse.net.server import BoundAddress, HTTPServer
from datapulse.protocol.dispatch import Dispatcher
from datapulse.protocol.notices import Notices
from datapulse.protocol.roundtrip import RoundTrips
from datapulse.protocol.tasks import TaskRunner
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

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class ServerInfo:
    """What ``serve`` reports once it is listening."""

    host: str
    port: int
    url: str
    token: str | None
    """The local bearer token in force (generated when none was configured), if any."""


class Server:
    """An MCP server: what it offers (its ``catalog``) and the machinery that serves it.

    The catalog, the notification hub and the background tasks are the server's for life; the
    rest (sessions, HTTP, auth, metrics) is built from ``config`` and may be rebuilt with
    ``configure`` until ``serve`` starts (``python -m datapulse --app`` does that: the app module
    makes its ``Server()``, the command line supplies the settings).
    """

    def __init__(
        self,
        config: Config | None = None,
        *,
        registry: ToolRegistry | None = None,
        verifier: Verifier | None = None,
        store: SessionStore | None = None,
        builtin_tools: bool = False,
    ) -> None:
        """``builtin_tools``: also serve get_time, fetch_url and ``pulse://clock`` (what
        ``python -m datapulse`` serves without ``--app``). Off by default, so an app offers
        exactly what it registers (fetch_url reaches the network)."""
        self.catalog = Catalog(registry if registry is not None else ToolRegistry())
        self.registry = self.catalog.tools
        self.notices = Notices()
        self.catalog.on_change.append(self.notices.list_changed)
        self._background: list[Callable[[], Awaitable[Any]]] = []
        self._serving = False
        self._given_verifier = verifier
        self._given_store = store
        self.config = config or Config()
        if builtin_tools:
            register_builtins(self.registry, self._fetch_policy)
            register_clock(self.catalog.resources)
            self._background.append(lambda: tick_clock(self.notify_resource_updated))
        self._build(self.config)

    def _fetch_policy(self) -> FetchPolicy:
        cfg = self.config
        return FetchPolicy(
            allow_private=cfg.fetch_allow_private,
            timeout_s=cfg.fetch_timeout_s,
            connect_timeout_s=min(3.0, cfg.fetch_timeout_s),
        )

    def configure(self, config: Config) -> None:
        """Serve with ``config`` instead; only before ``serve``. What the server offers (tools,
        resources, prompts, background tasks) stays; sessions, limits, auth and HTTP are
        rebuilt from the new settings."""
        if self._serving:
            raise RuntimeError("configure() must be called before serve()")
        self._build(config)

    def _build(self, config: Config) -> None:
        self.config = config
        verifier = self._given_verifier
        self.token = self.config.token
        # JWT needs discovery (network), so its verifier is built in serve(), before listening.
        self._verifier_pending = verifier is None and self.config.jwt_enabled
        if verifier is None and not self._verifier_pending:
            if self.token is None:
                # Never a well-known default: a fresh random token, printed by the CLI.
                self.token = secrets.token_urlsafe(32)
            verifier = BearerVerifier(self.token)
        self.verifier: Verifier = verifier or StartingVerifier()
        store = self._given_store
        # A store of our own making is opened and closed by serve(); one given is the caller's.
        self._owns_store = store is None and bool(self.config.redis_url)
        # `is not None`, not `or`: a store may define __len__, and an empty one is falsy.
        if store is not None:
            self.store = store
        elif self.config.redis_url:
            from datapulse.store.redis import RedisSessionStore  # coredis, only when asked for

            add_secret(urlsplit(self.config.redis_url).password)
            self.store = RedisSessionStore(
                self.config.redis_url,
                max_events=self.config.replay_events,
                max_bytes=self.config.replay_bytes,
                prefix=self.config.redis_prefix,
                timeout_s=self.config.redis_timeout_s,
            )
        else:
            self.store = MemorySessionStore(self.config.replay_events, self.config.replay_bytes)
        # One set of metrics per Server (its own registry), handed down to every part that counts.
        self.metrics = Metrics()
        self.sessions = SessionManager(self.config, self.store, self.metrics)
        # A session that ends hears no more notifications.
        self.sessions.on_close.append(self._forget_session)
        self.tasks = TaskRunner(
            self.store,
            metrics=self.metrics,
            default_ttl_s=self.config.task_ttl_s,
            max_tasks_per_principal=self.config.max_tasks_per_principal,
            on_status=self._task_status,
        )
        self.dispatcher = Dispatcher(
            self.catalog,
            server_name="datapulse",
            server_version=VERSION,
            max_concurrent_calls=self.config.max_calls_per_session,
            call_timeout_s=self.config.call_timeout_s,
            max_depth=self.config.max_json_depth,
            max_batch_items=self.config.max_batch_items,
            metrics=self.metrics,
            notices=self.notices,
            round_trips=RoundTrips(
                request_state_keys(self.config.request_state_keys),
                self.store.put_state,
                self.store.take_state,
                self.config.input_timeout_s,
            ),
            input_timeout_s=self.config.input_timeout_s,
            tasks=self.tasks,
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
        # Listen streams answer their request (the 2026-07-28 graceful end) and close.
        self.http.on_shutdown.append(self.notices.close)
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

    def _task_status(self, principal: str, state: TaskState) -> None:
        """2025-11-25 ``notifications/tasks/status`` to the session that started the task,
        through its log (its GET stream on /mcp, its stream on /sse); never waits."""
        live = self.sessions.registry.get(state.session_id) if state.session_id else None
        protocol = live.protocol if live is not None else None
        if live is None or protocol is None or protocol.modern:
            return
        if not mcp.version_at_least(protocol.protocol_version, core_tasks.HANDSHAKE_TASKS_VERSION):
            return
        method, params = core_tasks.status_notification(state, core_tasks.HANDSHAKE)
        data = encode_notification(method, params).decode()
        event = "message" if live.record.kind == "sse" else None
        with contextlib.suppress(SessionNotFound):
            self.sessions.spawn(live, functools.partial(self.sessions.publish, live, data, event))

    def _forget_session(self, live: LiveSession, reason: str) -> None:
        if live.protocol is not None:
            self.notices.detach(live.protocol)

    # -- what the server offers ------------------------------------------------------------------

    def tool(
        self,
        name: str | None = None,
        *,
        title: str | None = None,
        description: str | None = None,
        input_schema: Mapping[str, Any] | None = None,
        output_schema: Mapping[str, Any] | None = None,
        annotations: Mapping[str, Any] | None = None,
        scope: str | None = None,
        raw: bool | None = None,
        task: bool | str = False,
        task_detach: bool = False,
    ) -> Callable[[F], F]:
        """Decorator registering a tool. Typed: ``@server.tool()`` over ``async def add(a:
        int, b: int = 1) -> int`` (schemas from the annotations, description from the
        docstring, a ``ToolContext`` parameter injected). Raw: ``@server.tool("echo",
        input_schema={...})`` over ``async def echo(arguments, context)``. ``scope``: the OAuth
        scope a caller's token needs. Adding one while clients are connected tells them."""
        return self.registry.tool(
            name,
            title=title,
            description=description,
            input_schema=input_schema,
            output_schema=output_schema,
            annotations=annotations,
            scope=scope,
            raw=raw,
            task=task,
            task_detach=task_detach,
        )

    def resource(
        self,
        uri: str,
        *,
        name: str | None = None,
        title: str | None = None,
        description: str | None = None,
        mime_type: str | None = None,
        annotations: Mapping[str, Any] | None = None,
    ) -> Callable[[F], F]:
        """Decorator registering the reader of ``uri``, or of a URI template such as
        ``notes://{name}`` (its variables are the function's parameters). It returns ``str``
        (text), ``bytes`` (a blob), ``ResourceContents`` or any JSON value."""

        def register(fn: F) -> F:
            self.catalog.resources.add(
                uri,
                fn,
                name=name,
                title=title,
                description=description,
                mime_type=mime_type,
                annotations=annotations,
            )
            return fn

        return register

    def prompt(
        self, name: str | None = None, *, title: str | None = None, description: str | None = None
    ) -> Callable[[F], F]:
        """Decorator registering a prompt; its parameters are the prompt's arguments, and it
        returns a ``str`` (one user message) or a list of messages."""

        def register(fn: F) -> F:
            self.catalog.prompts.add(fn, name=name, title=title, description=description)
            return fn

        return register

    def completion(
        self, *, argument: str, prompt: str | None = None, resource: str | None = None
    ) -> Callable[[F], F]:
        """Decorator registering the completer of one ``argument`` of a ``prompt`` (by name)
        or of a ``resource`` template (by its URI template): ``fn(value) -> list[str]``,
        optionally also taking ``arguments`` (what the client chose for the others)."""
        if (prompt is None) == (resource is None):
            raise TypeError("completion() needs exactly one of prompt= and resource=")

        def register(fn: F) -> F:
            if prompt is not None:
                self.catalog.completions.add("prompt", prompt, argument, fn)
            else:
                assert resource is not None
                self.catalog.completions.add("resource", resource, argument, fn)
            return fn

        return register

    def remove_tool(self, name: str) -> None:
        """Unregister a tool (calls already running finish); clients hear ``list_changed``."""
        self.registry.remove(name)

    def remove_resource(self, uri: str) -> None:
        """Unregister a resource or a template (by its URI template)."""
        self.catalog.resources.remove(uri)

    def remove_prompt(self, name: str) -> None:
        self.catalog.prompts.remove(name)

    async def notify_resource_updated(self, uri: str) -> int:
        """Tell every client subscribed to ``uri`` that it changed (``resources/subscribe`` on
        the handshake transports, ``subscriptions/listen`` on 2026-07-28); callable from any
        task of the host program. Returns how many subscribers were told; on a shared store
        (several instances), how many instances were told (each tells its own subscribers)."""
        publish = getattr(self.store, "publish_notice", None)
        if publish is not None and self._serving:
            told: int = await publish(uri)
            return told
        return await self.notices.resource_updated(uri)

    async def _relay_notices(self, *, task_status: trio.TaskStatus[None]) -> None:
        """A shared store's resource updates, from any instance, to this one's subscribers."""
        task_status.started()
        while True:
            try:
                async for uri in self.store.notices():  # type: ignore[attr-defined]
                    await self.notices.resource_updated(uri)
            except Exception as exc:  # the store is down: subscribe again, never crash
                log.warning("resource updates from other instances paused: %s", exc)
                await trio.sleep(1)

    def background(self, fn: Callable[[], Awaitable[Any]]) -> Callable[[], Awaitable[Any]]:
        """Decorator: run ``async def fn()`` for as long as the server serves (started once
        it listens, cancelled when it stops), e.g. a loop that feeds live data to subscribers."""
        self._background.append(fn)
        return fn

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
        self._serving = True
        await self.open_verifier()
        store_open: Any = self.store if self._owns_store else contextlib.nullcontext()
        # The store outlives every task that uses it (coredis keeps its pool in this task).
        async with store_open, trio.open_nursery() as nursery:
            await nursery.start(self.sessions.run)
            await nursery.start(self.notices.run)
            if getattr(self.store, "notices", None) is not None:
                await nursery.start(self._relay_notices)
            await nursery.start(self.tasks.run)
            if self.metrics_http is not None:
                await nursery.start(self.metrics_http.serve)
            recover = getattr(self.verifier, "run_until_ready", None)
            if recover is not None and not is_ready(self.verifier):
                # The IdP was down at start: retry it in the background (ends once keys load).
                nursery.start_soon(recover)
            # http.serve returns only after a graceful shutdown; the sessions (and their tool
            # tasks) are cancelled after it, once no connection can reach them any more.
            await self.http.serve(task_status=_Relay(self, task_status, nursery))
            nursery.cancel_scope.cancel()


class _Relay:
    """Turns the HTTP layer's BoundAddress into the ServerInfo our caller is waiting for."""

    def __init__(
        self, server: Server, outer: trio.TaskStatus[ServerInfo], nursery: trio.Nursery
    ) -> None:
        self.server = server
        self.outer = outer
        self.nursery = nursery

    def started(self, bound: BoundAddress | None = None) -> None:
        assert bound is not None
        info = ServerInfo(bound.host, bound.port, bound.url, self.server.token)
        self.server.info = info
        log.info("datapulse listening on %s", bound.url)
        for fn in self.server._background:  # the app's own tasks, once clients can connect
            self.nursery.start_soon(fn)
        self.outer.started(info)


def request_state_keys(setting: str) -> list[bytes]:
    """The keys that seal requestState: the configured secrets, else one random per process
    (then a 2026-07-28 retry must reach the same process: set them when running several)."""
    secrets_given = [part.strip() for part in setting.split(",") if part.strip()]
    for secret in secrets_given:
        add_secret(secret)  # never printed by a log line
    return [secret.encode() for secret in secrets_given] or [secrets.token_bytes(32)]


async def serve(
    config: Config | None = None,
    *,
    task_status: trio.TaskStatus[ServerInfo] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a Server with the built-in tools on ``config`` (for ``nursery.start(serve, cfg)``)."""
    await Server(config, builtin_tools=True).serve(task_status=task_status)
