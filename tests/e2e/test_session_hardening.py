"""Issue 12: session defects found by attacking the server from outside, each over a real
loopback socket (httpx or raw bytes on 127.0.0.1) and each under ``trio.fail_after``.

* (2) tool scopes are judged on the token of the request that carries the call, on ``/mcp`` and
  ``/sse`` as on ``/events``: no downgrade keeps a session's first grant, a step-up works;
* (4) an ``/sse`` stream that never starts leaves no session (HEAD, a client reset);
* (8) ``/events`` ids are per principal: nothing to probe, nothing to squat; ``Server.publish``
  names the principal when two use the same id;
* (9) hostile input gets a specific, short error and no traceback in the log;
* (11) a second GET ``/mcp`` takes over from the first, which is told ``superseded``.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import httpx
import orjson
import pytest
import trio

from datapulse import Server
from datapulse.auth.verifier import Principal
from datapulse.errors import AmbiguousSession, Unauthorized
from tests.helpers import (
    AUTH,
    AUTH_HEADER,
    MCP_HEADERS,
    Canned,
    CannedServer,
    RawClient,
    SSEReader,
    bearer,
    bound_tests,
    client_for,
    make_config,
    mcp_session,
    note,
    rpc,
    start_server,
    wait_for,
)
from tests.idp import IdP

TIMEOUT_S = 10
SHORT = 1024  # bytes: what any error body here must stay under
INIT = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t"}}


def tracebacks(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Log lines of ours at WARNING or above that carry a traceback."""
    return [
        f"{r.levelname} {r.name}: {r.getMessage()}"
        for r in caplog.records
        if r.name.startswith("datapulse") and r.levelno >= logging.WARNING and r.exc_info
    ]


# -- (2) scopes per request ----------------------------------------------------------------------


def tokens(idp: IdP) -> tuple[dict[str, str], dict[str, str]]:
    """One subject, two tokens: without and with the ``secret`` tool's scope (data:read)."""
    low = bearer(idp.mint(sub="erin", scope="mcp:tools"))
    high = bearer(idp.mint(sub="erin", scope="mcp:tools data:read"))
    return low, high


def secret_of(reply: dict[str, Any]) -> Any:
    """The ``secret`` tool's output (it has no outputSchema: JSON text in a text block)."""
    return orjson.loads(reply["result"]["content"][0]["text"])


async def open_mcp(http: httpx.AsyncClient, auth: dict[str, str]) -> dict[str, str]:
    opened = await http.post("/mcp", headers={**MCP_HEADERS, **auth}, json=rpc("initialize", INIT))
    assert opened.status_code == 200, opened.text
    session = {"Mcp-Session-Id": opened.headers["mcp-session-id"]}
    ack = await http.post(
        "/mcp", headers={**MCP_HEADERS, **auth, **session}, json=note("notifications/initialized")
    )
    assert ack.status_code == 202
    return session


async def call_secret(
    http: httpx.AsyncClient, auth: dict[str, str], session: dict[str, str], rid: int
) -> dict[str, Any]:
    call = rpc("tools/call", {"name": "secret", "arguments": {}}, rid)
    response = await http.post("/mcp", headers={**MCP_HEADERS, **auth, **session}, json=call)
    return dict(response.json())


async def test_mcp_tool_call_is_judged_on_the_token_of_its_own_post(
    jwt_server: tuple[Server, IdP],
) -> None:
    server, idp = jwt_server
    low, high = tokens(idp)
    async with client_for(server) as http:
        # Made with the scope, called without it: refused (was: the session's grant counted).
        session = await open_mcp(http, high)
        assert "result" in await call_secret(http, high, session, 2)
        downgraded = await call_secret(http, low, session, 3)
        assert "data:read" in downgraded["error"]["message"], downgraded  # FAILS without the fix
        # Made without it, called with it: a step-up works (was: refused).
        session = await open_mcp(http, low)
        assert "error" in await call_secret(http, low, session, 4)
        stepped_up = await call_secret(http, high, session, 5)
        assert secret_of(stepped_up) == {"secret": 42}, stepped_up


async def test_sse_tool_call_is_judged_on_the_token_of_its_own_post(
    jwt_server: tuple[Server, IdP],
) -> None:
    server, idp = jwt_server
    low, high = tokens(idp)
    json_type = {"Content-Type": "application/json"}
    async with client_for(server) as http, AsyncExitStack() as stack:
        outcomes: dict[str, dict[str, Any]] = {}
        for opener, caller in (("high", "low"), ("low", "high")):
            auth = {"high": high, "low": low}
            stream = await stack.enter_async_context(
                http.stream("GET", "/sse", headers=auth[opener])
            )
            reader = SSEReader(stream)
            endpoint = (await reader.next_data()).data or ""
            for message in (rpc("initialize", INIT, 1), note("notifications/initialized")):
                posted = await http.post(
                    endpoint, headers={**auth[opener], **json_type}, json=message
                )
                assert posted.status_code == 202
            assert "result" in orjson.loads((await reader.next_data()).data or "")
            call = rpc("tools/call", {"name": "secret", "arguments": {}}, 2)
            posted = await http.post(endpoint, headers={**auth[caller], **json_type}, json=call)
            assert posted.status_code == 202
            outcomes[caller] = orjson.loads((await reader.next_data()).data or "")
        assert "data:read" in outcomes["low"]["error"]["message"], outcomes  # FAILS without the fix
        assert secret_of(outcomes["high"]) == {"secret": 42}, outcomes


# -- (4) /sse sessions end with their stream -----------------------------------------------------


async def test_head_sse_opens_no_session_and_locks_nobody_out(nursery: trio.Nursery) -> None:
    server, _ = await start_server(nursery, max_sessions_per_principal=5)
    async with client_for(server, headers=AUTH) as http:
        for _ in range(6):
            head = await http.head("/sse")
            assert head.status_code == 200
            assert head.headers["content-type"] == "text/event-stream"
        assert len(server.sessions) == 0  # FAILS without the fix: 5 sessions until the TTL
        async with http.stream("GET", "/sse") as stream:
            assert stream.status_code == 200  # without the fix: 429
            endpoint = await SSEReader(stream).next_data()
            assert (endpoint.data or "").startswith("/messages?session_id=")
            assert len(server.sessions) == 1
        await wait_for(lambda: len(server.sessions) == 0, 5, "the stream's session to close")


async def test_sse_get_reset_before_its_head_leaves_no_session(nursery: trio.Nursery) -> None:
    server, info = await start_server(nursery, max_sessions_per_principal=5)
    request = f"GET /sse HTTP/1.1\r\nHost: localhost\r\nAuthorization: {AUTH_HEADER[1]}"
    for _ in range(40):
        client = await RawClient.connect(info.port)
        await client.stream.send_all(f"{request}\r\n\r\n".encode())
        await client.abort()  # RST at once: the head usually meets a reset socket
    await wait_for(lambda: not server.http.connections, 5, "the reset connections to close")
    assert server.sessions.owned_total == 0  # FAILS without the fix (sessions until the TTL)
    async with client_for(server, headers=AUTH) as http, http.stream("GET", "/sse") as stream:
        assert stream.status_code == 200


# -- (8) /events ids are per principal ---------------------------------------------------------


class TwoUsers:
    async def verify(self, authorization: str | None) -> Principal:
        token = (authorization or "").removeprefix("Bearer ")
        if token in ("alice", "bob"):
            return Principal(id=token, subject=token)
        raise Unauthorized("who?")


@pytest.fixture
async def two_users(nursery: trio.Nursery) -> AsyncIterator[tuple[Server, httpx.AsyncClient]]:
    server = Server(builtin_tools=True, config=make_config(), verifier=TwoUsers())
    info = await nursery.start(server.serve)
    async with httpx.AsyncClient(base_url=info.url, timeout=5) as http:
        yield server, http


ALICE, BOB = bearer("alice"), bearer("bob")
LIST = {"type": "list_tools", "request_id": "l1"}


async def test_events_ids_are_per_principal_so_they_can_be_neither_probed_nor_squatted(
    two_users: tuple[Server, httpx.AsyncClient],
) -> None:
    server, http = two_users
    async with AsyncExitStack() as stack:

        async def open_stream(auth: dict[str, str], session_id: str) -> SSEReader:
            response = await stack.enter_async_context(
                http.stream("GET", f"/events?session_id={session_id}", headers=auth)
            )
            assert response.status_code == 200, session_id  # FAILS without the fix: 404
            return SSEReader(response)

        alice_shared = await open_stream(ALICE, "shared")
        # A probe learns nothing: an id alice holds and one nobody holds answer bob alike.
        assert (
            await http.post("/message?session_id=shared", headers=BOB, json=LIST)
        ).status_code == 404
        assert (
            await http.post("/message?session_id=nobody", headers=BOB, json=LIST)
        ).status_code == 404
        bob_shared = await open_stream(BOB, "shared")
        assert (
            await http.post("/message?session_id=shared", headers=BOB, json=LIST)
        ).status_code == 202
        assert orjson.loads((await bob_shared.next_data()).data or "")["type"] == "list_tools"
        # Squatting: bob opens an id first; alice's later use of it is her own session.
        bob_early = await open_stream(BOB, "alice-next")
        alice_next = await open_stream(ALICE, "alice-next")
        assert (
            await http.post("/message?session_id=alice-next", headers=ALICE, json=LIST)
        ).status_code == 202
        assert orjson.loads((await alice_next.next_data()).data or "")["type"] == "list_tools"

        # The host program: an id two principals use must be given with its principal.
        with pytest.raises(AmbiguousSession):
            await server.publish("shared", {"to": "?"})
        await server.publish("shared", {"to": "alice"}, principal="alice")
        await server.publish("alice-next", {"to": "bob"}, principal="bob")
        assert orjson.loads((await alice_shared.next_data()).data or "") == {"to": "alice"}
        assert orjson.loads((await bob_early.next_data()).data or "") == {"to": "bob"}
        # Nothing of the other's reached either (their next event is the host's, not bob's).
        assert len(server.sessions) == 4


# -- (9) hostile input: a specific, short error and no traceback --------------------------------


async def test_a_5000_digit_cursor_is_invalid_params_without_a_traceback(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    server, _ = await start_server(nursery)
    cursor = base64.urlsafe_b64encode(b"dp1:" + b"9" * 5000).decode()
    async with client_for(server) as http:
        headers = await mcp_session(http)
        response = await http.post(
            "/mcp", headers=headers, json=rpc("tools/list", {"cursor": cursor}, 2)
        )
        error = response.json()["error"]
        assert error["code"] == -32602, error  # FAILS without the fix: -32603 internal error
        assert error["message"] == "invalid cursor"
    assert tracebacks(caplog) == []


async def test_a_message_argument_nested_1000_deep_is_400_without_a_traceback(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    server, _ = await start_server(nursery)
    deep = b"[" * 1000 + b"]" * 1000
    body = b'{"type":"call_tool","request_id":"r1","data":{"name":"fetch_url","url":' + deep + b"}}"
    async with client_for(server, headers=AUTH) as http:
        async with http.stream("GET", "/events?session_id=deep") as stream:
            response = await http.post("/message?session_id=deep", content=body)
            assert response.status_code == 400, response.text  # FAILS without the fix: 202
            assert "64 levels" in response.json()["detail"]
            # The session is still usable.
            ok = {"type": "list_tools", "request_id": "r2"}
            assert (await http.post("/message?session_id=deep", json=ok)).status_code == 202
            event = orjson.loads((await SSEReader(stream).next_data()).data or "")
            assert event["request_id"] == "r2"
    assert tracebacks(caplog) == []


@pytest.mark.parametrize(
    ("charset", "body", "content"),
    [
        ("rot13", b"hello", "hello"),  # a str-to-str codec: not a charset, read as UTF-8
        ("idna", b"hello", "hello"),  # cannot decode with errors="replace": read as UTF-8
        ("utf-16", b"h\x00e\x00l\x00l\x00o\x00", None),  # no BOM: Python refuses it outright
    ],
)
async def test_fetch_url_of_a_page_in_an_odd_charset_is_specific_and_logs_no_traceback(
    nursery: trio.Nursery,
    caplog: pytest.LogCaptureFixture,
    charset: str,
    body: bytes,
    content: str | None,
) -> None:
    upstream = CannedServer(
        routes={
            "/page": Canned(
                headers=(("Content-Type", f"text/plain; charset={charset}"),), body=body
            )
        }
    )
    await nursery.start(upstream.run)
    server, _ = await start_server(nursery, fetch_allow_private=True)  # 127.0.0.1 only
    async with client_for(server) as http:
        headers = await mcp_session(http)
        call = rpc(
            "tools/call", {"name": "fetch_url", "arguments": {"url": f"{upstream.url}/page"}}, 2
        )
        result = (await http.post("/mcp", headers=headers, json=call)).json()["result"]
    text = result["content"][0]["text"]
    if content is None:
        assert result["isError"] is True
        assert text == "bad response body: it is not valid utf-16", text  # FAILS without the fix
    else:
        assert result.get("isError") is not True, text  # FAILS without the fix: exception text
        assert result["structuredContent"]["content"] == content
    assert tracebacks(caplog) == []
    assert upstream.requests and upstream.requests[0].path == "/page"


async def test_a_12kb_last_event_id_gets_a_short_400(nursery: trio.Nursery) -> None:
    server, _ = await start_server(nursery)
    huge = "x" * 12_000
    async with client_for(server, headers=AUTH) as http:
        events = await http.get("/events?session_id=l", headers={"Last-Event-ID": huge})
        assert events.status_code == 400
        assert len(events.content) < SHORT, len(events.content)  # FAILS without the fix: 12 KB
        headers = await mcp_session(http)
        mcp = await http.get("/mcp", headers={**headers, "Last-Event-ID": huge})
        assert mcp.status_code == 400
        assert len(mcp.content) < SHORT, len(mcp.content)
        resumed = await http.get("/mcp", headers={**headers, "Last-Event-ID": f"1-{huge}"})
        assert resumed.status_code == 400
        assert len(resumed.content) < SHORT, len(resumed.content)


async def test_a_100kb_method_or_tool_name_gets_a_short_error(nursery: trio.Nursery) -> None:
    server, _ = await start_server(nursery)
    huge = "m" * 100_000
    async with client_for(server) as http:
        headers = await mcp_session(http)
        response = await http.post("/mcp", headers=headers, json=rpc(huge, {}, 2))
        assert response.json()["error"]["code"] == -32601
        assert len(response.content) < SHORT, len(response.content)  # FAILS without the fix
        # An unknown tool's name is quoted briefly too (the registry's message, clipped).
        unknown = await http.post(
            "/mcp", headers=headers, json=rpc("tools/call", {"name": huge, "arguments": {}}, 3)
        )
        assert len(unknown.content) < SHORT, len(unknown.content)
    # On /sse the error goes out as an event: short too.
    async with client_for(server, headers=AUTH) as http, http.stream("GET", "/sse") as stream:
        reader = SSEReader(stream)
        endpoint = (await reader.next_data()).data or ""
        json_type = {"Content-Type": "application/json"}
        for message in (rpc("initialize", INIT, 1), rpc(huge, {}, 2)):
            assert (await http.post(endpoint, headers=json_type, json=message)).status_code == 202
        await reader.next_data()
        event = await reader.next_data()
        assert orjson.loads(event.data or "")["error"]["code"] == -32601
        assert len(event.data or "") < SHORT, len(event.data or "")


# -- (11) a second GET /mcp takes over ------------------------------------------------------------


async def test_a_second_mcp_get_takes_over_and_the_first_is_told_why(nursery: trio.Nursery) -> None:
    server, info = await start_server(nursery)
    async with client_for(server) as http:
        headers = await mcp_session(http)
    sid = headers["Mcp-Session-Id"]
    get_headers = [
        AUTH_HEADER,
        ("Accept", "text/event-stream"),
        ("Mcp-Session-Id", sid),
        ("MCP-Protocol-Version", headers["MCP-Protocol-Version"]),
    ]
    first = await RawClient.connect(info.port)
    await first.send("GET", "/mcp", get_headers)
    await first.read_until(lambda c: b"retry:" in c.body)
    await server.publish(sid, {"jsonrpc": "2.0", "method": "notifications/one"})
    await first.read_until(lambda c: b"notifications/one" in c.body)
    # The client's stream died at a proxy; the server has not noticed. It opens another.
    second = await RawClient.connect(info.port)
    await second.send("GET", "/mcp", get_headers)
    await second.read_until(lambda c: c.response is not None)
    assert second.response is not None
    assert second.response.status_code == 200  # FAILS without the fix: 409
    await first.read_to_end()
    assert first.complete  # a well-formed end of the old response
    assert first.body.endswith(b': close {"reason":"superseded"}\n\n'), first.body[-200:]
    await server.publish(sid, {"jsonrpc": "2.0", "method": "notifications/two"})
    await second.read_until(lambda c: b"notifications/two" in c.body)
    assert b"notifications/one" not in second.body  # delivered once, on the first stream
    assert b"notifications/two" not in first.body
    await first.aclose()
    await second.aclose()


bound_tests(globals(), TIMEOUT_S)
