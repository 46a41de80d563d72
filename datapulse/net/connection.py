"""One HTTP/1.1 connection: the h11 read/respond loop, its timeouts and limits.

``serve_connection`` owns the stream from accept to close. It reads one request at a time (h11
keeps pipelined bytes buffered for the next cycle), hands it to the application, writes the
response, and loops while h11 says the connection can be reused.

A request is served in two phases, so that nobody can make us hold a body we would refuse:
* the head: the app's ``admit`` (the router: Origin/Host, route, authentication) sees the
  request before a byte of its body is read. A ``Response`` from it is sent at once, and the
  body is never read: a request that has one is answered ``Connection: close`` and what it
  still sends is dropped unread (``_linger``). ``100 Continue`` is sent only to an admitted head;
* the body: read under the limits, then the handler ``admit`` returned answers the request.
An app that is a plain function (tests) admits every head.

Badly framed requests are refused before the app sees them (400, close; net/framing.py), and no
detail or log line carries a byte of the request.

Timeouts, and what the client sees:
* waiting for the first byte of a request: ``keepalive_timeout_s`` (the first request of a
  connection gets ``read_timeout_s``); expiry closes silently, as an idle keep-alive should;
* from the first byte to the end of the body: ``read_timeout_s`` (the time the app takes to
  admit the head is not counted); expiry answers 408 and closes, so a slowloris client holds a
  connection for a bounded time;
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
from typing import Protocol, runtime_checkable

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
from datapulse.net.framing import announced_body, describe_protocol_error
from datapulse.net.http import (
    AppResponse,
    Handler,
    Request,
    Response,
    TaskStarter,
    Upgrade,
    encode_raw_response,
)
from datapulse.net.upgrade import ReplayStream, request_head
from datapulse.net.writer import ClientGone, SocketWriter

log = logging.getLogger("datapulse.http")


@runtime_checkable
class StagedApp(Protocol):
    """An app that decides on a request's head, before its body is read (the router)."""

    async def admit(self, request: Request) -> Response | Handler:
        """The response to send now, the body unread (a refusal, a preflight); or the handler
        that answers once the body is in. Answers every error itself (the error boundary)."""
        ...


App = Handler | StagedApp
"""What a connection serves: a ``StagedApp``, or a plain handler (which admits every head)."""

SERVER_HEADER = ("Server", "datapulse")
CLOSE_HEADER = ("Connection", "close")
LINGER_S = 2.0
"""How long a refused request's unread body is drained (and dropped) before the close."""


def _admit_every_head(handler: Handler) -> Callable[[Request], Awaitable[Response | Handler]]:
    async def admit(request: Request) -> Response | Handler:
        return handler

    return admit


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
        self.admit = app.admit if isinstance(app, StagedApp) else _admit_every_head(app)
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
        self._started: float | None = None
        """When the current request's first byte arrived (its read deadline counts from here)."""
        self._head_parts: list[bytes] = []
        """The raw bytes h11 holds while it waits for a head (to look for a repeated length)."""
        self._body_pending = False
        """The current request announced a body (a Content-Length above 0, or chunked)."""

    # -- writing ---------------------------------------------------------------------------

    async def _send(self, *events: h11.Event) -> None:
        await self.writer.write(b"".join(self.conn.send(event) or b"" for event in events))

    def _response_headers(
        self, headers: list[tuple[str, str]], close: bool = False
    ) -> list[tuple[str, str]]:
        out = [SERVER_HEADER, ("Date", _DateCache.now()), *headers]
        if close or self.host.shutting_down:
            out.append(CLOSE_HEADER)
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
        reading_head = self.conn.their_state is h11.IDLE
        with trio.move_on_at(deadline) as scope:
            self.idle_scope = scope if reading_head else None
            try:
                data = await self.stream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            finally:
                self.idle_scope = None
        if scope.cancelled_caught:
            return False
        data = bytes(data)
        if reading_head:
            self._head_parts.append(data)
        self.conn.receive_data(data)
        return True

    def _next_event(self) -> h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]:
        try:
            return self.conn.next_event()
        except h11.RemoteProtocolError as exc:
            if exc.error_status_hint == 431:
                raise HeadersTooLarge("request header block too large") from None
            raise BadRequest(describe_protocol_error(exc)) from None

    async def read_head(self, first: bool) -> Request | None:
        """The next request's head, or None when the client closed or idled out cleanly.

        Raises a DatapulseError for requests we refuse (timeout, too large, malformed).
        """
        cfg = self.config
        now = trio.current_time()
        idle_deadline = now + (cfg.read_timeout_s if first else cfg.keepalive_timeout_s)
        pipelined = self.conn.trailing_data[0]
        self._started = now if pipelined else None
        self._head_parts = [pipelined]
        while True:
            if self.host.shutting_down and self._started is None:
                return None
            event = self._next_event()
            if event is h11.NEED_DATA:
                if self._started is not None:
                    deadline = self._started + cfg.read_timeout_s
                else:
                    deadline = idle_deadline
                if not await self._receive_into_h11(deadline):
                    if self._started is None:
                        return None
                    raise RequestTimeout(f"request not complete within {cfg.read_timeout_s}s")
                if self._started is None:
                    self._started = trio.current_time()
                continue
            if isinstance(event, h11.Request):
                raw_head, self._head_parts = b"".join(self._head_parts), []
                return self._start_request(event, raw_head)
            if isinstance(event, h11.ConnectionClosed):
                return None
            # pragma: no cover - h11 yields nothing else to a server here
            raise BadRequest(f"unexpected {type(event).__name__}")

    async def read_body(self, request: Request) -> None:
        """Read the admitted ``request``'s body into ``request.body``, under the limits."""
        cfg = self.config
        assert self._started is not None
        body = bytearray()
        while True:
            event = self._next_event()
            if event is h11.NEED_DATA:
                if not await self._receive_into_h11(self._started + cfg.read_timeout_s):
                    raise RequestTimeout(f"request not complete within {cfg.read_timeout_s}s")
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > cfg.max_body_bytes:
                    raise PayloadTooLarge(f"body exceeds {cfg.max_body_bytes} bytes")
            elif isinstance(event, h11.EndOfMessage):
                request.body = bytes(body)
                return
            else:  # pragma: no cover - h11 raises for an incomplete body instead
                raise BadRequest(f"unexpected {type(event).__name__}")

    def _start_request(self, event: h11.Request, raw_head: bytes) -> Request:
        cfg = self.config
        if len(event.headers) > cfg.max_header_count:
            raise HeadersTooLarge(f"more than {cfg.max_header_count} header fields")
        # h11's own bound only covers a header block that arrives in pieces; one that arrives in
        # a single read is measured here (name, value, ": " and CRLF per field, plus the target).
        size = len(event.target) + sum(len(k) + len(v) + 4 for k, v in event.headers)
        if size > cfg.max_header_bytes:
            raise HeadersTooLarge(f"header block exceeds {cfg.max_header_bytes} bytes")
        self._body_pending = announced_body(event, raw_head, cfg.max_body_bytes)
        try:
            target = event.target.decode("ascii")
        except UnicodeDecodeError:  # pragma: no cover - h11 admits only visible ASCII
            raise BadRequest("request target must be ASCII") from None
        return Request.from_target(
            event.method.decode("ascii"),
            target,
            list(event.headers),
            client=self.client,
            http_version=event.http_version.decode("ascii"),
        )

    async def _admitted(self, first: bool) -> tuple[Request, Response | Handler] | None:
        """The next request and what the app made of its head: a ``Response`` to send now (the
        body unread), or the handler to answer it with (the body has been read)."""
        request = await self.read_head(first)
        if request is None:
            return None
        admitting_since = trio.current_time()
        try:
            answer = await self.admit(request)
        except Exception:  # the router answers every error; this is a bug in it
            log.exception("app failed on %s %s", request.method, request.path)
            return None
        if self._started is not None:  # the client is not charged for the time we took
            self._started += trio.current_time() - admitting_since
        if isinstance(answer, Response):
            return request, answer
        if self.conn.they_are_waiting_for_100_continue:
            await self._send(h11.InformationalResponse(status_code=100, headers=[]))
        await self.read_body(request)
        return request, answer

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

    async def answer_head(self, request: Request, response: Response) -> bool:
        """Send the app's answer to a head it did not admit; the body is never read. A request
        without one keeps the connection; one with a body is answered ``Connection: close`` and
        what it still sends is dropped unread. Returns False to close."""
        request.start_task = _no_tasks
        if not self._body_pending:
            # The request is complete (a zero length): h11 sees its end without another byte.
            self._next_event()
            return await self._send_response(request, response)
        with contextlib.suppress(ClientGone):
            await self._write_response(response, request.method == "HEAD", close=True)
            await self._linger()
        return False

    async def _linger(self) -> None:
        """After an answer whose request body stays unread: a FIN after the answer, then what
        the client still sends is read into nothing, for at most ``LINGER_S``. Closing with
        unread bytes in the kernel's buffer would reset the connection, and a reset can destroy
        the answer before the client has read it."""
        with trio.move_on_after(min(LINGER_S, self.config.read_timeout_s)):
            try:
                if isinstance(self.stream, trio.abc.HalfCloseableStream):
                    await self.stream.send_eof()
                while await self.stream.receive_some(RECEIVE_SIZE):
                    pass
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    async def respond(self, request: Request, handler: Handler) -> bool:
        """Run ``handler`` for ``request`` and write its response. Returns False to close."""
        response: AppResponse | None = None
        completed = sent = False
        async with trio.open_nursery() as nursery:
            request.start_task = partial(self._start_task, nursery)
            try:
                response = await handler(request)
            except Exception:  # the router answers every error; this is a bug in it
                log.exception("app failed on %s %s", request.method, request.path)
            if response is not None and (self.watching or isinstance(response, Response)):
                # Written here, before the nursery closes: a request that started tasks has its
                # response beside them (a disconnect cancels both), and a complete answer goes
                # out now, not after the schedule point that closing the nursery is (under load
                # that point queues it behind every other runnable task).
                completed = await self._send_response(request, response)
                sent = True
            if self.watching:
                # Stops the watcher and the request's tasks (also when the app failed after
                # starting one); a cancelled receive_some consumes no bytes, so nothing the
                # client sent is lost.
                nursery.cancel_scope.cancel()
        if response is None:
            return False
        if not sent:
            # Streamed bodies without tasks of their own (idle streams above all) are written
            # after the nursery has gone: a stream that lives for hours should not hold one.
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

    async def _send_response(self, request: Request, response: AppResponse) -> bool:
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

    async def _write_response(
        self, response: Response, head_only: bool, *, close: bool = False
    ) -> None:
        headers = self._response_headers(response.headers, close)
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
                admitted = await self._admitted(first)
            except DatapulseError as exc:
                log.info("%s from %s: %s", exc.http_status, self.peer, exc.detail)
                await self._send_fatal(exc)
                return
            if admitted is None:
                return
            first = False
            request, answer = admitted
            if isinstance(answer, Response):
                keep_going = await self.answer_head(request, answer)
            else:
                keep_going = await self.respond(request, answer)
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
