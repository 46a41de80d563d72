"""Every limit a client can reach: its setting, its protective default, its status (docs/limits.md).

Limits already covered elsewhere are not repeated here: connections in all (503,
``test_http.py::test_over_connection_limit_503_with_retry_after``), request body (413,
``test_http.py::test_body_over_limit_413_*``), header block and field count (431,
``test_http.py::test_header_block_too_large_431`` / ``test_too_many_header_fields_431``), the
request read time (408, ``test_http.py::test_slowloris_gets_408_and_close``) and one stream per
session (``test_events_api.py::test_second_get_supersedes_the_first``,
``test_conformance_mcp.py::test_c53_c55_second_get_takes_over_and_gets_the_notifications``).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio_websocket

from datapulse import Config, Server
from datapulse.auth.verifier import Principal, bearer_token
from datapulse.config import settings
from datapulse.errors import Unauthorized
from tests.helpers import (
    AUTH,
    RawClient,
    add_counted_tools,
    handshake_headers,
    make_config,
    mcp_session,
    modern_call,
    raw_exchange,
    rpc,
    start_server,
    wait_for,
    wire,
)

DOCS = Path(__file__).parents[2] / "docs" / "limits.md"
LIMIT_FIELDS = [
    "max_connections",
    "max_connections_per_ip",
    "max_sessions",
    "max_sessions_per_principal",
    "max_body_bytes",
    "max_header_bytes",
    "max_header_count",
    "max_json_depth",
    "max_batch_items",
    "max_calls_per_session",
    "call_timeout_s",
    "read_timeout_s",
    "keepalive_timeout_s",
    "write_timeout_s",
    "replay_events",
    "replay_bytes",
]


def test_every_limit_has_a_setting_a_finite_default_and_a_documented_row() -> None:
    fields = {f.name: f for f in settings()}
    documented = DOCS.read_text()
    for name in LIMIT_FIELDS:
        f = fields[name]  # a user setting: flag + environment variable
        assert 0 < f.default < 10**9, name  # protective: never unlimited by default
        assert f"`{f.metadata['flag']}`" in documented, f"{name} is missing from docs/limits.md"


def status_of(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1])


def body_of(raw: bytes) -> dict[str, Any]:
    return json.loads(raw.split(b"\r\n\r\n", 1)[1])


# -- connections per client address ----------------------------------------------------------------


async def connect_from(source: str, port: int) -> trio.SocketStream:
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
    await sock.bind((source, 0))
    await sock.connect(("127.0.0.1", port))
    return trio.SocketStream(sock)


async def test_connections_per_address_over_the_limit_get_429_and_others_are_served(
    nursery: trio.Nursery,
) -> None:
    server, info = await start_server(nursery, max_connections_per_ip=3, max_connections=100)
    request = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n"
    with trio.fail_after(15):
        holders = [await trio.open_tcp_stream("127.0.0.1", info.port) for _ in range(3)]
        await wait_for(lambda: server.http.per_address.get("127.0.0.1") == 3, 5, "3 held")
        raw = await raw_exchange(info.port, request)
        assert status_of(raw) == 429
        assert b"Retry-After: 1" in raw
        assert body_of(raw)["error"] == "too_many_connections"
        # Another address is not held back by this one's connections (127.0.0.2 is loopback too).
        try:
            other = await connect_from("127.0.0.2", info.port)
        except OSError:  # pragma: no cover - a host without the whole 127/8 on lo
            other = None
        if other is not None:
            async with other:
                await other.send_all(request)
                assert (await other.receive_some(4096)).startswith(b"HTTP/1.1 200 ")
        for holder in holders:
            await holder.aclose()
        await wait_for(lambda: not server.http.per_address, 5, "the counts to drop")
        assert status_of(await raw_exchange(info.port, request, read_timeout=0.5)) == 200


def test_connection_limit_defaults_are_protective() -> None:
    config = Config()
    assert config.max_connections_per_ip == 1000 < config.max_connections == 20_000
    assert config.max_sessions_per_principal == 1000 < config.max_sessions == 10_000


# -- sessions in all and per principal ---------------------------------------------------------------


class TwoPrincipals:
    """Bearer ``alice`` or ``bob``: two principals on one server."""

    async def verify(self, authorization: str | None) -> Principal:
        token = bearer_token(authorization)
        if token not in ("alice", "bob"):
            raise Unauthorized("unknown token")
        return Principal(id=token, subject=token, scopes=frozenset({"*"}))


def as_(who: str, headers: dict[str, str]) -> dict[str, str]:
    return {**headers, "Authorization": f"Bearer {who}"}


async def test_sessions_in_all_over_the_limit_get_503(nursery: trio.Nursery) -> None:
    _, info = await start_server(nursery, max_sessions=2)
    async with httpx.AsyncClient(base_url=info.url, headers=AUTH, timeout=5) as http:
        await mcp_session(http)
        await mcp_session(http)
        params = {"protocolVersion": "2025-11-25", "capabilities": {}}
        refused = await http.post(
            "/mcp", headers=handshake_headers(), content=wire(rpc("initialize", params))
        )
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "5"
    assert refused.json()["error"]["code"] == -32000


async def test_sessions_per_principal_over_the_limit_get_429(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="datapulse.sessions")
    server = Server(
        builtin_tools=True,
        config=make_config(max_sessions_per_principal=2),
        verifier=TwoPrincipals(),
    )
    info = await nursery.start(server.serve)
    init = wire(rpc("initialize", {"protocolVersion": "2025-11-25", "capabilities": {}}))
    async with httpx.AsyncClient(base_url=info.url, timeout=5) as http:

        async def initialize(who: str) -> httpx.Response:
            return await http.post("/mcp", headers=as_(who, handshake_headers()), content=init)

        first, second = await initialize("alice"), await initialize("alice")
        assert first.status_code == second.status_code == 200
        refused = await initialize("alice")
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "5"
        assert refused.json()["error"]["code"] == -32000
        assert "per principal" in refused.json()["error"]["message"]
        # The operator is told which setting refused it, once (not once per refusal).
        warned = [
            r.getMessage()
            for r in caplog.records
            if "--max-sessions-per-principal" in r.getMessage()
        ]
        assert len(warned) == 1, warned
        # The same limit on the original API, where a GET creates the session: a JSON 429.
        events = await http.get(
            "/events?session_id=third", headers={"Authorization": "Bearer alice"}
        )
        assert events.status_code == 429
        assert events.json()["error"] == "too_many_requests"
        # Someone else is not affected.
        assert (await initialize("bob")).status_code == 200
        assert server.sessions.owned_by("alice") == 2
        # Ending a session gives its slot back.
        sid = first.headers["mcp-session-id"]
        headers = as_("alice", handshake_headers(sid))
        assert (await http.delete("/mcp", headers=headers)).status_code == 200
        assert server.sessions.owned_by("alice") == 1
        assert (await initialize("alice")).status_code == 200


# -- JSON nesting and batches ----------------------------------------------------------------------


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"a": value}
    return value


@pytest.mark.parametrize(("limit", "extra", "status"), [(8, 4, 200), (8, 12, 400), (64, 12, 200)])
async def test_json_nesting_deeper_than_the_setting_is_invalid_request(
    nursery: trio.Nursery, limit: int, extra: int, status: int
) -> None:
    server, info = await start_server(nursery, max_json_depth=limit)
    assert server.dispatcher.max_depth == limit  # the Config setting reaches the dispatcher
    params = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": nested(extra)}
    async with httpx.AsyncClient(base_url=info.url, headers=AUTH, timeout=5) as http:
        response = await http.post(
            "/mcp", headers=handshake_headers(), content=wire(rpc("initialize", params))
        )
    assert response.status_code == status
    if status == 400:
        error = response.json()["error"]
        assert error["code"] == -32600
        assert f"deeper than {limit} levels" in error["message"]


def pings(count: int) -> bytes:
    return b"[" + b",".join(wire(rpc("ping", id=i)) for i in range(count)) + b"]"


async def test_batch_larger_than_the_setting_is_refused_whole(nursery: trio.Nursery) -> None:
    _, info = await start_server(nursery, max_batch_items=3)
    async with httpx.AsyncClient(base_url=info.url, headers=AUTH, timeout=5) as http:
        headers = await mcp_session(http, version="2025-03-26")  # batches exist only there
        fits = await http.post("/mcp", headers=headers, content=pings(3))
        assert fits.status_code == 200
        assert len(fits.json()) == 3
        refused = await http.post("/mcp", headers=headers, content=pings(4))
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == -32600
    assert "exceeds the limit of 3" in refused.json()["error"]["message"]
    # The other server in this process keeps the default: the setting is per server.
    _, other = await start_server(nursery)
    async with httpx.AsyncClient(base_url=other.url, headers=AUTH, timeout=5) as http:
        headers = await mcp_session(http, version="2025-03-26")
        assert (await http.post("/mcp", headers=headers, content=pings(4))).status_code == 200


async def test_batch_limit_also_holds_on_the_websocket(nursery: trio.Nursery) -> None:
    _, info = await start_server(nursery, max_batch_items=3)
    url = f"ws://127.0.0.1:{info.port}/ws"
    params = {"protocolVersion": "2025-03-26", "capabilities": {}}
    with trio.fail_after(10):
        async with trio_websocket.open_websocket_url(
            url, subprotocols=["mcp"], extra_headers=[("Authorization", AUTH["Authorization"])]
        ) as ws:
            await ws.send_message(wire(rpc("initialize", params)).decode())
            assert "result" in json.loads(await ws.get_message())
            await ws.send_message(pings(4).decode())
            reply = json.loads(await ws.get_message())
    assert reply["error"]["code"] == -32600
    assert "exceeds the limit of 3" in reply["error"]["message"]


# -- tool calls: concurrency and time ----------------------------------------------------------------


async def test_concurrent_calls_per_session_over_the_limit_get_32000(nursery: trio.Nursery) -> None:
    server, info = await start_server(nursery, max_calls_per_session=2)
    probe = add_counted_tools(server)
    async with httpx.AsyncClient(base_url=info.url, headers=AUTH, timeout=10) as http:
        headers = await mcp_session(http)
        answers: list[httpx.Response] = []

        async def call(id: int) -> None:
            body = wire(rpc("tools/call", {"name": "gated", "arguments": {}}, id))
            answers.append(await http.post("/mcp", headers=headers, content=body))

        with trio.fail_after(10):
            async with trio.open_nursery() as calls:
                calls.start_soon(call, 1)
                calls.start_soon(call, 2)
                await probe.until(lambda p: p.started == 2)
                third = await http.post(
                    "/mcp",
                    headers=headers,
                    content=wire(rpc("tools/call", {"name": "gated", "arguments": {}}, 3)),
                )
                probe.gate.set()
    assert third.json() == {
        "jsonrpc": "2.0",
        "id": 3,
        "error": {"code": -32000, "message": "too many concurrent calls"},
    }
    assert probe.started == probe.finished == 2
    assert all(b"released" in a.content for a in answers)


async def test_concurrent_modern_calls_over_the_limit_get_429(nursery: trio.Nursery) -> None:
    server, info = await start_server(nursery, max_calls_per_session=1)
    probe = add_counted_tools(server)
    with trio.fail_after(10):
        holder = await RawClient.connect(info.port)
        headers, body = modern_call("gated", id=1)
        await holder.send("POST", "/mcp", headers, body)
        await probe.until(lambda p: p.started == 1)
        again = await RawClient.connect(info.port)
        headers, body = modern_call("gated", id=2)
        await again.send("POST", "/mcp", headers, body)
        await again.read_to_end()
        probe.gate.set()
        await holder.read_until(lambda c: b"released" in c.body)
        await holder.aclose()
        await again.aclose()
    assert again.response is not None
    assert again.response.status_code == 429
    assert json.loads(again.body)["error"]["code"] == -32000


async def test_call_time_over_the_setting_is_an_error_result(nursery: trio.Nursery) -> None:
    server, info = await start_server(nursery, call_timeout_s=0.3)
    probe = add_counted_tools(server)
    async with httpx.AsyncClient(base_url=info.url, headers=AUTH, timeout=10) as http:
        headers = await mcp_session(http)
        with trio.fail_after(10):
            body = wire(rpc("tools/call", {"name": "hang", "arguments": {}}, 7))
            response = await http.post("/mcp", headers=headers, content=body)
    replies = [
        json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: {")
    ] or [response.json()]
    result = replies[-1]["result"]
    assert result["isError"] is True
    assert result["content"][0]["text"] == "hang timed out after 0.3 s"
    assert probe.started == probe.cleaned == 1  # the tool was cancelled, its cleanup ran


# -- the documentation -------------------------------------------------------------------------------


def test_limits_documented_statuses_match_the_code() -> None:
    """docs/limits.md names each limit's status; the table and the errors must agree."""
    text = DOCS.read_text()
    rows = {
        m.group(1): m.group(2)
        for m in re.finditer(r"^\| `(--[a-z-]+)` \|[^|]*\|[^|]*\| ([^|]+) \|", text, re.M)
    }
    assert "429" in rows["--max-connections-per-ip"]
    assert "429" in rows["--max-sessions-per-principal"]
    assert "503" in rows["--max-connections"] and "503" in rows["--max-sessions"]
    assert "-32600" in rows["--max-json-depth"] and "-32600" in rows["--max-batch-items"]
    assert "413" in rows["--max-body"] and "431" in rows["--max-header-bytes"]
