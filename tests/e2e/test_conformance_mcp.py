"""Raw-HTTP conformance tests for Streamable HTTP (``/mcp``), every revision.

Each test is named after the items of ``mcp-conformance-checklist.md`` it checks (``c17`` is item
17); a test covering several items names them all. Items in sections B-L that are not tested here
are listed, with the reason, in ``docs/mcp.md`` ("Checklist items we skip"); section A (HTTP+SSE)
is in ``test_conformance_sse.py``, section M (authorization) belongs to the auth tests. The
official SDK's view of the same server is in ``test_interop_sdk.py``; this file talks bytes with
httpx so it can see statuses and headers.

Every server binds 127.0.0.1 on an ephemeral port; every network wait is bounded (``fail_after``
around each test, short client timeouts).
"""

from __future__ import annotations

import base64
import re
from typing import Any

import httpx
import orjson
import pytest
import trio
from mcp_types import methods as schema

from datapulse import Config, Server
from datapulse.auth.verifier import BearerVerifier, ChainVerifier
from datapulse.core import mcp, mcp_http
from datapulse.tools.registry import ToolContext
from tests.e2e.conformance_helpers import (
    BASE,
    BOTH,
    HANDSHAKE,
    LATEST,
    MODERN,
    assert_jsonrpc_error,
    call,
    error_of,
    init_body,
    initialize,
    messages,
    modern_body,
    modern_headers,
    post_modern,
    result_of,
    session_of,
    sse_events,
)
from tests.helpers import (
    AUTH,
    Env,
    SSEReader,
    bound_tests,
    make_config,
    make_env,
    note,
    raw_exchange,
    rpc,
    wait_for,
)

TEST_TIMEOUT_S = 10


# == B. Streamable HTTP, POST basics =============================================================


@pytest.mark.parametrize("version", HANDSHAKE)
async def test_c15_c16_c47_initialize_answers_200_with_json_or_sse(env: Env, version: str) -> None:
    response = await env.http.post("/mcp", headers=BASE, json=init_body(version))
    assert response.status_code == 200
    ctype = response.headers["content-type"]
    assert ctype.startswith(("application/json", "text/event-stream"))
    assert result_of(response)["protocolVersion"] == version
    # c15: the same path serves GET (the session's stream) as well.
    headers = {**BASE, "Mcp-Session-Id": session_of(response) or ""}
    async with env.http.stream("GET", "/mcp", headers=headers) as stream:
        assert stream.status_code == 200


@pytest.mark.parametrize(
    ("accept", "status"),
    [
        ("application/json", 406),
        ("text/event-stream", 406),
        ("text/html", 406),
        ("application/json, text/event-stream;q=0", 406),
        (BOTH, 200),
        ("*/*", 200),
        ("text/*, application/*", 200),
        ("application/json;q=0.9, text/*;q=0.5", 200),
    ],
)
async def test_c17_post_accept_must_cover_json_and_sse(env: Env, accept: str, status: int) -> None:
    response = await env.http.post("/mcp", headers={**BASE, "Accept": accept}, json=init_body())
    assert response.status_code == status, response.text
    if status == 406:
        assert_jsonrpc_error(response, 406, -32600, None)
        assert session_of(response) is None  # c40


async def test_c17_json_response_mode_needs_only_json(nursery: trio.Nursery) -> None:
    async with make_env(nursery, json_response=True) as env:
        ok = await env.http.post(
            "/mcp", headers={**BASE, "Accept": "application/json"}, json=init_body()
        )
        assert ok.status_code == 200
        refused = await env.http.post(
            "/mcp", headers={**BASE, "Accept": "text/event-stream"}, json=init_body()
        )
        assert refused.status_code == 406


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
async def test_c18_post_with_a_non_json_content_type_is_refused(
    env: Env, content_type: str | None
) -> None:
    headers = {**AUTH, "Accept": BOTH, **({"Content-Type": content_type} if content_type else {})}
    response = await env.http.post("/mcp", headers=headers, content=orjson.dumps(init_body()))
    assert response.status_code in (400, 415)
    assert session_of(response) is None  # c40


@pytest.mark.parametrize("with_session", [False, True])
async def test_c19_invalid_json_is_400_parse_error(env: Env, with_session: bool) -> None:
    headers = await initialize(env) if with_session else BASE
    response = await env.http.post("/mcp", headers=headers, content=b'{"jsonrpc": "2.0", "id": 1,')
    assert_jsonrpc_error(response, 400, -32700, None)
    assert with_session or session_of(response) is None  # c40


async def test_c20_c21_notifications_and_responses_get_202_without_body(env: Env) -> None:
    headers = await initialize(env, initialized=False)
    for body in (
        note("notifications/initialized"),
        note("notifications/cancelled", {"requestId": 99}),
        {"jsonrpc": "2.0", "id": "server-1", "result": {}},
        {"jsonrpc": "2.0", "id": "server-2", "error": {"code": -1, "message": "no"}},
    ):
        response = await env.http.post("/mcp", headers=headers, json=body)
        assert response.status_code == 202, body
        assert response.content == b""


@pytest.mark.parametrize(
    "body",
    [
        {"jsonrpc": "2.0", "method": 5},
        {"jsonrpc": "1.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 1},
        {"jsonrpc": "2.0", "id": 1, "result": {}, "error": {"code": 1, "message": "x"}},
    ],
)
async def test_c22_unacceptable_notifications_and_responses_are_4xx(
    env: Env, body: dict[str, Any]
) -> None:
    headers = await initialize(env)
    response = await env.http.post("/mcp", headers=headers, json=body)
    assert 400 <= response.status_code < 500


async def test_c22_notification_for_an_unknown_session_is_404(env: Env) -> None:
    headers = {**BASE, "Mcp-Session-Id": "f" * 32}
    response = await env.http.post("/mcp", headers=headers, json=note("notifications/initialized"))
    assert response.status_code == 404


async def test_c23_c24_c28_c93_sse_reply_ends_with_its_one_response(env: Env) -> None:
    headers = await initialize(env)
    body = call("progress", {"steps": 3}, id="req-7", progressToken="tok")
    async with env.http.stream("POST", "/mcp", headers=headers, json=body) as response:
        assert response.status_code == 200
        # c28: SSE headers, chunked (no Content-Length).
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] in ("no-cache", "no-store")
        assert response.headers["x-accel-buffering"] == "no"
        assert "content-length" not in response.headers
        raw = await response.aread()  # c24: the server ends the stream after the response
    received = [orjson.loads(e.data) for e in sse_events(raw) if e.data]
    replies = [m for m in received if "method" not in m]
    assert len(replies) == 1  # c23
    assert replies[0]["id"] == "req-7"
    assert received[-1] is replies[0]
    # c93: the progress travelled on this request's stream, before the response.
    assert [m["params"]["progress"] for m in received[:-1]] == [1, 2, 3]


async def test_c25_c26_c52_each_message_goes_to_exactly_one_stream(env: Env) -> None:
    headers = await initialize(env)
    async with env.http.stream("GET", "/mcp", headers=headers) as standalone:
        get_reader = SSEReader(standalone)
        results: dict[str, list[dict[str, Any]]] = {}

        async def run(token: str, id: int) -> None:
            body = call("progress", {"steps": 4}, id=id, progressToken=token)
            response = await env.http.post("/mcp", headers=headers, json=body)
            results[token] = messages(response)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run, "a", 10)
            nursery.start_soon(run, "b", 11)
        for token, id in (("a", 10), ("b", 11)):
            progress = [m for m in results[token] if m.get("method") == "notifications/progress"]
            assert [p["params"]["progressToken"] for p in progress] == [token] * 4  # c25
            assert results[token][-1]["id"] == id
        # c26/c52: nothing of it (no progress, no response) on the standalone GET stream.
        with trio.move_on_after(0.3):
            event = await get_reader.next_data(timeout=1)
            pytest.fail(f"unexpected event on the GET stream: {event}")


@pytest.mark.parametrize(
    "body",
    [
        rpc("ping", id=5),
        rpc("tools/list", id=5),
        call("get_time", id=5),
        call("progress", id=5),
        rpc("no/such/method", id=5),
        call("no_such_tool", id=5),
    ],
)
async def test_c29_a_request_is_never_answered_202(env: Env, body: dict[str, Any]) -> None:
    headers = await initialize(env)
    response = await env.http.post("/mcp", headers=headers, json=body)
    assert response.status_code == 200
    replies = [m for m in messages(response) if "method" not in m]
    assert [r["id"] for r in replies] == [5]


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
async def test_c30_put_and_patch_are_405_with_allow(env: Env, method: str) -> None:
    response = await env.http.request(method, "/mcp", headers=BASE, content=b"{}")
    assert response.status_code == 405
    allowed = {m.strip() for m in response.headers["allow"].split(",")}
    assert {"GET", "POST", "DELETE"} <= allowed


async def test_c31_oversized_body_is_413_before_parsing(nursery: trio.Nursery) -> None:
    async with make_env(nursery, max_body_bytes=1024) as env:
        response = await env.http.post("/mcp", headers=BASE, content=b"[" + b" " * 2048 + b"]")
        assert response.status_code == 413
        assert session_of(response) is None


# == C. Sessions =================================================================================


async def test_c32_c33_session_ids_are_visible_ascii_and_random(env: Env) -> None:
    ids = set()
    for _ in range(3):
        response = await env.http.post("/mcp", headers=BASE, json=init_body())
        sid = session_of(response)
        assert sid
        assert re.fullmatch(r"[\x21-\x7e]+", sid)
        # c33: 128 bits from the CSPRNG, hex.
        assert re.fullmatch(r"[0-9a-f]{32}", sid)
        ids.add(sid)
    assert len(ids) == 3


@pytest.mark.parametrize(
    "body",
    [rpc("tools/list", id=3), rpc("ping", id=3), call("get_time", id=3)],
)
async def test_c34_c40_requests_without_a_session_are_400_and_mint_none(
    env: Env, body: dict[str, Any]
) -> None:
    before = len(env.server.sessions)
    response = await env.http.post("/mcp", headers=BASE, json=body)
    assert_jsonrpc_error(response, 400, -32600, None)
    assert session_of(response) is None
    assert len(env.server.sessions) == before


async def test_c40_failed_initialize_mints_no_session(env: Env) -> None:
    bad = rpc("initialize", {"capabilities": {}}, id=1)  # no protocolVersion
    response = await env.http.post("/mcp", headers=BASE, json=bad)
    assert response.status_code == 200
    assert error_of(response)["error"]["code"] == -32602
    assert session_of(response) is None
    assert len(env.server.sessions) == 0


@pytest.mark.parametrize("method", ["POST", "GET", "DELETE"])
async def test_c35_c36_unknown_session_is_404_with_an_idless_error(env: Env, method: str) -> None:
    headers = {**BASE, "Mcp-Session-Id": "0123456789abcdef" * 2}
    kwargs: dict[str, Any] = {"json": rpc("ping")} if method == "POST" else {}
    response = await env.http.request(method, "/mcp", headers=headers, **kwargs)
    assert_jsonrpc_error(response, 404, -32600, None)
    assert session_of(response) is None


async def test_c37_expired_session_is_404(nursery: trio.Nursery) -> None:
    async with make_env(nursery, session_ttl_s=0.2, sweep_interval_s=0.05) as env:
        headers = await initialize(env)
        await wait_for(lambda: len(env.server.sessions) == 0, 3, "the session to expire")
        response = await env.http.post("/mcp", headers=headers, json=rpc("ping"))
        assert_jsonrpc_error(response, 404, -32600, None)


async def test_c38_another_principal_cannot_use_a_session(nursery: trio.Nursery) -> None:
    verifier = ChainVerifier([BearerVerifier("alice-token"), BearerVerifier("bob-token")])
    server = Server(builtin_tools=True, config=make_config(token=None), verifier=verifier)
    info = await nursery.start(server.serve)
    alice = {**BASE, "Authorization": "Bearer alice-token"}
    bob = {**BASE, "Authorization": "Bearer bob-token"}
    async with httpx.AsyncClient(base_url=info.url, timeout=5) as http:
        response = await http.post("/mcp", headers=alice, json=init_body())
        sid = session_of(response) or ""
        for method in ("POST", "GET", "DELETE"):
            kwargs: dict[str, Any] = {"json": rpc("ping")} if method == "POST" else {}
            stolen = await http.request(
                method, "/mcp", headers={**bob, "Mcp-Session-Id": sid}, **kwargs
            )
            assert stolen.status_code == 404, method
        own = await http.post("/mcp", headers={**alice, "Mcp-Session-Id": sid}, json=rpc("ping"))
        assert own.status_code == 200


@pytest.mark.parametrize("name", ["Mcp-Session-Id", "MCP-Session-Id", "mcp-session-id"])
async def test_c39_session_header_is_case_insensitive(env: Env, name: str) -> None:
    headers = await initialize(env)
    sid = headers.pop("Mcp-Session-Id")
    response = await env.http.post("/mcp", headers={**headers, name: sid}, json=rpc("ping"))
    assert response.status_code == 200
    assert result_of(response) == {}


# == D. DELETE ===================================================================================


async def test_c42_c43_delete_ends_the_session(env: Env) -> None:
    headers = await initialize(env)
    deleted = await env.http.delete("/mcp", headers=headers)
    assert 200 <= deleted.status_code < 300
    for method in ("POST", "GET", "DELETE"):
        kwargs: dict[str, Any] = {"json": rpc("ping")} if method == "POST" else {}
        response = await env.http.request(method, "/mcp", headers=headers, **kwargs)
        assert response.status_code == 404, method


async def test_c44_delete_on_the_modern_path_is_405(env: Env) -> None:
    response = await env.http.delete("/mcp", headers=modern_headers("tools/list"))
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"


# == E. MCP-Protocol-Version =====================================================================


@pytest.mark.parametrize("bad", ["1999-01-01", "latest", "2025-13-45"])
async def test_c45_unsupported_version_header_is_400(env: Env, bad: str) -> None:
    headers = await initialize(env)
    response = await env.http.post(
        "/mcp", headers={**headers, "MCP-Protocol-Version": bad}, json=rpc("tools/list")
    )
    assert response.status_code == 400
    assert session_of(response) is None


async def test_c46_missing_version_header_is_served(env: Env) -> None:
    headers = await initialize(env, "2025-06-18")
    del headers["MCP-Protocol-Version"]
    response = await env.http.post("/mcp", headers=headers, json=rpc("tools/list"))
    assert response.status_code == 200
    assert "tools" in result_of(response)


@pytest.mark.parametrize("header", HANDSHAKE)
async def test_c48_every_handshake_version_header_is_accepted(env: Env, header: str) -> None:
    headers = await initialize(env)
    response = await env.http.post(
        "/mcp", headers={**headers, "MCP-Protocol-Version": header}, json=rpc("ping")
    )
    assert response.status_code == 200


# == F. GET stream ===============================================================================


@pytest.mark.parametrize("accept", ["text/event-stream", BOTH, "*/*"])
async def test_c49_c50_get_opens_the_session_stream(env: Env, accept: str) -> None:
    headers = await initialize(env)
    async with env.http.stream("GET", "/mcp", headers={**headers, "Accept": accept}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-accel-buffering"] == "no"
        assert "content-length" not in r.headers


@pytest.mark.parametrize("accept", ["application/json", "text/html"])
async def test_c51_get_without_sse_in_accept_is_406(env: Env, accept: str) -> None:
    headers = await initialize(env)
    response = await env.http.get("/mcp", headers={**headers, "Accept": accept})
    assert response.status_code == 406


async def test_c53_c55_second_get_takes_over_and_gets_the_notifications(env: Env) -> None:
    # Issue 12 (11): a second GET used to be 409, locking out a client whose first stream died
    # at a proxy unnoticed. Now the newer stream takes over and the older one is told why.
    headers = await initialize(env)
    sid = headers["Mcp-Session-Id"]
    async with env.http.stream("GET", "/mcp", headers=headers) as first:
        reader = SSEReader(first)
        await reader.read_until(b"retry:")  # attached
        async with env.http.stream("GET", "/mcp", headers=headers) as second:
            assert second.status_code == 200
            assert session_of(second) is None
            await reader.read_until(b': close {"reason":"superseded"}')
            newer = SSEReader(second)
            await newer.read_until(b"retry:")
            # c55: a server-initiated notification reaches the (newer) GET stream.
            await env.server.publish(
                sid, {"jsonrpc": "2.0", "method": "notifications/tools/list_changed"}
            )
            event = await newer.next_data()
            assert orjson.loads(event.data or "")["method"] == "notifications/tools/list_changed"


async def test_c54_get_without_session_is_400_and_opens_nothing(env: Env) -> None:
    response = await env.http.get("/mcp", headers=BASE)
    assert response.status_code in (400, 405)
    assert session_of(response) is None
    assert len(env.server.sessions) == 0


async def test_c79_nothing_but_pings_before_initialized(env: Env) -> None:
    headers = await initialize(env, initialized=False)
    async with env.http.stream("GET", "/mcp", headers=headers) as standalone:
        reader = SSEReader(standalone)
        with trio.move_on_after(0.3):
            event = await reader.next_data(timeout=1)
            pytest.fail(f"server spoke before initialized: {event}")


# == G. Resumability =============================================================================


async def test_c56_c57_event_ids_are_unique_and_name_their_stream(env: Env) -> None:
    headers = await initialize(env)
    sid = headers["Mcp-Session-Id"]
    ids: list[str] = []
    async with env.http.stream("GET", "/mcp", headers=headers) as standalone:
        reader = SSEReader(standalone)
        await reader.read_until(b"retry:")
        for n in range(3):
            response = await env.http.post(
                "/mcp", headers=headers, json=call("progress", id=20 + n, progressToken=n)
            )
            stream_ids = [e.id for e in sse_events(response.content) if e.id is not None]
            # c57: every id of one POST stream carries that stream's number.
            assert len({i.split("-")[0] for i in stream_ids}) == 1, stream_ids
            ids += stream_ids
        await env.server.publish(
            sid, {"jsonrpc": "2.0", "method": "notifications/tools/list_changed"}
        )
        event = await reader.next_data()
        assert event.id is not None
        ids.append(event.id)
    assert len(ids) == len(set(ids))  # c56


@pytest.mark.parametrize("version", HANDSHAKE)
async def test_c27_c58_c62_dropped_post_stream_is_resumed_by_get(env: Env, version: str) -> None:
    headers = await initialize(env, version)
    body = call("gated", id="slow", progressToken="g")
    async with env.http.stream("POST", "/mcp", headers=headers, json=body) as response:
        reader = SSEReader(response)
        first = await reader.next_data()  # the priming event (2025-11-25) or the first progress
        assert first.id
        await env.probe.started.wait()
    # c27: the drop did not cancel the call: release it, then resume from the last id seen.
    env.probe.gate.set()
    resumed = await env.http.get("/mcp", headers={**headers, "Last-Event-ID": first.id})
    assert resumed.status_code == 200
    received = messages(resumed)
    assert received[-1]["id"] == "slow"
    assert received[-1]["result"]["content"][0]["text"] == '{"released":true}'
    progress = [m["params"]["progress"] for m in received if m.get("method")]
    assert progress == ([1, 2] if first.data == "" else [2])


async def test_c58_c59_resumption_replays_only_that_stream(env: Env) -> None:
    headers = await initialize(env)
    one = await env.http.post(
        "/mcp", headers=headers, json=call("progress", id=1, progressToken="one")
    )
    two = await env.http.post(
        "/mcp", headers=headers, json=call("progress", id=2, progressToken="two")
    )
    one_events = [e for e in sse_events(one.content) if e.data]
    two_ids = {e.id for e in sse_events(two.content) if e.id}
    # Resume stream one after its first progress event: the rest of stream one, nothing of two.
    resumed = await env.http.get(
        "/mcp", headers={**headers, "Last-Event-ID": one_events[0].id or ""}
    )
    replay = sse_events(resumed.content)
    assert [e.data for e in replay if e.data] == [e.data for e in one_events[1:]]
    assert not {e.id for e in replay if e.id} & two_ids
    tokens = {
        orjson.loads(e.data)["params"]["progressToken"]
        for e in replay
        if e.data and "method" in e.data
    }
    assert tokens == {"one"}


async def test_c58_unknown_stream_id_is_400_and_the_session_lives(env: Env) -> None:
    headers = await initialize(env)
    for bad in ("999-1", "not-ours", "x", "1-x"):
        response = await env.http.get("/mcp", headers={**headers, "Last-Event-ID": bad})
        # Not 404: a client must read 404 as "session gone" and start over.
        assert_jsonrpc_error(response, 400, -32600, None)
    assert (await env.http.post("/mcp", headers=headers, json=rpc("ping"))).status_code == 200


async def test_c60_c61_priming_event_for_2025_11_25(env: Env) -> None:
    headers = await initialize(env, "2025-11-25")
    response = await env.http.post("/mcp", headers=headers, json=call("progress", progressToken=1))
    events = sse_events(response.content)
    assert events[0].retry is not None  # c61: a retry hint before anything else
    priming = events[1]
    assert priming.id
    assert priming.data == ""
    assert all(e.data for e in events[2:])


@pytest.mark.parametrize("version", ["2025-03-26", "2025-06-18"])
async def test_c63_no_priming_event_before_2025_11_25(env: Env, version: str) -> None:
    headers = await initialize(env, version)
    response = await env.http.post("/mcp", headers=headers, json=call("progress", progressToken=1))
    assert response.headers["content-type"].startswith("text/event-stream")
    assert all(e.data for e in sse_events(response.content) if e.retry is None)


async def test_c64_modern_path_ignores_last_event_id(env: Env) -> None:
    headers = {**modern_headers("tools/list"), "Last-Event-ID": "1-1"}
    response = await env.http.post("/mcp", headers=headers, json=modern_body("tools/list"))
    assert response.status_code == 200
    assert "tools" in result_of(response)
    get = await env.http.get("/mcp", headers=headers)
    assert get.status_code == 405


# == H. Origin / Host ============================================================================


@pytest.mark.parametrize("method", ["POST", "GET", "DELETE"])
@pytest.mark.parametrize("modern", [False, True])
async def test_c65_c66_foreign_origin_is_403_everywhere(
    env: Env, method: str, modern: bool
) -> None:
    headers = modern_headers("tools/list") if modern else await initialize(env)
    headers = {**headers, "Origin": "http://evil.example.com"}
    body = modern_body("tools/list") if modern else rpc("tools/list")
    kwargs: dict[str, Any] = {"json": body} if method == "POST" else {}
    response = await env.http.request(method, "/mcp", headers=headers, **kwargs)
    assert response.status_code == 403


@pytest.mark.parametrize(
    "origin", [None, "http://localhost:6274", "http://127.0.0.1:9", "http://[::1]:3000"]
)
async def test_c67_missing_or_localhost_origin_is_allowed(env: Env, origin: str | None) -> None:
    headers = {**BASE, **({"Origin": origin} if origin else {})}
    response = await env.http.post("/mcp", headers=headers, json=init_body())
    assert response.status_code == 200


async def test_c68_rebinding_host_is_refused(env: Env) -> None:
    evil = {**BASE, "Host": "evil.example.com", "Origin": "http://evil.example.com"}
    response = await env.http.post("/mcp", headers=evil, json=init_body())
    assert response.status_code == 421
    assert session_of(response) is None
    just_host = await env.http.post(
        "/mcp", headers={**BASE, "Host": "evil.example.com"}, json=init_body()
    )
    assert just_host.status_code == 421
    for host in (
        f"localhost:{env.port}",
        f"127.0.0.1:{env.port}",
        f"[::1]:{env.port}",
        "localhost",
    ):
        ok = await env.http.post("/mcp", headers={**BASE, "Host": host}, json=init_body())
        assert ok.status_code == 200, host


def test_c69_default_bind_address_is_loopback() -> None:
    assert Config().host == "127.0.0.1"


# == I. Batching =================================================================================


async def test_c70_batch_of_requests_at_2025_03_26(env: Env) -> None:
    headers = await initialize(env, "2025-03-26")
    batch = [
        rpc("ping", id=1),
        note("notifications/progress", {"progressToken": 1, "progress": 1}),
        call("get_time", id=2),
    ]
    response = await env.http.post("/mcp", headers=headers, json=batch)
    assert response.status_code == 200
    replies = response.json()
    assert isinstance(replies, list)
    assert sorted(r["id"] for r in replies) == [1, 2]
    only_notes = [
        note("notifications/initialized"),
        note("notifications/cancelled", {"requestId": 5}),
    ]
    accepted = await env.http.post("/mcp", headers=headers, json=only_notes)
    assert accepted.status_code == 202
    assert accepted.content == b""


async def test_c71_batched_initialize_is_400(env: Env) -> None:
    fresh = await env.http.post("/mcp", headers=BASE, json=[init_body()])
    assert fresh.status_code == 400
    assert session_of(fresh) is None
    headers = await initialize(env, "2025-03-26")
    inside = await env.http.post(
        "/mcp", headers=headers, json=[init_body(id=9), rpc("ping", id=10)]
    )
    assert inside.status_code == 400


@pytest.mark.parametrize("version", ["2025-06-18", "2025-11-25"])
async def test_c72_arrays_are_400_after_2025_03_26(env: Env, version: str) -> None:
    headers = await initialize(env, version)
    response = await env.http.post("/mcp", headers=headers, json=[rpc("ping", id=1)])
    body = assert_jsonrpc_error(response, 400, -32600, None)
    assert body["error"]["code"] in (-32600, -32602)


# == J. Lifecycle ================================================================================


@pytest.mark.parametrize(
    ("requested", "answered"),
    [(v, v) for v in (*HANDSHAKE, "2024-11-05")] + [("2099-01-01", LATEST), ("draft", LATEST)],
)
async def test_c73_c74_version_negotiation(env: Env, requested: str, answered: str) -> None:
    response = await env.http.post("/mcp", headers=BASE, json=init_body(requested))
    assert result_of(response)["protocolVersion"] == answered


async def test_c75_c76_initialize_result_shape(env: Env) -> None:
    response = await env.http.post("/mcp", headers=BASE, json=init_body())
    result = result_of(response)
    assert set(result) >= {"protocolVersion", "capabilities", "serverInfo"}
    assert isinstance(result["capabilities"], dict)
    assert {"name", "version"} <= set(result["serverInfo"])
    # c76: what we serve (all of it answers, even while a list is empty); nothing else.
    assert set(result["capabilities"]) == {
        "tools",
        "resources",
        "prompts",
        "completions",
        "logging",
        "tasks",
    }
    assert result["capabilities"]["resources"] == {"subscribe": True, "listChanged": True}


async def test_c77_c78_ping_before_and_after_initialized(env: Env) -> None:
    headers = await initialize(env, initialized=False)
    before = await env.http.post("/mcp", headers=headers, json=rpc("ping", id="p1"))
    assert before.json() == {"jsonrpc": "2.0", "id": "p1", "result": {}}
    ack = await env.http.post("/mcp", headers=headers, json=note("notifications/initialized"))
    assert ack.status_code == 202
    after = await env.http.post("/mcp", headers=headers, json=rpc("ping", id="p2"))
    assert after.json() == {"jsonrpc": "2.0", "id": "p2", "result": {}}


def _check_wire(version: str, message: dict[str, Any], method: str) -> None:
    if "method" in message:
        schema.parse_server_notification(message["method"], version, message.get("params"))
    else:
        schema.validate_server_result(method, version, message["result"])


@pytest.mark.parametrize("version", ["2024-11-05", *HANDSHAKE])
async def test_c80_handshake_messages_fit_the_revision_schema(env: Env, version: str) -> None:
    response = await env.http.post("/mcp", headers=BASE, json=init_body(version))
    _check_wire(version, response.json(), "initialize")
    headers = {
        **BASE,
        "Mcp-Session-Id": session_of(response) or "",
        "MCP-Protocol-Version": version,
    }
    await env.http.post("/mcp", headers=headers, json=note("notifications/initialized"))
    checked = 0
    for method, body in (
        ("ping", rpc("ping")),
        ("tools/list", rpc("tools/list")),
        ("tools/call", call("get_time")),
        ("tools/call", call("failing")),
        ("tools/call", call("progress", progressToken="p")),
        ("tools/call", call("chatty")),
    ):
        for message in messages(await env.http.post("/mcp", headers=headers, json=body)):
            assert "error" not in message, message
            _check_wire(version, message, method)
            checked += 1
    assert checked >= 12


async def test_c80_modern_messages_fit_the_2026_schema(env: Env) -> None:
    for method, params, meta in (
        ("server/discover", None, {}),
        ("tools/list", None, {}),
        ("tools/call", {"name": "get_time", "arguments": {}}, {}),
        ("tools/call", {"name": "progress", "arguments": {}}, {"progressToken": "p"}),
        ("tools/call", {"name": "chatty", "arguments": {}}, {"logLevel": "debug"}),
    ):
        response = await post_modern(env, method, params, **meta)
        assert response.status_code == 200
        for message in messages(response):
            _check_wire(MODERN, message, method)


# == K. Core methods =============================================================================


async def test_c81_c82_tools_list_entries(env: Env) -> None:
    headers = await initialize(env)
    tools = result_of(await env.http.post("/mcp", headers=headers, json=rpc("tools/list")))["tools"]
    assert {"get_time", "fetch_url", "sleeper"} <= {t["name"] for t in tools}
    for tool in tools:
        assert re.fullmatch(r"[A-Za-z0-9_.-]{1,128}", tool["name"])
        assert isinstance(tool["inputSchema"], dict)
        assert tool["inputSchema"]["type"] == "object"


async def test_c83_c84_pagination(env: Env) -> None:
    for n in range(60):

        async def extra(arguments: dict[str, Any], context: ToolContext) -> None:
            return None

        env.server.registry.tool(f"extra_{n:02d}", description="filler")(extra)
    headers = await initialize(env)
    names: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params = {"cursor": cursor} if cursor else None
        page = result_of(
            await env.http.post("/mcp", headers=headers, json=rpc("tools/list", params))
        )
        names += [t["name"] for t in page["tools"]]
        pages += 1
        cursor = page.get("nextCursor")
        if cursor is None:
            break
    assert pages >= 2
    assert names == [t.name for t in env.server.registry]
    for bad in ("garbage", "", 5):
        response = await env.http.post(
            "/mcp", headers=headers, json=rpc("tools/list", {"cursor": bad})
        )
        assert error_of(response)["error"]["code"] == -32602


async def test_c85_c89_c90_get_time_content_and_structured_content(env: Env) -> None:
    headers = await initialize(env)
    result = result_of(await env.http.post("/mcp", headers=headers, json=call("get_time")))
    assert result["isError"] is False
    text = [b for b in result["content"] if b["type"] == "text"]
    assert text
    assert isinstance(text[0]["text"], str)
    # c89: structuredContent fits the outputSchema; c90: the same JSON as text.
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", result["structuredContent"]["time"])
    assert orjson.loads(text[0]["text"]) == result["structuredContent"]


async def test_c86_tool_failure_is_an_iserror_result(env: Env) -> None:
    headers = await initialize(env)
    result = result_of(await env.http.post("/mcp", headers=headers, json=call("failing")))
    assert result["isError"] is True
    assert "disk is full" in result["content"][0]["text"]


@pytest.mark.parametrize(("version", "as_result"), [("2025-06-18", False), ("2025-11-25", True)])
async def test_c87_invalid_arguments(env: Env, version: str, as_result: bool) -> None:
    headers = await initialize(env, version)
    response = await env.http.post("/mcp", headers=headers, json=call("needs_n", {"n": "x"}, id=8))
    if as_result:
        assert result_of(response)["isError"] is True
    else:
        assert error_of(response) == {
            "jsonrpc": "2.0",
            "id": 8,
            "error": error_of(response)["error"],
        }
        assert error_of(response)["error"]["code"] == -32602


async def test_c88_c99_unknown_tool_is_a_protocol_error_with_the_id(env: Env) -> None:
    headers = await initialize(env)
    response = await env.http.post("/mcp", headers=headers, json=call("no_such_tool", id="u1"))
    body = error_of(response)
    assert body["id"] == "u1"
    assert body["error"]["code"] == -32602


async def test_c91_c92_progress_increases_and_stops_at_the_response(env: Env) -> None:
    headers = await initialize(env)
    response = await env.http.post(
        "/mcp", headers=headers, json=call("progress", {"steps": 5}, progressToken=42)
    )
    received = messages(response)
    progress = [m["params"] for m in received if m.get("method") == "notifications/progress"]
    assert [p["progressToken"] for p in progress] == [42] * 5
    values = [p["progress"] for p in progress]
    assert values == sorted(set(values))
    assert all(p["total"] == 5 and p["message"] for p in progress)
    assert "result" in received[-1]  # c92: nothing follows the response


async def test_c93_json_response_mode_loses_progress(nursery: trio.Nursery) -> None:
    async with make_env(nursery, json_response=True) as env:
        headers = await initialize(env)
        response = await env.http.post(
            "/mcp", headers=headers, json=call("progress", progressToken=1)
        )
        assert response.headers["content-type"].startswith("application/json")
        assert result_of(response)["content"][0]["text"] == '{"steps":3}'
        assert [m for m in messages(response) if "method" in m] == []


async def test_c29_c93_json_reply_survives_more_notifications_than_the_log_holds(
    nursery: trio.Nursery,
) -> None:
    async with make_env(nursery, json_response=True, replay_events=3) as env:
        headers = await initialize(env)
        body = call("progress", {"steps": 10}, id=3, progressToken=1)
        response = await env.http.post("/mcp", headers=headers, json=body)
        assert response.status_code == 200
        assert response.json()["id"] == 3
        assert response.json()["result"]["content"][0]["text"] == '{"steps":10}'


async def test_c94_cancelled_request_stops_and_gets_no_result(env: Env) -> None:
    headers = await initialize(env)
    async with trio.open_nursery() as nursery:
        replies: list[httpx.Response] = []

        async def slow() -> None:
            replies.append(
                await env.http.post("/mcp", headers=headers, json=call("sleeper", id=77))
            )

        nursery.start_soon(slow)
        await env.probe.started.wait()
        cancel = note("notifications/cancelled", {"requestId": 77, "reason": "user"})
        assert (await env.http.post("/mcp", headers=headers, json=cancel)).status_code == 202
        await env.probe.cleaned.wait()
    # No result for it. Its stream ends with -32800 "request cancelled", as the Python SDK's
    # server does, so a client that lost the stream does not poll for a reply forever.
    received = messages(replies[0])
    assert not any("result" in m for m in received)
    assert [m["error"]["code"] for m in received if "error" in m] == [-32800]


async def test_c95_c96_cancelling_unknown_or_initialize_ids_is_ignored(env: Env) -> None:
    headers = await initialize(env)
    for target in (12345, "nope", 1):  # 1 is the initialize request's id
        cancel = note("notifications/cancelled", {"requestId": target})
        assert (await env.http.post("/mcp", headers=headers, json=cancel)).status_code == 202
    response = await env.http.post("/mcp", headers=headers, json=rpc("ping", id=2))
    assert result_of(response) == {}


async def test_c97_logging_set_level(env: Env) -> None:
    headers = await initialize(env)
    response = await env.http.post(
        "/mcp", headers=headers, json=rpc("logging/setLevel", {"level": "info"})
    )
    assert result_of(response) == {}
    logged = messages(await env.http.post("/mcp", headers=headers, json=call("chatty")))
    levels = [m["params"]["level"] for m in logged if m.get("method") == "notifications/message"]
    assert levels == ["info", "error"]
    bad = await env.http.post(
        "/mcp", headers=headers, json=rpc("logging/setLevel", {"level": "loud"}, id=9)
    )
    assert error_of(bad)["error"]["code"] == -32602
    assert error_of(bad)["id"] == 9


async def test_c98_c99_unknown_method_is_32601_with_the_id(env: Env) -> None:
    headers = await initialize(env)
    response = await env.http.post("/mcp", headers=headers, json=rpc("no/such", id="m1"))
    assert response.status_code == 200
    assert error_of(response)["id"] == "m1"
    assert error_of(response)["error"]["code"] == -32601


# == L. 2026-07-28 ===============================================================================


async def test_c100_c101_c102_c103_server_discover(env: Env) -> None:
    response = await post_modern(env, "server/discover")
    assert response.status_code == 200
    result = result_of(response)
    assert result["resultType"] == "complete"
    assert MODERN in result["supportedVersions"]
    assert isinstance(result["capabilities"], dict)
    assert isinstance(result["ttlMs"], int)
    assert result["ttlMs"] >= 0
    assert result["cacheScope"] in ("public", "private")
    assert {"name", "version"} <= set(result["_meta"][mcp.META_SERVER_INFO])


async def test_c101_c103_tools_list_and_call_are_stamped(env: Env) -> None:
    listed = result_of(await post_modern(env, "tools/list"))
    assert listed["resultType"] == "complete"
    assert isinstance(listed["ttlMs"], int)
    assert listed["cacheScope"] in ("public", "private")
    called = result_of(await post_modern(env, "tools/call", {"name": "get_time", "arguments": {}}))
    assert called["resultType"] == "complete"
    assert mcp.META_SERVER_INFO in called["_meta"]


async def test_c104_missing_meta_is_400(env: Env) -> None:
    response = await env.http.post(
        "/mcp", headers=modern_headers("tools/list"), json=rpc("tools/list", id=4)
    )
    assert_jsonrpc_error(response, 400, -32602, 4)


@pytest.mark.parametrize("missing", ["protocolVersion", "clientCapabilities"])
async def test_c105_meta_missing_a_required_key_is_400(env: Env, missing: str) -> None:
    body = modern_body("tools/list", id=5, **{missing: None})
    response = await env.http.post("/mcp", headers=modern_headers("tools/list"), json=body)
    assert_jsonrpc_error(response, 400, -32602, 5)


async def test_c106_meta_without_client_info_is_served(env: Env) -> None:
    body = modern_body("tools/list", clientInfo=None)
    response = await env.http.post("/mcp", headers=modern_headers("tools/list"), json=body)
    assert response.status_code == 200


async def test_c107_unsupported_modern_version_is_32022(env: Env) -> None:
    headers = modern_headers("tools/list", version="2099-01-01")
    response = await env.http.post(
        "/mcp", headers=headers, json=modern_body("tools/list", id=6, version="2099-01-01")
    )
    body = assert_jsonrpc_error(response, 400, -32022, 6)
    assert MODERN in body["error"]["data"]["supported"]
    assert body["error"]["data"]["requested"] == "2099-01-01"


@pytest.mark.parametrize(("header", "meta"), [(MODERN, "2099-01-01"), ("2099-01-01", MODERN)])
async def test_c108_version_header_differing_from_meta_is_32020(
    env: Env, header: str, meta: str
) -> None:
    response = await env.http.post(
        "/mcp",
        headers=modern_headers("tools/list", version=header),
        json=modern_body("tools/list", id=7, version=meta),
    )
    assert_jsonrpc_error(response, 400, -32020, 7)


@pytest.mark.parametrize("method_header", [None, "tools/call", "TOOLS/LIST"])
async def test_c109_c112_mcp_method_must_mirror_the_body(
    env: Env, method_header: str | None
) -> None:
    headers = modern_headers("tools/list")
    if method_header is None:
        del headers["Mcp-Method"]
    else:
        headers["Mcp-Method"] = method_header
    response = await env.http.post("/mcp", headers=headers, json=modern_body("tools/list", id=8))
    assert_jsonrpc_error(response, 400, -32020, 8)


async def test_c113_edge_whitespace_in_routing_headers_is_tolerated(env: Env) -> None:
    body = orjson.dumps(modern_body("tools/call", {"name": "get_time", "arguments": {}}, id=8))
    head = (
        f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{env.port}\r\n"
        f"Authorization: {AUTH['Authorization']}\r\nAccept: {BOTH}\r\n"
        "Content-Type: application/json\r\nMCP-Protocol-Version:  2026-07-28 \r\n"
        "Mcp-Method: \ttools/call  \r\nMcp-Name:   get_time\t\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    raw = await raw_exchange(env.port, head.encode() + body)
    assert raw.startswith(b"HTTP/1.1 200 "), raw[:200]
    assert b'"resultType":"complete"' in raw


def _b64(text: str) -> str:
    return f"=?base64?{base64.b64encode(text.encode()).decode()}?="


@pytest.mark.parametrize(
    ("name_header", "status"),
    [
        (None, 400),
        ("fetch_url", 400),
        ("GET_TIME", 400),
        ("get_time", 200),
        (_b64("get_time"), 200),
        ("=?base64?not*base64?=", 400),
        (_b64("fetch_url"), 400),
    ],
)
async def test_c110_c111_mcp_name_must_mirror_params_name(
    env: Env, name_header: str | None, status: int
) -> None:
    headers = modern_headers("tools/call", name_header)
    body = modern_body("tools/call", {"name": "get_time", "arguments": {}}, id=9)
    response = await env.http.post("/mcp", headers=headers, json=body)
    if status == 200:
        assert result_of(response)["isError"] is False
    else:
        assert_jsonrpc_error(response, 400, -32020, 9)


async def test_c112_header_names_are_case_insensitive(env: Env) -> None:
    headers = {
        **BASE,
        "mcp-protocol-version": MODERN,
        "MCP-METHOD": "tools/call",
        "mcp-name": "get_time",
    }
    body = modern_body("tools/call", {"name": "get_time", "arguments": {}})
    response = await env.http.post("/mcp", headers=headers, json=body)
    assert response.status_code == 200


@pytest.mark.parametrize("twice", ["MCP-Protocol-Version", "Mcp-Method", "Mcp-Name"])
async def test_c114_a_routing_header_sent_twice_is_32020(env: Env, twice: str) -> None:
    single = modern_headers("tools/call", "get_time")
    pairs = [(k, v) for k, v in single.items()] + [(twice, single[twice])]
    body = modern_body("tools/call", {"name": "get_time", "arguments": {}}, id=10)
    response = await env.http.post("/mcp", headers=pairs, json=body)
    assert_jsonrpc_error(response, 400, -32020, 10)


@pytest.mark.parametrize(
    ("arguments", "params", "status"),
    [
        ({"region": "eu-west"}, {"Region": "eu-west"}, 200),
        ({"region": "eu-west"}, {}, 400),  # c115: argument present, header missing
        ({"region": "eu-west"}, {"Region": "us-east"}, 400),  # c115: different value
        ({}, {"Region": "eu-west"}, 400),  # c116: header without the argument
        ({"region": None}, {"Region": "eu-west"}, 400),  # c116: null counts as absent
        ({"count": 42}, {"Count": "42"}, 200),
        ({"count": 42}, {"Count": "42.0"}, 200),  # c117: integers compare numerically
        ({"count": 42}, {"Count": "43"}, 400),
        ({"dry": True}, {"Dry": "true"}, 200),
        ({"dry": True}, {"Dry": "True"}, 400),
        ({"region": "zürich"}, {"Region": _b64("zürich")}, 200),
        ({}, {"Unrelated": "x"}, 200),
    ],
)
async def test_c115_c116_c117_mcp_param_headers_mirror_annotated_arguments(
    env: Env, arguments: dict[str, Any], params: dict[str, str], status: int
) -> None:
    headers = modern_headers("tools/call", "regional")
    headers.update({f"Mcp-Param-{k}": v for k, v in params.items()})
    body = modern_body("tools/call", {"name": "regional", "arguments": arguments}, id=11)
    response = await env.http.post("/mcp", headers=headers, json=body)
    if status == 200:
        assert response.status_code == 200, response.text
    else:
        assert_jsonrpc_error(response, 400, -32020, 11)


async def test_c118_our_header_annotations_are_valid(env: Env) -> None:
    for tool in env.server.registry:
        assert mcp_http.invalid_header_annotation(tool.input_schema) is None, tool.name
    bad_schemas = [
        {"type": "object", "properties": {"a": {"type": "number", "x-mcp-header": "A"}}},
        {"type": "object", "properties": {"a": {"type": "string", "x-mcp-header": "A B"}}},
        {
            "type": "object",
            "properties": {
                "a": {"type": "string", "x-mcp-header": "Dup"},
                "b": {"type": "string", "x-mcp-header": "dup"},
            },
        },
        {"type": "object", "items": {"type": "string", "x-mcp-header": "A"}},
    ]
    for bad in bad_schemas:
        assert mcp_http.invalid_header_annotation(bad) is not None, bad


@pytest.mark.parametrize(
    "method",
    [
        "no/such",
        "initialize",
        "ping",
        "logging/setLevel",
        "resources/subscribe",
        "resources/unsubscribe",
    ],
)
async def test_c119_c120_c121_unknown_and_removed_methods_are_404(env: Env, method: str) -> None:
    response = await env.http.post(
        "/mcp", headers=modern_headers(method), json=modern_body(method, id=12)
    )
    body = assert_jsonrpc_error(response, 404, -32601, 12)
    if method == "initialize":  # c121: name what we serve
        assert MODERN in body["error"]["data"]["supported"]


async def test_c123_modern_notification_is_202(env: Env) -> None:
    body = note("notifications/cancelled", {"requestId": 1})
    response = await env.http.post(
        "/mcp", headers=modern_headers("notifications/cancelled"), json=body
    )
    assert response.status_code == 202
    assert response.content == b""


@pytest.mark.parametrize(
    "body",
    [
        {"jsonrpc": "2.0", "id": 3, "result": {}},
        [{"jsonrpc": "2.0", "id": 3, "method": "tools/list"}],
    ],
)
async def test_c124_modern_response_or_array_is_400(env: Env, body: Any) -> None:
    response = await env.http.post("/mcp", headers=modern_headers("tools/list"), json=body)
    assert_jsonrpc_error(response, 400, -32600, None)


async def test_c125_modern_get_is_405_allow_post(env: Env) -> None:
    response = await env.http.get("/mcp", headers=modern_headers("tools/list"))
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"


async def test_c126_modern_path_ignores_and_never_mints_session_ids(env: Env) -> None:
    handshake = await initialize(env)
    headers = {**modern_headers("tools/list"), "Mcp-Session-Id": handshake["Mcp-Session-Id"]}
    for sid in (handshake["Mcp-Session-Id"], "unknown-session"):
        response = await env.http.post(
            "/mcp", headers={**headers, "Mcp-Session-Id": sid}, json=modern_body("tools/list")
        )
        assert response.status_code == 200
        assert session_of(response) is None
    assert session_of(await post_modern(env, "server/discover")) is None


async def test_c127_c128_modern_sse_carries_only_related_notifications(env: Env) -> None:
    body = modern_body(
        "tools/call", {"name": "progress", "arguments": {"steps": 3}}, id=13, progressToken="m"
    )
    response = await env.http.post(
        "/mcp", headers=modern_headers("tools/call", "progress"), json=body
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-accel-buffering"] == "no"
    received = messages(response)
    assert all("id" not in m for m in received[:-1])  # no requests on it
    assert {m["params"]["progressToken"] for m in received[:-1]} == {"m"}
    assert received[-1]["id"] == 13
    assert received[-1]["result"]["resultType"] == "complete"


async def test_c129_quick_modern_reply_is_json(env: Env) -> None:
    response = await post_modern(env, "tools/call", {"name": "get_time", "arguments": {}})
    assert response.headers["content-type"].startswith("application/json")


async def test_c130_closing_the_modern_stream_cancels_the_call(env: Env) -> None:
    body = modern_body("tools/call", {"name": "sleeper", "arguments": {}})
    async with env.http.stream(
        "POST", "/mcp", headers=modern_headers("tools/call", "sleeper"), json=body
    ) as r:
        await env.probe.started.wait()
        assert r.status_code == 200
    await env.probe.cleaned.wait()


@pytest.mark.parametrize(("level", "expected"), [(None, []), ("info", ["info", "error"])])
async def test_c131_no_log_messages_without_a_log_level(
    env: Env, level: str | None, expected: list[str]
) -> None:
    meta = {"logLevel": level} if level else {}
    response = await post_modern(env, "tools/call", {"name": "chatty", "arguments": {}}, **meta)
    levels = [
        m["params"]["level"]
        for m in messages(response)
        if m.get("method") == "notifications/message"
    ]
    assert levels == expected


@pytest.mark.parametrize(
    ("header", "modern"),
    [
        (None, False),
        ("2024-11-05", False),
        ("2025-06-18", False),
        ("2026-07-28", True),
        ("2031-01-01", True),
    ],
)
async def test_c135_era_is_chosen_by_the_version_header(
    env: Env, header: str | None, modern: bool
) -> None:
    headers = dict(BASE)
    if header:
        headers["MCP-Protocol-Version"] = header
    # Without a session the handshake path answers 400 -32600; the modern path reads _meta first.
    response = await env.http.post("/mcp", headers=headers, json=rpc("tools/list", id=14))
    code = error_of(response)["error"]["code"]
    assert code == (-32602 if modern else -32600)


# Every test runs under a deadline (the SSE reads and httpx calls have their own, shorter ones).
bound_tests(globals(), TEST_TIMEOUT_S)
