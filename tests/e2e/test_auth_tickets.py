"""Stream tickets (EventSource without an Authorization header), CORS, and logs without secrets.

The ``TicketBook`` rules are tested with a hand-stepped clock; the HTTP tests run a real server
on 127.0.0.1 under ``trio.fail_after``. The browser itself is in ``test_browser.py``.
"""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack
from typing import Any

import httpx
import orjson
import pytest
import trio

from datapulse import Server
from datapulse.auth.tickets import TicketBook, redact
from datapulse.auth.verifier import Principal
from datapulse.errors import TooManyRequests, Unauthorized
from tests.helpers import AUTH, TOKEN, SSEReader, client_for, raw_exchange, start_server

TIMEOUT = 10


ALICE = Principal(id="jwt:alice", subject="alice", scopes=frozenset({"mcp:tools"}))
BOB = Principal(id="jwt:bob", subject="bob")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def book_and_clock(**options: Any) -> tuple[TicketBook, Clock]:
    clock = Clock()
    return TicketBook(clock=clock, **options), clock


def refused(book: TicketBook, ticket: str, **use: Any) -> None:
    use = {"route": "events", "session_id": "s1", "resuming": False, **use}
    with pytest.raises(Unauthorized) as info:
        book.redeem(ticket, **use)
    assert info.value.http_status == 401
    assert info.value.challenge.startswith('Bearer error="invalid_token"')
    assert ticket not in info.value.detail and ticket not in info.value.challenge


# -- the rules, without sockets ------------------------------------------------------------------


def test_a_ticket_opens_once_then_only_resumes_its_own_session() -> None:
    book, _ = book_and_clock()
    ticket = book.issue(ALICE)
    assert len(ticket) >= 40
    used = book.redeem(ticket, route="events", session_id="s1", resuming=False)
    assert used.principal == ALICE and used.first_use
    book.bind(ticket, ALICE, "s1", "events")
    refused(book, ticket)  # a second open without Last-Event-ID
    resumed = book.redeem(ticket, route="events", session_id="s1", resuming=True)
    assert resumed.principal == ALICE and not resumed.first_use
    refused(book, ticket, session_id="s2", resuming=True)  # another session
    refused(book, ticket, route="sse", session_id=None, resuming=True)  # another route
    book.forget_session("s1")  # the session ended
    refused(book, ticket, resuming=True)


def test_an_unused_ticket_expires_after_its_ttl() -> None:
    book, clock = book_and_clock(ttl_s=30)
    early, late = book.issue(ALICE), book.issue(ALICE)
    clock.now += 29.9
    assert book.redeem(early, route="events", session_id="s1", resuming=False).first_use
    clock.now += 0.1
    refused(book, late)
    assert len(book) == 0


def test_a_ticket_naming_a_session_opens_only_that_session() -> None:
    book, _ = book_and_clock()
    ticket = book.issue(ALICE, "s1")
    refused(book, ticket, session_id="s2")
    refused(book, ticket, route="sse", session_id=None)
    assert book.redeem(ticket, route="events", session_id="s1", resuming=True).first_use


def test_legacy_sse_tickets_never_reopen() -> None:
    book, _ = book_and_clock()
    ticket = book.issue(BOB)
    assert book.redeem(ticket, route="sse", session_id=None, resuming=False).first_use
    book.bind(ticket, BOB, "generated-id", "sse")
    # /sse creates a new session per GET, so nothing can ever be resumed there.
    refused(book, ticket, route="sse", session_id=None, resuming=True)
    refused(book, "never-issued", route="sse", session_id=None)


def test_limits_keep_the_book_small() -> None:
    book, clock = book_and_clock(max_pending_per_principal=3, max_bound_per_session=2)
    tickets = [book.issue(ALICE) for _ in range(3)]
    with pytest.raises(TooManyRequests):
        book.issue(ALICE)
    book.issue(BOB)  # per principal
    for ticket in tickets:
        book.redeem(ticket, route="events", session_id="s1", resuming=False)
        book.bind(ticket, ALICE, "s1", "events")
    book.issue(ALICE)  # spending freed the slots
    refused(book, tickets[0], resuming=True)  # only the newest two per session are kept
    assert book.redeem(tickets[2], route="events", session_id="s1", resuming=True)
    clock.now += 31
    book.issue(ALICE)


def test_the_book_holds_no_usable_ticket() -> None:
    book, _ = book_and_clock()
    ticket = book.issue(ALICE)
    book.redeem(ticket, route="events", session_id="s1", resuming=False)
    book.bind(ticket, ALICE, "s1", "events")
    assert ticket not in repr(vars(book))


def test_redact_hides_credentials_in_query_strings() -> None:
    line = "GET /events?session_id=a&ticket=abc-DEF_1&x=1 /sse?access_token=t0k&token=zz b'"
    assert redact(line) == (
        "GET /events?session_id=a&ticket=<redacted>&x=1 "
        "/sse?access_token=<redacted>&token=<redacted> b'"
    )


# -- over HTTP -------------------------------------------------------------------------------------


@pytest.fixture
async def server(nursery: trio.Nursery) -> Server:
    srv, _ = await start_server(nursery, retry_ms=100)
    return srv


async def issue(http: httpx.AsyncClient, **body: Any) -> str:
    response = await http.post("/tickets", headers=AUTH, json=body or None)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    document = response.json()
    assert set(document) == {"ticket", "expires_in"} and document["expires_in"] == 30
    return str(document["ticket"])


async def test_tickets_need_a_bearer_token_and_a_sane_body(server: Server) -> None:
    with trio.fail_after(TIMEOUT):
        async with client_for(server) as http:
            assert (await http.post("/tickets")).status_code == 401
            bad_json = await http.post("/tickets", headers=AUTH, content=b"{")
            assert bad_json.status_code == 400
            for body in ([], {"session_id": 7}, {"session_id": ""}, {"session_id": "a b"}):
                response = await http.post("/tickets", headers=AUTH, json=body)
                assert response.status_code == 422, body
            await issue(http)
            await issue(http, session_id="s1")


async def _publish_and_read(server: Server, reader: SSEReader, session: str, n: int) -> str:
    await server.publish(session, {"n": n})
    event = await reader.next_data()
    assert orjson.loads(event.data or "") == {"n": n}
    assert event.id is not None
    return event.id


async def test_events_ticket_opens_once_and_resumes_with_last_event_id(server: Server) -> None:
    with trio.fail_after(TIMEOUT):
        async with client_for(server) as http:
            ticket = await issue(http, session_id="s1")
            url = f"/events?session_id=s1&ticket={ticket}"
            async with http.stream("GET", url) as stream:
                assert stream.status_code == 200
                reader = SSEReader(stream)
                last = await _publish_and_read(server, reader, "s1", 1)
            await server.publish("s1", {"n": 2})  # while no stream is open
            assert (await http.get(url)).status_code == 401  # a second open
            other = await http.get(f"/events?session_id=s2&ticket={ticket}", headers=_resume(last))
            assert other.status_code == 401
            async with http.stream("GET", url, headers=_resume(last)) as stream:
                assert stream.status_code == 200
                reader = SSEReader(stream)
                event = await reader.next_data()
                assert orjson.loads(event.data or "") == {"n": 2}  # nothing lost, no repeat
                last = event.id or ""
            # A fresh ticket (a new EventSource) resumes through the query parameter.
            fresh = await issue(http)
            async with http.stream(
                "GET", f"/events?session_id=s1&ticket={fresh}&last_event_id={last}"
            ) as stream:
                assert stream.status_code == 200
                await _publish_and_read(server, SSEReader(stream), "s1", 3)
            # Once the session ends, its tickets open nothing.
            live = next(s for s in server.sessions.live_sessions() if s.id == "s1")
            await server.sessions.close(live, "test_ended")
            for used in (ticket, fresh):
                gone = await http.get(f"/events?session_id=s1&ticket={used}", headers=_resume(last))
                assert gone.status_code == 401


def _resume(last_event_id: str) -> dict[str, str]:
    return {"Last-Event-ID": last_event_id}


async def test_refused_ticket_uses(server: Server) -> None:
    with trio.fail_after(TIMEOUT):
        async with client_for(server) as http:
            named = await issue(http, session_id="s1")
            assert (await http.get(f"/events?session_id=s2&ticket={named}")).status_code == 401
            # A request the router refuses (400) does not spend the ticket.
            assert (await http.get(f"/events?ticket={named}")).status_code == 400
            async with http.stream("GET", f"/events?session_id=s1&ticket={named}") as stream:
                assert stream.status_code == 200
            expiring = await issue(http)
            server.auth.tickets.clock = lambda: trio.current_time() + 30.5
            gone = await http.get(f"/events?session_id=s1&ticket={expiring}")
            assert gone.status_code == 401
            assert "expired" in gone.json()["detail"]


async def test_long_lived_tokens_never_authenticate_from_the_url(server: Server) -> None:
    with trio.fail_after(TIMEOUT):
        async with client_for(server) as http:
            for query in (f"access_token={TOKEN}", f"token={TOKEN}", f"ticket={TOKEN}"):
                response = await http.get(f"/events?session_id=s1&{query}")
                assert response.status_code == 401, query
            ticket = await issue(http)
            # Tickets are for opening streams only.
            for method, url in (
                ("POST", f"/message?session_id=s1&ticket={ticket}"),
                ("POST", f"/tickets?ticket={ticket}"),
                ("GET", f"/mcp?ticket={ticket}"),
                ("HEAD", f"/events?session_id=s1&ticket={ticket}"),
            ):
                response = await http.request(method, url)
                assert response.status_code == 401, (method, url)
            async with http.stream("GET", f"/events?session_id=s1&ticket={ticket}") as stream:
                assert stream.status_code == 200  # still unspent


async def test_legacy_sse_ticket_binds_to_the_created_session_and_never_reopens(
    server: Server,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with client_for(server) as http, AsyncExitStack() as stack:
            ticket = await issue(http)
            stream = await stack.enter_async_context(http.stream("GET", f"/sse?ticket={ticket}"))
            assert stream.status_code == 200
            reader = SSEReader(stream)
            endpoint = (await reader.next_data()).data or ""
            session_id = endpoint.partition("session_id=")[2]
            post = await http.post(
                endpoint,
                headers={**AUTH, "Content-Type": "application/json"},
                json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
            )
            assert post.status_code == 202
            for headers in ({}, _resume("1")):
                assert (await http.get(f"/sse?ticket={ticket}", headers=headers)).status_code == 401
            named = await issue(http, session_id="x")  # names an /events session
            assert (await http.get(f"/sse?ticket={named}")).status_code == 401
            assert any(s.id == session_id for s in server.sessions.live_sessions())


async def test_tickets_and_tokens_never_reach_the_logs(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    assert server.info is not None
    caplog.set_level(logging.DEBUG)
    with trio.fail_after(TIMEOUT):
        async with client_for(server) as http:
            ticket = await issue(http, session_id="s1")
            async with http.stream("GET", f"/events?session_id=s1&ticket={ticket}") as stream:
                assert stream.status_code == 200
            assert (await http.get(f"/events?session_id=s1&ticket={ticket}")).status_code == 401
            assert (await http.get(f"/nowhere?ticket={ticket}")).status_code == 404
            assert (
                await http.get(f"/events?session_id=s1&access_token={TOKEN}")
            ).status_code == 401
        # A malformed request line (with the ticket in it): its 400's log line quotes none of it.
        answer = await raw_exchange(
            server.info.port,
            f"GET /events?ticket={ticket} junk HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode(),
            read_timeout=2,
        )
        assert answer.startswith(b"HTTP/1.1 400")
    # The server's records (the test's own HTTP client logs its URLs, tickets and all).
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("datapulse")]
    assert messages
    for message in messages:
        assert ticket not in message and TOKEN not in message, message
    # The 400 names what was wrong and quotes nothing of the request (issue 12, defect 7).
    assert any("400" in m and "malformed request line" in m for m in messages), messages


# -- CORS --------------------------------------------------------------------------------------------

APP = "https://app.example"


async def test_cors_preflight_and_responses_for_allowed_origins(nursery: trio.Nursery) -> None:
    srv, _ = await start_server(nursery, cors_origins=f"{APP}, https://second.example")
    preflight_headers = {
        "Origin": APP,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    with trio.fail_after(TIMEOUT):
        async with client_for(srv) as http:
            answer = await http.options("/message", headers=preflight_headers)
            assert answer.status_code == 204
            h = answer.headers
            assert h["access-control-allow-origin"] == APP
            assert "POST" in h["access-control-allow-methods"]
            allowed = {v.strip().lower() for v in h["access-control-allow-headers"].split(",")}
            assert {
                "authorization",
                "content-type",
                "last-event-id",
                "mcp-session-id",
                "mcp-protocol-version",
            } <= allowed
            assert "mcp-session-id" in h["access-control-expose-headers"].lower()
            assert "access-control-allow-credentials" not in h
            mcp = await http.options("/mcp", headers=preflight_headers)
            assert {"GET", "POST", "DELETE"} <= set(
                mcp.headers["access-control-allow-methods"].split(", ")
            )
            # Allowed past the Origin guard, and readable.
            ok = await http.post("/tickets", headers={**AUTH, "Origin": APP})
            assert ok.status_code == 200
            assert ok.headers["access-control-allow-origin"] == APP
            assert ok.headers["vary"] == "Origin"
            denied = await http.post("/tickets", headers={"Origin": APP})
            assert denied.status_code == 401  # errors are readable too
            assert denied.headers["access-control-allow-origin"] == APP
            async with http.stream(
                "GET", "/events?session_id=c1", headers={**AUTH, "Origin": APP}
            ) as stream:
                assert stream.headers["access-control-allow-origin"] == APP
            # No Origin, no CORS headers.
            plain = await http.post("/tickets", headers=AUTH)
            assert "access-control-allow-origin" not in plain.headers
            # Not on the list: the guard refuses a foreign origin, and CORS a localhost one.
            for origin in ("https://evil.example", "http://localhost:3000"):
                headers = {**preflight_headers, "Origin": origin}
                assert (await http.options("/message", headers=headers)).status_code == 403
            local = await http.post("/tickets", headers={**AUTH, "Origin": "http://localhost:3000"})
            assert local.status_code == 200
            assert "access-control-allow-origin" not in local.headers


async def test_cors_wildcard(nursery: trio.Nursery) -> None:
    srv, _ = await start_server(nursery, cors_origins="*")
    with trio.fail_after(TIMEOUT):
        async with client_for(srv) as http:
            ok = await http.post("/tickets", headers={**AUTH, "Origin": "https://any.example"})
            assert ok.status_code == 200
            assert ok.headers["access-control-allow-origin"] == "*"
