"""``Notices``: server-initiated notifications (``resources/updated``, ``*/list_changed``) and
the connected clients that hear them.

Two kinds of listener, one per protocol era:

* a **handshake session** (``/mcp``, ``/sse``, ``/ws``) is attached with the sink its transport
  gives for messages that answer no request: the session's own log for ``/mcp`` (its GET
  stream) and ``/sse``, the socket's outbound queue for ``/ws``. It hears ``list_changed`` once
  initialized, and ``resources/updated`` for the URIs in ``state.subscriptions``
  (``resources/subscribe``).
* a **listen stream** (2026-07-28 ``subscriptions/listen``) hears exactly what its filter asked
  for, every message tagged with its subscription id (``core.mcp.listen_notification``).

A sink never waits on a client: appending to a log is the backpressure policy of every stream
(a client that falls behind the log's bound is told ``replay_gone``), and the WebSocket queue is
bounded (a client that lets it fill is closed). So one slow client cannot hold up a host that
calls ``resource_updated``, nor the others.

``list_changed`` is synchronous (registries change from plain code, ``server.remove_tool``):
it marks the kind pending and ``run`` sends one notification per kind per wake-up, so a burst
of changes costs each client one message per list, not one per change.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

import trio

from datapulse.core import mcp
from datapulse.core.jsonrpc import encode_notification
from datapulse.protocol.state import ProtocolState

log = logging.getLogger("datapulse.notices")

Sink = Callable[[bytes], Awaitable[None]]


class Stateful(Protocol):
    """An attached session, as ``Notices`` reads it (``McpSession`` is the one in use)."""

    @property
    def state(self) -> ProtocolState: ...


class HandshakeListener:
    __slots__ = ("session", "sink")

    def __init__(self, session: Stateful, sink: Sink) -> None:
        self.session = session
        self.sink = sink


@dataclass(eq=False)
class ListenStream:
    """One ``subscriptions/listen`` request: its id, what it asked for, where messages go."""

    subscription_id: str | int
    filter: mcp.ListenFilter
    sink: Sink
    ended: trio.Event = field(default_factory=trio.Event)
    """Set when the server ends the subscription (shutdown): the request answers and closes."""


class Notices:
    def __init__(self) -> None:
        self._sessions: dict[int, HandshakeListener] = {}
        self._streams: set[ListenStream] = set()
        self._pending: dict[str, None] = {}
        self._wake = trio.Event()
        self.closing = False

    # -- listeners -------------------------------------------------------------------------------

    def attach(self, session: Stateful, sink: Sink) -> None:
        """``session`` hears notifications through ``sink`` until ``detach`` (attaching it
        again replaces its sink)."""
        self._sessions[id(session)] = HandshakeListener(session, sink)

    def detach(self, session: Stateful) -> None:
        listener = self._sessions.get(id(session))
        if listener is not None and listener.session is session:
            del self._sessions[id(session)]

    @contextmanager
    def listen(self, stream: ListenStream) -> Iterator[ListenStream]:
        """Register a listen stream for the duration of the block (its request's lifetime)."""
        if self.closing:
            stream.ended.set()
        self._streams.add(stream)
        try:
            yield stream
        finally:
            self._streams.discard(stream)

    @property
    def listeners(self) -> int:
        return len(self._sessions) + len(self._streams)

    def close(self) -> None:
        """Shutdown: every listen stream answers its request (the spec's graceful end)."""
        self.closing = True
        for stream in self._streams:
            stream.ended.set()

    # -- notifications ---------------------------------------------------------------------------

    async def resource_updated(self, uri: str) -> int:
        """Tell every client subscribed to ``uri``; returns how many were told."""
        told = 0
        message = encode_notification("notifications/resources/updated", {"uri": uri})
        for listener in list(self._sessions.values()):
            if uri in listener.session.state.subscriptions:
                told += await self._deliver(listener.sink, message)
        for stream in list(self._streams):
            if uri in stream.filter.resource_subscriptions:
                tagged = mcp.listen_notification(
                    "notifications/resources/updated", {"uri": uri}, stream.subscription_id
                )
                told += await self._deliver(stream.sink, tagged)
        return told

    def list_changed(self, kind: str) -> None:
        """A list (``tools``, ``resources``, ``prompts``) changed; ``run`` tells the clients."""
        self._pending[kind] = None
        self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Send pending ``list_changed`` notifications until cancelled."""
        task_status.started()
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            kinds, self._pending = list(self._pending), {}
            for kind in kinds:
                await self._send_list_changed(kind)

    async def _send_list_changed(self, kind: str) -> None:
        method = f"notifications/{kind}/list_changed"
        message = encode_notification(method)
        for listener in list(self._sessions.values()):
            if listener.session.state.initialized:
                await self._deliver(listener.sink, message)
        for stream in list(self._streams):
            if stream.filter.wants_list(kind):
                tagged = mcp.listen_notification(method, {}, stream.subscription_id)
                await self._deliver(stream.sink, tagged)

    @staticmethod
    async def _deliver(sink: Sink, message: bytes) -> int:
        try:
            await sink(message)
        except Exception:
            # One client's broken sink (its session just ended, say) must not stop the others.
            log.debug("a notification could not be delivered", exc_info=True)
            return 0
        return 1
