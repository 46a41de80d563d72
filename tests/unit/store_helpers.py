"""Shared builders for store tests."""

from __future__ import annotations

from datapulse.core.session import SessionRecord


def new_record(session_id: str, *, owner: str = "alice", now: float = 100.0) -> SessionRecord:
    return SessionRecord(
        id=session_id, owner=owner, kind="events", created_at=now, last_active=now, ttl_s=60.0
    )
