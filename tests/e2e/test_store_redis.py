"""The Redis session store against a real, private redis-server (tests/redis_server.py).

Every test of the store contract (tests/unit/test_store_contract.py) runs here against
``RedisSessionStore``, twice: on a plain Redis, and on a one-node Redis Cluster that holds every
slot, where Redis itself refuses a script or command whose keys are in different slots
(CROSSSLOT): so the contract passing there is the proof that each operation stays within one
session's (or one principal's) hash slot. The contract's tests are imported, not copied: a test
added there runs here too.

Then what only Redis has: the key layout and its hash tags, TTLs, stream trimming, the change
channel, URLs with credentials and TLS, prefixes sharing one server, and failures: a cancelled
call returns at once, a paused (SIGSTOP) server times out within the configured timeout, a
restart is reconnected to (and with persistence the session goes on where it was).
"""

from __future__ import annotations

import inspect
import json
import random
import tempfile
import time
import types
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import coredis
import httpx
import pytest
import trio
from coredis.retry import NoRetryPolicy

from datapulse import Server
from datapulse.core.eventlog import ReplayGone
from datapulse.core.sse import encode_data
from datapulse.store import KEPT_REQUEST_LOGS, LogKey, MemorySessionStore, UnknownLog
from datapulse.store.redis import Change, RedisSessionStore, StoreUnavailable, redacted_url
from tests.e2e import test_shared_store as shared_store
from tests.helpers import AUTH, SSEReader, bound_tests, make_config, wait_for
from tests.redis_server import RedisServer, redis_server, shared_redis, shared_redis_cluster
from tests.unit import test_store_contract as contract
from tests.unit.store_helpers import new_record

__all__ = ["redis_server", "shared_redis", "shared_redis_cluster"]  # fixtures, used by name

# -- the contract, against Redis -------------------------------------------------------------------

for _name, _test in list(vars(contract).items()):
    if _name.startswith("test_") and callable(_test):
        globals()[f"{_name}"] = _test  # collected here, with this module's ``store`` fixture


def new_prefix() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=["standalone", "cluster"])
async def store(
    request: pytest.FixtureRequest,
    shared_redis: RedisServer,
    shared_redis_cluster: RedisServer,
) -> AsyncIterator[RedisSessionStore]:
    server = shared_redis if request.param == "standalone" else shared_redis_cluster
    async with RedisSessionStore(
        server.url(),
        max_events=contract.MAX_EVENTS,
        max_bytes=contract.MAX_BYTES,
        prefix=new_prefix(),
    ) as opened:
        yield opened


# -- helpers -----------------------------------------------------------------------------------------


@asynccontextmanager
async def open_store(url: str, **options: Any) -> AsyncIterator[RedisSessionStore]:
    options.setdefault("max_events", contract.MAX_EVENTS)
    options.setdefault("max_bytes", contract.MAX_BYTES)
    options.setdefault("prefix", new_prefix())
    async with RedisSessionStore(url, **options) as opened:
        yield opened


@asynccontextmanager
async def raw_client(server: RedisServer) -> AsyncIterator[coredis.Redis[str]]:
    """A plain coredis client to look at what the store wrote."""
    client = coredis.Redis.from_url(
        server.url(), decode_responses=True, retry_policy=NoRetryPolicy(), stream_timeout=5
    )
    async with client:
        yield client


async def session_keys(raw: coredis.Redis[str], prefix: str) -> set[str]:
    return {key async for key in raw.scan_iter(match=f"{prefix}:*")}


# -- keys ----------------------------------------------------------------------------------------------


async def test_every_key_of_a_session_carries_its_id_as_hash_tag(
    shared_redis_cluster: RedisServer,
) -> None:
    server = shared_redis_cluster
    async with open_store(server.url()) as store, raw_client(server) as raw:
        p = store.prefix
        await store.create(new_record("s1"))
        await store.save_protocol("s1", {"v": 1})
        await store.append(LogKey("s1"), "zero")
        request_log = await store.open_request_log("s1")
        await store.append(request_log, "one")
        await store.close_log(request_log)
        await store.put_state("k1", {"x": 1}, 60)
        await store.create_task("alice", "t1", {"a": 1}, 60, limit=5)
        keys = await session_keys(raw, p)
        tasks = next(k for k in keys if k.endswith(":tasks"))
        task_base = tasks[: -len("tasks")]
        assert task_base.startswith(f"{p}:{{t.") and task_base.endswith("}:")
        owned = next(k for k in keys if k.endswith(":owned"))  # the owner's sessions, counted
        assert owned.startswith(f"{p}:{{o.")
        assert keys == {
            owned,
            f"{p}:{{s1}}:rec",
            f"{p}:{{s1}}:proto",
            f"{p}:{{s1}}:logs",
            f"{p}:{{s1}}:reqs",
            f"{p}:{{s1}}:log:0",
            f"{p}:{{s1}}:log:{request_log.stream}",
            f"{p}:sessions",
            f"{p}:state:k1",
            f"{task_base}tasks",
            f"{task_base}n",
            f"{task_base}task:t1",
        }
        types = {key: await raw.type(key) for key in keys}
        assert types[f"{p}:{{s1}}:rec"] == "hash"
        assert types[f"{p}:{{s1}}:log:0"] == "stream"
        assert types[f"{p}:sessions"] == "zset"
        # The server's own word on the slots: one for the session, one for the principal.
        session_slots = {server.cli("cluster", "keyslot", k) for k in keys if "{s1}" in k}
        task_slots = {server.cli("cluster", "keyslot", k) for k in keys if k.startswith(task_base)}
        assert len(session_slots) == 1 and len(task_slots) == 1
        assert session_slots == {server.cli("cluster", "keyslot", "s1")}
        # What a session's keys hold: the record's fields and the framed event bytes.
        record = await raw.hgetall(f"{p}:{{s1}}:rec")
        assert record["owner"] == "alice" and record["ttl_s"] == "60.0"
        entries = await raw.xrange(f"{p}:{{s1}}:log:0")
        assert [(e.identifier, dict(e.field_values)) for e in entries] == [
            ("0-1", {"w": encode_data("zero", event_id="1").decode()})
        ]
        await store.delete("s1")
        assert {k for k in await session_keys(raw, p) if "{s1}" in k} == set()


async def test_odd_session_ids_keep_to_one_slot_on_a_cluster(
    shared_redis_cluster: RedisServer,
) -> None:
    """Ids may hold any visible ASCII, braces too: the hash tag is then only a part of the id,
    but the same part for every key of that session, so nothing crosses a slot."""
    async with open_store(shared_redis_cluster.url()) as store:
        for session_id in ["we{ir}d", "}x{", "a}:log:3", "{", "}", "%7B%", "x" * 128]:
            change = Change(LogKey(session_id, 3), 5)
            assert store.parse_change(f"{store.log_key(change.key)} 5") == change
            await store.create(new_record(session_id))
            await store.save_protocol(session_id, {"id": session_id})
            await store.touch(session_id, 150.0)
            for _ in range(KEPT_REQUEST_LOGS + 1):
                key = await store.open_request_log(session_id)
                await store.append(key, "r")
            assert (await store.append(LogKey(session_id), "s")).seq == 1
            assert [e.seq for e in (await store.read(LogKey(session_id), 0)).events] == [1]
            assert (await store.get(session_id)).last_active == 150.0  # type: ignore[union-attr]
            await store.delete(session_id)
            assert await store.get(session_id) is None


async def test_events_are_framed_exactly_as_the_memory_store_frames_them(
    shared_redis: RedisServer,
) -> None:
    cases = [
        ("plain", None),
        ('{"json": "id: 0\\n"}', "message"),
        ("two\nlines\r\nand id: 0\n", None),
        ("x", "xid: 0"),
        ("", "id"),
        ("ünïcødé ✓", "évent"),
    ]
    async with open_store(shared_redis.url(), max_events=100, max_bytes=100_000) as store:
        await store.create(new_record("a"))
        request_log = await store.open_request_log("a")
        for key in (LogKey("a"), request_log):
            memory = MemorySessionStore(100, 100_000)
            await memory.create(new_record("a"))
            mkey = LogKey("a") if key.stream == 0 else await memory.open_request_log("a")
            for data, event in cases:
                ours = await store.append(key, data, event)
                theirs = await memory.append(mkey, data, event)
                assert (ours.seq, ours.wire) == (theirs.seq, theirs.wire)
            assert (await store.read(key, 0)).events == (await memory.read(mkey, 0)).events


# -- bounds --------------------------------------------------------------------------------------------


async def test_the_log_bounds_match_the_memory_store_event_for_event(
    shared_redis: RedisServer,
) -> None:
    """Random sizes against both bounds: the same events held, the same ReplayGone."""
    rng = random.Random(10)
    async with open_store(shared_redis.url(), max_events=20, max_bytes=3_000) as store:
        memory = MemorySessionStore(20, 3_000)
        await store.create(new_record("a"))
        await memory.create(new_record("a"))
        key = LogKey("a")
        for n in range(300):
            data = "x" * rng.choice([1, 10, 100, 400, 2_000, 5_000])
            assert (await store.append(key, data)).seq == (await memory.append(key, data)).seq
            if n % 7 == 0:
                last = n + 1
                for after in {0, last - 25, last - 21, last - 20, last - 3, last - 1, last}:
                    try:
                        expected = await memory.read(key, after)
                    except ReplayGone as gone:
                        with pytest.raises(ReplayGone) as ours:
                            await store.read(key, after)
                        assert (ours.value.requested, ours.value.oldest) == (
                            gone.requested,
                            gone.oldest,
                        )
                    else:
                        assert (await store.read(key, after)).events == expected.events
                        limited = await store.read(key, after, limit=2)
                        assert limited.events == expected.events[:2]
                        assert limited.last_seq == last


async def test_the_stream_is_trimmed_to_about_the_bound(shared_redis: RedisServer) -> None:
    """MINID ~ (approximate) trimming: Redis keeps at most one stream node (100 entries by
    default) beyond what the log holds; what reads see is exact."""
    async with open_store(shared_redis.url(), max_events=5, max_bytes=1_000_000) as store:
        async with raw_client(shared_redis) as raw:
            await store.create(new_record("a"))
            for n in range(1_000):
                await store.append(LogKey("a"), f"e{n}")
            length = await raw.xlen(store.log_key(LogKey("a")))
            assert 5 <= length <= 5 + 100
            assert [e.seq for e in (await store.read(LogKey("a"), 995)).events] == [
                996,
                997,
                998,
                999,
                1000,
            ]
            with pytest.raises(ReplayGone) as gone:
                await store.read(LogKey("a"), 994)
            assert gone.value.oldest == 996
            # Big events: the byte bound trims too (few per node, so close to exact).
            for _ in range(50):
                await store.append(LogKey("a"), "y" * 300_000)
            info = await raw.xinfo_stream(store.log_key(LogKey("a")))
            assert info["length"] <= 5 + 1


# -- TTLs ----------------------------------------------------------------------------------------------


async def test_every_key_of_a_session_has_the_records_ttl_plus_the_grace(
    shared_redis: RedisServer,
) -> None:
    async with open_store(shared_redis.url(), ttl_grace_s=10) as store:
        async with raw_client(shared_redis) as raw:
            await store.create(new_record("a"))  # ttl_s 60
            await store.save_protocol("a", {"v": 1})
            await store.append(LogKey("a"), "x")
            request_log = await store.open_request_log("a")
            await store.append(request_log, "y")
            keys = await session_keys(raw, store.prefix)
            session = {k for k in keys if "{a}" in k}
            assert len(session) == 6
            for key in session:
                assert 69_000 < await raw.pttl(key) <= 70_000, key
            await store.put_state("s", {"x": 1}, 1.5)
            assert 1_000 < await raw.pttl(f"{store.prefix}:state:s") <= 1_500
            assert await raw.pttl(f"{store.prefix}:sessions") == -1  # the index is not a record


async def test_touch_keeps_a_session_in_redis_and_without_it_every_key_goes(
    shared_redis: RedisServer,
) -> None:
    async with open_store(shared_redis.url(), ttl_grace_s=0) as store:
        async with raw_client(shared_redis) as raw:
            record = new_record("a")
            record.ttl_s = 0.6
            await store.create(record)
            await store.append(LogKey("a"), "x")
            await store.append(await store.open_request_log("a"), "y")
            await store.save_protocol("a", {"v": 1})
            await trio.sleep(0.4)
            await store.touch("a", 200.0)
            await trio.sleep(0.4)  # past the first expiry: the touch moved it
            assert len({k for k in await session_keys(raw, store.prefix) if "{a}" in k}) == 6
            assert (await store.read(LogKey("a"), 0)).last_seq == 1
            await trio.sleep(0.5)
            assert {k for k in await session_keys(raw, store.prefix) if "{a}" in k} == set()
            assert await store.get("a") is None
            with pytest.raises(UnknownLog):
                await store.append(LogKey("a"), "late")


# -- the change channel --------------------------------------------------------------------------------


async def test_every_append_is_published_on_the_change_channel(
    shared_redis: RedisServer,
) -> None:
    url = shared_redis.url()
    async with open_store(url) as store, open_store(url, prefix=store.prefix) as other:
        await store.create(new_record("a"))
        request_log = await store.open_request_log("a")
        async with raw_client(shared_redis) as raw:
            async with raw.pubsub(channels=[store.channel], ignore_subscribe_messages=True) as ps:
                async with other.changes() as changes:
                    await store.append(LogKey("a"), "x")
                    await store.append(request_log, "y")
                    await store.append(LogKey("a"), "z")
                    seen: list[Change] = []
                    with trio.fail_after(5):
                        async for change in changes:
                            seen.append(change)
                            if len(seen) == 3:
                                break
                    assert seen == [
                        Change(LogKey("a"), 1),
                        Change(request_log, 1),
                        Change(LogKey("a"), 2),
                    ]
                with trio.fail_after(5):
                    message = await ps.__anext__()  # the first message published: as sent
                assert message["channel"] == f"{store.prefix}:changes"
                assert message["data"] == f"{store.prefix}:{{a}}:log:0 1"


# -- prefixes ------------------------------------------------------------------------------------------


async def test_two_prefixes_on_one_redis_are_two_stores(shared_redis: RedisServer) -> None:
    url = shared_redis.url()
    async with open_store(url, prefix="blue") as blue, open_store(url, prefix="green") as green:
        for s in (blue, green):  # the shared server may hold these from an earlier run
            await s.delete("s")
            await s.delete_task("alice", "t")
        await blue.create(new_record("s", owner="alice"))
        await green.create(new_record("s", owner="bob"))  # the same id, another deployment
        await blue.append(LogKey("s"), "blue only")
        await blue.put_state("k", {"who": "blue"}, 60)
        await blue.create_task("alice", "t", {"who": "blue"}, 60, limit=5)
        assert (await green.get("s")).owner == "bob"  # type: ignore[union-attr]
        assert await green.last_seq(LogKey("s")) == 0
        assert await green.take_state("k") is None
        assert await green.load_task("alice", "t") is None
        assert await blue.count() == 1 and await green.count() == 1
        await blue.delete("s")
        assert await green.get("s") is not None
        assert await blue.take_state("k") == {"who": "blue"}
        await green.delete("s")
        await blue.delete_task("alice", "t")


# -- URLs ----------------------------------------------------------------------------------------------


async def test_a_url_with_user_and_password_authenticates(tmp_path: Any) -> None:
    password = "p@ss:w/rd %!"
    with RedisServer(tmp_path / "acl", users={"datapulse": password}) as server:
        async with open_store(server.url("datapulse", password)) as store:
            assert await store.ready() is None
            await store.create(new_record("a"))
            assert (await store.append(LogKey("a"), "x")).seq == 1
        async with open_store(server.url("datapulse", "wrong"), timeout_s=1) as refused:
            reason = await refused.ready()
            assert reason is not None and "wrong" not in reason
            with pytest.raises(StoreUnavailable):
                await refused.get("a")
        assert "wrong" not in repr(refused) and "***" in refused.url
    assert redacted_url("redis://u:secret@h:1/0") == "redis://u:***@h:1/0"


async def test_a_rediss_url_verifies_the_servers_certificate(tmp_path: Any) -> None:
    with RedisServer(tmp_path / "tls", tls=True) as server:
        async with open_store(server.url(host="localhost")) as store:
            assert await store.ready() is None
            await store.create(new_record("a"))
            assert (await store.append(LogKey("a"), "x")).seq == 1
        # Without our CA the certificate is not trusted: not ready, and calls fail.
        untrusted = f"rediss://localhost:{server.port}/0"
        async with open_store(untrusted, timeout_s=1) as store:
            assert await store.ready() is not None
        insecure = f"rediss://127.0.0.1:{server.port}/0?ssl_cert_reqs=none"
        async with open_store(insecure, timeout_s=1) as store:
            assert await store.ready() is None


def test_bad_settings_are_refused_at_once() -> None:
    for url in ["http://h/", "unix:///tmp/redis.sock", "redis://"]:
        with pytest.raises(ValueError):
            RedisSessionStore(url, max_events=5, max_bytes=100)
    for prefix in ["", "a{b", "a}b", "a b", "x" * 101]:
        with pytest.raises(ValueError):
            RedisSessionStore("redis://h/0", max_events=5, max_bytes=100, prefix=prefix)
    with pytest.raises(ValueError):
        RedisSessionStore("redis://h/0", max_events=0, max_bytes=100)


async def test_a_store_that_is_not_open_says_so() -> None:
    store = RedisSessionStore("redis://127.0.0.1:1/0", max_events=5, max_bytes=100)
    assert await store.ready() is not None
    with pytest.raises(RuntimeError, match="open"):
        await store.get("a")


# -- failures ------------------------------------------------------------------------------------------


async def test_a_cancelled_call_returns_at_once_and_the_connection_stays_in_step(
    redis_server: RedisServer,
) -> None:
    async with open_store(redis_server.url(), timeout_s=10) as store:
        await store.create(new_record("a"))
        await store.append(LogKey("a"), "one")
        redis_server.pause()
        try:
            started = trio.current_time()
            with trio.move_on_after(0.1) as scope:
                await store.read(LogKey("a"), 0)
            assert scope.cancelled_caught
            assert trio.current_time() - started < 0.1 + 0.1
            with trio.move_on_after(0.1):
                await store.get("a")
        finally:
            redis_server.resume()
        # The late replies of the cancelled commands are read and dropped, not handed to the
        # next callers: each gets the answer to its own command.
        assert (await store.append(LogKey("a"), "two")).seq == 2
        read = await store.read(LogKey("a"), 0)
        assert [e.seq for e in read.events] == [1, 2]
        assert (await store.get("a")).owner == "alice"  # type: ignore[union-attr]


async def test_a_paused_redis_times_out_within_the_timeout(redis_server: RedisServer) -> None:
    timeout = 0.5
    async with open_store(redis_server.url(), timeout_s=timeout) as store:
        await store.create(new_record("a"))  # a connection is open
        redis_server.pause()
        try:
            for call in (
                lambda: store.get("a"),
                lambda: store.append(LogKey("a"), "x"),
                lambda: store.read(LogKey("a"), 0),
            ):
                started = time.monotonic()
                with pytest.raises(StoreUnavailable):
                    await call()
                assert timeout <= time.monotonic() - started + 0.01 < timeout + 0.3
            started = time.monotonic()
            assert await store.ready() is not None
            assert time.monotonic() - started < timeout + 0.3
            # A store with no connection yet: the connect attempt is bounded the same way.
            async with open_store(redis_server.url(), timeout_s=timeout) as cold:
                started = time.monotonic()
                with pytest.raises(StoreUnavailable):
                    await cold.count()
                assert time.monotonic() - started < timeout + 0.3
        finally:
            redis_server.resume()
        # The append that timed out may still have run once Redis woke (it was sent): the log
        # is whole either way, and the store answers again.
        last = await store.last_seq(LogKey("a"))
        assert last in (0, 1)
        assert (await store.append(LogKey("a"), "y")).seq == last + 1


async def test_a_restarted_redis_is_reconnected_to(redis_server: RedisServer) -> None:
    async with open_store(redis_server.url(), timeout_s=5) as store:
        await store.create(new_record("a"))
        await store.append(LogKey("a"), "x")
        redis_server.restart()  # no persistence: what it held is gone
        assert await store.ready() is None
        assert await store.get("a") is None
        with pytest.raises(UnknownLog):
            await store.append(LogKey("a"), "x")
        await store.create(new_record("a"))  # the scripts are loaded again as needed
        assert (await store.append(LogKey("a"), "again")).seq == 1


async def test_a_call_made_while_redis_is_down_succeeds_once_it_is_back(
    redis_server: RedisServer,
) -> None:
    async with open_store(redis_server.url(), timeout_s=5) as store:
        await store.create(new_record("a"))
        redis_server.stop()
        results: list[int] = []

        async def count_sessions() -> None:
            results.append(await store.count())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(count_sessions)
            await trio.sleep(0.3)  # the call retries (connection refused) meanwhile
            assert results == []
            await trio.to_thread.run_sync(redis_server.start)
        assert results == [0]
        # Down for longer than the timeout: StoreUnavailable after timeout_s, not a hang.
        redis_server.stop()
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await store.count()
        assert 5 <= time.monotonic() - started < 5 + 0.5


async def test_with_persistence_a_session_goes_on_across_a_restart(tmp_path: Any) -> None:
    with RedisServer(tmp_path / "aof", persist=True) as server:
        async with open_store(server.url(), timeout_s=5) as store:
            await store.create(new_record("a"))
            request_log = await store.open_request_log("a")
            for n in range(3):
                await store.append(LogKey("a"), f"e{n}")
            await store.append(request_log, "r")
            await store.save_protocol("a", {"initialized": True})
            server.restart()
            assert (await store.append(LogKey("a"), "after")).seq == 4
            assert [e.seq for e in (await store.read(LogKey("a"), 0)).events] == [1, 2, 3, 4]
            assert (await store.read(LogKey("a"), 3)).events[0].wire == encode_data(
                "after", event_id="4"
            )
            assert (await store.read(request_log, 0)).last_seq == 1
            assert await store.load_protocol("a") == {"initialized": True}
            assert (await store.open_request_log("a")).stream == request_log.stream + 1


async def test_a_retried_append_or_create_does_not_repeat_itself(
    shared_redis: RedisServer,
) -> None:
    """A retry after a lost reply sends the same token: the script finds its own effect."""
    async with open_store(shared_redis.url()) as store:
        await store.create(new_record("a"))
        first = await store._append_once(LogKey("a"), "x", None, "token-1")
        again = await store._append_once(LogKey("a"), "x", None, "token-1")
        assert first == again and await store.last_seq(LogKey("a")) == 1
        assert (await store._append_once(LogKey("a"), "x", None, "token-2")).seq == 2
        record = new_record("b")
        store._nonce, store._tokens = "fixed", iter([7, 7])  # the same token twice
        await store.create(record)
        await store.create(record)  # a retry: not SessionExists
        assert await store.count() == 2


# -- a server on the Redis store -----------------------------------------------------------------------


async def test_a_server_on_the_redis_store_replays_and_reports_readiness(
    redis_server: RedisServer,
) -> None:
    """What the transports rely on, through real sockets: ids, Last-Event-ID replay, the
    replay_gone event, and /readyz following Redis (the health route's ``ready()`` seam)."""
    async with open_store(redis_server.url(), max_events=3, timeout_s=0.5) as store:
        async with trio.open_nursery() as nursery:
            server = Server(builtin_tools=True, config=make_config(), store=store)
            info = await nursery.start(server.serve)
            async with httpx.AsyncClient(base_url=info.url, headers=AUTH, timeout=5) as client:
                async with client.stream("GET", "/events?session_id=r") as response:
                    reader = SSEReader(response)
                    for i in range(2):
                        await server.publish("r", {"n": i})
                    assert [(await reader.next_data()).id for _ in range(2)] == ["1", "2"]
                live = server.sessions.lookup("r")
                assert live is not None
                await wait_for(lambda: live.stream is None, 2, "the server to see the stream go")
                for i in range(2, 4):
                    await server.publish("r", {"n": i})
                headers = {"Last-Event-ID": "1"}
                async with client.stream("GET", "/events?session_id=r", headers=headers) as resp:
                    reader = SSEReader(resp)
                    replay = [await reader.next_data() for _ in range(3)]
                assert [e.id for e in replay] == ["2", "3", "4"]
                assert [json.loads(e.data or "")["n"] for e in replay] == [1, 2, 3]
                await wait_for(lambda: live.stream is None, 2, "the server to see the stream go")
                for i in range(4, 8):
                    await server.publish("r", {"n": i})  # 1..5 are gone now (3 held)
                async with client.stream("GET", "/events?session_id=r", headers=headers) as resp:
                    reader = SSEReader(resp)
                    error = await reader.next_data()
                    assert error.event == "error"
                    assert json.loads(error.data or "")["error"] == "replay_gone"
                    assert [(await reader.next_data()).id for _ in range(3)] == ["6", "7", "8"]
                assert (await client.get("/readyz")).status_code == 200
                redis_server.stop()
                down = await client.get("/readyz")
                assert down.status_code == 503
                assert down.json()["checks"]["store"] == "session store not ready"
                await trio.to_thread.run_sync(redis_server.start)
                assert (await client.get("/readyz")).status_code == 200
            nursery.cancel_scope.cancel()


# -- two instances on one Redis: the shared-store tests, on Redis ---------------------------------------


async def _two_servers_on_redis(nursery: trio.Nursery, **settings: Any) -> tuple[str, str]:
    """Two servers, each with a RedisSessionStore of its own (as two processes would have), on
    one private redis-server and one prefix. Redis outlives both: it stops after they have."""
    prefix = new_prefix()

    async def instance(url: str, *, task_status: trio.TaskStatus[str]) -> None:
        async with open_store(url, prefix=prefix, max_events=1000, max_bytes=4 << 20) as store:
            async with trio.open_nursery() as inner:
                config = make_config(retry_ms=100, **settings)
                server = Server(config, store=store, builtin_tools=True)
                info = await inner.start(server.serve)
                shared_store.SERVERS.append(server)  # what the shared tests drive
                task_status.started(info.url)

    async def deployment(*, task_status: trio.TaskStatus[tuple[str, str]]) -> None:
        with tempfile.TemporaryDirectory(prefix="datapulse-redis-") as directory:
            with RedisServer(Path(directory)) as redis:
                async with trio.open_nursery() as inner:
                    a = await inner.start(instance, redis.url())
                    b = await inner.start(instance, redis.url())
                    task_status.started((a, b))

    shared_store.SERVERS.clear()
    urls: tuple[str, str] = await nursery.start(deployment)
    return urls


# Each test of tests/e2e/test_shared_store.py (two servers sharing a store that announces every
# append), run again with its ``two_servers`` replaced by the one above: the same assertions, with
# Redis streams, scripts and pub/sub doing the sharing. (Unwrapped first: bound_tests wraps them,
# and the body, not the wrapper, is what looks ``two_servers`` up.)
_on_redis_tests: dict[str, Any] = {}
for _name, _test in list(vars(shared_store).items()):
    if _name.startswith("test_") and callable(_test):
        _body = inspect.unwrap(_test)
        _on_redis = types.FunctionType(
            _body.__code__,
            {**_body.__globals__, "two_servers": _two_servers_on_redis},
            f"{_name}_on_redis",
            _body.__defaults__,
            _body.__closure__,
        )
        _on_redis.__kwdefaults__ = _body.__kwdefaults__
        _on_redis.__annotations__ = _body.__annotations__
        _on_redis.__qualname__ = _on_redis.__name__
        _on_redis_tests[_on_redis.__name__] = _on_redis
bound_tests(_on_redis_tests, 20)
globals().update(_on_redis_tests)


async def test_the_per_principal_cap_holds_across_two_servers_on_redis(
    redis_server: RedisServer,
) -> None:
    """--max-sessions-per-principal 2 on each of two instances: a principal holds two sessions
    in all, wherever it opens them; closing one frees its slot everywhere."""
    prefix = new_prefix()
    with trio.fail_after(20):
        async with (
            open_store(redis_server.url(), prefix=prefix, max_events=100, max_bytes=1 << 20) as s1,
            open_store(redis_server.url(), prefix=prefix, max_events=100, max_bytes=1 << 20) as s2,
            trio.open_nursery() as nursery,
        ):
            urls = []
            for store in (s1, s2):
                server = Server(make_config(max_sessions_per_principal=2), store=store)
                urls.append((await nursery.start(server.serve)).url)
            headers = {**AUTH, "Accept": "application/json, text/event-stream"}
            init = {
                "jsonrpc": "2.0",
                "id": 0,
                "method": "initialize",
                "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {}},
            }
            async with httpx.AsyncClient(timeout=5) as http:
                first = await http.post(urls[0] + "/mcp", headers=headers, json=init)
                second = await http.post(urls[1] + "/mcp", headers=headers, json=init)
                assert first.status_code == second.status_code == 200
                third = await http.post(urls[0] + "/mcp", headers=headers, json=init)
                assert third.status_code == 429 and third.headers["retry-after"] == "5"
                gone = {**headers, "Mcp-Session-Id": first.headers["mcp-session-id"]}
                assert (await http.delete(urls[1] + "/mcp", headers=gone)).status_code == 200
                again = await http.post(urls[0] + "/mcp", headers=headers, json=init)
                assert again.status_code == 200
            nursery.cancel_scope.cancel()
