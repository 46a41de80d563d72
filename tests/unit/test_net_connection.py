"""serve_connection driven over a memory stream pair: framing, keep-alive, limits, timeouts
(on the autojump clock), streamed bodies, request tasks and the ConnectionHost seam."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from email.utils import parsedate_to_datetime

import pytest
import trio
import trio.testing

from datapulse.net.connection import App
from datapulse.net.http import (
    BodyStream,
    Request,
    Response,
    StreamingResponse,
    Upgrade,
    json_response,
)
from tests.unit.net_helpers import PEER, HTTPClient, RecordingHost, get, serve

DEADLINE_S = 5
SSE = [("Content-Type", "text/event-stream")]


class Recorder:
    """An app answering every request with JSON about it; keeps the requests it saw."""

    def __init__(self) -> None:
        self.requests: list[Request] = []

    async def __call__(self, request: Request) -> Response:
        self.requests.append(request)
        return json_response(200, {"path": request.path, "body": len(request.body)})


def streaming(body_fn: Callable[[BodyStream], Awaitable[None]]) -> App:
    """An app answering every request with a streamed body written by ``body_fn(out)``."""

    async def app(request: Request) -> StreamingResponse:
        return StreamingResponse(200, list(SSE), body_fn)

    return app


# -- plain responses ---------------------------------------------------------------------------


async def test_get_answers_with_server_date_length_and_json_body(nursery: trio.Nursery) -> None:
    app = Recorder()
    with trio.fail_after(DEADLINE_S):
        served = await serve(nursery, app)
        reply = await served.client.request(get("/hello?x=1"))
    assert reply.status == 200
    assert reply.header("server") == "datapulse"
    assert parsedate_to_datetime(reply.header("date") or "").tzinfo is not None
    assert reply.header("content-length") == str(len(reply.body))
    assert reply.header("content-type") == "application/json"
    assert reply.json() == {"path": "/hello", "body": 0}
    request = app.requests[0]
    assert (request.method, request.target, request.query) == ("GET", "/hello?x=1", {"x": ["1"]})
    assert request.client == PEER
    assert request.header("host") == "test"


async def test_keep_alive_serves_two_requests_on_one_connection(nursery: trio.Nursery) -> None:
    app = Recorder()
    with trio.fail_after(DEADLINE_S):
        served = await serve(nursery, app)
        first = await served.client.request(get("/one"))
        second = await served.client.request(get("/two"))
    assert [first.json()["path"], second.json()["path"]] == ["/one", "/two"]
    assert not served.finished.is_set()
    assert len(served.host.opened_with) == 1


async def test_a_client_asking_for_close_gets_one_answer_then_eof(nursery: trio.Nursery) -> None:
    app = Recorder()
    with trio.fail_after(DEADLINE_S):
        served = await serve(nursery, app)
        reply = await served.client.request(get("/", "Connection: close") + get("/ignored"))
        assert await served.client.until_closed() == b""
    assert reply.status == 200
    assert [r.path for r in app.requests] == ["/"]


async def test_a_204_has_no_content_length(nursery: trio.Nursery) -> None:
    """RFC 9110 section 8.6: a server MUST NOT send Content-Length in a 1xx or 204 response.
    The router's CORS preflight and a cancelled /mcp request both answer ``Response(204)``."""

    async def app(request: Request) -> Response:
        return Response(204)

    with trio.fail_after(DEADLINE_S):
        served = await serve(nursery, app)
        reply = await served.client.request(get("/"))
    assert reply.status == 204
    assert reply.header("content-length") is None


async def test_pipelined_requests_are_answered_in_order(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    async def app(request: Request) -> Response:
        if request.path == "/slow":
            await trio.sleep(1)  # the second request is already buffered meanwhile
        return json_response(200, {"path": request.path})

    with trio.fail_after(DEADLINE_S):
        served = await serve(nursery, app)
        await served.client.send(get("/slow") + get("/fast") + get("/last"))
        paths = [(await served.client.response()).json()["path"] for _ in range(3)]
    assert paths == ["/slow", "/fast", "/last"]


async def test_head_sends_the_length_but_no_body(nursery: trio.Nursery) -> None:
    async def app(request: Request) -> Response:
        return Response(200, [("Content-Type", "text/plain")], b"hello")

    with trio.fail_after(DEADLINE_S):
        served = await serve(nursery, app)
        # Pipelined: a body byte after the HEAD answer would corrupt the GET's.
        await served.client.send(get("/", method="HEAD") + get("/"))
        head = await served.client.response("HEAD")
        full = await served.client.response()
    assert head.header("content-length") == "5"
    assert head.raw.endswith(b"\r\n\r\n")
    assert head.body == b""
    assert full.body == b"hello"


async def test_expect_100_continue_is_answered_before_the_body(nursery: trio.Nursery) -> None:
    app = Recorder()
    with trio.fail_after(DEADLINE_S):
        served = await serve(nursery, app)
        await served.client.send(
            get("/", "Expect: 100-continue", "Content-Length: 5", method="POST")
        )
        interim = await served.client.take()
        assert interim.startswith(b"HTTP/1.1 100 ")
        reply = await served.client.request(b"hello")
    assert reply.json()["body"] == 5


# -- limits and malformed requests -------------------------------------------------------------


async def assert_refused(client: HTTPClient, status: int, error: str) -> None:
    """A raw error answer (``encode_raw_response``), then the server closes."""
    reply = await client.response()
    assert reply.status == status
    assert reply.header("connection") == "close"
    assert reply.header("content-type") == "application/json"
    assert reply.json()["error"] == error
    assert await client.until_closed() == b""


async def test_a_content_length_over_the_limit_is_413_before_the_body_is_read(
    nursery: trio.Nursery,
) -> None:
    app = Recorder()
    with trio.fail_after(DEADLINE_S):
        served = await serve(nursery, app)
        await served.client.send(get("/", "Content-Length: 101", method="POST"))
        await assert_refused(served.client, 413, "payload_too_large")
    assert app.requests == []


async def test_a_chunked_body_over_the_limit_is_413(nursery: trio.Nursery) -> None:
    app = Recorder()
    chunks = b"32\r\n" + b"a" * 50 + b"\r\n" + b"33\r\n" + b"b" * 51 + b"\r\n0\r\n\r\n"
    with trio.fail_after(DEADLINE_S):
        served = await serve(nursery, app)
        await served.client.send(get("/", "Transfer-Encoding: chunked", method="POST") + chunks)
        await assert_refused(served.client, 413, "payload_too_large")
    assert app.requests == []


async def test_a_body_of_exactly_max_body_bytes_is_accepted(nursery: trio.Nursery) -> None:
    app = Recorder()
    chunks = b"32\r\n" + b"a" * 50 + b"\r\n" + b"32\r\n" + b"b" * 50 + b"\r\n0\r\n\r\n"
    with trio.fail_after(DEADLINE_S):
        served = await serve(nursery, app)
        by_length = await served.client.request(get("/", method="POST", body=b"x" * 100))
        chunked = await served.client.request(
            get("/", "Transfer-Encoding: chunked", method="POST") + chunks
        )
    assert by_length.status == chunked.status == 200
    assert [r.body for r in app.requests] == [b"x" * 100, b"a" * 50 + b"b" * 50]


async def test_a_malformed_request_is_400_json_and_closes(nursery: trio.Nursery) -> None:
    app = Recorder()
    with trio.fail_after(DEADLINE_S):
        served = await serve(nursery, app)
        await served.client.send(b"NOT AN HTTP REQUEST\r\n\r\n")
        await assert_refused(served.client, 400, "bad_request")
    assert app.requests == []


async def test_too_many_header_fields_is_431(nursery: trio.Nursery) -> None:
    app = Recorder()
    extra = [f"X-Field-{i}: {i}" for i in range(10)]  # with Host: 11 fields, the limit is 10
    with trio.fail_after(DEADLINE_S):
        served = await serve(nursery, app)
        await served.client.send(get("/", *extra))
        await assert_refused(served.client, 431, "headers_too_large")
    assert app.requests == []


async def test_a_header_block_over_max_header_bytes_in_one_read_is_431(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(DEADLINE_S):
        served = await serve(nursery, Recorder())
        await served.client.send(get("/", "X-Big: " + "v" * 1100))
        await assert_refused(served.client, 431, "headers_too_large")


# -- timeouts (autojump clock: virtual time, no real waiting) ----------------------------------


async def test_a_request_not_complete_within_read_timeout_is_408(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    app = Recorder()
    with trio.fail_after(60):
        served = await serve(nursery, app)
        start = trio.current_time()
        await served.client.send(b"GET / HTTP/1.1\r\nHost: test\r\n")  # the head never ends
        await assert_refused(served.client, 408, "request_timeout")
        await served.finished.wait()
    assert trio.current_time() - start == pytest.approx(5.0)
    assert app.requests == []


async def test_a_trickling_request_gets_408_counted_from_its_first_byte(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """Slowloris: a byte a second does not extend the deadline."""

    async def trickle(client: HTTPClient) -> None:
        for byte in b"GET / HTTP/1.1\r\nX-Slow: " + b"s" * 100:
            try:
                await client.send(bytes([byte]))
            except trio.BrokenResourceError:
                return
            await trio.sleep(1)

    with trio.fail_after(60):
        served = await serve(nursery, Recorder())
        start = trio.current_time()
        nursery.start_soon(trickle, served.client)
        await assert_refused(served.client, 408, "request_timeout")
    assert trio.current_time() - start == pytest.approx(5.0)


async def test_an_idle_keep_alive_closes_silently_after_keepalive_timeout(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(60):
        served = await serve(nursery, Recorder())
        await served.client.request(get("/"))
        idle_since = trio.current_time()
        assert await served.client.until_closed() == b""
    assert trio.current_time() - idle_since == pytest.approx(2.0)  # not read_timeout_s (5)


async def test_a_connection_that_never_sends_closes_silently_after_read_timeout(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(60):
        served = await serve(nursery, Recorder())
        start = trio.current_time()
        assert await served.client.until_closed() == b""
    assert trio.current_time() - start == pytest.approx(5.0)


# -- streamed bodies ---------------------------------------------------------------------------


async def test_a_streamed_body_is_sent_chunked_and_terminated(nursery: trio.Nursery) -> None:
    async def body(out: BodyStream) -> None:
        await out.write(b"one")
        await out.write(b"")  # only a flush: must not become the terminating 0-chunk
        await out.write(b"second")

    with trio.fail_after(DEADLINE_S):
        served = await serve(nursery, streaming(body))
        await served.client.send(get("/"))
        head, reader = await served.client.start_response()
        chunks = [await reader.next_data(), await reader.next_data(), await reader.next_data()]
        again = await served.client.request(get("/"))  # the connection is reusable
    assert dict(head.headers)[b"transfer-encoding"] == b"chunked"
    assert chunks == [b"one", b"second", None]
    assert reader.raw.endswith(b"3\r\none\r\n6\r\nsecond\r\n0\r\n\r\n")
    assert again.body == b"onesecond"


async def test_an_http_1_0_stream_is_delimited_by_closing(nursery: trio.Nursery) -> None:
    async def body(out: BodyStream) -> None:
        await out.write(b"one")
        await out.write(b"two")

    with trio.fail_after(DEADLINE_S):
        served = await serve(nursery, streaming(body))
        await served.client.send(b"GET / HTTP/1.0\r\n\r\n")
        raw = await served.client.until_closed()
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert b"chunked" not in head.lower()
    assert rest == b"onetwo"


async def test_head_of_a_stream_sends_no_body(nursery: trio.Nursery) -> None:
    ran = []

    async def body(out: BodyStream) -> None:
        ran.append(True)

    with trio.fail_after(DEADLINE_S):
        served = await serve(nursery, streaming(body))
        reply = await served.client.request(get("/", method="HEAD"), method="HEAD")
        reply_after = await served.client.request(get("/"))
    assert reply.status == 200
    assert reply.raw.endswith(b"\r\n\r\n")
    assert ran == [True]  # only for the GET
    assert reply_after.status == 200


async def test_wait_returns_false_when_the_client_closes_its_side(nursery: trio.Nursery) -> None:
    results: list[bool] = []

    async def body(out: BodyStream) -> None:
        await out.write(b"hello")
        results.append(await out.wait())

    with trio.fail_after(DEADLINE_S):
        served = await serve(nursery, streaming(body))
        await served.client.send(get("/"))
        _, reader = await served.client.start_response()
        assert await reader.next_data() == b"hello"
        await served.client.stream.send_eof()  # half-close: we could still read
        rest = await served.client.until_closed()
        await served.finished.wait()
    assert results == [False]
    assert rest == b""  # no terminating chunk: the response was abandoned


async def test_wake_from_another_task_ends_wait_with_true(nursery: trio.Nursery) -> None:
    parked = trio.Event()
    outs: list[BodyStream] = []
    results: list[bool] = []

    async def body(out: BodyStream) -> None:
        outs.append(out)
        parked.set()
        results.append(await out.wait())
        await out.write(b"after")

    with trio.fail_after(DEADLINE_S):
        served = await serve(nursery, streaming(body))
        await served.client.send(get("/"))
        _, reader = await served.client.start_response()
        await parked.wait()
        await trio.testing.wait_all_tasks_blocked()
        assert results == []  # really waiting
        outs[0].wake()
        assert await reader.next_data() == b"after"
        assert await reader.next_data() is None
    assert results == [True]


async def test_wake_before_wait_is_not_lost(nursery: trio.Nursery) -> None:
    results: list[bool] = []

    async def body(out: BodyStream) -> None:
        out.wake()
        results.append(await out.wait())

    with trio.fail_after(DEADLINE_S):
        served = await serve(nursery, streaming(body))
        reply = await served.client.request(get("/"))
    assert reply.status == 200
    assert results == [True]


async def test_a_request_pipelined_behind_a_waiting_stream_is_served_after_it(
    nursery: trio.Nursery,
) -> None:
    outs: list[BodyStream] = []
    app = Recorder()

    async def body(out: BodyStream) -> None:
        outs.append(out)
        await out.wait()  # reads the next request's bytes meanwhile, keeps them for h11

    async def router(request: Request) -> Response | StreamingResponse:
        if request.path == "/stream":
            return StreamingResponse(200, list(SSE), body)
        return await app(request)

    with trio.fail_after(DEADLINE_S):
        served = await serve(nursery, router)
        await served.client.send(get("/stream"))
        _, reader = await served.client.start_response()
        await served.client.send(get("/next"))
        await trio.testing.wait_all_tasks_blocked()
        assert app.requests == []
        outs[0].wake()
        assert await reader.next_data() is None
        reply = await served.client.response()
    assert reply.json()["path"] == "/next"


async def test_try_write_refuses_on_a_stream_without_fd_and_write_is_used(
    nursery: trio.Nursery,
) -> None:
    """Memory streams have no descriptor: the fast path refuses, nothing is half-written, and
    the awaited path carries the chunk (try_write on real sockets: test_net_writer)."""
    seen: list[object] = []

    async def body(out: BodyStream) -> None:
        seen.append(out.try_write(b"fast"))
        seen.append(out.needs_flush)
        await out.write(b"slow")

    with trio.fail_after(DEADLINE_S):
        served = await serve(nursery, streaming(body))
        reply = await served.client.request(get("/"))
    assert seen == [False, False]
    assert reply.body == b"slow"
    assert b"fast" not in reply.raw


# -- tasks a request starts --------------------------------------------------------------------


class TaskProbe:
    """A request task that runs until cancelled, and says so."""

    def __init__(self) -> None:
        self.started = trio.Event()
        self.cancelled = trio.Event()

    async def __call__(self) -> None:
        self.started.set()
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            self.cancelled.set()
            raise


async def test_a_request_task_is_cancelled_when_the_client_disconnects(
    nursery: trio.Nursery,
) -> None:
    probe = TaskProbe()

    async def body(out: BodyStream) -> None:
        await out.write(b"streaming")
        await out.wait()

    async def app(request: Request) -> StreamingResponse:
        request.start_task(probe)
        return StreamingResponse(200, list(SSE), body)

    with trio.fail_after(DEADLINE_S):
        served = await serve(nursery, app)
        await served.client.send(get("/"))
        _, reader = await served.client.start_response()
        assert await reader.next_data() == b"streaming"
        await probe.started.wait()
        await trio.testing.wait_all_tasks_blocked()
        assert not probe.cancelled.is_set()
        await served.client.stream.aclose()
        await probe.cancelled.wait()
        await served.finished.wait()


async def test_a_handler_waiting_on_its_task_is_cancelled_by_a_disconnect(
    nursery: trio.Nursery,
) -> None:
    probe = TaskProbe()
    handler_cancelled = trio.Event()

    async def app(request: Request) -> Response:
        request.start_task(probe)
        try:
            await trio.sleep_forever()
        finally:
            handler_cancelled.set()

    with trio.fail_after(DEADLINE_S):
        served = await serve(nursery, app)
        await served.client.send(get("/"))
        await probe.started.wait()
        await served.client.stream.send_eof()
        await handler_cancelled.wait()
        await probe.cancelled.wait()
        assert await served.client.until_closed() == b""


async def test_a_request_task_is_cancelled_once_the_response_is_complete(
    nursery: trio.Nursery,
) -> None:
    probe = TaskProbe()

    async def app(request: Request) -> Response:
        if request.path == "/task":
            request.start_task(probe)
            await probe.started.wait()
        return json_response(200, {"path": request.path})

    with trio.fail_after(DEADLINE_S):
        served = await serve(nursery, app)
        reply = await served.client.request(get("/task"))
        await probe.cancelled.wait()
        # The watcher read nothing the next request needs: the connection goes on.
        again = await served.client.request(get("/after"))
    assert reply.json() == {"path": "/task"}
    assert again.json() == {"path": "/after"}


async def test_a_request_task_is_cancelled_when_the_app_raises_after_starting_it(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    probe = TaskProbe()

    async def app(request: Request) -> Response:
        request.start_task(probe)
        raise ValueError("a bug in the app")

    with trio.fail_after(120):
        served = await serve(nursery, app)
        await served.client.send(get("/"))
        with trio.move_on_after(60):  # virtual: far past every timeout of small_config
            assert await served.client.until_closed() == b""
            await served.finished.wait()
        closed, cancelled = served.finished.is_set(), probe.cancelled.is_set()
        await served.client.stream.aclose()  # let the connection go either way
    assert cancelled
    assert closed


async def test_start_task_is_refused_after_the_handler_returned(nursery: trio.Nursery) -> None:
    kept: list[Request] = []
    app = Recorder()

    async def keep(request: Request) -> Response:
        kept.append(request)
        return await app(request)

    with trio.fail_after(DEADLINE_S):
        served = await serve(nursery, keep)
        await served.client.request(get("/"))
    with pytest.raises(RuntimeError):
        kept[0].start_task(TaskProbe())


# -- bugs in the app ---------------------------------------------------------------------------


async def test_an_app_that_raises_closes_the_connection_and_logs(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    async def app(request: Request) -> Response:
        raise ValueError("secret internals")

    caplog.set_level(logging.ERROR, logger="datapulse.http")
    with trio.fail_after(DEADLINE_S):
        served = await serve(nursery, app)
        await served.client.send(get("/boom"))
        assert await served.client.until_closed() == b""
        await served.finished.wait()
    assert "app failed on GET /boom" in caplog.text
    assert "secret internals" in caplog.text  # the traceback is in the log, not on the wire


async def test_a_stream_body_that_raises_after_its_head_closes_without_leaking(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    async def body(out: BodyStream) -> None:
        await out.write(b"partial")
        raise ValueError("secret internals")

    caplog.set_level(logging.ERROR, logger="datapulse.http")
    with trio.fail_after(DEADLINE_S):
        served = await serve(nursery, streaming(body))
        await served.client.send(get("/s"))
        raw = await served.client.until_closed()
    assert raw.startswith(b"HTTP/1.1 200 ")
    assert raw.endswith(b"7\r\npartial\r\n")  # no terminating chunk: the client sees a cut body
    assert b"secret" not in raw
    assert b"Traceback" not in raw
    assert "response to GET /s failed" in caplog.text


# -- upgrade -----------------------------------------------------------------------------------


async def test_an_upgrade_gets_the_stream_with_the_request_head_replayed(
    nursery: trio.Nursery,
) -> None:
    seen: list[bytes] = []

    async def run(stream: trio.abc.Stream) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            data += await stream.receive_some()
        seen.append(data)
        await stream.send_all(b"other protocol")

    async def app(request: Request) -> Upgrade:
        return Upgrade(run)

    with trio.fail_after(DEADLINE_S):
        served = await serve(nursery, app)
        await served.client.send(get("/ws", "Upgrade: websocket", "Connection: Upgrade"))
        raw = await served.client.until_closed()
    assert raw == b"other protocol"  # no HTTP response of ours
    assert seen[0].startswith(b"GET /ws HTTP/1.1\r\n")
    assert b"upgrade: websocket" in seen[0].lower()


# -- the ConnectionHost seam -------------------------------------------------------------------


async def test_host_hears_opened_and_closed_once_each(nursery: trio.Nursery) -> None:
    with trio.fail_after(DEADLINE_S):
        served = await serve(nursery, Recorder())
        await served.client.request(get("/a"))
        await served.client.request(get("/b"))
        assert len(served.host.opened_with) == 1
        assert served.host.closed_with == []
        await served.client.stream.aclose()
        await served.finished.wait()
    assert served.host.closed_with == served.host.opened_with


async def test_shutting_down_adds_connection_close_and_ends_the_connection(
    nursery: trio.Nursery,
) -> None:
    app = Recorder()
    host = RecordingHost()

    async def app_that_sees_shutdown(request: Request) -> Response:
        host.shutting_down = True  # the server began to stop while this request ran
        return await app(request)

    with trio.fail_after(DEADLINE_S):
        served = await serve(nursery, app_that_sees_shutdown, host=host)
        await served.client.send(get("/") + get("/pipelined"))
        reply = await served.client.response()
        assert await served.client.until_closed() == b""
        await served.finished.wait()
    assert reply.header("connection") == "close"
    assert [r.path for r in app.requests] == ["/"]
    assert len(served.host.closed_with) == 1


async def test_shutdown_cancels_an_idle_keep_alive_at_once(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(60):
        served = await serve(nursery, Recorder())
        reply = await served.client.request(get("/"))
        await trio.testing.wait_all_tasks_blocked()
        idle_since = trio.current_time()
        scope = served.connection.idle_scope
        assert scope is not None
        served.host.shutting_down = True
        scope.cancel()
        assert await served.client.until_closed() == b""
    assert reply.header("connection") is None
    assert trio.current_time() == idle_since
