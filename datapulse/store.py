"""The session store interface and its in-memory implementation.

Everything that must survive a reconnect, and later be shared between instances, sits behind
``SessionStore``: session records and each session's event log. Live, process-local things
(memory channels, the stream currently attached, tool tasks) stay in ``net.sessions``. The
interface is async so a Redis Streams backend can implement it without changing callers.
"""

from __future__ import annotations

from typing import Protocol

from datapulse.core.eventlog import LoggedEvent, ReplayLog
from datapulse.core.session import SessionRecord


class SessionStore(Protocol):
    async def create(self, record: SessionRecord) -> None: ...
    async def get(self, session_id: str) -> SessionRecord | None: ...
    async def delete(self, session_id: str) -> None: ...
    async def touch(self, session_id: str, now: float) -> None: ...
    async def expired(self, now: float) -> list[str]: ...
    async def count(self) -> int: ...
    async def append(self, session_id: str, data: str, event: str | None) -> LoggedEvent: ...
    async def events_after(self, session_id: str, seq: int) -> list[LoggedEvent]: ...
    async def last_seq(self, session_id: str) -> int: ...
    async def mark_delivered(self, session_id: str, seq: int) -> None: ...


class MemorySessionStore:
    """Dict-backed store. Each session has one ReplayLog bounded by ``max_events``/``max_bytes``."""

    def __init__(self, max_events: int, max_bytes: int) -> None:
        self.max_events = max_events
        self.max_bytes = max_bytes
        self._records: dict[str, SessionRecord] = {}
        self._logs: dict[str, ReplayLog] = {}

    async def create(self, record: SessionRecord) -> None:
        if record.id in self._records:
            raise KeyError(f"session {record.id} exists")
        self._records[record.id] = record
        self._logs[record.id] = ReplayLog(self.max_events, self.max_bytes)

    async def get(self, session_id: str) -> SessionRecord | None:
        return self._records.get(session_id)

    async def delete(self, session_id: str) -> None:
        self._records.pop(session_id, None)
        self._logs.pop(session_id, None)

    async def touch(self, session_id: str, now: float) -> None:
        record = self._records.get(session_id)
        if record is not None:
            record.touch(now)

    async def expired(self, now: float) -> list[str]:
        return [sid for sid, rec in self._records.items() if rec.is_expired(now)]

    async def count(self) -> int:
        return len(self._records)

    async def append(self, session_id: str, data: str, event: str | None) -> LoggedEvent:
        return self._logs[session_id].append(data, event)

    async def events_after(self, session_id: str, seq: int) -> list[LoggedEvent]:
        return self._logs[session_id].events_after(seq)

    async def last_seq(self, session_id: str) -> int:
        return self._logs[session_id].last_seq

    async def mark_delivered(self, session_id: str, seq: int) -> None:
        record = self._records.get(session_id)
        if record is not None and seq > record.delivered_seq:
            record.delivered_seq = seq

    def log_bytes(self, session_id: str) -> int:
        """Memory held by one session's log (for tests and metrics)."""
        log = self._logs.get(session_id)
        return log.size_bytes if log else 0
