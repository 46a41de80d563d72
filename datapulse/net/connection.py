"""One HTTP/1.1 connection: the h11 read/respond loop, its timeouts and limits.

``serve_connection`` owns the stream from accept to close. It reads one request at a time (h11
keeps pipelined bytes buffered for the next cycle), hands it to the application, writes the
response, and loops while h11 says the connection can be reused.

Timeouts, and what the client sees:
* waiting for the first byte of a request: ``keepalive_timeout_s`` (the first request of a
  connection gets ``read_timeout_s``); expiry closes silently, as an idle keep-alive should;
* from the first byte to the end of the body: ``read_timeout_s``; expiry answers 408 and closes,
  so a slowloris client holds a connection for a bounded time;
* each socket write: ``write_timeout_s``; expiry closes (a peer that stopped reading).

Noticing that the client left, without a second task where none is needed:
* a streamed body reads the socket itself while it idles (``BodyStream.wait``, in net/body.py):
  EOF is what ``wait`` returns, so an idle stream is this connection's one task;
* a handler that starts tasks for its request (``request.start_task``) gets the disconnect
  watcher beside them: EOF cancels the tasks and the response;
* a plain answer needs neither: it finishes quickly, and a failed write ends it anyway.
Bytes that arrive meanwhile (a pipelined request) are fed to h11 for the next cycle.

Every write goes through the connection's ``SocketWriter`` (net/writer.py).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from functools import partial
from http import HTTPStatus
from typing import Protocol

import h11
import trio

from datapulse.config import Config
from datapulse.errors import (
    BadRequest,
    DatapulseError,
    HeadersTooLarge,
    PayloadTooLarge,
    RequestTimeout,
)
from datapulse.net.body import RECEIVE_SIZE, ResponseBody
from datapulse.net.http import (
    Request,
    Response,
    StreamingResponse,
    TaskStarter,
    Upgrade,
    encode_raw_response,
)
from datapulse.net.upgrade import ReplayStream, request_head
from datapulse.net.writer import ClientGone, SocketWriter

log = logging.getLogger("datapulse.http")

App = Callable[[Request], Awaitable[Response | StreamingResponse | Upgrade]]

SERVER_HEADER = ("Server", "datapulse")


class _DateCache:
    """RFC 9110 wants a Date header; formatting it once per second instead of per response."""

    second = -1
    value = ""

    @classmethod
    def now(cls) -> str:
        second = int(time.time())
        if second != cls.second:
            cls.second, cls.value = second, formatdate(second, usegmt=True)
        return cls.value


def _no_tasks(fn: TaskStarter) -> None:
    raise RuntimeError("a request can start tasks only while its handler runs")


class ConnectionHost(Protocol):
    """What a connection needs of the server that accepted it."""

    @property
    def shutting_down(self) -> bool: ...

    def opened(self, connection: HTTPConnection) -> None: ...

    def closed(self, connection: HTTPConnection) -> None: ...


class _Alone:
    """The host of a connection served on its own (tests, embedding without a listener)."""

    shutting_down = False

    def opened(self, connection: HTTPConnection) -> None:
        pass

    def closed(self, connection: HTTPConnection) -> None:
        pass


def _response_head(status: int, headers: list[tuple[str, str]]) -> h11.Response:
    try:
        reason = HTTPStatus(status).phrase.encode()
    except ValueError:
        reason = b""
    return h11.Response(status_code=status, headers=headers, reason=reason)


class HTTPConnection:
    """State for one accepted connection. Created and driven only by ``serve_connection``."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        app: App,
        config: Config,
        client: tuple[str, int] | None,
        host: ConnectionHost,
    ) -> None:
        self.stream = stream
        self.app = app
        self.config = config
        self.client = client
        self.host = host
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=config.max_header_bytes)
        # Cancelled by the server at shutdown while we wait for a next request (idle keep-alive).
        self.idle_scope: trio.CancelScope | None = None
        self.writer = SocketWriter(stream, config.write_timeout_s, self.peer)
        self.watching = False
        """The disconnect watcher runs (the request started tasks of its own)."""
        self.client_gone = False

    # -- writing ---------------------------------------------------------------------------

    async def _send(self, *events: h11.Event) -> None:
        await self.writer.write(b"".join(self.conn.send(event) or b"" for event in events))

    def _response_headers(self, headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
        out = [SERVER_HEADER, ("Date", _DateCache.now()), *headers]
        if self.host.shutting_down:
            out.append(("Connection", "close"))
        return out

    async def _send_fatal(self, exc: DatapulseError) -> None:
        """Answer an unreadable request with raw bytes and give up on the connection."""
        with trio.move_on_after(1), contextlib.suppress(ClientGone):
            await self.writer.write(encode_raw_response(exc))

    @property
    def peer(self) -> str:
        return f"{self.client[0]}:{self.client[1]}" if self.client else "peer"

    # -- reading ---------------------------------------------------------------------------

    async def _receive_into_h11(self, deadline: float) -> bool:
        """Read one chunk before ``deadline``; False if the deadline passed first."""
        with trio.move_on_at(deadline) as scope:
            self.idle_scope = scope if self.conn.their_state is h11.IDLE else None
            try:
                data = await self.stream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            finally:
                self.idle_scope = None
        if scope.cancelled_caught:
            return False
        self.conn.receive_data(bytes(data))
        return True

    async def read_request(self, first: bool) -> Request | None:
        """The next complete request, or None when the client closed or idled out cleanly.

        Raises a DatapulseError for requests we refuse (timeout, too large, malformed).
        """
        cfg = self.config
        now = trio.current_time()
        idle_deadline = now + (cfg.read_timeout_s if first else cfg.keepalive_timeout_s)
        started: float | None = now if self.conn.trailing_data[0] else None
        request: Request | None = None
        body = bytearray()
        while True:
            if self.host.shutting_down and started is None:
                return None
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as exc:
                if exc.error_status_hint == 431:
                    raise HeadersTooLarge("request header block too large") from None
                raise BadRequest(f"malformed request: {exc}") from None
            if event is h11.NEED_DATA:
                deadline = started + cfg.read_timeout_s if started is not None else idle_deadline
                if not await self._receive_into_h11(deadline):
                    if started is None:
                        return None
                    raise RequestTimeout(f"request not complete within {cfg.read_timeout_s}s")
                if started is None:
                    started = trio.current_time()
                continue
            if isinstance(event, h11.Request):
                request = self._start_request(event)
                if self.conn.they_are_waiting_for_100_continue:
                    await self._send(h11.InformationalResponse(status_code=100, headers=[]))
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > cfg.max_body_bytes:
                    raise PayloadTooLarge(f"body exceeds {cfg.max_body_bytes} bytes")
            elif isinstance(event, h11.EndOfMessage):
                assert request is not None
                request.body = bytes(body)
                return request
            elif isinstance(event, h11.ConnectionClosed):
                return None
            else:  # pragma: no cover - h11 yields nothing else to a server here
                raise BadRequest(f"unexpected {type(event).__name__}")

    def _start_request(self, event: h11.Request) -> Request:
        cfg = self.config
        if len(event.headers) > cfg.max_header_count:
            raise HeadersTooLarge(f"more than {cfg.max_header_count} header fields")
        # h11's own bound only covers a header block that arrives in pieces; one that arrives in
        # a single read is measured here (name, value, ": " and CRLF per field, plus the target).
        size = len(event.target) + sum(len(k) + len(v) + 4 for k, v in event.headers)
        if size > cfg.max_header_bytes:
            raise HeadersTooLarge(f"header block exceeds {cfg.max_header_bytes} bytes")
        for name, value in event.headers:
            if name == b"content-length" and int(value) > cfg.max_body_bytes:
                raise PayloadTooLarge(f"body exceeds {cfg.max_body_bytes} bytes")
        try:
            target = event.target.decode("ascii")
        except UnicodeDecodeError:
            raise BadRequest("request target must be ASCII") from None
        return Request.from_target(
            event.method.decode("ascii"),
            target,
            list(event.headers),
            client=self.client,
            http_version=event.http_version.decode("ascii"),
        )

    # -- responding ------------------------------------------------------------------------

    def received(self, data: bytes | bytearray) -> bool:
        """Bytes read while a response is in progress; False (the client has gone) on EOF.

        They are fed to h11 for the next cycle (a pipelined request).
        """
        if not data:
            self.client_gone = True
            return False
        self.conn.receive_data(bytes(data))
        return True

    def keep_reading(self) -> bool:
        """Past ``max_header_bytes`` of pipelined bytes we stop reading (TCP backpressure)
        until the response is done."""
        return len(self.conn.trailing_data[0]) <= self.config.max_header_bytes

    async def _watch_disconnect(self, scope: trio.CancelScope) -> None:
        """Beside a request's own tasks: EOF cancels them and the response."""
        while self.keep_reading():
            try:
                data = await self.stream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not self.received(data):
                scope.cancel()
                return
        await trio.sleep_forever()

    def _start_task(self, nursery: trio.Nursery, fn: TaskStarter) -> None:
        # The disconnect watcher runs only beside tasks the handler starts for this request
        # (they must not outlive their client). A plain answer needs none, and a streamed body
        # watches for the disconnect itself, in its own wait().
        if not self.watching:
            self.watching = True
            nursery.start_soon(self._watch_disconnect, nursery.cancel_scope)
        nursery.start_soon(fn)

    async def respond(self, request: Request) -> bool:
        """Run the app for ``request`` and write its response. Returns False to close."""
        response: Response | StreamingResponse | Upgrade | None = None
        completed = False
        async with trio.open_nursery() as nursery:
            request.start_task = partial(self._start_task, nursery)
            try:
                response = await self.app(request)
            except Exception:  # the router answers every error; this is a bug in it
                log.exception("app failed on %s %s", request.method, request.path)
            if response is not None and self.watching:
                # The request started tasks: its response is written here, beside them, and
                # a disconnect cancels both.
                completed = await self._send_response(request, response)
            # Stops the watcher and the request's tasks (also when the app failed after starting
            # one); a cancelled receive_some consumes no bytes, so nothing the client sent is lost.
            nursery.cancel_scope.cancel()
        if response is None:
            return False
        if not self.watching:
            # Most responses, idle streams included, are written after the nursery has gone:
            # a stream that lives for hours should not hold one.
            request.start_task = _no_tasks
            completed = await self._send_response(request, response)
        self.watching = False
        if isinstance(response, Upgrade) and completed:
            await response.run(
                ReplayStream(request_head(request) + self.conn.trailing_data[0], self.stream)
            )
            return False
        if not completed:
            log.debug("closing %s after %s %s", self.peer, request.method, request.path)
        return completed and self.conn.our_state is h11.DONE

    async def _send_response(
        self, request: Request, response: Response | StreamingResponse | Upgrade
    ) -> bool:
        """Write ``response``; False if the connection cannot go on (the client left, a bug)."""
        head_only = request.method == "HEAD"
        try:
            if isinstance(response, Upgrade):
                return True
            if isinstance(response, Response):
                await self._write_response(response, head_only)
                return True
            headers = self._response_headers(response.headers)
            await self._send(_response_head(response.status, headers))
            if not head_only:
                await response.body(ResponseBody(self))
                if self.client_gone:
                    return False
                await self.writer.flush()  # the tail of a partial try_write
            await self._send(h11.EndOfMessage())
            return not self.client_gone
        except ClientGone:
            return False
        except Exception:
            # The app turns its errors into responses; reaching here is a bug in a stream
            # body after its headers were sent. Nothing valid can follow: log and close.
            log.exception("response to %s %s failed", request.method, request.path)
            return False

    async def _write_response(self, response: Response, head_only: bool) -> None:
        headers = self._response_headers(response.headers)
        # RFC 9110 8.6: never on a 204 (or 304, whose length is the representation's).
        if response.status not in (204, 304) and not any(
            k.lower() == "content-length" for k, _ in headers
        ):
            headers.append(("Content-Length", str(len(response.body))))
        events: list[h11.Event] = [_response_head(response.status, headers)]
        if response.body and not head_only:
            events.append(h11.Data(data=response.body))
        events.append(h11.EndOfMessage())
        await self._send(*events)

    async def run(self) -> None:
        first = True
        while True:
            try:
                request = await self.read_request(first)
            except DatapulseError as exc:
                log.info("%s from %s: %s", exc.http_status, self.peer, exc.detail)
                await self._send_fatal(exc)
                return
            if request is None:
                return
            first = False
            keep_going = await self.respond(request)
            if not keep_going or self.conn.our_state is not h11.DONE:
                return
            try:
                self.conn.start_next_cycle()
            except h11.LocalProtocolError:
                return


async def serve_connection(
    stream: trio.abc.Stream,
    app: App,
    config: Config,
    *,
    client: tuple[str, int] | None = None,
    host: ConnectionHost | None = None,
) -> None:
    """Own ``stream`` for its whole life: serve requests, then always close it."""
    connection = HTTPConnection(stream, app, config, client, host or _Alone())
    connection.host.opened(connection)
    try:
        await connection.run()
    except ClientGone:
        pass
    except Exception:
        # A bug in our code: log it, never let it reach another connection or the client.
        log.exception("connection %s failed", connection.peer)
    finally:
        connection.host.closed(connection)
        # The descriptor number is about to be freed and may be reused by the next accepted
        # connection: no fast-path write may ever target it again.
        connection.writer.close()
        await trio.aclose_forcefully(stream)
