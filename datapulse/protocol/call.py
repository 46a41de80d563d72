"""``Call``: one JSON-RPC request in flight, and what may still be sent for it.

A method handler gets the ``Call`` for its request and sends notifications through it; the
session sends the one response through it too, and closes it first, so nothing a tool emits late
can follow the response. ``Call`` needs three facts about its session, declared by
``CallSession`` so this module imports nothing of ``datapulse.protocol``.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from datapulse.core import mcp
from datapulse.core.jsonrpc import Request, encode_notification

MessageSink = Callable[[bytes], Awaitable[None]]


class CallSession(Protocol):
    """What a ``Call`` reads of its session (``McpSession`` is the one implementation)."""

    @property
    def modern(self) -> bool: ...

    @property
    def protocol_version(self) -> str | None: ...

    @property
    def log_level(self) -> str | None: ...


@dataclass(eq=False)
class Call:
    """One request in flight: where its messages go, and what may still be sent.

    Compared and hashed by identity, so it can also stand for its request as a borrower of the
    session's ``trio.CapacityLimiter``.
    """

    session: CallSession
    request: Request
    sink: MessageSink
    params: dict[str, Any]
    scopes: frozenset[str] | None = None
    """What the token that carried this request grants (None: no limit); tools are judged
    against these, not against whatever token the session last saw."""
    meta: mcp.ModernMeta | None = None
    token: str | int | None = None
    can_ask: bool = True
    """Whether the client can receive (and answer) a request of ours over ``sink``."""
    last_progress: float = -math.inf
    # Set (under the lock) just before the response goes out; nothing is sent after it.
    closed: bool = False
    lock: trio.Lock = field(default_factory=trio.Lock)

    async def notify(self, method: str, params: dict[str, Any]) -> None:
        await self.send(encode_notification(method, params))

    async def send(self, message: bytes) -> None:
        """Send an encoded message for this request, unless its response has gone out."""
        async with self.lock:
            if not self.closed:
                await self.sink(message)

    async def progress(self, progress: float, total: float | None, message: str | None) -> None:
        if self.token is None:
            return  # the client did not ask for progress
        params = mcp.progress_params(
            self.token, progress, total, message, self.session.protocol_version
        )
        if params is None:
            return
        async with self.lock:
            # Progress MUST increase; a tool repeating itself is dropped, not an error.
            if self.closed or not progress > self.last_progress:
                return
            self.last_progress = progress
            await self.sink(encode_notification("notifications/progress", params))

    async def log(self, logger: str, level: str, data: Any) -> None:
        if not mcp.is_log_level(level):
            raise ValueError(f"unknown log level {level!r}; use one of {mcp.LOG_LEVELS}")
        # 2026-07-28: only a request's own _meta logLevel opts in (MUST NOT send otherwise).
        threshold = self.meta.log_level if self.meta is not None else self.session.log_level
        if mcp.log_level_allows(threshold, level):
            params = {"level": level, "logger": logger, "data": data}
            await self.notify("notifications/message", params)
