"""The reading half of one connection: a request's head, its admission, then its body.

Split out of net/connection.py so that what a client may send us (limits, deadlines, framing) is
read in one place, apart from how we answer it. ``RequestReader`` owns the read state of the
current request (when its first byte came, the raw head bytes, whether it announced a body); the
connection (``HTTPConnection``, net/connection.py) owns the socket, h11 and the writer, and
drives the reader once per request. What the reader needs of it is ``ReaderOwner``.

A request is read in two phases, so that nobody can make us hold a body we would refuse:
* the head: the app's ``admit`` (the router: Origin/Host, route, authentication) sees the
  request before a byte of its body is read. A ``Response`` from it is sent at once by the
  connection, and the body is never read. ``100 Continue`` is sent only to an admitted head;
* the body: read under the limits, then the handler ``admit`` returned answers the request.
An app that is a plain function (tests) admits every head.

Badly framed requests are refused before the app sees them (400, close; net/framing.py), and no
detail or log line carries a byte of the request.

Deadlines, and what the client sees:
* waiting for the first byte of a request: ``keepalive_timeout_s`` (the first request of a
  connection gets ``read_timeout_s``); expiry closes silently, as an idle keep-alive should;
* from the first byte to the end of the body: ``read_timeout_s`` (the time the app takes to
  admit the head is not counted); expiry answers 408 and closes, so a slowloris client holds a
  connection for a bounded time.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Protocol, runtime_checkable

import h11
import trio

from datapulse.config import Config
from datapulse.errors import BadRequest, HeadersTooLarge, PayloadTooLarge, RequestTimeout
from datapulse.net.body import RECEIVE_SIZE
from datapulse.net.framing import announced_body, describe_protocol_error
from datapulse.net.http import Handler, Request, Response
from datapulse.net.writer import SocketWriter

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


def _admit_every_head(handler: Handler) -> Callable[[Request], Awaitable[Response | Handler]]:
    async def admit(request: Request) -> Response | Handler:
        return handler

    return admit


class Draining(Protocol):
    """What reading needs of the server: whether it is shutting down (no next request)."""

    @property
    def shutting_down(self) -> bool: ...


class ReaderOwner(Protocol):
    """What a reader needs of its connection (``net.connection.HTTPConnection``)."""

    stream: trio.abc.Stream
    conn: h11.Connection
    config: Config
    client: tuple[str, int] | None
    writer: SocketWriter
    idle_scope: trio.CancelScope | None
    """Set while waiting for a next request's first byte (the server cancels it at shutdown)."""

    @property
    def host(self) -> Draining: ...


class RequestReader:
    """Reads one connection's requests, one at a time. Created and driven by its connection."""

    def __init__(self, owner: ReaderOwner, app: App) -> None:
        self._owner = owner
        self._config = owner.config
        self._conn = owner.conn
        self._admit = app.admit if isinstance(app, StagedApp) else _admit_every_head(app)
        self._started: float | None = None
        """When the current request's first byte arrived (its read deadline counts from here)."""
        self._head_parts: list[bytes] = []
        """The raw bytes h11 holds while it waits for a head (to look for a repeated length)."""
        self.body_pending = False
        """The current request announced a body (a Content-Length above 0, or chunked)."""

    async def _receive_into_h11(self, deadline: float) -> bool:
        """Read one chunk before ``deadline``; False if the deadline passed first."""
        owner = self._owner
        reading_head = self._conn.their_state is h11.IDLE
        with trio.move_on_at(deadline) as scope:
            owner.idle_scope = scope if reading_head else None
            try:
                data = await owner.stream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            finally:
                owner.idle_scope = None
        if scope.cancelled_caught:
            return False
        data = bytes(data)
        if reading_head:
            self._head_parts.append(data)
        self._conn.receive_data(data)
        return True

    def next_event(self) -> h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]:
        """h11's next event; its refusals as our errors (431, or 400 in our own words)."""
        try:
            return self._conn.next_event()
        except h11.RemoteProtocolError as exc:
            if exc.error_status_hint == 431:
                raise HeadersTooLarge("request header block too large") from None
            raise BadRequest(describe_protocol_error(exc)) from None

    async def read_head(self, first: bool) -> Request | None:
        """The next request's head, or None when the client closed or idled out cleanly.

        Raises a DatapulseError for requests we refuse (timeout, too large, malformed).
        """
        cfg = self._config
        now = trio.current_time()
        idle_deadline = now + (cfg.read_timeout_s if first else cfg.keepalive_timeout_s)
        pipelined = self._conn.trailing_data[0]
        self._started = now if pipelined else None
        self._head_parts = [pipelined]
        while True:
            if self._owner.host.shutting_down and self._started is None:
                return None
            event = self.next_event()
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
        cfg = self._config
        assert self._started is not None
        body = bytearray()
        while True:
            event = self.next_event()
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
        cfg = self._config
        if len(event.headers) > cfg.max_header_count:
            raise HeadersTooLarge(f"more than {cfg.max_header_count} header fields")
        # h11's own bound only covers a header block that arrives in pieces; one that arrives in
        # a single read is measured here (name, value, ": " and CRLF per field, plus the target).
        size = len(event.target) + sum(len(k) + len(v) + 4 for k, v in event.headers)
        if size > cfg.max_header_bytes:
            raise HeadersTooLarge(f"header block exceeds {cfg.max_header_bytes} bytes")
        self.body_pending = announced_body(event, raw_head, cfg.max_body_bytes)
        try:
            target = event.target.decode("ascii")
        except UnicodeDecodeError:  # pragma: no cover - h11 admits only visible ASCII
            raise BadRequest("request target must be ASCII") from None
        return Request.from_target(
            event.method.decode("ascii"),
            target,
            list(event.headers),
            client=self._owner.client,
            http_version=event.http_version.decode("ascii"),
        )

    async def admitted(self, first: bool) -> tuple[Request, Response | Handler] | None:
        """The next request and what the app made of its head: a ``Response`` to send now (the
        body unread), or the handler to answer it with (the body has been read)."""
        request = await self.read_head(first)
        if request is None:
            return None
        admitting_since = trio.current_time()
        try:
            answer = await self._admit(request)
        except Exception:  # the router answers every error; this is a bug in it
            log.exception("app failed on %s %s", request.method, request.path)
            return None
        if self._started is not None:  # the client is not charged for the time we took
            self._started += trio.current_time() - admitting_since
        if isinstance(answer, Response):
            return request, answer
        if self._conn.they_are_waiting_for_100_continue:
            interim = h11.InformationalResponse(status_code=100, headers=[])
            await self._owner.writer.write(self._conn.send(interim) or b"")
        await self.read_body(request)
        return request, answer
