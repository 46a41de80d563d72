"""Session state behind one interface (``SessionStore``) and its backends."""

from datapulse.store.base import (
    KEPT_REQUEST_LOGS,
    LogKey,
    LogRead,
    SessionExists,
    SessionStore,
    UnknownLog,
)
from datapulse.store.memory import MemorySessionStore

__all__ = [
    "KEPT_REQUEST_LOGS",
    "LogKey",
    "LogRead",
    "MemorySessionStore",
    "SessionExists",
    "SessionStore",
    "UnknownLog",
]
