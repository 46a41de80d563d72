"""The contract every SessionStore backend keeps, run against each of them.

A backend is added to ``STORE_FACTORIES``; each test gets a fresh, empty store from it with
small log bounds (``MAX_EVENTS`` events, ``MAX_BYTES`` bytes). The transports and the session
manager rely on exactly what is asserted here, and on nothing else about a backend.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import trio

from datapulse.core.eventlog import ReplayGone
from datapulse.core.sse import encode_data
from datapulse.store import (
    KEPT_REQUEST_LOGS,
    LogKey,
    MemorySessionStore,
    SessionExists,
    SessionStore,
    UnknownLog,
)
from datapulse.store.base import StoredTask, TaskExists, TaskLimitReached
from tests.unit.store_helpers import new_record

MAX_EVENTS = 5
MAX_BYTES = 10_000


async def _memory() -> SessionStore:
    return MemorySessionStore(MAX_EVENTS, MAX_BYTES)


STORE_FACTORIES: dict[str, Callable[[], Awaitable[SessionStore]]] = {"memory": _memory}


@pytest.fixture(params=sorted(STORE_FACTORIES))
async def store(request: pytest.FixtureRequest) -> AsyncIterator[SessionStore]:
    yield await STORE_FACTORIES[request.param]()


# -- records -------------------------------------------------------------------------------------


async def test_a_created_record_reads_back_and_its_id_cannot_be_taken_twice(
    store: SessionStore,
) -> None:
    await store.create(new_record("a", owner="alice"))
    record = await store.get("a")
    assert record is not None
    assert (record.id, record.owner, record.kind, record.delivered_seq) == (
        "a",
        "alice",
        "events",
        0,
    )
    with pytest.raises(SessionExists):
        await store.create(new_record("a", owner="mallory"))
    assert (await store.get("a")).owner == "alice"  # type: ignore[union-attr]
    assert await store.get("nope") is None
    assert await store.count() == 1


async def test_a_record_handed_out_is_a_copy(store: SessionStore) -> None:
    await store.create(new_record("a"))
    record = await store.get("a")
    assert record is not None
    record.delivered_seq = 99
    record.touch(10_000.0)
    again = await store.get("a")
    assert again is not None and again.delivered_seq == 0 and again.last_active == 100.0


async def test_touch_moves_expiry_forward_only_and_expired_lists_what_is_due(
    store: SessionStore,
) -> None:
    await store.create(new_record("old", now=100.0))
    await store.create(new_record("fresh", now=100.0))
    await store.touch("fresh", 150.0)
    await store.touch("fresh", 120.0)  # never backwards
    assert (await store.get("fresh")).last_active == 150.0  # type: ignore[union-attr]
    assert await store.expired(159.0) == []
    assert await store.expired(160.0) == ["old"]
    assert sorted(await store.expired(210.0)) == ["fresh", "old"]
    await store.touch("missing", 1.0)  # no error


async def test_delivered_seq_never_moves_back(store: SessionStore) -> None:
    await store.create(new_record("a"))
    await store.mark_delivered("a", 7)
    await store.mark_delivered("a", 3)
    assert (await store.get("a")).delivered_seq == 7  # type: ignore[union-attr]
    await store.mark_delivered("missing", 1)


async def test_protocol_state_round_trips_as_json_and_goes_with_the_session(
    store: SessionStore,
) -> None:
    await store.create(new_record("a"))
    assert await store.load_protocol("a") is None
    state = {"protocol_version": "2025-11-25", "initialized": True, "client_info": {"n": "x"}}
    await store.save_protocol("a", state)
    state["client_info"]["n"] = "changed after saving"  # type: ignore[index]
    assert await store.load_protocol("a") == {
        "protocol_version": "2025-11-25",
        "initialized": True,
        "client_info": {"n": "x"},
    }
    await store.delete("a")
    assert await store.load_protocol("a") is None
    await store.save_protocol("a", state)  # a session that is gone keeps nothing
    assert await store.load_protocol("a") is None


async def test_delete_forgets_the_record_and_every_log_and_is_idempotent(
    store: SessionStore,
) -> None:
    await store.create(new_record("a"))
    request_log = await store.open_request_log("a")
    await store.append(LogKey("a"), "x")
    await store.delete("a")
    await store.delete("a")
    assert await store.get("a") is None and await store.count() == 0
    for key in (LogKey("a"), request_log):
        with pytest.raises(UnknownLog):
            await store.read(key, 0)
        with pytest.raises(UnknownLog):
            await store.append(key, "late")


# -- logs ----------------------------------------------------------------------------------------


async def test_events_get_consecutive_seqs_and_ids_and_read_returns_them_in_order(
    store: SessionStore,
) -> None:
    await store.create(new_record("a"))
    key = LogKey("a")
    assert await store.last_seq(key) == 0
    first = await store.append(key, "one")
    second = await store.append(key, "two", "message")
    assert (first.seq, second.seq) == (1, 2)
    assert first.wire == encode_data("one", event_id="1")
    assert second.wire == encode_data("two", event_id="2", event="message")
    read = await store.read(key, 0)
    assert [e.seq for e in read.events] == [1, 2]
    assert (read.last_seq, read.closed) == (2, False)
    assert (await store.read(key, 1)).events == [second]
    assert (await store.read(key, 2)).events == []
    assert [e.seq for e in (await store.read(key, 0, limit=1)).events] == [1]
    assert await store.last_seq(key) == 2


async def test_a_log_is_bounded_keeps_its_newest_and_says_what_is_gone(
    store: SessionStore,
) -> None:
    await store.create(new_record("a"))
    key = LogKey("a")
    for n in range(MAX_EVENTS + 3):
        await store.append(key, f"e{n}")
    with pytest.raises(ReplayGone) as gone:
        await store.read(key, 0)
    assert (gone.value.requested, gone.value.oldest) == (0, 4)
    held = await store.read(key, 3)
    assert [e.seq for e in held.events] == [4, 5, 6, 7, 8]
    big = await store.append(key, "x" * (MAX_BYTES * 2))  # over the byte bound on its own
    assert [e.seq for e in (await store.read(key, big.seq - 1)).events] == [big.seq]


async def test_request_logs_have_their_own_id_space_close_and_are_bounded_in_number(
    store: SessionStore,
) -> None:
    await store.create(new_record("a"))
    await store.create(new_record("b"))
    first = await store.open_request_log("a")
    other = await store.open_request_log("b")
    assert first.stream >= 1 and first.session_id == "a"
    assert (await store.append(first, "m")).wire == encode_data("m", event_id=f"{first.stream}-1")
    assert (await store.append(LogKey("a"), "s")).seq == 1  # the session's own log is apart
    await store.close_log(first)
    await store.close_log(first)
    read = await store.read(first, 0)
    assert read.closed and read.last_seq == 1
    assert not (await store.read(other, 0)).closed
    keys = [await store.open_request_log("a") for _ in range(KEPT_REQUEST_LOGS)]
    assert len({k.stream for k in keys}) == KEPT_REQUEST_LOGS
    with pytest.raises(UnknownLog):
        await store.read(first, 0)  # the oldest was dropped past the bound
    assert (await store.read(keys[0], 0)).events == []
    await store.close_log(first)  # a log that is gone is ignored


async def test_a_dropped_request_log_is_gone_and_the_session_log_cannot_be_dropped(
    store: SessionStore,
) -> None:
    await store.create(new_record("a"))
    key = await store.open_request_log("a")
    await store.drop_log(key)
    with pytest.raises(UnknownLog):
        await store.append(key, "late")
    await store.drop_log(LogKey("a"))
    assert (await store.append(LogKey("a"), "still here")).seq == 1


async def test_a_request_log_needs_its_session(store: SessionStore) -> None:
    with pytest.raises(UnknownLog):
        await store.open_request_log("nobody")


# -- tasks ---------------------------------------------------------------------------------------

TASK = {"task_id": "t1", "status": "working", "result": None, "nested": {"list": [1, "two"]}}


async def test_a_task_reads_back_as_json_and_as_a_copy_and_only_for_its_principal(
    store: SessionStore,
) -> None:
    data = {**TASK, "nested": {"list": [1, "two"]}}
    await store.create_task("alice", "t1", data, ttl_s=60, limit=10)
    data["nested"]["list"].append("changed after creating")  # type: ignore[index]
    held = await store.load_task("alice", "t1")
    assert held == StoredTask(1, TASK)
    assert held is not None
    held.data["status"] = "changed after reading"
    assert (await store.load_task("alice", "t1")) == StoredTask(1, TASK)
    assert await store.load_task("mallory", "t1") is None  # someone else's: not there at all
    assert await store.load_task("alice", "nope") is None
    assert await store.list_tasks("mallory") == []
    with pytest.raises(TaskExists):
        await store.create_task("alice", "t1", TASK, ttl_s=60, limit=10)


async def test_save_task_replaces_only_the_revision_it_read(store: SessionStore) -> None:
    await store.create_task("alice", "t1", TASK, ttl_s=60, limit=10)
    held = await store.load_task("alice", "t1")
    assert held is not None and held.rev == 1
    rev = await store.save_task("alice", "t1", {**TASK, "status": "completed"}, held.rev)
    assert rev is not None and rev > held.rev
    # A writer that read revision 1 does not overwrite what another wrote meanwhile.
    assert await store.save_task("alice", "t1", {**TASK, "status": "cancelled"}, held.rev) is None
    again = await store.load_task("alice", "t1")
    assert again is not None and again.rev == rev and again.data["status"] == "completed"
    assert await store.save_task("mallory", "t1", TASK, rev) is None  # not theirs
    assert await store.save_task("alice", "nope", TASK, 1) is None  # not there


async def test_tasks_list_oldest_first_and_delete_is_idempotent(store: SessionStore) -> None:
    for n in range(3):
        await store.create_task("alice", f"t{n}", {**TASK, "task_id": f"t{n}"}, 60, limit=10)
    await store.create_task("bob", "b0", TASK, ttl_s=60, limit=10)
    listed = await store.list_tasks("alice")
    assert [t.data["task_id"] for t in listed] == ["t0", "t1", "t2"]
    await store.delete_task("alice", "t1")
    await store.delete_task("alice", "t1")
    await store.delete_task("bob", "t0")  # another principal cannot delete alice's task
    assert [t.data["task_id"] for t in await store.list_tasks("alice")] == ["t0", "t2"]
    assert await store.load_task("alice", "t1") is None
    assert len(await store.list_tasks("bob")) == 1


async def test_each_principal_holds_at_most_limit_tasks_until_some_expire(
    store: SessionStore,
) -> None:
    await store.create_task("alice", "short", TASK, ttl_s=0.05, limit=2)
    await store.create_task("alice", "long", TASK, ttl_s=60, limit=2)
    with pytest.raises(TaskLimitReached, match="holds 2 tasks"):
        await store.create_task("alice", "third", TASK, ttl_s=60, limit=2)
    await store.create_task("bob", "b", TASK, ttl_s=60, limit=2)  # bob has his own bound
    await trio.sleep(0.1)
    assert await store.load_task("alice", "short") is None  # expired, whatever its status
    assert await store.save_task("alice", "short", TASK, 1) is None
    assert [t.data for t in await store.list_tasks("alice")] == [TASK]
    await store.create_task("alice", "third", TASK, ttl_s=60, limit=2)  # room again


async def test_a_saved_task_keeps_the_expiry_it_was_created_with(store: SessionStore) -> None:
    await store.create_task("alice", "t", TASK, ttl_s=0.5, limit=10)
    await trio.sleep(0.1)
    held = await store.load_task("alice", "t")
    assert held is not None
    assert await store.save_task("alice", "t", {**TASK, "status": "completed"}, held.rev)
    await trio.sleep(0.5)
    assert await store.load_task("alice", "t") is None
