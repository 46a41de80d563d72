"""Issue 12 without sockets: the head phase of a connection (``StagedApp.admit``), request
framing (net/framing.py), absolute-form targets, and the router's two phases.

The same defects are attacked over real sockets in tests/e2e/test_http_hardening.py."""

from __future__ import annotations

import logging

import h11
import pytest
import trio
import trio.testing

from datapulse.auth.verifier import Principal
from datapulse.config import Config
from datapulse.errors import BadRequest, Conflict, MisdirectedRequest, Unauthorized
from datapulse.net.framing import describe_protocol_error, repeats_content_length
from datapulse.net.http import (
    AppResponse,
    ErrorStyle,
    Handler,
    Request,
    Response,
    json_response,
    split_target,
)
from datapulse.transports.guard import OriginGuard
from datapulse.transports.router import Router
from tests.unit.net_helpers import get, serve, small_config

DEADLINE_S = 5
MARKER = "q7marker"


class Gate:
    """A ``StagedApp``: admits heads that carry ``X-Pass: yes``; refuses the rest with 401.
    Records what each phase saw."""

    def __init__(self, admit_delay_s: float = 0.0) -> None:
        self.admitted: list[str] = []
        self.refused: list[str] = []
        self.handled: list[bytes] = []
        self.admit_delay_s = admit_delay_s

    async def admit(self, request: Request) -> Response | Handler:
        await trio.sleep(self.admit_delay_s)
        if request.header("x-pass") != "yes":
            self.refused.append(request.path)
            return json_response(401, {"error": "unauthorized"})
        self.admitted.append(request.path)
        return self.handle

    async def handle(self, request: Request) -> AppResponse:
        self.handled.append(request.body)
        return json_response(200, {"path": request.path, "body": len(request.body)})


# -- the head phase -------------------------------------------------------------------------------


async def test_a_refused_head_is_answered_with_close_and_its_body_is_never_read(
    nursery: trio.Nursery,
) -> None:
    gate = Gate()
    with trio.fail_after(DEADLINE_S):
        served = await serve(nursery, gate)
        await served.client.send(get("/x", "Content-Length: 50", method="POST"))  # no body yet
        reply = await served.client.response()
        assert served.connection.conn.their_state is h11.SEND_BODY  # not a byte of it read
        assert await served.client.until_closed() == b""  # our FIN follows the answer
        await served.client.stream.aclose()
        await served.finished.wait()
    assert reply.status == 401
    assert reply.header("connection") == "close"
    assert (gate.refused, gate.handled) == (["/x"], [])


async def test_a_refused_head_with_its_body_and_a_pipelined_request_serves_nothing_more(
    nursery: trio.Nursery,
) -> None:
    gate = Gate()
    with trio.fail_after(DEADLINE_S):
        served = await serve(nursery, gate)
        await served.client.send(
            get("/x", method="POST", body=b"y" * 50) + get("/next", "X-Pass: yes")
        )
        reply = await served.client.response()
        assert await served.client.until_closed() == b""
    assert reply.status == 401
    assert gate.refused == ["/x"]
    assert gate.admitted == []


async def test_a_refused_head_without_a_body_keeps_the_connection(nursery: trio.Nursery) -> None:
    gate = Gate()
    with trio.fail_after(DEADLINE_S):
        served = await serve(nursery, gate)
        refused = await served.client.request(get("/a"))
        admitted = await served.client.request(get("/b", "X-Pass: yes"))
    assert (refused.status, admitted.status) == (401, 200)
    assert refused.header("connection") is None
    assert not served.finished.is_set()


async def test_100_continue_is_sent_only_to_an_admitted_head(nursery: trio.Nursery) -> None:
    gate = Gate()
    with trio.fail_after(DEADLINE_S):
        refused_conn = await serve(nursery, gate)
        await refused_conn.client.send(
            get("/x", "Expect: 100-continue", "Content-Length: 5", method="POST")
        )
        refused = await refused_conn.client.response()
        admitted_conn = await serve(nursery, gate)
        await admitted_conn.client.send(
            get("/y", "X-Pass: yes", "Expect: 100-continue", "Content-Length: 5", method="POST")
        )
        interim = await admitted_conn.client.take()
        assert interim.startswith(b"HTTP/1.1 100 ")
        admitted = await admitted_conn.client.request(b"hello")
    assert refused.status == 401
    assert refused.informational == []
    assert b" 100 " not in refused.raw
    assert admitted.status == 200
    assert gate.handled == [b"hello"]


async def test_the_time_taken_to_admit_is_not_charged_to_the_body_deadline(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    gate = Gate(admit_delay_s=4.0)  # read_timeout_s is 5
    with trio.fail_after(60):
        served = await serve(nursery, gate)
        await served.client.send(
            get("/y", "X-Pass: yes", "Expect: 100-continue", "Content-Length: 5", method="POST")
        )
        assert (await served.client.take()).startswith(b"HTTP/1.1 100 ")  # at t=4
        await trio.sleep(3)  # t=7: past 5 from the first byte, within 5 of the client's time
        reply = await served.client.request(b"hello")
    assert reply.status == 200


async def test_a_plain_function_app_admits_every_head(nursery: trio.Nursery) -> None:
    seen: list[bytes] = []

    async def app(request: Request) -> Response:
        seen.append(request.body)
        return Response(204)

    with trio.fail_after(DEADLINE_S):
        served = await serve(nursery, app)
        reply = await served.client.request(get("/", method="POST", body=b"abc"))
    assert reply.status == 204
    assert seen == [b"abc"]


# -- framing ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        ("Content-Length: 5", "Transfer-Encoding: chunked"),
        ("Transfer-Encoding: chunked", "Content-Length: 5"),
        ("Content-Length: 5", "Content-Length: 5"),
        ("Content-Length: 5, 5",),
        ("Transfer-Encoding: gzip, chunked",),
        ("Transfer-Encoding: chunked", "Transfer-Encoding: chunked"),
    ],
)
async def test_ambiguous_framing_is_400_before_the_app_and_closes(
    nursery: trio.Nursery, headers: tuple[str, ...]
) -> None:
    gate = Gate()
    with trio.fail_after(DEADLINE_S):
        served = await serve(nursery, gate)
        await served.client.send(
            get("/x", "X-Pass: yes", *headers, method="POST")
            + b"0\r\n\r\n"
            + get("/smuggled", "X-Pass: yes")
        )
        reply = await served.client.response()
        assert await served.client.until_closed() == b""
    assert reply.status == 400
    assert reply.header("connection") == "close"
    assert gate.admitted == gate.refused == []


async def test_transfer_encoding_in_http_1_0_is_400(nursery: trio.Nursery) -> None:
    with trio.fail_after(DEADLINE_S):
        served = await serve(nursery, Gate())
        await served.client.send(
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\nX-Pass: yes\r\n\r\n0\r\n\r\n"
        )
        raw = await served.client.until_closed()
    assert raw.startswith(b"HTTP/1.1 400 ")


@pytest.mark.parametrize(
    ("head", "repeated"),
    [
        (b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n", False),
        (b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n", True),
        (b"POST / HTTP/1.1\r\ncontent-LENGTH:5\r\nContent-Length: 5\r\n\r\n", True),
        (b"POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n", True),
        (b"POST / HTTP/1.1\r\nContent-Length: 5\r\n ,5\r\n\r\n", True),  # obs-fold
        (b"POST / HTTP/1.1\nContent-Length: 5\nContent-Length: 5\n\n", True),
        # Only the head counts: a body that looks like a field is just a body.
        (b"POST / HTTP/1.1\r\nContent-Length: 19\r\n\r\nContent-Length: 5\r\n", False),
        (b"POST / HTTP/1.1\r\nX-Content-Length: 5\r\nContent-Length: 5\r\n\r\n", False),
    ],
)
def test_repeats_content_length(head: bytes, repeated: bool) -> None:
    assert repeats_content_length(head) is repeated


@pytest.mark.parametrize(
    ("wire", "problem"),
    [
        (f"GET / HTTP/1.1\r\nAuthorization : Bearer {MARKER}\r\n\r\n", "malformed header field"),
        (f"GET / HTTP/1.1\r\nHost: x\r\nX: {MARKER}\x00\r\n\r\n", "malformed header field"),
        (f"GET / HTTP/1.1\r\nHost: x\r\nX: {MARKER}\x0b.\r\n\r\n", "malformed header field"),
        (f"GET /{MARKER} junk HTTP/1.1\r\nHost: x\r\n\r\n", "malformed request line"),
        (
            f"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: {MARKER}\r\n\r\n",
            "invalid Content-Length",
        ),
        (f"GET / HTTP/1.1\r\nX: {MARKER}\r\n\r\n", "missing Host header"),
        (
            f"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: {MARKER}\r\n\r\n",
            "unsupported Transfer-Encoding",
        ),
        (
            f"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{MARKER}\r\n",
            "malformed chunked body",
        ),
    ],
)
def test_h11_refusals_are_described_without_a_byte_of_the_request(wire: str, problem: str) -> None:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(wire.encode())
    with pytest.raises(h11.RemoteProtocolError) as raised:
        while conn.next_event() is not h11.NEED_DATA:
            pass
    # h11's own message quotes the offending line for most of these; ours never does.
    assert describe_protocol_error(raised.value) == problem


async def test_a_malformed_header_is_neither_answered_nor_logged_with_its_bytes(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with trio.fail_after(DEADLINE_S):
        served = await serve(nursery, Gate())
        await served.client.send(get("/", f"Authorization : Bearer {MARKER}"))
        raw = await served.client.until_closed()
    assert raw.startswith(b"HTTP/1.1 400 ")
    assert MARKER.encode() not in raw
    assert b'"detail":"malformed header field"' in raw
    assert MARKER not in caplog.text
    assert "400 from 192.0.2.7:40000: malformed header field" in caplog.text


# -- absolute-form targets ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "authority", "path", "query"),
    [
        ("/p?a=1", None, "/p", {"a": ["1"]}),
        ("http://127.0.0.1:8000/p?a=1", "127.0.0.1:8000", "/p", {"a": ["1"]}),
        ("HTTP://LocalHost/p", "LocalHost", "/p", {}),
        ("https://[::1]:9/p/q", "[::1]:9", "/p/q", {}),
        ("http://127.0.0.1:8000", "127.0.0.1:8000", "/", {}),
        ("http://127.0.0.1?a=", "127.0.0.1", "/", {"a": [""]}),
        ("*", None, "*", {}),
    ],
)
def test_absolute_form_targets_are_routed_by_path_and_query(
    target: str, authority: str | None, path: str, query: dict[str, list[str]]
) -> None:
    request = Request.from_target("GET", target, [])
    assert (request.authority, request.path, request.query) == (authority, path, query)
    assert request.target == target  # kept as sent (an upgrade replays it)


@pytest.mark.parametrize("target", ["http:///p", "http://user@127.0.0.1/p", "http://h#frag"])
def test_absolute_form_without_a_host_or_with_userinfo_is_400(target: str) -> None:
    with pytest.raises(BadRequest):
        split_target(target)


async def test_the_host_guard_checks_the_authority_of_an_absolute_form_target() -> None:
    guard = OriginGuard(Config(host="127.0.0.1"))
    host = [(b"host", b"127.0.0.1")]
    assert await guard(Request.from_target("GET", "http://localhost:1/p", host)) is None
    with pytest.raises(MisdirectedRequest):
        await guard(Request.from_target("GET", "http://evil.example/p", host))
    with pytest.raises(MisdirectedRequest):
        await guard(Request.from_target("GET", "http://127.0.0.1/p", [(b"host", b"evil.example")]))


async def test_a_refused_origin_is_not_quoted(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    guard = OriginGuard(Config(host="127.0.0.1"))
    headers = [(b"host", b"127.0.0.1"), (b"origin", f"https://{MARKER}.example".encode())]
    with pytest.raises(Exception) as raised:
        await guard(Request.from_target("GET", "/p", headers))
    assert MARKER not in str(raised.value.args) and MARKER not in caplog.text


# -- the router's two phases --------------------------------------------------------------------

ALICE = Principal(id="p:alice", subject="alice")


class CountingVerifier:
    def __init__(self) -> None:
        self.calls: list[str | None] = []

    async def verify(self, authorization: str | None) -> Principal:
        self.calls.append(authorization)
        if authorization != "Bearer good":
            raise Unauthorized("missing bearer token")
        return ALICE


def head(method: str, target: str, auth: str | None = "Bearer good") -> Request:
    headers = [(b"host", b"test")]
    if auth is not None:
        headers.append((b"authorization", auth.encode()))
    return Request.from_target(method, target, headers, client=("192.0.2.1", 5000))


async def test_the_router_refuses_on_the_head_and_authenticates_only_once() -> None:
    verifier = CountingVerifier()
    router = Router(verifier)
    bodies: list[bytes] = []
    after: list[int] = []

    async def handler(request: Request) -> Response:
        bodies.append(request.body)
        assert request.principal == ALICE
        return Response(200)

    router.add("POST", "/x", handler)
    router.after.append(lambda request, response: after.append(getattr(response, "status", 0)))
    with trio.fail_after(DEADLINE_S):
        refused = await router.admit(head("POST", "/x", auth=None))
        admitted = await router.admit(head("POST", "/x"))
        assert isinstance(refused, Response) and refused.status == 401
        assert callable(admitted) and not isinstance(admitted, Response)
        assert after == [401]  # the refusal went through the after-hooks already
        request = head("POST", "/x")
        request.principal = ALICE
        request.body = b"the body, read after admission"
        answered = await admitted(request)
    assert isinstance(answered, Response) and answered.status == 200
    assert bodies == [b"the body, read after admission"]
    assert verifier.calls == [None, "Bearer good"]  # the body phase verified nothing again
    assert after == [401, 200]


async def test_404_405_and_public_routes_are_decided_on_the_head() -> None:
    verifier = CountingVerifier()
    router = Router(verifier)
    router.add("GET", "/health", _ok, public=True)
    router.add("POST", "/x", _ok)
    with trio.fail_after(DEADLINE_S):
        missing = await router.admit(head("GET", "/nowhere", auth=None))
        wrong = await router.admit(head("GET", "/x", auth=None))
        public = await router.admit(head("GET", "/health", auth=None))
    assert isinstance(missing, Response) and missing.status == 404
    assert isinstance(wrong, Response) and wrong.status == 405
    assert not isinstance(public, Response)
    assert verifier.calls == []


async def test_errors_of_the_body_phase_keep_the_route_style() -> None:
    router = Router(CountingVerifier())

    async def conflict(request: Request) -> Response:
        raise Conflict("busy")

    router.add("POST", "/mcp", conflict, errors=ErrorStyle.JSONRPC)
    with trio.fail_after(DEADLINE_S):
        admitted = await router.admit(head("POST", "/mcp"))
        assert not isinstance(admitted, Response)
        answered = await admitted(head("POST", "/mcp"))
    assert isinstance(answered, Response) and answered.status == 409
    assert b'"jsonrpc"' in answered.body


async def _ok(request: Request) -> Response:
    return Response(200)


def test_small_config_is_what_the_connection_tests_assume() -> None:
    config = small_config()
    assert (config.read_timeout_s, config.max_body_bytes) == (5.0, 100)
