"""The in-memory session store: the embedded default, one process's dicts.

Each log is a ``ReplayLog`` bounded by ``max_events``/``max_bytes``. Records are handed out as
copies, so that what a caller holds behaves as it would with a network backend: a change counts
only once it is written back through the interface.
"""

from __future__ import annotations

import copy
import heapq
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any, Final

from datapulse.core.eventlog import LoggedEvent, ReplayLog
from datapulse.core.session import SessionRecord
from datapulse.store.base import (
    KEPT_REQUEST_LOGS,
    LogKey,
    LogRead,
    SessionExists,
    StoredTask,
    TaskExists,
    TaskLimitReached,
    UnknownLog,
)

MAX_STATES: Final = 10_000
"""Round-trip states held at once; past it the oldest goes (its retry is told to start over)."""

MAX_TASKS: Final = 10_000
"""Task records held at once, all principals together (each principal has its own, lower bound:
``create_task``'s ``limit``). Past it new tasks are refused, never old ones dropped early."""

_EMPTY = ReplayLog(1, 1)
"""Stands in for a session log that has had no event yet (never appended to)."""


@dataclass(slots=True)
class _HeldTask:
    expires_at: float
    rev: int
    data: dict[str, Any]


class MemorySessionStore:
    def __init__(self, max_events: int, max_bytes: int) -> None:
        self.max_events = max_events
        self.max_bytes = max_bytes
        self._records: dict[str, SessionRecord] = {}
        self._protocol: dict[str, dict[str, Any]] = {}
        self._logs: dict[LogKey, ReplayLog] = {}
        self._closed: set[LogKey] = set()
        self._request_logs: dict[str, deque[LogKey]] = {}
        self._next_stream: dict[str, int] = {}
        self._states: OrderedDict[str, tuple[float, dict[str, Any]]] = OrderedDict()
        # principal -> task id -> [expires_at, rev, data], in creation order; _task_expiry is a
        # heap of (expires_at, principal, task id) so expired tasks go without a full scan.
        self._tasks: dict[str, dict[str, _HeldTask]] = {}
        self._task_expiry: list[tuple[float, str, str]] = []
        self._task_count = 0

    # -- records ---------------------------------------------------------------------------

    async def create(self, record: SessionRecord) -> None:
        if record.id in self._records:
            raise SessionExists(record.id)
        self._records[record.id] = copy.copy(record)
        # The session's own log is made on its first event: most sessions of an idle stream
        # never get one, and an empty ReplayLog (its deque) is most of an idle session's memory.

    async def get(self, session_id: str) -> SessionRecord | None:
        record = self._records.get(session_id)
        return copy.copy(record) if record is not None else None

    async def delete(self, session_id: str) -> None:
        self._records.pop(session_id, None)
        self._protocol.pop(session_id, None)
        self._next_stream.pop(session_id, None)
        for key in [LogKey(session_id), *self._request_logs.pop(session_id, ())]:
            self._logs.pop(key, None)
            self._closed.discard(key)

    async def touch(self, session_id: str, now: float) -> None:
        record = self._records.get(session_id)
        if record is not None:
            record.touch(now)

    async def expired(self, now: float) -> list[str]:
        return [sid for sid, rec in self._records.items() if rec.is_expired(now)]

    def __len__(self) -> int:
        """How many session records are held (``count`` without the await, for leak checks)."""
        return len(self._records)

    async def count(self) -> int:
        return len(self._records)

    async def count_owned(self, owner: str, now: float) -> int:
        return sum(1 for r in self._records.values() if r.owner == owner and not r.is_expired(now))

    async def mark_delivered(self, session_id: str, seq: int) -> None:
        record = self._records.get(session_id)
        if record is not None and seq > record.delivered_seq:
            record.delivered_seq = seq

    async def save_protocol(self, session_id: str, state: dict[str, Any]) -> None:
        if session_id in self._records:
            self._protocol[session_id] = copy.deepcopy(state)

    async def load_protocol(self, session_id: str) -> dict[str, Any] | None:
        state = self._protocol.get(session_id)
        return copy.deepcopy(state) if state is not None else None

    # -- logs ------------------------------------------------------------------------------

    def _new_log(self, key: LogKey) -> ReplayLog:
        return ReplayLog(self.max_events, self.max_bytes, id_prefix=key.id_prefix)

    def _log(self, key: LogKey, *, create: bool = False) -> ReplayLog:
        log = self._logs.get(key)
        if log is None:
            if key.stream != 0 or key.session_id not in self._records:
                raise UnknownLog(f"no log {key.stream} for session {key.session_id}")
            if not create:
                return _EMPTY
            log = self._logs[key] = self._new_log(key)
        return log

    async def open_request_log(self, session_id: str) -> LogKey:
        if session_id not in self._records:
            raise UnknownLog(f"no session {session_id}")
        number = self._next_stream.get(session_id, 1)
        self._next_stream[session_id] = number + 1
        key = LogKey(session_id, number)
        self._logs[key] = self._new_log(key)
        kept = self._request_logs.setdefault(session_id, deque())
        kept.append(key)
        while len(kept) > KEPT_REQUEST_LOGS:
            await self.drop_log(kept[0])
        return key

    async def drop_log(self, key: LogKey) -> None:
        if key.stream == 0:
            return  # the session's own stream goes only with the session
        self._logs.pop(key, None)
        self._closed.discard(key)
        kept = self._request_logs.get(key.session_id)
        if kept is not None and key in kept:
            kept.remove(key)

    async def append(self, key: LogKey, data: str, event: str | None = None) -> LoggedEvent:
        return self._log(key, create=True).append(data, event)

    async def close_log(self, key: LogKey) -> None:
        if key in self._logs and key.stream != 0:
            self._closed.add(key)

    async def last_seq(self, key: LogKey) -> int:
        return self._log(key).last_seq

    async def read(self, key: LogKey, after: int, limit: int | None = None) -> LogRead:
        log = self._log(key)
        events = log.events_after(after)
        if limit is not None:
            # Slice at once: the rest must not keep evicted events alive while the caller writes.
            events = events[:limit]
        return LogRead(events, log.last_seq, key in self._closed)

    def log_bytes(self, session_id: str) -> int:
        """Memory held by a session's stream-0 log (for tests and metrics)."""
        log = self._logs.get(LogKey(session_id))
        return log.size_bytes if log else 0

    # -- round-trip state --------------------------------------------------------------------

    async def put_state(self, key: str, data: dict[str, Any], ttl_s: float) -> None:
        now = time.monotonic()
        while self._states:  # expired first (oldest first), then the oldest if still full
            oldest_key, (expires, _) = next(iter(self._states.items()))
            if expires > now and len(self._states) < MAX_STATES:
                break
            del self._states[oldest_key]
        self._states[key] = (now + ttl_s, copy.deepcopy(data))

    async def take_state(self, key: str) -> dict[str, Any] | None:
        held = self._states.pop(key, None)
        if held is None or held[0] <= time.monotonic():
            return None
        return held[1]

    # -- tasks ---------------------------------------------------------------------------------

    def _expire_tasks(self, now: float) -> None:
        heap = self._task_expiry
        while heap and heap[0][0] <= now:
            expires, principal, task_id = heapq.heappop(heap)
            held = self._tasks.get(principal, {}).get(task_id)
            if held is not None and held.expires_at == expires:
                self._drop_task(principal, task_id)

    def _drop_task(self, principal: str, task_id: str) -> None:
        owned = self._tasks.get(principal)
        if owned is not None and owned.pop(task_id, None) is not None:
            self._task_count -= 1
            if not owned:
                del self._tasks[principal]

    def _held_task(self, principal: str, task_id: str) -> _HeldTask | None:
        now = time.monotonic()
        self._expire_tasks(now)
        held = self._tasks.get(principal, {}).get(task_id)
        return held if held is not None and held.expires_at > now else None

    async def create_task(
        self, principal: str, task_id: str, data: dict[str, Any], ttl_s: float, limit: int
    ) -> None:
        now = time.monotonic()
        self._expire_tasks(now)
        owned = self._tasks.get(principal, {})
        if task_id in owned:
            raise TaskExists(task_id)
        if len(owned) >= limit:
            raise TaskLimitReached(
                f"this principal holds {len(owned)} tasks, the most it may; wait for one to"
                " expire (each lives for its ttl from creation)"
            )
        if self._task_count >= MAX_TASKS:
            raise TaskLimitReached(f"the server holds {MAX_TASKS} tasks; try again later")
        expires = now + ttl_s
        self._tasks.setdefault(principal, {})[task_id] = _HeldTask(expires, 1, copy.deepcopy(data))
        self._task_count += 1
        heapq.heappush(self._task_expiry, (expires, principal, task_id))

    async def load_task(self, principal: str, task_id: str) -> StoredTask | None:
        held = self._held_task(principal, task_id)
        return None if held is None else StoredTask(held.rev, copy.deepcopy(held.data))

    async def save_task(
        self, principal: str, task_id: str, data: dict[str, Any], rev: int
    ) -> int | None:
        held = self._held_task(principal, task_id)
        if held is None or held.rev != rev:
            return None
        held.rev += 1
        held.data = copy.deepcopy(data)
        return held.rev

    async def list_tasks(self, principal: str) -> list[StoredTask]:
        now = time.monotonic()
        self._expire_tasks(now)
        return [
            StoredTask(held.rev, copy.deepcopy(held.data))
            for held in self._tasks.get(principal, {}).values()
            if held.expires_at > now
        ]

    async def delete_task(self, principal: str, task_id: str) -> None:
        self._drop_task(principal, task_id)

    def task_count(self) -> int:
        """Task records held, every principal's (for tests and leak checks)."""
        return self._task_count
