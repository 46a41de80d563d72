"""One HTTP/1.1 connection: the h11 loop that answers its requests, one at a time.

``serve_connection`` owns the stream from accept to close. Each cycle, the connection's
``RequestReader`` (net/reading.py) reads a request's head under the limits and deadlines, has the
app admit it and reads its body; the connection then answers it, and loops while h11 says the
connection can be reused (h11 keeps pipelined bytes buffered for the next cycle).

Who owns what: ``HTTPConnection`` owns the stream, the h11 state machine and the
``SocketWriter`` (net/writer.py; every write goes through it, and ``write_timeout_s`` bounds each
one: expiry closes, a peer that stopped reading); reading owns the current request's read state;
net/heads.py builds the response heads it sends; net/body.py is a streamed body. The server that
accepted the connection is its ``ConnectionHost`` (net/server.py), told when it opens and closes.

A head the app refuses is answered at once (``answer_head``): a request with a body is answered
``Connection: close`` and what it still sends is dropped unread (``_linger``). A refusal of the
reader (timeout, too large, malformed) is answered with raw bytes and closes.

Noticing that the client left, without a second task where none is needed:
* a streamed body reads the socket itself while it idles (``BodyStream.wait``, in net/body.py):
  EOF is what ``wait`` returns, so an idle stream is this connection's one task;
* a handler that starts tasks for its request (``request.start_task``) gets the disconnect
  watcher beside them: EOF cancels the tasks and the response;
* a plain answer needs neither: it finishes quickly, and a failed write ends it anyway.
Bytes that arrive meanwhile (a pipelined request) are fed to h11 for the next cycle.

Each request gets an id (``X-Request-Id``: the client's when it is 1-64 visible ASCII
characters, else 16 random hex digits), echoed on the response and set in ``logs.REQUEST_ID``
while it is answered, so every line logged meanwhile carries it. Once answered (a stream: once
it ends), one access line on ``datapulse.access``: method, path (never the query), status,
duration, client address, body bytes, request, session and principal ids. When that logger is
disabled for INFO nothing of it is measured or counted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from functools import partial
from typing import Protocol

import h11
import trio

from datapulse.config import Config
from datapulse.errors import DatapulseError
from datapulse.logs import REQUEST_ID
from datapulse.net.body import RECEIVE_SIZE, ResponseBody
from datapulse.net.heads import complete_response, response_head, response_headers
from datapulse.net.http import (
    AppResponse,
    Handler,
    Request,
    Response,
    TaskStarter,
    Upgrade,
    encode_raw_response,
)
from datapulse.net.reading import App, RequestReader, StagedApp
from datapulse.net.upgrade import ReplayStream, request_head
from datapulse.net.writer import ClientGone, SocketWriter

__all__ = ["App", "ConnectionHost", "HTTPConnection", "StagedApp", "serve_connection"]

log = logging.getLogger("datapulse.http")
access_log = logging.getLogger("datapulse.access")

REQUEST_ID_HEADER = "X-Request-Id"
_VALID_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,64}")


def request_id_for(request: Request) -> str:
    """The client's ``X-Request-Id`` if it is 1-64 visible ASCII characters, else a new one."""
    incoming = request.header("x-request-id")
    if incoming is not None and _VALID_REQUEST_ID.fullmatch(incoming):
        return incoming
    return os.urandom(8).hex()


class _CountedBody(ResponseBody):
    """A streamed body that counts the bytes it wrote (only while the access line is on)."""

    __slots__ = ("sent",)

    def __init__(self, connection: HTTPConnection) -> None:
        super().__init__(connection)
        self.sent = 0

    async def write(self, chunk: bytes) -> None:
        await super().write(chunk)
        self.sent += len(chunk)

    def try_write(self, chunk: bytes) -> bool:
        written = super().try_write(chunk)
        if written:
            self.sent += len(chunk)
        return written


LINGER_S = 2.0
"""How long a refused request's unread body is drained (and dropped) before the close."""


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
        self.reader = RequestReader(self, app)
        self.request_id = ""
        """The current request's id, echoed as ``X-Request-Id``."""
        # What the access line reports; kept only while access_log is enabled (self.counting).
        self.counting = False
        self.status: int | None = None
        self.sent_bytes = 0
        self.session_id: str | None = None

    # -- writing ---------------------------------------------------------------------------

    async def _send(self, *events: h11.Event) -> None:
        await self.writer.write(b"".join(self.conn.send(event) or b"" for event in events))

    def _response_headers(
        self, headers: list[tuple[str, str]], close: bool = False
    ) -> list[tuple[str, str]]:
        out = response_headers(headers, close or self.host.shutting_down)
        if self.request_id:
            out.append((REQUEST_ID_HEADER, self.request_id))
        return out

    async def _send_fatal(self, exc: DatapulseError) -> None:
        """Answer an unreadable request with raw bytes and give up on the connection."""
        with trio.move_on_after(1), contextlib.suppress(ClientGone):
            await self.writer.write(encode_raw_response(exc))

    @property
    def peer(self) -> str:
        return f"{self.client[0]}:{self.client[1]}" if self.client else "peer"

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
        if not self.reader.body_pending:
            # The request is complete (a zero length): h11 sees its end without another byte.
            self.reader.next_event()
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
                # Marked first: a disconnect cancels this write mid-body, and the response
                # must not then be started a second time below (h11 would refuse it).
                sent = True
                completed = await self._send_response(request, response)
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
                self.status = 101
                return True
            if isinstance(response, Response):
                await self._write_response(response, head_only)
                return True
            headers = self._response_headers(response.headers)
            if self.counting:
                self._noted(response.status, response.headers)
            await self._send(response_head(response.status, headers))
            if not head_only:
                body = _CountedBody(self) if self.counting else ResponseBody(self)
                try:
                    await response.body(body)
                finally:
                    if isinstance(body, _CountedBody):
                        self.sent_bytes = body.sent
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
        if self.counting:
            self._noted(response.status, response.headers)
            self.sent_bytes = 0 if head_only else len(response.body)
        await self._send(*complete_response(response, headers, head_only))

    # -- the access line -------------------------------------------------------------------

    def _noted(self, status: int, headers: list[tuple[str, str]]) -> None:
        self.status = status
        for name, value in headers:
            if name.lower() == "mcp-session-id":
                self.session_id = value

    def _log_access(self, request: Request, started: float) -> None:
        duration_ms = round((time.perf_counter() - started) * 1000, 3)
        session_id = (
            self.session_id or request.header("mcp-session-id") or request.query_param("session_id")
        )
        principal = request.principal
        client = self.client[0] if self.client else None
        status = self.status
        access_log.info(
            "%s %s %s %.1fms %s %dB",
            request.method,
            request.path,
            "-" if status is None else status,
            duration_ms,
            client or "-",
            self.sent_bytes,
            extra={
                "method": request.method,
                "path": request.path,
                "status": status,
                "duration_ms": duration_ms,
                "client": client,
                "bytes": self.sent_bytes,
                "request_id": self.request_id,
                "session_id": session_id,
                "principal_id": principal.id if principal is not None else None,
            },
        )

    async def run(self) -> None:
        first = True
        while True:
            try:
                admitted = await self.reader.admitted(first)
            except DatapulseError as exc:
                log.info(
                    "%s from %s: %s",
                    exc.http_status,
                    self.peer,
                    exc.detail,
                    extra={
                        "status": exc.http_status,
                        "client": self.client[0] if self.client else None,
                    },
                )
                await self._send_fatal(exc)
                return
            if admitted is None:
                return
            first = False
            request, answer = admitted
            self.request_id = request_id_for(request)
            token = REQUEST_ID.set(self.request_id)
            self.counting = access_log.isEnabledFor(logging.INFO)
            started = 0.0
            if self.counting:
                started = time.perf_counter()
                self.status, self.sent_bytes, self.session_id = None, 0, None
            try:
                if isinstance(answer, Response):
                    keep_going = await self.answer_head(request, answer)
                else:
                    keep_going = await self.respond(request, answer)
            finally:
                if self.counting:
                    self._log_access(request, started)
                REQUEST_ID.reset(token)
                self.request_id = ""
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
