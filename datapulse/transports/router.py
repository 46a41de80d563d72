"""Router: (method, path) -> handler, with authentication and the error boundary.

This is the application the HTTP layer calls, in two phases (``net.reading.StagedApp``):
``admit`` runs on the request head alone, before a byte of its body is read: the before-hooks
(Origin/Host, CORS preflight), the route lookup (404, 405) and authentication (the bearer
header, or a stream ticket on a ticket route). What it refuses is answered at once, and its body
is never read, so a client without a token cannot make us hold one. An admitted request gets
back the handler (with the route's error style) that answers it once its body is in; it is not
authenticated again. ``__call__`` runs both phases (a request whose body is already there).

The router is also the error boundary, in both phases: a DatapulseError
raised by a handler becomes the response its route's ``ErrorStyle`` asks for (plain JSON, or a
JSON-RPC error object on MCP endpoints; ``net.http.styled_error_response``); errors raised before
a handler is chosen (Origin/Host, 404, 405) and 401s are always plain. Any other exception is a
bug, logged with its traceback here and answered with a fixed 500 body, so no traceback ever
reaches a client.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar

from datapulse.auth.verifier import Principal, Verifier
from datapulse.errors import DatapulseError, MethodNotAllowed, NotFound, Unauthorized
from datapulse.metrics import Metrics
from datapulse.net.http import (
    AppResponse,
    ErrorStyle,
    Handler,
    Request,
    Response,
    StreamTicket,
    error_response,
    internal_error_response,
    styled_error_response,
)

log = logging.getLogger("datapulse.http")

__all__ = ["AppResponse", "Handler", "Route", "Router"]

R = TypeVar("R", bound=AppResponse)
ChallengeHook = Callable[[Request, Unauthorized], Unauthorized]
TicketHook = Callable[[Request], Awaitable[tuple[Principal, StreamTicket]]]


@dataclass
class Route:
    path: str
    handlers: dict[str, Handler] = field(default_factory=dict)
    public: bool = False
    errors: ErrorStyle = ErrorStyle.HTTP
    ticket_methods: set[str] = field(default_factory=set)
    """Methods that may authenticate with ``?ticket=`` (browser streams) instead of the header."""
    admitted: dict[str, Handler] = field(default_factory=dict)
    """The body-phase callable per method, made once: ``admit`` hands the same one to every
    request (an idle stream's connection holds it for as long as the stream is open)."""

    @property
    def allow(self) -> list[str]:
        methods = set(self.handlers)
        if "GET" in methods:
            methods.add("HEAD")
        return sorted(methods)


class Router:
    def __init__(self, verifier: Verifier, metrics: Metrics | None = None) -> None:
        self.verifier = verifier
        self.metrics = metrics if metrics is not None else Metrics()
        self.routes: dict[str, Route] = {}
        # Lets the auth layer enrich 401 challenges (e.g. with resource_metadata).
        self.challenge_hook: ChallengeHook | None = None
        # Runs before routing: Origin/Host checks, CORS preflight. May answer on its own.
        self.before: list[Callable[[Request], Awaitable[Response | None]]] = []
        # Runs on every response the router returns, errors included (CORS headers only).
        self.after: list[Callable[[Request, AppResponse], None]] = []
        # Authenticates ``?ticket=`` on routes added with ``ticket=True`` (see auth_routes).
        self.ticket_hook: TicketHook | None = None

    def add(
        self,
        method: str,
        path: str,
        handler: Handler,
        *,
        public: bool = False,
        ticket: bool = False,
        errors: ErrorStyle = ErrorStyle.HTTP,
    ) -> None:
        route = self.routes.setdefault(path, Route(path, public=public, errors=errors))
        route.public = route.public or public
        route.handlers[method] = handler
        if ticket:
            route.ticket_methods.add(method)

    async def __call__(self, request: Request) -> AppResponse:
        """Both phases at once, for a request whose body has already been read."""
        answer = await self.admit(request)
        if isinstance(answer, Response):
            return answer
        return await answer(request)

    async def admit(self, request: Request) -> Response | Handler:
        """The head phase: the response to send now (the body is never read), or the handler
        that answers once the body is in. Errors here are always plain JSON."""
        try:
            for hook in self.before:
                early = await hook(request)
                if early is not None:
                    return self._finish(request, early)
            route, handler = self._find(request)
            if not route.public:
                await self._authenticate(request, route)
        except Unauthorized as exc:
            return self._finish(request, self._refuse(request, exc))
        except DatapulseError as exc:
            return self._finish(request, error_response(exc))
        except Exception:
            log.exception("unhandled error before %s %s", request.method, request.path)
            return self._finish(request, internal_error_response())
        admitted = route.admitted.get(request.method)
        if admitted is None:
            admitted = route.admitted[request.method] = partial(self._handle, route, handler)
        return admitted

    async def _handle(self, route: Route, handler: Handler, request: Request) -> AppResponse:
        """The body phase: the admitted request's handler, inside the error boundary."""
        try:
            response = await handler(request)
        except Unauthorized as exc:
            response = self._refuse(request, exc)
        except DatapulseError as exc:
            if exc.http_status >= 500:
                log.warning(
                    "%s %s %s: %s", exc.http_status, request.method, request.path, exc.detail
                )
            response = styled_error_response(exc, route.errors)
        except Exception:
            log.exception("unhandled error in %s %s", request.method, request.path)
            response = internal_error_response()
        return self._finish(request, response)

    def _finish(self, request: Request, response: R) -> R:
        for hook in self.after:
            hook(request, response)
        return response

    def _refuse(self, request: Request, exc: Unauthorized) -> Response:
        if self.challenge_hook is not None:
            exc = self.challenge_hook(request, exc)
        self.metrics.auth_failures.labels(_failure_reason(request)).inc()
        log.info(
            "401 %s %s from %s: %s", request.method, request.path, request.client_host, exc.detail
        )
        return error_response(exc)

    def _find(self, request: Request) -> tuple[Route, Handler]:
        route = self.routes.get(request.path)
        if route is None:
            raise NotFound(f"no such endpoint: {request.path}")
        method = request.method
        handler = route.handlers.get(method)
        if handler is None and method == "HEAD":
            handler = route.handlers.get("GET")
        if handler is None:
            raise MethodNotAllowed(f"{method} is not allowed on {request.path}", allow=route.allow)
        return route, handler

    async def _authenticate(self, request: Request, route: Route) -> None:
        """The bearer header; or, on a ticket route, a ``?ticket=`` (and then only that)."""
        if (
            self.ticket_hook
            and request.method in route.ticket_methods
            and "ticket" in request.query
        ):
            request.principal, request.ticket = await self.ticket_hook(request)
            return
        request.principal = await self.verifier.verify(request.header("authorization"))


def _failure_reason(request: Request) -> str:
    """Why a 401, as a bounded label: no credential at all, a bad ``?ticket=``, a bad token."""
    if request.header("authorization") is not None:
        return "invalid_token"
    if "ticket" in request.query:
        return "invalid_ticket"
    return "missing_token"
