"""The HTTP face of authorization: metadata, challenges, scopes on plain HTTP, tickets, CORS.

``AuthRoutes.install`` wires everything into the router:

* ``GET /.well-known/oauth-protected-resource[/mcp]`` (public, when JWT is configured): RFC 9728
  metadata; ``challenge_hook`` adds ``resource_metadata`` to every 401 so clients find it.
* ``POST /tickets`` (authenticated): a short-lived stream ticket for a browser's EventSource;
  ``ticket_hook`` lets ``GET /events`` and ``GET /sse`` authenticate with ``?ticket=`` instead of
  the header (rules in ``auth.tickets``). No other query parameter ever authenticates.
* CORS: a ``before`` hook answers preflights, an ``after`` hook marks responses readable by
  allowed origins (policy in ``auth.cors``).
* ``require_tool_scope``: the original API's ``POST /message`` refuses a tool call whose scope the
  token lacks with 403 ``insufficient_scope`` before queueing it (MCP transports report the same
  as a JSON-RPC error from the dispatcher).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import orjson
import trio

from datapulse.auth.cors import CorsPolicy, public_headers, public_preflight_headers
from datapulse.auth.prm import (
    WELL_KNOWN,
    InsufficientScope,
    ProtectedResource,
    canonical_resource,
    has_scope,
    with_resource_metadata,
)
from datapulse.auth.tickets import TicketBook, install_redactor, ticket_refused
from datapulse.auth.verifier import Principal
from datapulse.core.session import valid_session_id
from datapulse.errors import BadRequest, Forbidden, SessionNotFound, Unauthorized
from datapulse.errors import UnprocessableEntity as Unprocessable
from datapulse.net.http import Request, Response, StreamingResponse, Upgrade, json_response
from datapulse.net.sessions import LiveSession
from datapulse.transports import events as events_api
from datapulse.transports import legacy_sse

if TYPE_CHECKING:
    from datapulse.server import Server
    from datapulse.transports.router import Router

log = logging.getLogger("datapulse.auth")

PRM_PATHS = frozenset({WELL_KNOWN, WELL_KNOWN + "/mcp"})
TICKETS_PATH = "/tickets"
BIND_TICKET = "bind_ticket"
SESSION_CREATED = "on_session_created"
"""``request.extra`` key: called with the LiveSession a ticket-authenticated ``/sse`` creates."""


class AuthRoutes:
    def __init__(self, server: Server) -> None:
        self.server = server
        self.config = server.config
        self.tickets = TicketBook(clock=trio.current_time)
        self.cors = CorsPolicy(self.config.cors_origins)
        # Metadata (and resource_metadata in challenges) only when tokens come from an issuer.
        self.publishes_metadata = bool(self.config.jwt_issuer)

    def install(self, router: Router) -> None:
        router.add("POST", TICKETS_PATH, self.post_ticket)
        router.ticket_hook = self.authenticate_ticket
        if self.publishes_metadata:
            for path in sorted(PRM_PATHS):
                router.add("GET", path, self.get_metadata, public=True)
            router.challenge_hook = self.challenge
        router.before.append(self.preflight)
        router.after.append(self.add_cors_headers)
        self.server.sessions.on_close.append(self._session_closed)
        install_redactor()

    # -- Protected Resource Metadata -----------------------------------------------------------

    @property
    def resource(self) -> ProtectedResource:
        if self.config.resource_url:
            base = self.config.resource_url
        elif self.server.info is not None:
            base = self.server.info.url
        else:
            base = f"http://{self.config.host}:{self.config.port}"
        return ProtectedResource(
            canonical_resource(base), (self.config.jwt_issuer,) if self.config.jwt_issuer else ()
        )

    def metadata_url(self, request_path: str) -> str | None:
        return self.resource.metadata_url_for(request_path) if self.publishes_metadata else None

    async def get_metadata(self, request: Request) -> Response:
        endpoint = request.path.removeprefix(WELL_KNOWN)
        scopes = (tool.required_scope for tool in self.server.registry)
        document = self.resource.document(endpoint, scopes)
        return json_response(200, document, [("Cache-Control", "public, max-age=300")])

    def challenge(self, request: Request, exc: Unauthorized) -> Unauthorized:
        url = self.metadata_url(request.path)
        if url is not None and exc.challenge.lower().startswith("bearer"):
            exc.challenge = with_resource_metadata(exc.challenge, url)
        return exc

    # -- scopes on plain HTTP ------------------------------------------------------------------

    def require_tool_scope(self, request: Request, tool_name: object) -> None:
        """403 ``insufficient_scope`` if the caller's token lacks the tool's scope.

        Unknown tools and malformed names pass: they are reported on the stream as before.
        """
        registry = self.server.registry
        if not isinstance(tool_name, str) or tool_name not in registry:
            return
        needed = registry.get(tool_name).required_scope
        principal = request.principal
        if needed is None or has_scope(principal.scopes, needed):
            return
        raise InsufficientScope(
            needed, what=f"tool {tool_name}", resource_metadata=self.metadata_url(request.path)
        )

    # -- tickets -------------------------------------------------------------------------------

    async def post_ticket(self, request: Request) -> Response:
        session_id: str | None = None
        if request.body.strip():
            try:
                body = orjson.loads(request.body)
            except orjson.JSONDecodeError:
                raise BadRequest("body is not valid JSON") from None
            if not isinstance(body, dict):
                raise Unprocessable("body must be a JSON object")
            session_id = body.get("session_id")
            if session_id is not None and (
                not isinstance(session_id, str) or not valid_session_id(session_id)
            ):
                raise Unprocessable("field 'session_id' must be 1-128 visible ASCII characters")
        ticket = self.tickets.issue(request.principal, session_id)
        return json_response(
            200,
            {"ticket": ticket, "expires_in": round(self.tickets.ttl_s)},
            [("Cache-Control", "no-store")],
        )

    async def authenticate_ticket(self, request: Request) -> Principal:
        """The router's ticket hook, for ``?ticket=`` on a ticket route (GET only)."""
        ticket = request.query_param("ticket") or ""
        if request.method != "GET" or not ticket:
            raise ticket_refused()
        resuming = bool((request.header("last-event-id") or "").strip())
        if request.path == "/events":
            session_id = events_api.session_id_from(request)  # 400 before the ticket is spent
            redeemed = self.tickets.redeem(
                ticket, route="events", session_id=session_id, resuming=resuming
            )
            principal = redeemed.principal
            if redeemed.first_use:
                # Bound by the after hook once the stream opened, so that a refused open (404,
                # 429) leaves nothing behind.
                request.extra[BIND_TICKET] = (ticket, principal, session_id, events_api.KIND)
                return principal
            try:
                await self.server.sessions.get(session_id, principal.id, events_api.KIND)
            except SessionNotFound:
                raise ticket_refused("the session of this ticket has ended") from None
            return principal
        if request.path == "/sse":
            redeemed = self.tickets.redeem(ticket, route="sse", session_id=None, resuming=resuming)
            principal = redeemed.principal

            def bind(live: LiveSession) -> None:
                self.tickets.bind(ticket, principal, live.id, legacy_sse.KIND)

            request.extra[SESSION_CREATED] = bind
            return principal
        raise ticket_refused()

    def _session_closed(self, live: LiveSession, reason: str) -> None:
        self.tickets.forget_session(live.id)

    def _bind_opened_stream(
        self, request: Request, response: Response | StreamingResponse | Upgrade
    ) -> None:
        pending: Any = request.extra.pop(BIND_TICKET, None)
        if (
            pending is not None
            and isinstance(response, StreamingResponse)
            and response.status == 200
        ):
            self.tickets.bind(*pending)

    # -- CORS ----------------------------------------------------------------------------------

    async def preflight(self, request: Request) -> Response | None:
        """Answer CORS preflights (runs after the Origin guard, before routing)."""
        if request.method != "OPTIONS":
            return None
        origin = request.header("origin")
        if origin is None or request.header("access-control-request-method") is None:
            return None
        route = self.server.router.routes.get(request.path)
        if route is None:
            return None
        if request.path in PRM_PATHS:
            return Response(204, public_preflight_headers())
        if not self.cors.allows(origin):
            raise Forbidden(f"origin not allowed for cross-origin requests: {origin}")
        return Response(204, self.cors.preflight_headers(origin, route.allow))

    def add_cors_headers(
        self, request: Request, response: Response | StreamingResponse | Upgrade
    ) -> None:
        """The router's after hook: CORS headers on actual responses; binds opened tickets."""
        self._bind_opened_stream(request, response)
        if isinstance(response, Upgrade):
            return
        origin = request.header("origin")
        if origin is None or any(
            name.lower() == "access-control-allow-origin" for name, _ in response.headers
        ):
            return
        if request.path in PRM_PATHS:
            response.headers.extend(public_headers())
        else:
            response.headers.extend(self.cors.response_headers(origin))
