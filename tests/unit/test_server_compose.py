"""Server composes what it is given: an embedder's store is used, even an empty one."""

from __future__ import annotations

from datapulse import Config, Server
from datapulse.store import MemorySessionStore


def test_an_empty_store_given_to_the_server_is_the_one_it_uses() -> None:
    store = MemorySessionStore(max_events=10, max_bytes=10_000)
    assert len(store) == 0  # falsy: `store or default` used to replace it silently
    server = Server(builtin_tools=True, config=Config(port=0, token="t"), store=store)
    assert server.store is store
    assert server.sessions.store is store
