"""Over HTTP: a stream ticket spent on ``/events`` or ``/sse`` opens nothing on the other route."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import trio

from datapulse import Server
from tests.helpers import AUTH, SSEReader, start_server

TIMEOUT = 15


@pytest.fixture
async def http(nursery: trio.Nursery) -> AsyncIterator[tuple[Server, httpx.AsyncClient]]:
    server, info = await start_server(nursery)
    # No default Authorization header: these requests must stand on their ticket alone.
    async with httpx.AsyncClient(base_url=info.url, timeout=10) as client:
        yield server, client


async def issue(client: httpx.AsyncClient, session_id: str | None = None) -> str:
    body = {"session_id": session_id} if session_id else None
    response = await client.post("/tickets", headers=AUTH, json=body)
    assert response.status_code == 200, response.text
    return str(response.json()["ticket"])


async def test_a_ticket_spent_on_events_cannot_open_sse(
    http: tuple[Server, httpx.AsyncClient],
) -> None:
    _, client = http
    with trio.fail_after(TIMEOUT):
        ticket = await issue(client)
        async with client.stream("GET", f"/events?session_id=s1&ticket={ticket}") as stream:
            assert stream.status_code == 200
            # Still streaming (the session is live and the ticket bound to it) while we try:
            for headers in ({}, {"Last-Event-ID": "1"}):
                refused = await client.get(f"/sse?ticket={ticket}", headers=headers)
                assert refused.status_code == 401, headers
                assert refused.json()["error"] == "unauthorized"


async def test_a_ticket_spent_on_sse_cannot_open_or_resume_events(
    http: tuple[Server, httpx.AsyncClient],
) -> None:
    server, client = http
    with trio.fail_after(TIMEOUT):
        ticket = await issue(client)
        async with client.stream("GET", f"/sse?ticket={ticket}") as stream:
            assert stream.status_code == 200
            endpoint = (await SSEReader(stream).next_data()).data or ""
            session_id = endpoint.partition("session_id=")[2]
            assert session_id and server.sessions.lookup(session_id) is not None
            for target, headers in (
                (f"/events?session_id={session_id}&ticket={ticket}", {"Last-Event-ID": "1"}),
                (f"/events?session_id={session_id}&ticket={ticket}", {}),
                (f"/events?session_id=other&ticket={ticket}", {}),
            ):
                refused = await client.get(target, headers=headers)
                assert refused.status_code == 401, (target, headers)


async def test_a_ticket_issued_for_an_events_session_cannot_open_sse(
    http: tuple[Server, httpx.AsyncClient],
) -> None:
    server, client = http
    with trio.fail_after(TIMEOUT):
        ticket = await issue(client, session_id="s1")
        before = len(server.sessions)
        for headers in ({}, {"Last-Event-ID": "1"}):
            refused = await client.get(f"/sse?ticket={ticket}", headers=headers)
            assert refused.status_code == 401, headers
        assert len(server.sessions) == before  # no /sse session was created for it
        # Refused uses did not spend it: it still opens the session it was issued for.
        async with client.stream("GET", f"/events?session_id=s1&ticket={ticket}") as stream:
            assert stream.status_code == 200
