"""MCP over WebSocket at ``/ws``: subprotocol ``mcp``, one JSON-RPC message per text frame.

How the h11 layer hands the connection over: the router returns ``Upgrade(run)``. The
connection stops its disconnect watcher, re-serialises the request head it already parsed, and
calls ``run`` with a stream that replays those bytes (plus anything h11 had buffered after them)
before reading the socket. ``trio_websocket.wrap_server_stream`` then performs the handshake on
that stream exactly as if it had read the request itself. From there the connection belongs to
trio-websocket; when ``run`` returns, the socket is closed.

A client that does not offer the ``mcp`` subprotocol is accepted without one and closed at once
with 1002 (protocol error) and a reason that says so; a binary frame is closed with 1003.
Closing the socket cancels the session's calls (they run in this connection's nursery).
"""

from __future__ import annotations

import contextlib
import logging

import trio
import trio_websocket

from datapulse.auth.verifier import Principal
from datapulse.errors import BadRequest
from datapulse.net.http import Request, Upgrade
from datapulse.transports.context import TransportContext

log = logging.getLogger("datapulse.ws")

SUBPROTOCOL = "mcp"


class WebSocketTransport:
    def __init__(self, context: TransportContext) -> None:
        self.context = context

    async def upgrade(self, request: Request) -> Upgrade:
        if (request.header("upgrade") or "").strip().lower() != "websocket":
            raise BadRequest("/ws needs a WebSocket upgrade (Upgrade: websocket)")
        principal = request.caller

        async def run(stream: trio.abc.Stream) -> None:
            async with trio.open_nursery() as nursery:
                ws_request = await trio_websocket.wrap_server_stream(
                    nursery, stream, max_message_size=self.context.config.max_body_bytes
                )
                if SUBPROTOCOL not in ws_request.proposed_subprotocols:
                    connection = await ws_request.accept()
                    await connection.aclose(1002, f"subprotocol {SUBPROTOCOL!r} required")
                    return
                connection = await ws_request.accept(subprotocol=SUBPROTOCOL)
                await self._serve(connection, principal)
                nursery.cancel_scope.cancel()

        return Upgrade(run)

    async def _serve(
        self, connection: trio_websocket.WebSocketConnection, principal: Principal
    ) -> None:
        protocol = self.context.protocol_session(principal)

        async def sink(data: bytes) -> None:
            with contextlib.suppress(trio_websocket.ConnectionClosed):
                await connection.send_message(data.decode())

        async with trio.open_nursery() as calls:
            while True:
                try:
                    message = await connection.get_message()
                except trio_websocket.ConnectionClosed:
                    break
                if isinstance(message, bytes):
                    await connection.aclose(1003, "MCP messages are text frames")
                    break
                calls.start_soon(protocol.handle_bytes, message.encode(), sink)
            calls.cancel_scope.cancel()
