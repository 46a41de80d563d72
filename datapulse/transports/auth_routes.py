"""The HTTP face of authorization: metadata, challenges, scopes on plain HTTP, tickets, CORS.

``AuthRoutes.install`` wires everything into the router:

* ``GET /.well-known/oauth-protected-resource[/mcp]`` (public, when JWT is configured): RFC 9728
  metadata; ``challenge_hook`` adds ``resource_metadata`` to every 401 so clients find it.
* ``POST /tickets`` (authenticated): a short-lived stream ticket for a browser's EventSource;
  ``ticket_hook`` lets ``GET /events`` and ``GET /sse`` authenticate with ``?ticket=`` instead of
  the header (rules in ``auth.tickets``). No other query parameter ever authenticates. The
  transport calls ``bind_ticket`` once the stream's session is open, so the spent ticket can
  resume that session, and only that one, never from before the first event its stream could
  send; ``track_ticket_streams`` (an ``after`` hook) tells the book when each ticket-opened
  stream starts and ends, which is where ``--ticket-resume-window`` is counted from.
* CORS: a ``before`` hook answers preflights, an ``after`` hook marks responses readable by
  allowed origins (policy in ``auth.cors``).
* ``require_tool_scope``: the original API's ``POST /message`` refuses a tool call whose scope the
  token lacks with 403 ``insufficient_scope`` before queueing it (MCP transports report the same
  as a JSON-RPC error from the dispatcher).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import orjson
import trio

from datapulse.auth.cors import CorsPolicy, public_headers, public_preflight_headers
from datapulse.auth.prm import (
    WELL_KNOWN,
    InsufficientScope,
    ProtectedResource,
    canonical_resource,
    with_resource_metadata,
)
from datapulse.auth.redact import install_redactor
from datapulse.auth.tickets import TicketBook, ticket_refused
from datapulse.auth.verifier import Principal
from datapulse.config import Config
from datapulse.core.eventlog import parse_event_id
from datapulse.core.session import valid_session_id
from datapulse.core.tokens import has_scope
from datapulse.errors import BadRequest, Forbidden, SessionNotFound, Unauthorized
from datapulse.errors import UnprocessableEntity as Unprocessable
from datapulse.live.sessions import LiveSession, SessionManager
from datapulse.net.http import (
    BodyStream,
    Request,
    Response,
    StreamingResponse,
    StreamTicket,
    Upgrade,
    json_response,
)
from datapulse.tools.registry import ToolRegistry
from datapulse.transports import events as events_api
from datapulse.transports import legacy_sse
from datapulse.transports.context import session_id_from
from datapulse.transports.router import Router

log = logging.getLogger("datapulse.auth")

PRM_PATHS = frozenset({WELL_KNOWN, WELL_KNOWN + "/mcp"})
TICKETS_PATH = "/tickets"


class AuthRoutes:
    def __init__(
        self,
        config: Config,
        registry: ToolRegistry,
        sessions: SessionManager,
        router: Router,
        base_url: Callable[[], str | None],
    ) -> None:
        self.config = config
        self.registry = registry
        self.sessions = sessions
        self.router = router
        self.base_url = base_url
        """The URL the server listens on, once it does (for the RFC 9728 resource)."""
        self.tickets = TicketBook(
            clock=trio.current_time, resume_window_s=config.ticket_resume_window_s
        )
        self.cors = CorsPolicy(self.config.cors_origins)
        # Metadata (and resource_metadata in challenges) only when tokens come from an issuer.
        self.publishes_metadata = bool(self.config.jwt_issuer)

    def install(self) -> None:
        router = self.router
        router.add("POST", TICKETS_PATH, self.post_ticket)
        router.ticket_hook = self.authenticate_ticket
        if self.publishes_metadata:
            for path in sorted(PRM_PATHS):
                router.add("GET", path, self.get_metadata, public=True)
            router.challenge_hook = self.challenge
        router.before.append(self.preflight)
        router.after.append(self.add_cors_headers)
        router.after.append(self.track_ticket_streams)
        self.sessions.on_close.append(self._session_closed)
        install_redactor()

    # -- Protected Resource Metadata -----------------------------------------------------------

    @property
    def resource(self) -> ProtectedResource:
        return self.resource_for(None)

    def resource_for(self, request: Request | None) -> ProtectedResource:
        """The RFC 9728 resource: ``--resource-url``; else, for a request a trusted proxy
        forwarded, the scheme and Host the client used (the guard has checked that Host); else
        the bound URL."""
        base = self.config.resource_url
        if not base and request is not None and request.proxy is not None:
            host = request.forwarded_host or request.header("host")
            if host:
                base = f"{request.scheme}://{host}"
        if not base:
            base = self.base_url() or f"http://{self.config.host}:{self.config.port}"
        return ProtectedResource(
            canonical_resource(base), (self.config.jwt_issuer,) if self.config.jwt_issuer else ()
        )

    def metadata_url(self, request_path: str, request: Request | None = None) -> str | None:
        if not self.publishes_metadata:
            return None
        return self.resource_for(request).metadata_url_for(request_path)

    async def get_metadata(self, request: Request) -> Response:
        endpoint = request.path.removeprefix(WELL_KNOWN)
        scopes = (tool.required_scope for tool in self.registry)
        document = self.resource_for(request).document(endpoint, scopes)
        return json_response(200, document, [("Cache-Control", "public, max-age=300")])

    def challenge(self, request: Request, exc: Unauthorized) -> Unauthorized:
        url = self.metadata_url(request.path, request)
        if url is not None and exc.challenge.lower().startswith("bearer"):
            exc.challenge = with_resource_metadata(exc.challenge, url)
        return exc

    # -- scopes on plain HTTP ------------------------------------------------------------------

    def require_tool_scope(self, request: Request, tool_name: object) -> None:
        """403 ``insufficient_scope`` if the caller's token lacks the tool's scope.

        Unknown tools and malformed names pass: they are reported on the stream as before.
        """
        registry = self.registry
        if not isinstance(tool_name, str) or tool_name not in registry:
            return
        needed = registry.get(tool_name).required_scope
        if needed is None or has_scope(request.caller.scopes, needed):
            return
        raise InsufficientScope(
            needed,
            what=f"tool {tool_name}",
            resource_metadata=self.metadata_url(request.path, request),
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
        ticket = self.tickets.issue(request.caller, session_id)
        return json_response(
            200,
            {"ticket": ticket, "expires_in": round(self.tickets.ttl_s)},
            [("Cache-Control", "no-store")],
        )

    async def authenticate_ticket(self, request: Request) -> tuple[Principal, StreamTicket]:
        """The router's ticket hook, for ``?ticket=`` on a ticket route (GET only)."""
        ticket = request.query_param("ticket") or ""
        if request.method != "GET" or not ticket:
            raise ticket_refused()
        raw_last = (request.header("last-event-id") or "").strip()
        resuming = bool(raw_last)
        last_event_id = parse_event_id(raw_last) if resuming else None
        if request.path == "/events":
            session_id = session_id_from(request, "session_id")  # 400 before the ticket is spent
            redeemed = self.tickets.redeem(
                ticket,
                route=events_api.KIND,
                session_id=session_id,
                resuming=resuming,
                last_event_id=last_event_id,
            )
            if not redeemed.first_use:
                try:
                    await self.sessions.get(session_id, redeemed.principal.id, events_api.KIND)
                except SessionNotFound:
                    raise ticket_refused("the session of this ticket has ended") from None
        elif request.path == "/sse":
            redeemed = self.tickets.redeem(
                ticket,
                route=legacy_sse.KIND,
                session_id=None,
                resuming=resuming,
                last_event_id=last_event_id,
            )
        else:
            raise ticket_refused()
        return redeemed.principal, StreamTicket(ticket, first_use=redeemed.first_use)

    def bind_ticket(self, request: Request, session_id: str, route: str) -> None:
        """A transport's call once a ticket-opened stream has its session: the spent ticket
        now resumes that session on that route, and nothing else."""
        grant = request.ticket
        if grant is not None and grant.first_use:
            self.tickets.bind(
                grant.value,
                request.caller,
                session_id,
                route,
                first_event_id=self._first_event_id(request, session_id),
            )

    def _first_event_id(self, request: Request, session_id: str) -> int:
        """The first event id the stream this request opens can send: what follows its resume
        point (``SessionManager.stream_session``'s rule: the ``Last-Event-ID``, else what the
        session has delivered)."""
        try:
            after = events_api.resume_point(request) if request.path == "/events" else None
        except BadRequest:
            after = None
        if after is None:
            live = self.sessions.lookup(session_id, request.caller.id)
            after = 0
            if live is not None:
                after = live.record.delivered_seq
                if live.stream is not None:
                    after = max(after, live.stream.sent_seq)
        return after + 1

    def track_ticket_streams(
        self, request: Request, response: Response | StreamingResponse | Upgrade
    ) -> None:
        """The router's after hook: a ticket-opened stream reports when it starts and ends."""
        grant = request.ticket
        if grant is None or not isinstance(response, StreamingResponse):
            return
        body = response.body
        tickets = self.tickets
        session_id = request.query_param("session_id") if request.path == "/events" else None

        async def tracked(out: BodyStream) -> None:
            first = None
            if grant.first_use and session_id is not None:
                first = self._first_event_id(request, session_id)  # exact: nothing ran since
            tickets.stream_started(grant.value, first_event_id=first)
            try:
                await body(out)
            finally:
                tickets.stream_ended(grant.value)

        response.body = tracked

    def _session_closed(self, live: LiveSession, reason: str) -> None:
        self.tickets.forget_session(live.id)

    # -- CORS ----------------------------------------------------------------------------------

    async def preflight(self, request: Request) -> Response | None:
        """Answer CORS preflights (runs after the Origin guard, before routing)."""
        if request.method != "OPTIONS":
            return None
        origin = request.header("origin")
        if origin is None or request.header("access-control-request-method") is None:
            return None
        route = self.router.routes.get(request.path)
        if route is None:
            return None
        if request.path in PRM_PATHS:
            return Response(204, public_preflight_headers())
        if not self.cors.allows(origin):
            raise Forbidden("origin not allowed for cross-origin requests")
        return Response(204, self.cors.preflight_headers(origin, route.allow))

    def add_cors_headers(
        self, request: Request, response: Response | StreamingResponse | Upgrade
    ) -> None:
        """The router's after hook: CORS headers on actual responses."""
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
