"""Issue 12, the rules behind tests/e2e/test_session_hardening.py, without sockets: scopes per
request, ids per principal, the superseded exclusive stream, capped error details, the cursor
and charset checks."""

from __future__ import annotations

import base64
from functools import partial
from typing import Any

import orjson
import pytest
import trio
import trio.testing

from datapulse import Config
from datapulse.core import mcp
from datapulse.core.jsonrpc import Request
from datapulse.core.session import namespaced_key, new_session_id
from datapulse.errors import (
    MAX_DETAIL_CHARS,
    AmbiguousSession,
    BadRequest,
    InvalidParams,
    SessionNotFound,
    TooManyRequests,
    quote,
)
from datapulse.live.pinger import Pinger
from datapulse.live.sessions import SessionManager
from datapulse.live.stream import LogStream, StoreLog, control_comment
from datapulse.protocol.dispatch import Dispatcher
from datapulse.protocol.session import McpSession
from datapulse.store import LogKey, MemorySessionStore
from datapulse.tools.fetch import _charset
from datapulse.tools.registry import ToolContext, ToolRegistry
from tests.fakes import FakeBody
from tests.unit.store_helpers import new_record

# -- (2) scopes per request ----------------------------------------------------------------------


def scoped_session(scopes: frozenset[str] | None, gate: trio.Event) -> McpSession:
    registry = ToolRegistry()

    output = {"type": "object", "properties": {"scopes": {"type": "array"}}}

    @registry.tool("secret", scope="data:read", output_schema=output)
    async def secret(arguments: dict[str, Any], context: ToolContext) -> dict[str, Any]:
        await gate.wait()
        return {"scopes": sorted(context.scopes)}

    session = McpSession(Dispatcher(registry), scopes=scopes)
    session.initialized = True
    session.protocol_version = "2025-06-18"
    return session


async def run_call(session: McpSession, rid: int, scopes: frozenset[str] | None) -> Any:
    replies: list[bytes] = []

    async def sink(data: bytes) -> None:
        replies.append(data)

    call = Request(rid, "tools/call", {"name": "secret", "arguments": {}})
    await session.handle(call, sink, scopes=scopes)
    return orjson.loads(replies[-1])


async def test_a_call_is_judged_on_its_own_scopes_not_the_sessions() -> None:
    gate = trio.Event()
    gate.set()
    granted = scoped_session(frozenset({"data:read"}), gate)
    refused = await run_call(granted, 1, frozenset({"mcp:tools"}))
    assert "data:read" in refused["error"]["message"]
    stepped_up = scoped_session(frozenset(), gate)
    reply = await run_call(stepped_up, 2, frozenset({"data:read"}))
    assert reply["result"]["structuredContent"] == {"scopes": ["data:read"]}


async def test_a_queued_call_keeps_its_scopes_whatever_comes_after_it() -> None:
    gate = trio.Event()
    session = scoped_session(frozenset(), gate)
    results: dict[int, Any] = {}

    async def one(rid: int, scopes: frozenset[str]) -> None:
        results[rid] = await run_call(session, rid, scopes)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(one, 1, frozenset({"data:read"}))
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(one, 2, frozenset({"mcp:tools"}))  # a later, weaker token
        await trio.testing.wait_all_tasks_blocked()
        gate.set()
    assert results[1]["result"]["structuredContent"] == {"scopes": ["data:read"]}
    assert "error" in results[2]


# -- (8) ids per principal -----------------------------------------------------------------------


@pytest.fixture
async def sessions(nursery: trio.Nursery) -> SessionManager:
    manager = SessionManager(Config(ping_interval_s=5.0), MemorySessionStore(100, 1 << 20))
    await nursery.start(manager.run)
    return manager


def test_a_chosen_id_is_keyed_by_its_owner_and_never_meets_a_picked_one() -> None:
    assert namespaced_key("alice", "demo") != namespaced_key("bob", "demo")
    assert namespaced_key("alice", "demo") == namespaced_key("alice", "demo")
    assert namespaced_key("a", "b.c") != namespaced_key("a.b", "c")
    assert "." not in new_session_id()


async def test_two_principals_naming_one_id_hold_two_sessions(sessions: SessionManager) -> None:
    alice = await sessions.get_or_create("shared", "alice", "events")
    bob = await sessions.get_or_create("shared", "bob", "events")
    assert alice is not bob and alice.id == bob.id == "shared" and alice.key != bob.key
    assert await sessions.get_or_create("shared", "alice", "events") is alice
    assert await sessions.get("shared", "bob", "events") is bob
    with pytest.raises(SessionNotFound):
        await sessions.get("shared", "carol", "events")
    assert (await sessions.store.get(alice.key)) is not None
    await sessions.publish(bob, {"to": "bob"})
    assert await sessions.store.last_seq(LogKey(alice.key)) == 0

    with pytest.raises(AmbiguousSession):
        sessions.lookup("shared")
    assert sessions.lookup("shared", "alice") is alice
    assert sessions.lookup("shared", "carol") is None
    await sessions.close(bob, "session_deleted")
    assert sessions.lookup("shared") is alice  # one left: no need to say whose
    assert sessions.owned_by("bob") == 0 and sessions.owned_by("alice") == 1


async def test_admit_refuses_what_create_would_and_creates_nothing(nursery: trio.Nursery) -> None:
    manager = SessionManager(
        Config(ping_interval_s=5.0, max_sessions_per_principal=1), MemorySessionStore(10, 1 << 16)
    )
    await nursery.start(manager.run)
    manager.admit("alice")
    assert len(manager) == 0
    await manager.create("alice", "sse")
    with pytest.raises(TooManyRequests):
        manager.admit("alice")


# -- (11) an exclusive stream taken over stops where it is ---------------------------------------


async def test_a_superseded_exclusive_stream_stops_mid_backlog_and_says_why(
    nursery: trio.Nursery,
) -> None:
    store = MemorySessionStore(max_events=500, max_bytes=1 << 20)
    await store.create(new_record("s"))
    for n in range(200):
        await store.append(LogKey("s"), str(n))
    body = FakeBody()
    stream = LogStream(StoreLog(store, LogKey("s")), body, Pinger(60), control=control_comment)
    nursery.start_soon(partial(stream.run, 0))
    await trio.lowlevel.checkpoint()  # the replay has started, a page at a time
    stream.close("superseded", drain=False)
    await trio.testing.wait_all_tasks_blocked()
    assert stream.sent_seq < 200  # the rest is the newer stream's to send
    assert bytes(body.written).endswith(b': close {"reason":"superseded"}\n\n')
    assert bytes(body.written).count(b"\nid: ") + bytes(body.written).startswith(b"id: ") == (
        stream.sent_seq
    )


# -- (9) short errors, cursors, charsets ---------------------------------------------------------


def test_quote_keeps_100_characters_of_client_input_and_says_how_much_is_gone() -> None:
    assert quote("abc") == "'abc'"
    quoted = quote("x" * 12_000)
    assert quoted.startswith("'" + "x" * 100 + "'") and "11900 more characters" in quoted
    assert len(quoted) < 140


def test_every_error_detail_is_clipped_wherever_it_was_built() -> None:
    exc = BadRequest(f"unknown tool: {'n' * 100_000}")
    assert len(exc.detail) <= MAX_DETAIL_CHARS and len(str(exc)) <= MAX_DETAIL_CHARS
    assert exc.detail.startswith("unknown tool: nnn") and "more characters" in exc.detail
    assert BadRequest("short").detail == "short"


@pytest.mark.parametrize("digits", ["9" * 5000, "9" * 19, "1" * 4301])
def test_a_cursor_with_too_many_digits_is_invalid_params(digits: str) -> None:
    cursor = base64.urlsafe_b64encode(f"dp1:{digits}".encode()).decode()
    with pytest.raises(InvalidParams, match="invalid cursor"):
        mcp.paginate(list(range(10)), cursor, 3)


def test_our_own_cursors_still_page() -> None:
    page, cursor = mcp.paginate(list(range(10)), None, 3)
    assert page == [0, 1, 2] and cursor is not None
    assert mcp.paginate(list(range(10)), cursor, 3)[0] == [3, 4, 5]


@pytest.mark.parametrize(
    ("declared", "used"),
    [
        ("rot13", "utf-8"),
        ("hex", "utf-8"),
        ("base64", "utf-8"),
        ("idna", "utf-8"),
        ("undefined", "utf-8"),
        ("no-such-codec", "utf-8"),
        ("utf-16", "utf-16"),
        ("ISO-8859-1", "iso8859-1"),
        ('"windows-1252"', "cp1252"),
    ],
)
def test_a_declared_charset_is_used_only_if_it_can_decode_a_page(declared: str, used: str) -> None:
    headers = [(b"content-type", f"text/html; charset={declared}".encode())]
    assert _charset(headers) == used
