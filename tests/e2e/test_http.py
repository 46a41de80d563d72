"""The h11 layer against a real server: keep-alive, HEAD, limits and every error status."""

from __future__ import annotations

import json

import httpx
import pytest
import trio

from datapulse import Server
from datapulse.errors import BadRequest
from datapulse.net.http import Request, json_response
from tests.helpers import AUTH, TOKEN, raw_exchange, start_server, wait_for


def status_of(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1])


def body_of(raw: bytes) -> dict[str, object]:
    return json.loads(raw.split(b"\r\n\r\n", 1)[1])


async def test_keep_alive_serves_sequential_requests_on_one_connection(server: Server) -> None:
    assert server.info is not None
    request = f"GET /healthz HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode()
    stream = await trio.open_tcp_stream("127.0.0.1", server.info.port)
    async with stream:
        for _ in range(3):
            await stream.send_all(request)
            data = b""
            with trio.fail_after(5):
                while b'"status":"ok"' not in data:
                    data += await stream.receive_some(4096)
            assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert len(server.http.connections) <= 1


async def test_pipelined_requests_are_answered_in_order(server: Server) -> None:
    assert server.info is not None
    one = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n"
    close = (
        b"GET /nope HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
        + b"Authorization: Bearer test-token\r\n\r\n"
    )
    raw = await raw_exchange(server.info.port, one + one + close)
    assert raw.count(b"HTTP/1.1 200 OK") == 2
    assert raw.rstrip().endswith(b'"detail":"no such endpoint: /nope"}')


async def test_head_has_headers_but_no_body(client: httpx.AsyncClient) -> None:
    response = await client.head("/healthz")
    assert response.status_code == 200
    assert response.content == b""
    assert int(response.headers["content-length"]) > 0


async def test_connection_close_is_honoured(server: Server) -> None:
    assert server.info is not None
    raw = await raw_exchange(
        server.info.port, b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    assert status_of(raw) == 200  # the read returned: the server closed its side


async def test_http_1_0_request_is_answered_and_closed(server: Server) -> None:
    assert server.info is not None
    raw = await raw_exchange(server.info.port, b"GET /healthz HTTP/1.0\r\n\r\n")
    assert status_of(raw) == 200


async def test_unknown_path_404_json(client: httpx.AsyncClient) -> None:
    response = await client.get("/no/such/thing")
    assert response.status_code == 404
    assert response.json() == {"error": "not_found", "detail": "no such endpoint: /no/such/thing"}


async def test_wrong_method_405_with_allow(client: httpx.AsyncClient) -> None:
    response = await client.put("/message?session_id=a")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    response = await client.post("/healthz")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD"
    assert response.json()["error"] == "method_not_allowed"


@pytest.mark.parametrize(
    "payload",
    [
        b"GARBAGE\r\n\r\n",
        b"GET  HTTP/1.1\r\nHost: localhost\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\n\r\n",  # HTTP/1.1 without Host
        b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nBad Header: y\r\n\r\n",
        b"POST /message HTTP/1.1\r\nHost: localhost\r\nContent-Length: -5\r\n\r\n",
        # With a token: without one the head is refused (401) and the body never read.
        b"POST /message HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer test-token\r\n"
        b"Transfer-Encoding: chunked\r\n\r\nZZ\r\n",
        b"GET /\x00 HTTP/1.1\r\nHost: localhost\r\n\r\n",
    ],
)
async def test_malformed_requests_get_400_json(server: Server, payload: bytes) -> None:
    assert server.info is not None
    raw = await raw_exchange(server.info.port, payload)
    assert status_of(raw) == 400, raw
    assert body_of(raw)["error"] == "bad_request"
    assert b"Traceback" not in raw


async def test_header_block_too_large_431(nursery: trio.Nursery) -> None:
    _, info = await start_server(nursery, max_header_bytes=1024)
    raw = await raw_exchange(
        info.port,
        b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"a" * 4000 + b"\r\n\r\n",
    )
    assert status_of(raw) == 431
    assert body_of(raw)["error"] == "headers_too_large"


async def test_too_many_header_fields_431(nursery: trio.Nursery) -> None:
    _, info = await start_server(nursery, max_header_count=10)
    headers = b"".join(b"X-%d: v\r\n" % i for i in range(20))
    raw = await raw_exchange(
        info.port, b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n" + headers + b"\r\n"
    )
    assert status_of(raw) == 431


async def test_body_over_limit_413_by_content_length(nursery: trio.Nursery) -> None:
    _, info = await start_server(nursery, max_body_bytes=100)
    async with httpx.AsyncClient(base_url=info.url, headers=AUTH) as c:
        response = await c.post("/message?session_id=s", content=b"x" * 101)
    assert response.status_code == 413
    assert response.json()["error"] == "payload_too_large"


async def test_body_over_limit_413_when_chunked(nursery: trio.Nursery) -> None:
    _, info = await start_server(nursery, max_body_bytes=100)
    # Raw bytes sent in one write, so the server has read all of them when it answers: a
    # client still sending could see its connection reset and lose the answer. A hang-up
    # instead of the 413 fails here (the read returns b"").
    chunks = b"32\r\n" + b"y" * 50 + b"\r\n"
    with trio.fail_after(10):
        raw = await raw_exchange(
            info.port,
            b"POST /message?session_id=s HTTP/1.1\r\nHost: localhost\r\n"
            + f"Authorization: Bearer {TOKEN}\r\n".encode()
            + b"Transfer-Encoding: chunked\r\n\r\n"
            + chunks * 3
            + b"0\r\n\r\n",
        )
    assert raw.startswith(b"HTTP/1.1 413 "), raw
    assert body_of(raw)["error"] == "payload_too_large"


async def test_default_body_limit_is_one_mib(server: Server) -> None:
    assert server.config.max_body_bytes == 1024 * 1024


async def test_slowloris_gets_408_and_close(nursery: trio.Nursery) -> None:
    _, info = await start_server(nursery, read_timeout_s=0.3)
    stream = await trio.open_tcp_stream("127.0.0.1", info.port)
    async with stream:
        await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")  # never finished
        data = b""
        with trio.fail_after(5):
            while True:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    break
                data += chunk
    assert status_of(data) == 408
    assert body_of(data)["error"] == "request_timeout"


async def test_slow_body_gets_408(nursery: trio.Nursery) -> None:
    _, info = await start_server(nursery, read_timeout_s=0.3)
    raw = await raw_exchange(
        info.port,
        b"POST /message?session_id=a HTTP/1.1\r\nHost: localhost\r\nContent-Length: 10\r\n"
        b"Authorization: Bearer test-token\r\n\r\nabc",  # a token: else 401 on the head
    )
    assert status_of(raw) == 408


async def test_idle_keep_alive_connection_is_closed(nursery: trio.Nursery) -> None:
    server, info = await start_server(nursery, keepalive_timeout_s=0.2)
    stream = await trio.open_tcp_stream("127.0.0.1", info.port)
    async with stream:
        await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        with trio.fail_after(5):
            data = b""
            while True:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    break  # closed by the server after the idle timeout
                data += chunk
    assert status_of(data) == 200
    await wait_for(lambda: not server.http.connections, 2, "the connection to be forgotten")


async def test_over_connection_limit_503_with_retry_after(nursery: trio.Nursery) -> None:
    server, info = await start_server(nursery, max_connections=2)
    holders = [await trio.open_tcp_stream("127.0.0.1", info.port) for _ in range(2)]
    await wait_for(lambda: len(server.http.connections) == 2, 2, "both connections accepted")
    raw = await raw_exchange(info.port, b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert status_of(raw) == 503
    assert b"Retry-After: 1" in raw
    assert body_of(raw)["error"] == "too_many_connections"
    for h in holders:
        await h.aclose()
    await wait_for(lambda: not server.http.connections, 2, "the holders to be forgotten")
    async with httpx.AsyncClient(base_url=info.url) as c:
        assert (await c.get("/healthz")).status_code == 200


async def test_expect_100_continue(server: Server) -> None:
    assert server.info is not None
    stream = await trio.open_tcp_stream("127.0.0.1", server.info.port)
    async with stream:
        await stream.send_all(
            b"POST /message?session_id=zz HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer test-token\r\n"
            b"Content-Length: 2\r\nExpect: 100-continue\r\n\r\n"
        )
        with trio.fail_after(5):
            first = await stream.receive_some(4096)
        assert first.startswith(b"HTTP/1.1 100")


async def test_handler_bug_is_a_fixed_500_and_other_connections_are_unaffected(
    nursery: trio.Nursery,
) -> None:
    server, info = await start_server(nursery)

    async def broken(request: Request) -> object:
        raise RuntimeError("secret internals")

    async def refused(request: Request) -> object:
        raise BadRequest("nope")

    server.router.add("GET", "/broken", broken)  # type: ignore[arg-type]
    server.router.add("GET", "/refused", refused)  # type: ignore[arg-type]
    async with httpx.AsyncClient(base_url=info.url, headers=AUTH) as c:
        response = await c.get("/broken")
        assert response.status_code == 500
        assert response.json() == {"error": "internal_error", "detail": "internal server error"}
        assert b"secret" not in response.content and b"Traceback" not in response.content
        assert (await c.get("/refused")).json() == {"error": "bad_request", "detail": "nope"}
        assert (await c.get("/healthz")).status_code == 200


async def test_stream_body_bug_closes_only_that_connection(nursery: trio.Nursery) -> None:
    from datapulse.net.http import StreamingResponse

    server, info = await start_server(nursery)

    async def bad_stream(request: Request) -> StreamingResponse:
        async def body(write):  # type: ignore[no-untyped-def]
            await write(b"data: 1\n\n")
            raise RuntimeError("boom")

        return StreamingResponse(200, [("Content-Type", "text/event-stream")], body)

    server.router.add("GET", "/bad", bad_stream)  # type: ignore[arg-type]
    async with httpx.AsyncClient(base_url=info.url, headers=AUTH) as c:
        with pytest.raises(httpx.RemoteProtocolError):
            await c.get("/bad")
        assert (await c.get("/healthz")).status_code == 200


async def test_json_response_helper() -> None:
    response = json_response(201, {"a": 1}, [("X-Test", "1")])
    assert response.status == 201
    assert ("Content-Type", "application/json") in response.headers
    assert response.body == b'{"a":1}'
