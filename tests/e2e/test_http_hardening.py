"""Issue 12, the HTTP layer attacked from outside, over real loopback sockets and raw bytes.

* defect 5: a request is authenticated (and routed) on its head; a refused head is answered at
  once, its body never read (N connections announcing 1 MiB each hold no 1 MiB each), and
  ``Expect: 100-continue`` is answered ``100`` only once the head was admitted;
* defect 6: ``Content-Length`` with ``Transfer-Encoding``, a repeated ``Content-Length`` and
  transfer codings other than chunked are 400 and close, so nothing after them is served;
* defect 7: a malformed header line (or a value with NUL or VT) is refused without a byte of it
  in the 400 or in any log line; a refused Origin is not echoed either;
* defect 13b: an absolute-form target is routed by its path and query, and Host-checked.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tracemalloc
from typing import Any

import psutil
import pytest
import trio

from datapulse import Server
from datapulse.net.http import Request, Response, json_response
from tests.helpers import MiB, RawClient, bound_tests, raw_exchange, start_server

TEST_TIMEOUT_S = 30
MARKER = "q7marker"
"""Put into hostile header values: it must come back in no answer and no log line."""


def status_of(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1])


def head_of(raw: bytes) -> bytes:
    return raw.split(b"\r\n\r\n", 1)[0]


def body_of(raw: bytes) -> Any:
    return json.loads(raw.split(b"\r\n\r\n", 1)[1])


def responses_in(raw: bytes) -> int:
    return raw.count(b"HTTP/1.1 ")


def datapulse_log(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("datapulse")]


async def probe(request: Request) -> Response:
    return json_response(
        200, {"path": request.path, "query": request.query, "body": len(request.body)}
    )


async def start(nursery: trio.Nursery, **overrides: Any) -> tuple[Server, int]:
    """A server with two public test routes: ``GET /probe`` and ``POST /sink`` (both echo)."""
    server, info = await start_server(nursery, **overrides)
    server.router.add("GET", "/probe", probe, public=True)
    server.router.add("POST", "/sink", probe, public=True)
    return server, info.port


def mcp_post_head(port: int, length: int, *extra: str) -> bytes:
    """The head of a POST /mcp without a token, announcing ``length`` bytes of body."""
    lines = [
        "POST /mcp HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Content-Type: application/json",
        "Accept: application/json, text/event-stream",
        f"Content-Length: {length}",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def read_response_head(stream: trio.SocketStream) -> bytes:
    """Bytes until the end of the first response head (or EOF)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(65536)
        if not chunk:
            break
        data += chunk
    return data


# -- defect 5: authentication on the head -------------------------------------------------------


class PeakRSS:
    """Samples this process's RSS every 5 ms while it runs (the server runs in-process)."""

    def __init__(self) -> None:
        self.process = psutil.Process(os.getpid())
        self.start = self.peak = self.process.memory_info().rss

    async def run(self) -> None:
        while True:
            self.peak = max(self.peak, self.process.memory_info().rss)
            await trio.sleep(0.005)


async def test_bodies_without_a_token_are_refused_on_the_head_and_never_held(
    nursery: trio.Nursery,
) -> None:
    """200 connections without a token, each sending a head that announces 1 MiB and all of
    that body but its last byte (then stalling, as the attack in issue 12 does). Each is
    answered 401 at once, and the server holds none of those bodies: its Python heap
    (tracemalloc) and RSS stay far below the 200 MiB they are. (Before: nothing was answered
    until the read timeout, 408, with ~1 MiB held per connection all that time.)"""
    connections = 200
    _, port = await start(nursery, max_connections_per_ip=2 * connections, read_timeout_s=10)
    body = memoryview(b"x" * MiB)[:-1]  # one object for every client: no client-side growth
    answers: list[bytes] = []

    async def attacker() -> None:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream, trio.open_nursery() as own:

            async def send() -> None:
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await stream.send_all(mcp_post_head(port, MiB))
                    await stream.send_all(body)

            own.start_soon(send)
            with trio.move_on_after(5):  # far less than the read timeout
                answers.append(await read_response_head(stream))
            own.cancel_scope.cancel()

    rss = PeakRSS()
    tracemalloc.start()
    try:
        async with trio.open_nursery() as sampling:
            sampling.start_soon(rss.run)
            async with trio.open_nursery() as attackers:
                for _ in range(connections):
                    attackers.start_soon(attacker)
            sampling.cancel_scope.cancel()
        _, heap_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(
        f"\n{connections} x 1 MiB unauthenticated: heap peak {heap_peak / MiB:.1f} MiB, "
        f"RSS peak +{(rss.peak - rss.start) / MiB:.1f} MiB"
    )
    assert len(answers) == connections
    assert all(a.startswith(b"HTTP/1.1 401 ") for a in answers), {a[:40] for a in answers}
    assert all(b"connection: close" in a.lower() for a in answers)
    assert heap_peak < 40 * MiB, heap_peak
    assert rss.peak - rss.start < 100 * MiB, rss.peak - rss.start


async def test_a_head_without_a_token_is_answered_before_its_body_is_sent(
    nursery: trio.Nursery,
) -> None:
    """The 401 needs no byte of the announced body: authentication runs on the head."""
    _, port = await start(nursery, read_timeout_s=10)
    for _ in range(3):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(mcp_post_head(port, MiB))
            reader = RawReader(stream)
            with trio.move_on_after(5):  # the server ends its answer with a FIN
                await reader.until_closed()
            raw = reader.data
        assert raw.startswith(b"HTTP/1.1 401 "), raw[:200]
        assert b"connection: close" in head_of(raw).lower()
        assert body_of(raw)["error"] == "unauthorized"


async def test_expect_100_continue_without_a_token_is_401_never_100(
    nursery: trio.Nursery,
) -> None:
    _, port = await start(nursery)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(mcp_post_head(port, MiB, "Expect: 100-continue"))
        reader = RawReader(stream)
        with trio.move_on_after(5):  # the server ends its answer with a FIN
            await reader.until_closed()
        raw = reader.data
    assert raw.startswith(b"HTTP/1.1 401 "), raw[:200]
    assert b" 100 " not in raw
    assert b"connection: close" in head_of(raw).lower()
    assert body_of(raw)["error"] == "unauthorized"


async def test_expect_100_continue_with_a_token_is_100_then_the_answer(
    nursery: trio.Nursery,
) -> None:
    _, port = await start(nursery)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(
            b"POST /sink HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        with trio.fail_after(5):
            interim = await read_response_head(stream)
            assert interim.startswith(b"HTTP/1.1 100 ")
            await stream.send_all(b"hello")
            final = await read_response_head(stream)
    assert final.startswith(b"HTTP/1.1 200 ")


async def test_a_refused_head_without_a_body_keeps_the_connection(nursery: trio.Nursery) -> None:
    """A bodiless refusal (a GET without a token) costs no connection: nothing is left unread."""
    _, port = await start(nursery)
    client = await RawClient.connect(port)
    try:
        with trio.fail_after(5):
            refused = await client.exchange("GET", "/events?session_id=s1")
            health = await client.exchange("GET", "/healthz")
    finally:
        await client.aclose()
    assert refused.status_code == 401
    assert health.status_code == 200


async def test_a_refused_body_in_the_same_packet_is_not_read_nor_what_follows(
    nursery: trio.Nursery,
) -> None:
    """Head, body and a pipelined request in one write: 401 and close, nothing else served."""
    _, port = await start(nursery)
    body = b'{"jsonrpc":"2.0","id":1,"method":"ping"}'
    wire = (
        mcp_post_head(port, len(body))
        + body
        + f"GET /probe HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    )
    raw = await raw_exchange(port, wire, read_timeout=5)
    assert raw.startswith(b"HTTP/1.1 401 ")
    assert b"connection: close" in head_of(raw).lower()
    assert responses_in(raw) == 1


async def test_public_routes_still_take_bodies_without_a_token(nursery: trio.Nursery) -> None:
    _, port = await start(nursery)
    raw = await raw_exchange(
        port,
        b"POST /sink?a=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 3\r\n"
        b"Connection: close\r\n\r\nabc",
    )
    assert status_of(raw) == 200
    assert body_of(raw) == {"path": "/sink", "query": {"a": ["1"]}, "body": 3}


class RawReader:
    """Reads a socket until the server closes it; what came so far stays in ``data``."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.data = b""

    async def until_closed(self) -> bytes:
        while True:
            try:
                chunk = await self.stream.receive_some(65536)
            except trio.BrokenResourceError:
                return self.data
            if not chunk:
                return self.data
            self.data += chunk


# -- defect 6: framing that could smuggle a request ---------------------------------------------

SMUGGLED = b"GET /probe?smuggled=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def framed(*headers: bytes, body: bytes, version: bytes = b"1.1") -> bytes:
    head = b"POST /sink HTTP/" + version + b"\r\nHost: 127.0.0.1\r\n" + b"".join(headers)
    return head + b"\r\n" + body


@pytest.mark.parametrize(
    "wire",
    [
        # CL.TE: a front end that reads Content-Length forwards it all as one body; we would
        # read the chunked body (empty) and serve what follows as a request of its own.
        framed(
            b"Content-Length: %d\r\n" % len(b"0\r\n\r\n" + SMUGGLED),
            b"Transfer-Encoding: chunked\r\n",
            body=b"0\r\n\r\n" + SMUGGLED,
        ),
        framed(
            b"Transfer-Encoding: chunked\r\n",
            b"Content-Length: 5\r\n",
            body=b"0\r\n\r\n" + SMUGGLED,
        ),
        framed(b"Content-Length: 5\r\n", b"Content-Length: 5\r\n", body=b"hello" + SMUGGLED),
        framed(b"Content-Length: 5, 5\r\n", body=b"hello" + SMUGGLED),
        framed(b"Content-Length: 5\r\n", b"content-length:5\r\n", body=b"hello" + SMUGGLED),
        framed(b"Transfer-Encoding: chunked\r\n", body=b"0\r\n\r\n" + SMUGGLED, version=b"1.0"),
        framed(b"Transfer-Encoding: gzip, chunked\r\n", body=b"0\r\n\r\n" + SMUGGLED),
        framed(
            b"Transfer-Encoding: chunked\r\n",
            b"Transfer-Encoding: chunked\r\n",
            body=b"0\r\n\r\n" + SMUGGLED,
        ),
        framed(b"Transfer-Encoding: identity\r\n", body=b"hello" + SMUGGLED),
    ],
    ids=[
        "cl-then-te",
        "te-then-cl",
        "cl-twice",
        "cl-list",
        "cl-twice-spelled-differently",
        "te-in-http-1.0",
        "te-gzip-chunked",
        "te-twice",
        "te-identity",
    ],
)
async def test_ambiguous_framing_is_400_and_nothing_behind_it_is_served(
    nursery: trio.Nursery, wire: bytes
) -> None:
    _, port = await start(nursery)
    with trio.fail_after(10):
        raw = await raw_exchange(port, wire, read_timeout=5)
    assert raw.startswith(b"HTTP/1.1 400 "), raw[:300]
    assert responses_in(raw) == 1, raw  # the smuggled request was not served
    assert b"connection: close" in head_of(raw).lower()
    assert body_of(raw)["error"] == "bad_request"


# -- defect 7: nothing of a malformed request is echoed or logged -------------------------------


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (f"Authorization : Bearer {MARKER}".encode(), "malformed header field"),
        (f"X-Note: {MARKER}\x00tail".encode(), "malformed header field"),
        (f"X-Note: {MARKER}\x0btail".encode(), "malformed header field"),
        (f"{MARKER} no colon".encode(), "malformed header field"),
    ],
    ids=["space-before-colon", "nul-in-value", "vt-in-value", "no-colon"],
)
async def test_a_malformed_header_line_is_named_never_quoted(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture, line: bytes, problem: str
) -> None:
    caplog.set_level(logging.DEBUG)
    _, port = await start(nursery)
    wire = b"GET /probe HTTP/1.1\r\nHost: 127.0.0.1\r\n" + line + b"\r\n\r\n"
    raw = await raw_exchange(port, wire, read_timeout=5)
    assert raw.startswith(b"HTTP/1.1 400 ")
    assert MARKER.encode() not in raw
    assert body_of(raw) == {"error": "bad_request", "detail": problem}
    messages = datapulse_log(caplog)
    assert any(problem in m for m in messages), messages
    assert not [m for m in messages if MARKER in m]


async def test_a_malformed_request_line_is_named_never_quoted(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    _, port = await start(nursery)
    wire = f"GET /probe?{MARKER} junk HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    raw = await raw_exchange(port, wire, read_timeout=5)
    assert raw.startswith(b"HTTP/1.1 400 ")
    assert MARKER.encode() not in raw
    assert body_of(raw)["detail"] == "malformed request line"
    assert not [m for m in datapulse_log(caplog) if MARKER in m]


async def test_a_refused_origin_is_not_echoed_nor_logged(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    _, port = await start(nursery)
    wire = (
        f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: https://{MARKER}.example\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    raw = await raw_exchange(port, wire, read_timeout=5)
    assert raw.startswith(b"HTTP/1.1 403 ")
    assert MARKER.encode() not in raw
    assert body_of(raw) == {"error": "forbidden", "detail": "origin not allowed"}
    assert not [m for m in datapulse_log(caplog) if MARKER in m]


# -- defect 13b: absolute-form request targets --------------------------------------------------


async def test_an_absolute_form_target_is_routed_by_its_path_and_query(
    nursery: trio.Nursery,
) -> None:
    _, port = await start(nursery)
    client = await RawClient.connect(port)
    try:
        with trio.fail_after(5):
            routed = await client.exchange("GET", f"http://127.0.0.1:{port}/probe?x=1&y=")
            routed_body = client.body
            health = await client.exchange("GET", f"HTTP://localhost:{port}/healthz")
            empty_path = await client.exchange("GET", f"http://127.0.0.1:{port}?x=2")
    finally:
        await client.aclose()
    assert routed.status_code == 200
    assert json.loads(routed_body) == {
        "path": "/probe",
        "query": {"x": ["1"], "y": [""]},
        "body": 0,
    }
    assert health.status_code == 200
    # Routed as "/?x=2": the page at / (an empty path would otherwise be a 400 or a 404).
    assert empty_path.status_code == 200


@pytest.mark.parametrize(
    ("target", "host", "status"),
    [
        ("http://evil.example/healthz", "127.0.0.1", 421),  # the target's host is checked
        ("http://127.0.0.1:{port}/healthz", "evil.example", 421),  # and the Host header too
        ("http://user@127.0.0.1:{port}/healthz", "127.0.0.1", 400),  # userinfo: refused
        ("http:///healthz", "127.0.0.1", 400),  # no host at all
    ],
)
async def test_the_host_check_applies_to_an_absolute_form_target(
    nursery: trio.Nursery, target: str, host: str, status: int
) -> None:
    _, port = await start(nursery)
    wire = (
        f"GET {target.format(port=port)} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    ).encode()
    raw = await raw_exchange(port, wire, read_timeout=5)
    assert status_of(raw) == status, raw[:300]
    assert b"ok" not in raw.split(b"\r\n\r\n", 1)[1]


bound_tests(globals(), TEST_TIMEOUT_S)
