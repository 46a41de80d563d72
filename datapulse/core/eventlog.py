"""ReplayLog: a stream's bounded event history, sans-IO.

Every event sent on a stream is first appended here, with the next sequence number as its SSE
``id``. A client that reconnects with ``Last-Event-ID: N`` is sent the held events after N. The
log is bounded both in events and in bytes (the oldest go first), so a session's memory does not
depend on how fast its client reads. When the events a client asks for have been evicted,
``events_after`` says so (``ReplayGone``) instead of silently skipping them.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from datapulse.core.sse import encode_data


@dataclass(frozen=True, slots=True)
class LoggedEvent:
    seq: int
    wire: bytes
    """The event exactly as framed for the socket (``id:`` included): encoded once, sent as is."""


class ReplayGone(Exception):
    """The events after ``requested`` are partly evicted; ``oldest`` is the first one still held."""

    def __init__(self, requested: int, oldest: int) -> None:
        super().__init__(f"events after {requested} are no longer held (oldest is {oldest})")
        self.requested = requested
        self.oldest = oldest


def parse_event_id(value: str) -> int | None:
    """Our ids are decimal sequence numbers; anything else is not one of ours (None)."""
    value = value.strip()
    if not value.isascii() or not value.isdigit() or len(value) > 18:
        return None
    return int(value)


class ReplayLog:
    def __init__(self, max_events: int, max_bytes: int, id_prefix: str = "") -> None:
        if max_events < 1 or max_bytes < 1:
            raise ValueError("a replay log must hold at least one event and one byte")
        # Streams of one MCP session share an id space; a prefix names the stream (``3-17``).
        self.id_prefix = id_prefix
        self.max_events = max_events
        self.max_bytes = max_bytes
        self._events: deque[LoggedEvent] = deque()
        self._bytes = 0
        self.last_seq = 0

    def __len__(self) -> int:
        return len(self._events)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    @property
    def oldest_seq(self) -> int:
        """The first seq still held (``last_seq + 1`` when empty)."""
        return self._events[0].seq if self._events else self.last_seq + 1

    def append(self, data: str, event: str | None = None) -> LoggedEvent:
        self.last_seq += 1
        logged = LoggedEvent(
            self.last_seq,
            encode_data(data, event_id=f"{self.id_prefix}{self.last_seq}", event=event),
        )
        self._events.append(logged)
        self._bytes += len(logged.wire)
        # Evict oldest first; the newest event is always kept so it can be delivered once.
        while len(self._events) > 1 and (
            len(self._events) > self.max_events or self._bytes > self.max_bytes
        ):
            self._bytes -= len(self._events.popleft().wire)
        return logged

    def events_after(self, seq: int) -> list[LoggedEvent]:
        """Held events with seq > ``seq``, oldest first. Raises ReplayGone if some were evicted."""
        if seq >= self.last_seq:
            return []
        oldest = self.oldest_seq
        if seq + 1 < oldest:
            raise ReplayGone(seq, oldest)
        # Sequence numbers are contiguous, so the start index is arithmetic, not a search.
        start = seq + 1 - oldest
        return [self._events[i] for i in range(start, len(self._events))]
