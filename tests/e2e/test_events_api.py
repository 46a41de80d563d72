"""The original /events + /message API, end to end over real sockets."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import trio

from datapulse import Server, ToolContext
from datapulse.auth.verifier import Principal
from datapulse.errors import Unauthorized
from tests.helpers import AUTH, SSEReader, start_server, wait_for


async def post(client: httpx.AsyncClient, session: str, body: Any) -> httpx.Response:
    return await client.post(f"/message?session_id={session}", json=body)


async def test_walkthrough_get_time(client: httpx.AsyncClient) -> None:
    async with client.stream("GET", "/events?session_id=abc123") as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream"
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"
        reader = SSEReader(response)
        hint = await reader.next()
        assert hint.retry == 3000
        ack = await post(
            client,
            "abc123",
            {"type": "call_tool", "request_id": "req-2", "data": {"name": "get_time"}},
        )
        assert ack.status_code == 202
        assert ack.json() == {"status": "queued", "request_id": "req-2"}
        event = await reader.next_data()
        assert event.id == "1"
        message = json.loads(event.data or "")
        assert message["type"] == "tool_result"
        assert message["request_id"] == "req-2"
        assert message["data"]["time"].endswith("Z")
        assert b'data: {"type":"tool_result","request_id":"req-2"' in reader.raw


async def test_list_tools_and_errors_on_the_stream(client: httpx.AsyncClient) -> None:
    async with client.stream("GET", "/events?session_id=s1") as response:
        reader = SSEReader(response)
        await post(client, "s1", {"type": "list_tools", "request_id": "r1", "data": {}})
        listed = json.loads((await reader.next_data()).data or "")
        assert listed["type"] == "list_tools"
        names = [t["name"] for t in listed["data"]]
        assert names[:2] == ["get_time", "fetch_url"]
        assert all(t["inputSchema"]["type"] == "object" for t in listed["data"])

        await post(
            client, "s1", {"type": "call_tool", "request_id": "r2", "data": {"name": "nope"}}
        )
        error = json.loads((await reader.next_data()).data or "")
        assert error == {"type": "error", "request_id": "r2", "error": "unknown tool: nope"}

        await post(
            client, "s1", {"type": "call_tool", "request_id": "r3", "data": {"name": "fetch_url"}}
        )
        error = json.loads((await reader.next_data()).data or "")
        assert error["type"] == "error" and "url" in error["error"]

        # The seed's examples put tool arguments beside the name; a refused URL is a clean error.
        await post(
            client,
            "s1",
            {
                "type": "call_tool",
                "request_id": "r4",
                "data": {"name": "fetch_url", "url": "http://127.0.0.1:1/"},
            },
        )
        error = json.loads((await reader.next_data()).data or "")
        assert error["type"] == "error" and error["request_id"] == "r4"


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        (b"not json", 400, "JSON"),
        (b"[1,2]", 422, "object"),
        (b'{"request_id":"x"}', 422, "type"),
        (b'{"type":"call_tool"}', 422, "request_id"),
        (b'{"type":"explode","request_id":"x"}', 422, "type"),
        (b'{"type":"list_tools","request_id":7}', 422, "request_id"),
        (b'{"type":"list_tools","request_id":"x","data":[1]}', 422, "data"),
    ],
)
async def test_bad_message_bodies(
    client: httpx.AsyncClient, body: bytes, status: int, field: str
) -> None:
    async with client.stream("GET", "/events?session_id=bad"):
        response = await client.post("/message?session_id=bad", content=body)
    assert response.status_code == status
    assert field in response.json()["detail"]


async def test_missing_and_unknown_session(client: httpx.AsyncClient) -> None:
    response = await client.post("/message", json={"type": "list_tools", "request_id": "a"})
    assert response.status_code == 400
    assert "session_id" in response.json()["detail"]
    response = await client.get("/events")
    assert response.status_code == 400
    response = await post(client, "never-opened", {"type": "list_tools", "request_id": "a"})
    assert response.status_code == 404
    assert response.json()["error"] == "session_not_found"
    response = await client.get("/events?session_id=has%20space")
    assert response.status_code == 400


async def test_auth_required_everywhere_but_health(server: Server) -> None:
    assert server.info is not None
    async with httpx.AsyncClient(base_url=server.info.url) as anon:
        for method, path in [("GET", "/events?session_id=a"), ("POST", "/message?session_id=a")]:
            response = await anon.request(method, path)
            assert response.status_code == 401
            assert response.headers["www-authenticate"].startswith("Bearer")
            assert response.json()["error"] == "unauthorized"
        bad = await anon.get("/events?session_id=a", headers={"Authorization": "Bearer wrong"})
        assert bad.status_code == 401
        assert (await anon.get("/healthz")).status_code == 200


async def test_results_queued_before_the_stream_opens_are_delivered(
    server: Server, client: httpx.AsyncClient
) -> None:
    async with client.stream("GET", "/events?session_id=q"):
        pass  # creates the session, then leaves
    live = server.sessions.lookup("q")
    assert live is not None
    await wait_for(lambda: live.stream is None, 2, "the server to notice the stream left")
    for i in range(3):
        assert (
            await post(
                client,
                "q",
                {"type": "call_tool", "request_id": f"r{i}", "data": {"name": "get_time"}},
            )
        ).status_code == 202
    await wait_for(lambda: live.running == 0, 2, "the three calls to finish")
    async with client.stream("GET", "/events?session_id=q") as response:
        reader = SSEReader(response)
        ids = [json.loads((await reader.next_data()).data or "")["request_id"] for _ in range(3)]
    assert ids == ["r0", "r1", "r2"]


async def test_last_event_id_replays_missed_events_in_order_without_duplicates(
    server: Server, client: httpx.AsyncClient
) -> None:
    async with client.stream("GET", "/events?session_id=r") as response:
        reader = SSEReader(response)
        for i in range(3):
            await server.publish("r", {"n": i})
        seen = [await reader.next_data() for _ in range(3)]
    assert [e.id for e in seen] == ["1", "2", "3"]
    live = server.sessions.lookup("r")
    assert live is not None
    await wait_for(lambda: live.stream is None, 2, "the server to notice the stream left")
    for i in range(3, 6):
        await server.publish("r", {"n": i})
    headers = {"Last-Event-ID": "2"}
    async with client.stream("GET", "/events?session_id=r", headers=headers) as response:
        reader = SSEReader(response)
        replay = [await reader.next_data() for _ in range(4)]
        await server.publish("r", {"n": 6})
        live = await reader.next_data()
    assert [e.id for e in replay] == ["3", "4", "5", "6"]
    assert [json.loads(e.data or "")["n"] for e in replay] == [2, 3, 4, 5]
    assert live.id == "7"


async def test_replay_gone_is_a_clear_error_event(nursery: trio.Nursery) -> None:
    server, info = await start_server(nursery, replay_events=3)
    async with httpx.AsyncClient(base_url=info.url, headers=AUTH) as client:
        async with client.stream("GET", "/events?session_id=g"):
            pass
        live = server.sessions.lookup("g")
        assert live is not None
        await wait_for(lambda: live.stream is None, 2, "the server to notice the stream left")
        for i in range(10):
            await server.publish("g", {"n": i})
        async with client.stream(
            "GET", "/events?session_id=g", headers={"Last-Event-ID": "1"}
        ) as response:
            reader = SSEReader(response)
            error = await reader.next_data()
            assert error.event == "error" and error.id is None
            assert json.loads(error.data or "")["error"] == "replay_gone"
            held = [await reader.next_data() for _ in range(3)]
    assert [e.id for e in held] == ["8", "9", "10"]


async def test_bad_last_event_id_is_400(client: httpx.AsyncClient) -> None:
    response = await client.get("/events?session_id=x", headers={"Last-Event-ID": "abc"})
    assert response.status_code == 400


async def test_ping_after_idle_interval(nursery: trio.Nursery) -> None:
    _, info = await start_server(nursery, ping_interval_s=0.1)
    async with httpx.AsyncClient(base_url=info.url, headers=AUTH) as client:
        async with client.stream("GET", "/events?session_id=p") as response:
            reader = SSEReader(response)
            started = trio.current_time()
            await reader.read_until(b": ping\n\n", count=2, timeout=3)
            assert trio.current_time() - started >= 0.19  # pings come after idleness, not before


async def test_second_get_supersedes_the_first(server: Server, client: httpx.AsyncClient) -> None:
    async with client.stream("GET", "/events?session_id=dup") as first:
        r1 = SSEReader(first)
        await r1.next()
        async with client.stream("GET", "/events?session_id=dup") as second:
            r2 = SSEReader(second)
            await r2.next()
            closing = await r1.next_data()
            assert closing.event == "close"
            assert json.loads(closing.data or "") == {"reason": "superseded"}
            await server.publish("dup", {"to": "second"})
            assert json.loads((await r2.next_data()).data or "") == {"to": "second"}


async def test_disconnect_while_idle_is_noticed_and_tasks_end(
    server: Server, client: httpx.AsyncClient
) -> None:
    before = len(trio.lowlevel.current_root_task().child_nurseries)  # sanity: root exists
    assert before >= 1
    async with client.stream("GET", "/events?session_id=d") as response:
        await SSEReader(response).next()
        live = server.sessions.lookup("d")
        assert live.stream is not None
    # The client is gone; the idle stream (ping interval 5 s) must notice via EOF, not a write.
    await wait_for(
        lambda: live.stream is None and not server.http.connections, 2, "the stream to notice EOF"
    )


async def test_sessions_are_bound_to_their_principal(nursery: trio.Nursery) -> None:
    class TwoUsers:
        async def verify(self, authorization: str | None) -> Principal:
            token = (authorization or "").removeprefix("Bearer ")
            if token in ("alice", "bob"):
                return Principal(id=token, subject=token)
            raise Unauthorized("who?")

    from tests.helpers import make_config

    server = Server(builtin_tools=True, config=make_config(), verifier=TwoUsers())
    info = await nursery.start(server.serve)
    async with httpx.AsyncClient(base_url=info.url) as client:
        alice = {"Authorization": "Bearer alice"}
        bob = {"Authorization": "Bearer bob"}
        async with client.stream("GET", "/events?session_id=shared", headers=alice):
            response = await client.post(
                "/message?session_id=shared",
                json={"type": "list_tools", "request_id": "x"},
                headers=bob,
            )
            assert response.status_code == 404
            # Issue 12 (8): ids are per principal, so this is bob's own "shared" (was: 404,
            # which told bob that alice's id exists).
            async with client.stream("GET", "/events?session_id=shared", headers=bob) as theirs:
                assert theirs.status_code == 200


async def test_session_expires_after_ttl_and_is_swept(nursery: trio.Nursery) -> None:
    """Over HTTP: a POST is activity, and once the sweeper has expired the session a POST is
    404. The TTL arithmetic itself (a stream keeps a session alive, activity refreshes it) runs
    on the mock clock in tests/unit/test_live_sessions.py."""
    server, info = await start_server(nursery, session_ttl_s=0.2, sweep_interval_s=0.05)
    async with httpx.AsyncClient(base_url=info.url, headers=AUTH) as client:
        async with client.stream("GET", "/events?session_id=ttl") as response:
            reader = SSEReader(response)  # kept: dropping it would close the response
            await reader.next()
        assert (
            await post(client, "ttl", {"type": "list_tools", "request_id": "a"})
        ).status_code == 202
        await wait_for(lambda: server.sessions.lookup("ttl") is None, 3, "the session to expire")
        response = await post(client, "ttl", {"type": "list_tools", "request_id": "b"})
        assert response.status_code == 404


async def test_expiry_cancels_in_flight_tools(nursery: trio.Nursery) -> None:
    server, info = await start_server(nursery, session_ttl_s=0.2, sweep_interval_s=0.05)
    cleaned = trio.Event()

    @server.tool("slow")
    async def slow(arguments: dict[str, Any], context: ToolContext) -> None:
        try:
            await trio.sleep_forever()
        finally:
            cleaned.set()

    async with httpx.AsyncClient(base_url=info.url, headers=AUTH) as client:
        async with client.stream("GET", "/events?session_id=x"):
            pass
        await post(client, "x", {"type": "call_tool", "request_id": "a", "data": {"name": "slow"}})
        with trio.fail_after(3):
            await cleaned.wait()


async def test_user_tool_with_progress(server: Server, client: httpx.AsyncClient) -> None:
    @server.tool(
        "count",
        input_schema={
            "type": "object",
            "properties": {"n": {"type": "integer"}},
            "required": ["n"],
        },
    )
    async def count(arguments: dict[str, Any], context: ToolContext) -> dict[str, int]:
        for i in range(arguments["n"]):
            await context.report_progress(i + 1, arguments["n"])
        return {"counted": arguments["n"]}

    async with client.stream("GET", "/events?session_id=c") as response:
        reader = SSEReader(response)
        await post(
            client,
            "c",
            {
                "type": "call_tool",
                "request_id": "a",
                "data": {"name": "count", "arguments": {"n": 2}},
            },
        )
        kinds = [json.loads((await reader.next_data()).data or "") for _ in range(3)]
    assert [k["type"] for k in kinds] == ["progress", "progress", "tool_result"]
    assert kinds[2]["data"] == {"counted": 2}


async def test_slow_consumer_overflow_catches_up_from_the_log(nursery: trio.Nursery) -> None:
    server, info = await start_server(nursery, replay_events=10_000)
    async with httpx.AsyncClient(base_url=info.url, headers=AUTH) as client:
        async with client.stream("GET", "/events?session_id=o") as response:
            reader = SSEReader(response)
            await reader.next()
            for i in range(500):  # far more than the channel holds, published without waiting
                await server.publish("o", {"n": i})
            got = [json.loads((await reader.next_data()).data or "")["n"] for _ in range(500)]
    assert got == list(range(500))


async def test_a_failing_session_task_or_late_publish_never_takes_the_server_down(
    server: Server, client: httpx.AsyncClient
) -> None:
    from datapulse.errors import SessionNotFound

    async with client.stream("GET", "/events?session_id=late"):
        pass
    live = server.sessions.lookup("late")

    async def broken() -> None:
        raise RuntimeError("bug in a session task")

    server.sessions.spawn(live, broken)
    await wait_for(lambda: live.running == 0, 2, "the broken task to fail")
    await server.sessions.close(live, "session_deleted")
    with pytest.raises(SessionNotFound):
        await server.sessions.publish(live, {"too": "late"})
    assert (await client.get("/healthz")).status_code == 200
