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
    "RedisSessionStore",
    "SessionExists",
    "SessionStore",
    "StoreUnavailable",
    "UnknownLog",
]


def __getattr__(name: str) -> object:
    # The Redis backend is imported on first use: coredis costs ~0.3 s to import, and only a
    # server with --redis-url needs it.
    if name in ("RedisSessionStore", "StoreUnavailable"):
        from datapulse.store import redis

        return getattr(redis, name)
    raise AttributeError(name)
