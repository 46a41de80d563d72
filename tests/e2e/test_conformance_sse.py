"""Raw-HTTP conformance tests for HTTP+SSE (``/sse`` + ``/messages``, 2024-11-05): section A of
``mcp-conformance-checklist.md``, and cancellation over that transport (c94).

Test names start with the checklist items they cover, as in ``test_conformance_mcp.py`` (the
Streamable HTTP half). Every server binds 127.0.0.1 on an ephemeral port; every network wait is
bounded (``fail_after`` around each test, short client timeouts).
"""

from __future__ import annotations

import re
import sys
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
import trio

from datapulse import Config, Server
from datapulse.auth.verifier import Principal
from datapulse.core.sse import SSEEvent
from tests.e2e.conformance_helpers import (
    BASE,
    call,
    init_body,
)
from tests.helpers import (
    AUTH,
    Env,
    SSEReader,
    bound_tests,
    make_config,
    make_env,
    note,
    rpc,
    wait_for,
)

TEST_TIMEOUT_S = 10


# == A. HTTP+SSE transport (2024-11-05) ==========================================================


@dataclass
class LegacyStream:
    reader: SSEReader
    endpoint: str


async def open_legacy(env: Env, stack: Any, headers: dict[str, str] | None = None) -> LegacyStream:
    response = await stack.enter_async_context(
        env.http.stream(
            "GET", "/sse", headers={**AUTH, "Accept": "text/event-stream", **(headers or {})}
        )
    )
    assert response.status_code == 200
    reader = SSEReader(response)
    first = await reader.next_data()
    assert first.event == "endpoint"
    return LegacyStream(reader, first.data or "")


async def next_message(reader: SSEReader) -> tuple[SSEEvent, dict[str, Any]]:
    event = await reader.next_data()
    assert event.data is not None
    return event, orjson.loads(event.data)


async def test_c01_c02_c03_sse_stream_opens_with_a_same_origin_endpoint(env: Env) -> None:
    async with env.http.stream("GET", "/sse", headers={**AUTH, "Accept": "text/event-stream"}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        reader = SSEReader(r)
        first = await reader.next_data()
        # c02: the first event is `endpoint`, relative (same origin); c03: session in the query.
        assert first.event == "endpoint"
        assert re.fullmatch(r"/messages\?session_id=[0-9a-f]{32}", first.data or ""), first.data
        # c01: it stays open (a later publish still arrives on it).
        live = env.server.sessions.live_sessions()
        assert len(live) == 1
        await env.server.sessions.publish(live[0], '{"jsonrpc":"2.0","method":"x"}', "message")
        _, message = await next_message(reader)
        assert message["method"] == "x"


async def test_c04_c05_c73_c77_c78_sse_messages_arrive_on_the_stream_only(env: Env) -> None:
    async with AsyncExitStack() as stack:
        legacy = await open_legacy(env, stack)
        post = await env.http.post(legacy.endpoint, headers=BASE, json=init_body("2024-11-05"))
        # c05: 202, and the body is not the JSON-RPC response.
        assert post.status_code == 202
        assert b"jsonrpc" not in post.content
        event, message = await next_message(legacy.reader)
        # c04: `event: message`, one line of JSON.
        assert event.event == "message"
        assert "\n" not in (event.data or "")
        assert message["id"] == 1
        assert message["result"]["protocolVersion"] == "2024-11-05"  # c73
        # c78: ping before and after `initialized`; c77: initialized accepted with 202.
        assert (
            await env.http.post(legacy.endpoint, headers=BASE, json=rpc("ping", id=2))
        ).status_code == 202
        assert (await next_message(legacy.reader))[1] == {"jsonrpc": "2.0", "id": 2, "result": {}}
        ack = await env.http.post(
            legacy.endpoint, headers=BASE, json=note("notifications/initialized")
        )
        assert ack.status_code == 202
        assert (
            await env.http.post(legacy.endpoint, headers=BASE, json=rpc("ping", id=3))
        ).status_code == 202
        assert (await next_message(legacy.reader))[1] == {"jsonrpc": "2.0", "id": 3, "result": {}}
        await env.http.post(legacy.endpoint, headers=BASE, json=call("get_time", id=4))
        _, reply = await next_message(legacy.reader)
        assert reply["id"] == 4
        assert reply["result"]["isError"] is False


async def test_c06_sse_post_without_session_is_400(env: Env) -> None:
    for path in ("/messages", "/messages/"):
        response = await env.http.post(path, headers=BASE, json=rpc("ping"))
        assert response.status_code == 400


@pytest.mark.parametrize("param", ["session_id", "sessionId"])
async def test_c07_sse_post_for_unknown_session_is_404(env: Env, param: str) -> None:
    response = await env.http.post(f"/messages?{param}={'ab' * 16}", headers=BASE, json=rpc("ping"))
    assert response.status_code == 404


async def test_c08_sse_unparseable_post_is_400_and_the_session_survives(env: Env) -> None:
    async with AsyncExitStack() as stack:
        legacy = await open_legacy(env, stack)
        bad = await env.http.post(legacy.endpoint, headers=BASE, content=b"{not json")
        assert bad.status_code == 400
        good = await env.http.post(legacy.endpoint, headers=BASE, json=init_body())
        assert good.status_code == 202
        assert (await next_message(legacy.reader))[1]["id"] == 1


async def test_c71_sse_batched_initialize_is_400_before_the_202(env: Env) -> None:
    """The batch runs after the 202, so this must be refused while the POST can still say so
    (it used to be accepted, then fail inside the session's task with nothing sent)."""
    async with AsyncExitStack() as stack:
        legacy = await open_legacy(env, stack)
        await env.http.post(legacy.endpoint, headers=BASE, json=init_body("2024-11-05"))
        assert (await next_message(legacy.reader))[1]["id"] == 1
        batch = [init_body("2024-11-05"), rpc("ping", id=2)]
        refused = await env.http.post(legacy.endpoint, headers=BASE, json=batch)
        assert refused.status_code == 400
        assert (
            await env.http.post(legacy.endpoint, headers=BASE, json=[rpc("ping", id=3)])
        ).status_code == 202
        assert (await next_message(legacy.reader))[1] == {"jsonrpc": "2.0", "id": 3, "result": {}}


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
async def test_c09_sse_post_with_a_non_json_content_type_is_400(
    env: Env, content_type: str | None
) -> None:
    async with AsyncExitStack() as stack:
        legacy = await open_legacy(env, stack)
        headers = {**AUTH, **({"Content-Type": content_type} if content_type else {})}
        response = await env.http.post(legacy.endpoint, headers=headers, content=b"{}")
        assert response.status_code == 400


@pytest.mark.parametrize("path", ["/messages", "/messages/"])
@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
async def test_c10_message_endpoint_allows_only_post(env: Env, path: str, method: str) -> None:
    response = await env.http.request(method, path, headers=AUTH)
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"


async def test_c11_closing_the_sse_stream_ends_the_session(env: Env) -> None:
    async with AsyncExitStack() as stack:
        legacy = await open_legacy(env, stack)
    # The server notices the EOF at once (not at the TTL); give it a moment, bounded.
    await wait_for(lambda: len(env.server.sessions) == 0, 2, "the session to end")
    response = await env.http.post(legacy.endpoint, headers=BASE, json=rpc("ping"))
    assert response.status_code == 404


async def test_c12_c65_sse_endpoints_refuse_a_foreign_origin(env: Env) -> None:
    evil = {"Origin": "http://evil.example.com"}
    refused = await env.http.get("/sse", headers={**AUTH, **evil})
    assert refused.status_code == 403
    async with AsyncExitStack() as stack:
        legacy = await open_legacy(env, stack)
        post = await env.http.post(legacy.endpoint, headers={**BASE, **evil}, json=rpc("ping"))
        assert post.status_code == 403


async def test_c13_idle_sse_stream_carries_comments(nursery: trio.Nursery) -> None:
    assert Config().ping_interval_s <= 30  # the default keeps proxies' 30-60 s idle limits happy
    async with make_env(nursery, ping_interval_s=0.1) as env:
        async with AsyncExitStack() as stack:
            legacy = await open_legacy(env, stack)
            await legacy.reader.read_until(b": ping", timeout=2)


class _Anyone:
    """Accepts every request (no Authorization), for the SDK's CLI which cannot send headers."""

    async def verify(self, authorization: str | None) -> Principal:
        return Principal(id="anyone", subject="anyone", scopes=frozenset({"*"}))


async def test_c14_python_sdk_cli_initializes_over_sse(nursery: trio.Nursery) -> None:
    server = Server(builtin_tools=True, config=make_config(), verifier=_Anyone())
    info = await nursery.start(server.serve)
    with trio.fail_after(8):
        done = await trio.run_process(
            [sys.executable, "-m", "mcp.client", info.url + "/sse"],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert b"Initialized" in done.stderr


async def test_c94_sse_cancelled_request_gets_nothing(env: Env) -> None:
    async with AsyncExitStack() as stack:
        legacy = await open_legacy(env, stack)
        await env.http.post(legacy.endpoint, headers=BASE, json=init_body())
        await next_message(legacy.reader)
        await env.http.post(legacy.endpoint, headers=BASE, json=call("sleeper", id=5))
        await env.probe.started.wait()
        cancel = note("notifications/cancelled", {"requestId": 5})
        await env.http.post(legacy.endpoint, headers=BASE, json=cancel)
        await env.probe.cleaned.wait()
        await env.http.post(legacy.endpoint, headers=BASE, json=rpc("ping", id=6))
        _, message = await next_message(legacy.reader)
        assert message["id"] == 6  # nothing for id 5 came first


# Every test runs under a deadline (the SSE reads and httpx calls have their own, shorter ones).
bound_tests(globals(), TEST_TIMEOUT_S)
