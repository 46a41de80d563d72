"""TransportContext: the narrow slice of the server every transport is given.

A transport adapts one wire (``/events``, ``/mcp``, ``/sse``, ``/ws``) to the same sessions and
the same MCP protocol. This is everything it may reach: the settings, the live sessions (and
through them the store), the tool registry, a factory for MCP protocol sessions, and two auth
decisions it cannot make itself. ``Server`` builds one and hands it to each transport; no
transport knows the ``Server`` or the other transports.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import trio

from datapulse.auth.verifier import Principal
from datapulse.config import Config
from datapulse.core.jsonrpc import BatchItem, Message, parse_message
from datapulse.core.session import valid_session_id
from datapulse.core.tokens import enforced_scopes
from datapulse.errors import BadRequest
from datapulse.live.sessions import LiveSession, SessionManager
from datapulse.net.http import Request
from datapulse.protocol.dispatch import Dispatcher
from datapulse.protocol.session import McpSession
from datapulse.protocol.state import ProtocolState
from datapulse.tools.registry import ToolRegistry


class TransportAuth(Protocol):
    def require_tool_scope(self, request: Request, tool_name: object) -> None:
        """403 ``insufficient_scope`` if the request's token lacks the tool's scope."""

    def bind_ticket(self, request: Request, session_id: str, route: str) -> None:
        """The request's stream ticket (if it spent one) now opens ``session_id`` on ``route``."""


@dataclass(frozen=True)
class TransportContext:
    config: Config
    sessions: SessionManager
    registry: ToolRegistry
    dispatcher: Dispatcher
    auth: TransportAuth

    def parse_message(self, body: bytes, *, allow_batch: bool = False) -> Message | list[BatchItem]:
        """A JSON-RPC body parsed under this server's limits (depth, batch size)."""
        return parse_message(
            body,
            allow_batch=allow_batch,
            max_depth=self.config.max_json_depth,
            max_batch_items=self.config.max_batch_items,
        )

    @staticmethod
    def scopes_of(request: Request) -> frozenset[str] | None:
        """What the token of ``request`` grants, for ``McpSession.handle(..., scopes=)``: every
        message is judged on the request that carries it, never on the one that made the session.
        """
        return enforced_scopes(request.caller.scopes)

    def protocol_session(
        self,
        principal: Principal,
        *,
        session_id: str | None = None,
        modern: bool = False,
        call_limit: trio.CapacityLimiter | None = None,
    ) -> McpSession:
        """A protocol session for ``principal`` (one per MCP session, or per modern request).

        Its ``scopes`` are those of the request that opened it: what a WebSocket's messages are
        judged on. HTTP transports pass each request's own (``scopes_of``) to ``handle``."""
        return McpSession(
            self.dispatcher,
            modern=modern,
            session_id=session_id,
            principal_id=principal.id,
            scopes=enforced_scopes(principal.scopes),
            call_limit=call_limit,
        )

    async def restore_protocol(self, live: LiveSession, principal: Principal) -> McpSession:
        """The protocol session of ``live``, rebuilt from the state the store holds: for a
        session made by another instance sharing the store, or by this one before a restart."""
        protocol = self.protocol_session(principal, session_id=live.id)
        saved = await self.sessions.store.load_protocol(live.key)
        if saved is not None:
            protocol.state = ProtocolState.from_dict(saved)
        live.protocol = protocol
        return protocol


def session_id_from(request: Request, *names: str) -> str:
    """The session id a request names in its query (the first of ``names`` present): 400 when
    it is missing or not 1-128 visible ASCII characters (what MCP allows in Mcp-Session-Id)."""
    for name in names:
        value = request.query_param(name)
        if value:
            return checked_session_id(value)
    raise BadRequest(f"missing query parameter: {names[0]}")


def checked_session_id(value: str) -> str:
    if not valid_session_id(value):
        raise BadRequest("session id must be 1-128 visible ASCII characters")
    return value
