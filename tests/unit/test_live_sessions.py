"""SessionManager's own timing, on Trio's mock clock (``autojump_clock``) and without sockets: a
session expires ``session_ttl_s`` after its last activity, activity refreshes it, and an attached
stream keeps it alive however long it stays. tests/e2e/test_events_api.py checks the same rules
over HTTP (``/message`` answers 404 once the session is gone)."""

from __future__ import annotations

from functools import partial

import pytest
import trio
import trio.testing

from datapulse import Config
from datapulse.errors import ServiceUnavailable, SessionNotFound
from datapulse.live.sessions import SessionManager
from datapulse.store import MemorySessionStore
from tests.fakes import FakeBody

TTL_S = 1.0
SWEEP_S = 0.05


@pytest.fixture
async def sessions(nursery: trio.Nursery) -> SessionManager:
    config = Config(session_ttl_s=TTL_S, sweep_interval_s=SWEEP_S, ping_interval_s=5.0)
    manager = SessionManager(config, MemorySessionStore(100, 1 << 20))
    await nursery.start(manager.run)
    return manager


async def test_session_lives_while_streamed_or_active_and_expires_after_its_ttl(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, sessions: SessionManager
) -> None:
    live = await sessions.create("alice", "events", "ttl")
    body = FakeBody()
    nursery.start_soon(partial(sessions.stream_session, live, body, resume_after=None))
    await trio.testing.wait_all_tasks_blocked()
    assert live.stream is not None

    await trio.sleep(TTL_S + 0.3)  # an attached stream keeps its session alive
    assert sessions.lookup("ttl") is live
    body.leave()  # the client goes away: the TTL runs from now
    await trio.testing.wait_all_tasks_blocked()
    assert live.stream is None

    await trio.sleep(0.6 * TTL_S)
    assert await sessions.get("ttl", "alice") is live  # activity refreshes the TTL...
    await trio.sleep(0.6 * TTL_S)
    assert sessions.lookup("ttl") is live
    await trio.sleep(0.4 * TTL_S + 2 * SWEEP_S)  # ...and idleness past it expires the session
    assert sessions.lookup("ttl") is None
    assert sessions.owned_by("alice") == 0
    with pytest.raises(SessionNotFound):
        await sessions.get("ttl", "alice")


class _DownStore(MemorySessionStore):
    """A store that has gone away (Redis restarting): deleting a record fails with a 503."""

    down = False

    async def delete(self, session_id: str) -> None:
        if self.down:
            raise ServiceUnavailable("the session store did not answer within 2s")
        await super().delete(session_id)


async def test_a_sweep_while_the_store_is_down_leaves_the_server_running(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """An expired session met while the store is unreachable is tried again at the next sweep;
    the error must not leave SessionManager.run (which would take the whole server down)."""
    config = Config(session_ttl_s=TTL_S, sweep_interval_s=SWEEP_S, ping_interval_s=5.0)
    store = _DownStore(100, 1 << 20)
    manager = SessionManager(config, store)
    await nursery.start(manager.run)
    await manager.create("alice", "events", "gone")
    store.down = True
    await trio.sleep(TTL_S * 3)  # the sweep ends it here; deleting its record fails
    assert manager._nursery is not None  # still running: the error stayed in the sweep
    assert len(manager) == 0  # ended locally; the store's own TTL removes the record
    store.down = False
    live = await manager.create("alice", "events", "next")  # and it serves on
    assert manager.lookup("next", "alice") is live
