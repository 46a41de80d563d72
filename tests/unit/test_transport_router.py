"""Router called directly with Request objects: routing, authentication, hooks, and the error
boundary (which errors are plain JSON, which are JSON-RPC, and that a bug never leaks)."""

from __future__ import annotations

import logging
from typing import Any

import orjson
import pytest
import trio

from datapulse.auth.verifier import Principal
from datapulse.errors import Conflict, MisdirectedRequest, ServiceUnavailable, Unauthorized
from datapulse.net.http import (
    ErrorStyle,
    Request,
    Response,
    StreamTicket,
    json_response,
)
from datapulse.transports.router import AppResponse, Router

DEADLINE_S = 5
GOOD = "Bearer good"
ALICE = Principal(id="p:alice", subject="alice")
TICKET_HOLDER = Principal(id="p:ticket", subject="browser")


class FakeVerifier:
    """Accepts one Authorization value; counts calls."""

    def __init__(self) -> None:
        self.calls: list[str | None] = []

    async def verify(self, authorization: str | None) -> Principal:
        self.calls.append(authorization)
        if authorization != GOOD:
            raise Unauthorized("missing bearer token" if authorization is None else "bad token")
        return ALICE


def request(method: str, target: str, *, auth: str | None = GOOD) -> Request:
    headers = [(b"host", b"test")]
    if auth is not None:
        headers.append((b"authorization", auth.encode()))
    return Request.from_target(method, target, headers, client=("192.0.2.1", 5000))


async def call(router: Router, req: Request) -> Response:
    with trio.fail_after(DEADLINE_S):
        response = await router(req)
    assert isinstance(response, Response)
    return response


def body(response: Response) -> Any:
    assert ("Content-Type", "application/json") in response.headers
    return orjson.loads(response.body)


def header(response: Response, name: str) -> str | None:
    values = [v for k, v in response.headers if k.lower() == name.lower()]
    return ", ".join(values) if values else None


class Handler:
    """A handler that records the requests it got and answers 200 (or raises ``raises``)."""

    def __init__(self, raises: BaseException | None = None) -> None:
        self.seen: list[Request] = []
        self.raises = raises

    async def __call__(self, req: Request) -> Response:
        self.seen.append(req)
        if self.raises is not None:
            raise self.raises
        return json_response(200, {"ok": True, "method": req.method})


@pytest.fixture
def verifier() -> FakeVerifier:
    return FakeVerifier()


@pytest.fixture
def router(verifier: FakeVerifier) -> Router:
    return Router(verifier)


# -- routing -----------------------------------------------------------------------------------


async def test_an_unknown_path_is_a_plain_404(router: Router) -> None:
    response = await call(router, request("GET", "/nowhere"))
    assert response.status == 404
    assert body(response) == {"error": "not_found", "detail": "no such endpoint: /nowhere"}


async def test_a_wrong_method_is_a_plain_405_with_allow_even_on_a_jsonrpc_route(
    router: Router,
) -> None:
    router.add("GET", "/mcp", Handler(), errors=ErrorStyle.JSONRPC)
    router.add("POST", "/mcp", Handler(), errors=ErrorStyle.JSONRPC)
    response = await call(router, request("PUT", "/mcp"))
    assert response.status == 405
    assert header(response, "Allow") == "GET, HEAD, POST"
    assert body(response)["error"] == "method_not_allowed"


async def test_allow_names_head_only_where_get_is(router: Router) -> None:
    router.add("POST", "/message", Handler())
    response = await call(router, request("GET", "/message"))
    assert response.status == 405
    assert header(response, "Allow") == "POST"


async def test_head_is_answered_by_the_get_handler(router: Router) -> None:
    get = Handler()
    router.add("GET", "/events", get)
    response = await call(router, request("HEAD", "/events"))
    assert response.status == 200
    assert [r.method for r in get.seen] == ["HEAD"]


async def test_the_query_string_does_not_take_part_in_routing(router: Router) -> None:
    router.add("GET", "/events", Handler())
    response = await call(router, request("GET", "/events?a=1"))
    assert response.status == 200


# -- authentication ----------------------------------------------------------------------------


async def test_an_authenticated_route_sets_the_principal(
    router: Router, verifier: FakeVerifier
) -> None:
    handler = Handler()
    router.add("GET", "/private", handler)
    response = await call(router, request("GET", "/private"))
    assert response.status == 200
    assert handler.seen[0].principal == ALICE
    assert verifier.calls == [GOOD]


async def test_a_public_route_skips_authentication(router: Router, verifier: FakeVerifier) -> None:
    handler = Handler()
    router.add("GET", "/health", handler, public=True)
    response = await call(router, request("GET", "/health", auth=None))
    assert response.status == 200
    assert verifier.calls == []
    assert handler.seen[0].principal is None


async def test_a_missing_token_is_a_plain_401_with_a_challenge_even_on_a_jsonrpc_route(
    router: Router,
) -> None:
    handler = Handler()
    router.add("POST", "/mcp", handler, errors=ErrorStyle.JSONRPC)
    response = await call(router, request("POST", "/mcp", auth=None))
    assert response.status == 401
    assert header(response, "WWW-Authenticate") == "Bearer"
    assert body(response) == {"error": "unauthorized", "detail": "missing bearer token"}
    assert handler.seen == []


async def test_the_challenge_hook_enriches_a_401_from_authentication(router: Router) -> None:
    def challenge(req: Request, exc: Unauthorized) -> Unauthorized:
        return Unauthorized(exc.detail, challenge=f'Bearer resource_metadata="{req.path}/meta"')

    router.challenge_hook = challenge
    router.add("GET", "/events", Handler())
    response = await call(router, request("GET", "/events", auth="Bearer wrong"))
    assert response.status == 401
    assert header(response, "WWW-Authenticate") == 'Bearer resource_metadata="/events/meta"'
    assert body(response) == {"error": "unauthorized", "detail": "bad token"}


async def test_a_401_raised_by_a_jsonrpc_handler_is_plain_and_goes_through_the_challenge_hook(
    router: Router,
) -> None:
    challenged: list[str] = []

    def challenge(req: Request, exc: Unauthorized) -> Unauthorized:
        challenged.append(req.path)
        return Unauthorized(exc.detail, challenge='Bearer resource_metadata="https://x/meta"')

    router.challenge_hook = challenge
    router.add("POST", "/mcp", Handler(Unauthorized("token expired")), errors=ErrorStyle.JSONRPC)
    response = await call(router, request("POST", "/mcp"))
    assert response.status == 401
    assert header(response, "WWW-Authenticate") == 'Bearer resource_metadata="https://x/meta"'
    assert body(response) == {"error": "unauthorized", "detail": "token expired"}
    assert challenged == ["/mcp"]


# -- the error boundary ------------------------------------------------------------------------


async def test_a_datapulse_error_on_a_jsonrpc_route_is_a_jsonrpc_error_with_its_status(
    router: Router,
) -> None:
    exc = Conflict("stream already open")
    exc.request_id = 7
    router.add("POST", "/mcp", Handler(exc), errors=ErrorStyle.JSONRPC)
    response = await call(router, request("POST", "/mcp"))
    assert response.status == 409
    assert body(response) == {
        "jsonrpc": "2.0",
        "id": 7,
        "error": {"code": Conflict.jsonrpc_code, "message": "stream already open"},
    }


async def test_a_datapulse_error_on_an_http_route_is_error_and_detail(router: Router) -> None:
    router.add("POST", "/message", Handler(Conflict("stream already open")))
    response = await call(router, request("POST", "/message"))
    assert response.status == 409
    assert body(response) == {"error": "conflict", "detail": "stream already open"}


async def test_an_error_keeps_its_own_headers(router: Router) -> None:
    router.add("POST", "/mcp", Handler(ServiceUnavailable("busy", retry_after_s=3)))
    response = await call(router, request("POST", "/mcp"))
    assert response.status == 503
    assert header(response, "Retry-After") == "3"


async def test_a_bug_in_a_handler_is_a_fixed_500_without_the_exception_text(
    router: Router, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="datapulse.http")
    router.add("POST", "/mcp", Handler(KeyError("secret-key-name")), errors=ErrorStyle.JSONRPC)
    response = await call(router, request("POST", "/mcp"))
    assert response.status == 500
    assert body(response) == {"error": "internal_error", "detail": "internal server error"}
    assert b"secret" not in response.body
    assert "unhandled error in POST /mcp" in caplog.text
    assert "secret-key-name" in caplog.text  # logged with its traceback instead


async def test_a_bug_in_a_before_hook_is_a_fixed_500(router: Router) -> None:
    async def broken(req: Request) -> Response | None:
        raise RuntimeError("secret")

    router.before.append(broken)
    router.add("GET", "/x", Handler())
    response = await call(router, request("GET", "/x"))
    assert response.status == 500
    assert b"secret" not in response.body


async def test_cancellation_is_not_swallowed(router: Router) -> None:
    async def forever(req: Request) -> Response:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    router.add("GET", "/slow", forever)
    returned: list[AppResponse] = []
    with trio.CancelScope() as scope:
        scope.cancel()
        returned.append(await router(request("GET", "/slow")))
    assert scope.cancelled_caught
    assert returned == []  # not turned into a 500


# -- hooks -------------------------------------------------------------------------------------


async def test_a_before_hook_may_answer_early(router: Router, verifier: FakeVerifier) -> None:
    handler = Handler()

    async def preflight(req: Request) -> Response | None:
        return Response(204) if req.method == "OPTIONS" else None

    router.before.append(preflight)
    router.add("POST", "/mcp", handler)
    early = await call(router, request("OPTIONS", "/mcp", auth=None))
    later = await call(router, request("POST", "/mcp"))
    assert (early.status, later.status) == (204, 200)
    assert len(handler.seen) == 1
    assert verifier.calls == [GOOD]  # the early answer needed no authentication


async def test_a_before_hook_error_is_plain_even_on_a_jsonrpc_route(router: Router) -> None:
    async def guard(req: Request) -> Response | None:
        raise MisdirectedRequest("unknown host")

    router.before.append(guard)
    router.add("POST", "/mcp", Handler(), errors=ErrorStyle.JSONRPC)
    response = await call(router, request("POST", "/mcp"))
    assert response.status == 421
    assert body(response) == {"error": "misdirected_request", "detail": "unknown host"}


async def test_after_hooks_run_on_every_response(router: Router) -> None:
    seen: list[int] = []

    def cors(req: Request, response: AppResponse) -> None:
        assert isinstance(response, Response)
        seen.append(response.status)
        response.headers.append(("Vary", "Origin"))

    async def preflight(req: Request) -> Response | None:
        return Response(204) if req.method == "OPTIONS" else None

    router.after.append(cors)
    router.before.append(preflight)
    router.add("GET", "/ok", Handler())
    router.add("GET", "/bug", Handler(ValueError()))
    router.add("GET", "/busy", Handler(Conflict()))
    responses = [
        await call(router, request("GET", "/ok")),
        await call(router, request("GET", "/nowhere")),
        await call(router, request("GET", "/ok", auth=None)),
        await call(router, request("GET", "/bug")),
        await call(router, request("GET", "/busy")),
        await call(router, request("OPTIONS", "/ok")),
    ]
    assert seen == [200, 404, 401, 500, 409, 204]
    assert all(header(r, "Vary") == "Origin" for r in responses)


# -- stream tickets ----------------------------------------------------------------------------


class TicketDesk:
    def __init__(self) -> None:
        self.used: list[str | None] = []

    async def __call__(self, req: Request) -> tuple[Principal, StreamTicket]:
        value = req.query_param("ticket")
        self.used.append(value)
        if value != "t-123":
            raise Unauthorized("unknown ticket")
        return TICKET_HOLDER, StreamTicket(value, first_use=True)


async def test_a_ticket_route_authenticates_with_the_ticket_only(
    router: Router, verifier: FakeVerifier
) -> None:
    desk = TicketDesk()
    router.ticket_hook = desk
    handler = Handler()
    router.add("GET", "/events", handler, ticket=True)
    response = await call(router, request("GET", "/events?ticket=t-123", auth="Bearer ignored"))
    assert response.status == 200
    assert handler.seen[0].principal == TICKET_HOLDER
    assert handler.seen[0].ticket == StreamTicket("t-123", first_use=True)
    assert desk.used == ["t-123"]
    assert verifier.calls == []


async def test_a_bad_ticket_is_401(router: Router) -> None:
    router.ticket_hook = TicketDesk()
    router.add("GET", "/events", Handler(), ticket=True)
    response = await call(router, request("GET", "/events?ticket=forged", auth=GOOD))
    assert response.status == 401
    assert body(response)["detail"] == "unknown ticket"


async def test_without_a_ticket_a_ticket_route_uses_the_header(
    router: Router, verifier: FakeVerifier
) -> None:
    desk = TicketDesk()
    router.ticket_hook = desk
    handler = Handler()
    router.add("GET", "/events", handler, ticket=True)
    response = await call(router, request("GET", "/events"))
    assert response.status == 200
    assert handler.seen[0].principal == ALICE
    assert handler.seen[0].ticket is None
    assert desk.used == []
    assert verifier.calls == [GOOD]


async def test_a_ticket_is_ignored_where_the_route_or_method_does_not_take_tickets(
    router: Router,
) -> None:
    desk = TicketDesk()
    router.ticket_hook = desk
    router.add("GET", "/events", Handler(), ticket=True)
    router.add("POST", "/events", Handler())  # same path, not a ticket method
    router.add("GET", "/other", Handler())  # not a ticket route
    post = await call(router, request("POST", "/events?ticket=t-123", auth=None))
    other = await call(router, request("GET", "/other?ticket=t-123", auth=None))
    assert (post.status, other.status) == (401, 401)
    assert desk.used == []
