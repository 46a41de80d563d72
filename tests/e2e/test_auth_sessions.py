"""Sessions belong to the principal that created them, on every transport that has sessions.

Two principals at a time: two JWT subjects from the IdP stand-in, and the local token beside a
JWT (both ways round). The other principal gets 404 for the session, exactly as if it did not
exist, so session ids cannot be probed. ``/ws`` is left out: its session is its connection.
"""

from __future__ import annotations

from contextlib import AsyncExitStack

import pytest
import trio

from datapulse import Server
from tests.helpers import AUTH, MCP_HEADERS, SSEReader, bearer, client_for, rpc
from tests.idp import IdP

TIMEOUT = 10

PAIRS = ["alice-bob", "local-alice", "alice-local"]


def credentials(idp: IdP, name: str) -> dict[str, str]:
    return AUTH if name == "local" else bearer(idp.mint(sub=name, scope="mcp:tools"))


def owners(
    jwt_server: tuple[Server, IdP], pair: str
) -> tuple[Server, dict[str, str], dict[str, str]]:
    server, idp = jwt_server
    first, second = pair.split("-")
    return server, credentials(idp, first), credentials(idp, second)


@pytest.mark.parametrize("pair", PAIRS)
async def test_events_session_is_invisible_to_another_principal(
    jwt_server: tuple[Server, IdP], pair: str
) -> None:
    server, owner, other = owners(jwt_server, pair)
    call = {"type": "call_tool", "request_id": "r1", "data": {"name": "echo", "n": 1}}
    with trio.fail_after(TIMEOUT):
        async with client_for(server) as http, AsyncExitStack() as stack:
            stream = await stack.enter_async_context(
                http.stream("GET", "/events?session_id=shared", headers=owner)
            )
            assert stream.status_code == 200
            # Issue 12 (8): the other's GET of "shared" is its own session (was: 404, which
            # told it the owner's id exists), so its POST finds that one and not the owner's.
            assert (await http.head("/events?session_id=shared", headers=other)).status_code == 200
            post = await http.post("/message?session_id=shared", headers=other, json=call)
            assert post.status_code == 404
            # A ticket does not help: it speaks for the principal that asked for it.
            ticket = (await http.post("/tickets", headers=other)).json()["ticket"]
            async with http.stream("GET", f"/events?session_id=shared&ticket={ticket}") as theirs:
                assert theirs.status_code == 200
            # The owner is unaffected.
            assert (
                await http.post("/message?session_id=shared", headers=owner, json=call)
            ).status_code == 202
            event = await SSEReader(stream).next_data()
            assert '"tool_result"' in (event.data or "")


@pytest.mark.parametrize("pair", PAIRS)
async def test_mcp_session_is_invisible_to_another_principal(
    jwt_server: tuple[Server, IdP], pair: str
) -> None:
    server, owner, other = owners(jwt_server, pair)
    params = {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"},
    }
    init = rpc("initialize", params)
    with trio.fail_after(TIMEOUT):
        async with client_for(server) as http:
            opened = await http.post("/mcp", headers={**MCP_HEADERS, **owner}, json=init)
            session = {"Mcp-Session-Id": opened.headers["mcp-session-id"]}
            theirs = {**MCP_HEADERS, **other, **session}
            listing = rpc("tools/list", {}, 2)
            assert (await http.post("/mcp", headers=theirs, json=listing)).status_code == 404
            assert (await http.get("/mcp", headers=theirs)).status_code == 404
            assert (await http.delete("/mcp", headers=theirs)).status_code == 404
            mine = {**MCP_HEADERS, **owner, **session}
            ok = await http.post("/mcp", headers=mine, json=listing)
            assert ok.status_code == 200, ok.text


@pytest.mark.parametrize("pair", PAIRS)
async def test_legacy_sse_session_is_invisible_to_another_principal(
    jwt_server: tuple[Server, IdP], pair: str
) -> None:
    server, owner, other = owners(jwt_server, pair)
    with trio.fail_after(TIMEOUT):
        async with client_for(server) as http, AsyncExitStack() as stack:
            stream = await stack.enter_async_context(http.stream("GET", "/sse", headers=owner))
            reader = SSEReader(stream)  # kept: dropping it would close the stream
            endpoint = (await reader.next_data()).data or ""
            assert endpoint.startswith("/messages?session_id=")
            body = rpc("ping", {}, 3)
            json_type = {"Content-Type": "application/json"}
            refused = await http.post(endpoint, headers={**other, **json_type}, json=body)
            assert refused.status_code == 404
            accepted = await http.post(endpoint, headers={**owner, **json_type}, json=body)
            assert accepted.status_code == 202


async def test_two_subjects_are_two_principals_but_one_subject_is_one(
    jwt_server: tuple[Server, IdP],
) -> None:
    """Two tokens of the same subject (say, before and after a refresh) share the session."""
    server, idp = jwt_server
    first, refreshed = (bearer(idp.mint(sub="dana", jti=j)) for j in ("a", "b"))
    call = {"type": "list_tools", "request_id": "l1"}
    with trio.fail_after(TIMEOUT):
        async with client_for(server) as http, AsyncExitStack() as stack:
            stream = await stack.enter_async_context(
                http.stream("GET", "/events?session_id=d1", headers=first)
            )
            assert stream.status_code == 200
            response = await http.post("/message?session_id=d1", headers=refreshed, json=call)
            assert response.status_code == 202
