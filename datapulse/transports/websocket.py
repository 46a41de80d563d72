"""MCP over WebSocket at ``/ws``: subprotocol ``mcp``, one JSON-RPC message per text frame.

How the h11 layer hands the connection over: the router returns ``Upgrade(run)``. The
connection stops its disconnect watcher, re-serialises the request head it already parsed, and
calls ``run`` with a stream that replays those bytes (plus anything h11 had buffered after them)
before reading the socket. ``trio_websocket.wrap_server_stream`` then performs the handshake on
that stream exactly as if it had read the request itself. When ``run`` returns, the socket is
closed.

Before that, ``check_handshake`` refuses, with the JSON error body of every other endpoint,
what wsproto would otherwise refuse with a bare response of its own (and leave trio-websocket
waiting for a request that never comes): not GET, not HTTP/1.1, no ``Upgrade: websocket``, no
``Connection: upgrade``, a version other than 13 (426 naming 13), a key that is not the base64
of 16 bytes, a Host wsproto cannot decode.

Bounds (docs/limits.md): trio-websocket is given a ``WsStream`` (ws_stream.py), which bounds
every write by ``write_timeout_s`` and every wait for the peer (a message within
``read_timeout_s``, pings when it is silent), and refuses messages over ``max_body_bytes``
(1009). At most ``2 * max_calls_per_session`` messages are handled at once: up to
``max_calls_per_session`` running tool calls (the dispatcher answers one more with -32000, as on
every transport), and as many again of anything else, refusals included, so that a client
whose calls all run can still be read (``notifications/cancelled``). Past that the read loop
stops asking for messages; trio-websocket's queue holds one, and the socket's buffers fill up
(TCP backpressure). No task per frame without a slot, no queue of replies.

A client that does not offer the ``mcp`` subprotocol is accepted without one and closed at once
with 1002 (protocol error) and a reason that says so; a binary frame is closed with 1003.
Closing the socket cancels the session's calls (they run in this connection's nursery). At a
graceful shutdown every connection stops reading, its calls in flight get half the grace, then
it is closed with 1001 (going away).
"""

from __future__ import annotations

import base64
import binascii
import logging

import trio
import trio_websocket

from datapulse.auth.verifier import Principal
from datapulse.config import Config
from datapulse.core.jsonrpc import encode_exception
from datapulse.errors import BadRequest, DatapulseError, MethodNotAllowed, ServiceUnavailable
from datapulse.net.http import Request, Upgrade
from datapulse.protocol.call import MessageSink
from datapulse.protocol.session import McpSession
from datapulse.transports.context import TransportContext
from datapulse.transports.ws_stream import WsStream

log = logging.getLogger("datapulse.ws")

SUBPROTOCOL = "mcp"
WEBSOCKET_VERSION = "13"
CLOSE_WAIT_S = 1.0
"""How long our close frame waits for the peer's (a peer that never answers is cut off)."""
OVERFLOW_REASON = "too many notifications waiting; reconnect"
OVERFLOW_GRACE_S = 2.0
"""After its outbox overflowed, how long a client may take to read the frame being written
before the connection is cut without a close frame (it is not reading: it could not read one)."""


class _OutboxFull(Exception):
    """A notification found the connection's outbox full (``Notices`` counts it undelivered)."""


class UpgradeRequired(DatapulseError):
    """A WebSocket version we do not speak (RFC 6455 4.4: 426 naming the one we do)."""

    http_status = 426
    jsonrpc_code = -32600
    error = "upgrade_required"

    @property
    def headers(self) -> list[tuple[str, str]]:
        return [("Sec-WebSocket-Version", WEBSOCKET_VERSION), ("Upgrade", "websocket")]


def _last(request: Request, name: str) -> str:
    # wsproto reads the last field of a repeated header; so do we, to refuse what it would.
    values = request.header_values(name)
    return values[-1] if values else ""


def check_handshake(request: Request) -> None:
    """Raise what a request that wsproto would refuse is answered with (RFC 6455 4.2.1)."""
    if request.method != "GET":
        raise MethodNotAllowed("a WebSocket opens with GET", allow=["GET"])
    if request.http_version != "1.1":
        raise BadRequest("a WebSocket upgrade needs HTTP/1.1")
    if _last(request, "upgrade").lower() != "websocket":
        raise BadRequest("/ws needs a WebSocket upgrade (Upgrade: websocket)")
    tokens = {t.strip().lower() for t in _last(request, "connection").split(",")}
    if "upgrade" not in tokens:
        raise BadRequest("/ws needs Connection: Upgrade")
    if _last(request, "sec-websocket-version") != WEBSOCKET_VERSION:
        raise UpgradeRequired(f"Sec-WebSocket-Version must be {WEBSOCKET_VERSION}")
    keys = request.header_values("sec-websocket-key")
    try:
        valid_key = len(keys) == 1 and len(base64.b64decode(keys[0], validate=True)) == 16
    except (binascii.Error, ValueError):
        valid_key = False
    if not valid_key:
        raise BadRequest("Sec-WebSocket-Key must be one base64-encoded 16-byte value")
    try:
        for host in request.header_values("host"):
            host.encode("latin-1").decode("idna")
    except UnicodeError:
        raise BadRequest("unreadable Host header") from None


class WebSocketTransport:
    def __init__(self, context: TransportContext) -> None:
        self.context = context
        self._open: set[WsStream] = set()
        self.closing = False

    def shutdown(self) -> None:
        """A graceful stop (an ``HTTPServer.on_shutdown`` hook): every connection is told."""
        self.closing = True
        for stream in list(self._open):
            stream.finish(1001, "server shutting down")

    async def upgrade(self, request: Request) -> Upgrade:
        check_handshake(request)
        if self.closing:
            raise ServiceUnavailable("server is shutting down")
        principal = request.caller

        async def run(stream: trio.abc.Stream) -> None:
            await self._run(stream, principal)

        return Upgrade(run)

    def _stream(self, stream: trio.abc.Stream) -> WsStream:
        cfg: Config = self.context.config
        return WsStream(
            stream,
            write_timeout_s=cfg.write_timeout_s,
            read_timeout_s=cfg.read_timeout_s,
            ping_interval_s=cfg.ping_interval_s,
            pong_timeout_s=cfg.keepalive_timeout_s,
            max_message_bytes=cfg.max_body_bytes,
        )

    async def _run(self, raw: trio.abc.Stream, principal: Principal) -> None:
        stream = self._stream(raw)
        self._open.add(stream)
        try:
            async with trio.open_nursery() as nursery:  # trio-websocket's reader task
                try:
                    await self._connection(nursery, stream, principal)
                finally:
                    # The reader ends by itself once the stream is closed, or after a close
                    # frame of trio-websocket's own (1009, 1002): a moment for that.
                    nursery.cancel_scope.deadline = min(
                        nursery.cancel_scope.deadline, trio.current_time() + CLOSE_WAIT_S
                    )
        finally:
            self._open.discard(stream)

    async def _connection(
        self, nursery: trio.Nursery, stream: WsStream, principal: Principal
    ) -> None:
        cfg = self.context.config
        with trio.move_on_after(cfg.read_timeout_s) as handshake:
            try:
                ws_request = await trio_websocket.wrap_server_stream(
                    nursery, stream, max_message_size=cfg.max_body_bytes
                )
                offered = SUBPROTOCOL in ws_request.proposed_subprotocols
                stream.start_tracking()  # no checkpoint before the accept: see start_tracking
                connection = await ws_request.accept(subprotocol=SUBPROTOCOL if offered else None)
            except trio_websocket.ConnectionClosed:
                handshake.cancel()
        if handshake.cancel_called:  # timed out, or the peer went during the handshake
            await trio.aclose_forcefully(stream)
            return
        if not offered:
            stream.close_now(1002, f"subprotocol {SUBPROTOCOL!r} required")
        elif self.closing:
            stream.finish(1001, "server shutting down")
        else:
            await self._serve(connection, stream, principal)
        code, reason = stream.close_reason or (1000, "")
        if code is not None and not stream.broken:
            with trio.move_on_after(CLOSE_WAIT_S):
                await connection.aclose(code, reason)  # closes the stream, even when cut short
        else:
            await trio.aclose_forcefully(stream)  # nothing to say: the reader sees it closed

    async def _serve(
        self,
        connection: trio_websocket.WebSocketConnection,
        stream: WsStream,
        principal: Principal,
    ) -> None:
        protocol = self.context.protocol_session(principal)
        slots = 2 * self.context.config.max_calls_per_session
        free = trio.Semaphore(slots)

        async def sink(data: bytes) -> None:
            try:
                with stream.shielded():
                    await connection.send_message(data.decode())
            except trio_websocket.ConnectionClosed:
                stream.close_now(None, "connection closed")

        # Server notifications (list changes, resource updates) come from other tasks: an
        # outbox bounded like a session's log (--replay-events), written by its own task, so a
        # notifier never waits on this socket. A client that lets it fill is closed with 1013
        # rather than silently missing messages: by the forwarder, between two frames, so the
        # frame it is writing is not cut short and the close frame can follow it.
        outbox, outgoing = trio.open_memory_channel[bytes](self.context.config.replay_events)
        overflowed = False
        notices = self.context.dispatcher.notices

        async def to_outbox(data: bytes) -> None:
            nonlocal overflowed
            try:
                outbox.send_nowait(data)
            except trio.WouldBlock:
                if not overflowed:
                    overflowed = True
                    notices.detach(protocol)
                    calls.start_soon(cut_off)
                raise _OutboxFull from None

        async def cut_off() -> None:
            await trio.sleep(OVERFLOW_GRACE_S)
            stream.close_now(1013, OVERFLOW_REASON)  # the frame in flight never finished

        async def forward_notices() -> None:
            async for data in outgoing:
                if overflowed:
                    stream.close_now(1013, OVERFLOW_REASON)
                    return
                await sink(data)

        with stream.live:
            async with trio.open_nursery() as calls:
                notices.attach(protocol, to_outbox)
                calls.start_soon(forward_notices)
                try:
                    with stream.reading:
                        await self._read(connection, stream, protocol, sink, free, calls)
                    if stream.reading.cancelled_caught:
                        # A graceful shutdown: the calls in flight get half the grace.
                        with trio.move_on_after(self.context.config.shutdown_grace_s / 2):
                            for _ in range(slots):
                                await free.acquire()
                finally:
                    notices.detach(protocol)
                    calls.cancel_scope.cancel()
                    stream.abort_writes()

    async def _read(
        self,
        connection: trio_websocket.WebSocketConnection,
        stream: WsStream,
        protocol: McpSession,
        sink: MessageSink,
        free: trio.Semaphore,
        calls: trio.Nursery,
    ) -> None:
        while True:
            await free.acquire()  # all taken: we stop reading, and so, soon, does the socket
            try:
                message = await connection.get_message()
            except trio_websocket.ConnectionClosed:
                free.release()
                return
            except BaseException:
                free.release()
                raise
            if isinstance(message, bytes):
                free.release()
                stream.close_now(1003, "MCP messages are text frames")
                return
            calls.start_soon(self._handle, protocol, message.encode(), sink, free)

    @staticmethod
    async def _handle(
        protocol: McpSession, data: bytes, sink: MessageSink, free: trio.Semaphore
    ) -> None:
        try:
            await protocol.handle_bytes(data, sink)
        except DatapulseError as exc:  # a batch refused as a whole (it holds initialize)
            await sink(encode_exception(exc))
        finally:
            free.release()
