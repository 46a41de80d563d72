"""Issue 12, attacked from outside over 127.0.0.1: secrets in log lines, an IdP that is down at
start, spent stream tickets replaying old events, ``crit`` in a JWT header.

Every test runs under ``trio.fail_after`` (``bound_tests`` at the end of the module). The rules
behind them are unit-tested with a fixed clock in tests/unit/test_auth_hardening.py.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
import sys
from typing import Any

import httpx
import orjson
import pytest
import trio
from joserfc import jws
from joserfc.jws import JWSRegistry

from datapulse import Server
from datapulse.auth.setup import AuthStartupError
from datapulse.tools.registry import ToolContext
from tests.helpers import (
    AUDIENCE,
    AUTH,
    SSEReader,
    bearer,
    bound_tests,
    client_for,
    make_config,
    raw_exchange,
    read_stderr_until,
    start_auth_server,
    start_server,
    wait_for,
)
from tests.idp import IdP, rsa_key, start_idp

TIMEOUT = 15
SECRET = "hardening-local-secret-0123456789"  # the configured local token
LEAKED_JWT = (  # JWT-shaped, as a client would send one (never valid here)
    "eyJhbGciOiJSUzI1NiIsImtpZCI6ImsxIn0"
    ".eyJzdWIiOiJhbGljZSIsImF1ZCI6Imh0dHBzOi8vbWNwLmV4YW1wbGUudGVzdCJ9"
    ".c2lnbmF0dXJlLXRoYXQtd291bGQtb3Blbi10aGUtZG9vcg"
)
OTHER_BEARER = "opaque-bearer-credential-Zq81"


def _hostile_requests(ticket: str) -> list[bytes]:
    """Header lines h11 refuses (space before the colon, NUL, VT) and a malformed request line,
    each carrying a credential, so that any log line quoting them would print it."""
    head = b"GET /events?session_id=s1 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    requests = []
    for token in (SECRET, LEAKED_JWT, OTHER_BEARER):
        for line in (
            f"Authorization : Bearer {token}",
            f"Authorization: Bearer {token}\x00tail",
            f"Authorization: bearer {token}\x0btail",
            f"X-Forwarded-Authorization : BEARER {token}",
        ):
            requests.append(head + line.encode() + b"\r\n\r\n")
    requests.append(
        f"GET /events?ticket={ticket}&token={SECRET} junk HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    )
    return requests


def _assert_no_secret(text: str, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in text, f"{secret!r} reached the log:\n{text}"


# -- 7: no credential in any log line ------------------------------------------------------------


async def test_secrets_never_reach_any_log_line(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server, info = await start_server(nursery, token=SECRET)

    async def leaky(arguments: dict[str, Any], context: ToolContext) -> dict[str, Any]:
        # An upstream error that quotes the credential: logged with its traceback.
        raise RuntimeError(f"upstream refused Authorization: Bearer {LEAKED_JWT} ({SECRET})")

    server.tool("leaky")(leaky)
    async with client_for(server) as http:
        ticket = (await http.post("/tickets", headers=bearer(SECRET))).json()["ticket"]
        async with http.stream("GET", "/events?session_id=s1", headers=bearer(SECRET)) as stream:
            call = {"type": "call_tool", "request_id": "r1", "data": {"name": "leaky"}}
            posted = await http.post("/message?session_id=s1", headers=bearer(SECRET), json=call)
            assert posted.status_code == 202
            event = await SSEReader(stream).next_data()
            assert '"error"' in (event.data or "")
    caplog.clear()  # from here on only what the server logs about raw sockets and the tool
    for payload in _hostile_requests(ticket):
        answer = await raw_exchange(info.port, payload, read_timeout=2)
        assert answer.startswith(b"HTTP/1.1 4"), (payload, answer[:200])
    async with client_for(server) as http:
        async with http.stream("GET", "/events?session_id=s2", headers=bearer(SECRET)) as stream:
            call = {"type": "call_tool", "request_id": "r2", "data": {"name": "leaky"}}
            await http.post("/message?session_id=s2", headers=bearer(SECRET), json=call)
            await SSEReader(stream).next_data()
        # A page that names its session after its token: the id is logged, the token is not.
        async with http.stream("GET", f"/events?session_id={SECRET}", headers=bearer(SECRET)):
            pass
    ours = [r for r in caplog.records if r.name.startswith("datapulse")]
    assert ours and any(r.exc_info for r in ours), [r.getMessage() for r in ours]
    # What a handler prints: messages, tracebacks and all (the test's own client is left out).
    text = "\n".join(caplog.handler.format(r) for r in ours)
    _assert_no_secret(text, SECRET, LEAKED_JWT, OTHER_BEARER, ticket)
    assert "<redacted" in text


async def test_the_cli_log_never_shows_a_credential() -> None:
    """The CLI's own root handler: every line it prints, at DEBUG."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("JWT_", "DATAPULSE_"))},
        "LOCAL_BEARER_TOKEN": SECRET,
        "DATAPULSE_LOG_LEVEL": "DEBUG",
    }
    async with trio.open_nursery() as nursery:
        proc = await nursery.start(
            lambda task_status=trio.TASK_STATUS_IGNORED: trio.run_process(
                [sys.executable, "-m", "datapulse", "--port", "0"],
                env=env,
                stderr=subprocess.PIPE,
                check=False,
                task_status=task_status,
            )
        )
        try:
            text = (await read_stderr_until(proc, b"listening on", b"curl")).decode()
            found = re.search(r"listening on http://127\.0\.0\.1:(\d+)", text)
            assert found, text
            port = int(found.group(1))
            for payload in _hostile_requests("no-ticket"):
                await raw_exchange(port, payload, read_timeout=2)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
                assert (await http.get("/events", headers=bearer(LEAKED_JWT))).status_code == 401
                # The session id is logged ("session ... created"); a token used as one is not.
                url = f"/events?session_id={SECRET}"
                async with http.stream("GET", url, headers=bearer(SECRET)) as stream:
                    assert stream.status_code == 200
        finally:
            proc.terminate()
        with trio.move_on_after(5):
            while chunk := await proc.stderr.receive_some(65536):
                text += chunk.decode()
    _assert_no_secret(text, SECRET, LEAKED_JWT, OTHER_BEARER)
    assert "400 from" in text and "401 GET /events" in text and "<redacted>" in text, text


# -- 10: an IdP that is down at start ------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("fault", ["close", "503"])
async def test_an_idp_down_at_start_does_not_stop_the_server(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture, fault: str
) -> None:
    caplog.set_level(logging.INFO, logger="datapulse")
    idp = await start_idp(nursery, keys=[rsa_key("rsa-1")], down=fault)
    server, _ = await start_auth_server(nursery, idp)  # FAILS without the fix: cannot start
    verifier: Any = server.verifier
    assert verifier.ready is False and "unavailable" in verifier.reason
    async with client_for(server) as http:
        # The local token needs no IdP.
        assert (await http.post("/tickets", headers=AUTH)).status_code == 200
        refused = await http.post("/tickets", headers=bearer(idp.mint()))
        assert refused.status_code == 503, refused.text
        assert int(refused.headers["retry-after"]) >= 1
        # The IdP comes back: JWTs work without a restart.
        idp.down = None
        await wait_for(lambda: verifier.ready, 10, "the background retry to load the keys")
        assert verifier.reason is None
        ok = await http.post("/tickets", headers=bearer(idp.mint()))
        assert ok.status_code == 200, ok.text
    auth_lines = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "datapulse.auth"]
    warnings = [m for level, m in auth_lines if level == logging.WARNING]
    assert len(warnings) == 1 and "local token works" in warnings[0], auth_lines
    assert sum("JWT authentication ready" in m for _, m in auth_lines) == 1, auth_lines
    assert not any(level >= logging.ERROR for level, _ in auth_lines), auth_lines


async def test_an_idp_not_listening_at_start_is_retried(nursery: trio.Nursery) -> None:
    server = Server(
        make_config(jwt_issuer=f"http://127.0.0.1:{_closed_port()}", jwt_audience=AUDIENCE),
        builtin_tools=True,
    )
    await nursery.start(server.serve)
    verifier: Any = server.verifier
    assert not verifier.ready
    async with client_for(server) as http:
        assert (await http.post("/tickets", headers=AUTH)).status_code == 200
        jwt = await http.post("/tickets", headers=bearer(LEAKED_JWT))
        assert jwt.status_code == 503 and "retry-after" in jwt.headers


@pytest.mark.parametrize(
    ("issuer", "expected"),
    [
        ("http://idp.example.test", "https"),  # plain http to a host that is not loopback
        ("not a url", "URL"),
        ("https://idp.example.test/?tenant=1", "query"),
    ],
)
async def test_a_malformed_issuer_is_still_refused_at_start(
    nursery: trio.Nursery, issuer: str, expected: str
) -> None:
    server = Server(
        builtin_tools=True, config=make_config(jwt_issuer=issuer, jwt_audience=AUDIENCE)
    )
    with pytest.raises(AuthStartupError, match=expected):
        await nursery.start(server.serve)
    assert server.info is None


async def test_metadata_naming_another_issuer_is_refused_at_start(
    nursery: trio.Nursery, idp: IdP
) -> None:
    idp.metadata_issuer = idp.issuer + "/"
    server = Server(
        builtin_tools=True, config=make_config(jwt_issuer=idp.issuer, jwt_audience=AUDIENCE)
    )
    with pytest.raises(AuthStartupError, match="must match exactly"):
        await nursery.start(server.serve)


# -- 12: spent tickets resume only briefly, and never from before their stream ------------------


async def _issue(http: httpx.AsyncClient, session_id: str) -> str:
    response = await http.post("/tickets", headers=AUTH, json={"session_id": session_id})
    assert response.status_code == 200
    return str(response.json()["ticket"])


async def _read_one(server: Server, reader: SSEReader, session: str, n: int) -> int:
    await server.publish(session, {"n": n})
    event = await reader.next_data()
    assert orjson.loads(event.data or "") == {"n": n}
    return int(event.id or "0")


async def test_a_spent_ticket_never_replays_from_before_its_stream(nursery: trio.Nursery) -> None:
    server, _ = await start_server(nursery)
    async with client_for(server) as http:
        # Events 1..3 reach the page through the header-authenticated stream.
        async with http.stream("GET", "/events?session_id=s1", headers=AUTH) as stream:
            reader = SSEReader(stream)
            for n in (1, 2, 3):
                await _read_one(server, reader, "s1", n)
        ticket = await _issue(http, "s1")
        url = f"/events?session_id=s1&ticket={ticket}"
        async with http.stream("GET", url) as stream:
            assert stream.status_code == 200
            first = await _read_one(server, SSEReader(stream), "s1", 4)
        assert first == 4
        # A leaked URL resuming from the start of the log: refused, like a spent ticket.
        for early in ("0", "2", "3", "junk"):
            assert await _status(http, url, early) == 401, early  # FAILS without the fix: 200
        # EventSource's own reconnect (Last-Event-ID: what its stream last carried) still works.
        async with http.stream("GET", url, headers={"Last-Event-ID": str(first)}) as stream:
            assert stream.status_code == 200
            assert await _read_one(server, SSEReader(stream), "s1", 5) == 5


async def test_a_spent_ticket_resumes_only_within_the_window_after_the_cut(
    nursery: trio.Nursery,
) -> None:
    server, _ = await start_server(nursery, ticket_resume_window_s=120.0)
    book = server.auth.tickets
    offset = 0.0
    book.clock = lambda: trio.current_time() + offset
    async with client_for(server) as http:
        ticket = await _issue(http, "s1")
        url = f"/events?session_id=s1&ticket={ticket}"
        async with http.stream("GET", url) as stream:
            last = await _read_one(server, SSEReader(stream), "s1", 1)
            offset = 3600.0  # an hour with the stream open: it is still this page's
            async with http.stream("GET", url, headers={"Last-Event-ID": str(last)}) as again:
                assert again.status_code == 200  # supersedes the first: a reconnect
        # Both streams are cut now; wait until the server has seen them end.
        await wait_for(lambda: _open_streams(server) == 0, 5, "the streams to end")
        offset += 119.0
        async with http.stream("GET", url, headers={"Last-Event-ID": str(last)}) as stream:
            assert stream.status_code == 200  # within the window
        await wait_for(lambda: _open_streams(server) == 0, 5, "the stream to end")
        offset += 121.0
        assert await _status(http, url, str(last)) == 401  # FAILS without the fix: 200
        late = await http.get(url, headers={"Last-Event-ID": str(last)})
        assert late.json()["detail"] == "invalid, expired or already used ticket"


async def _status(http: httpx.AsyncClient, url: str, last_event_id: str) -> int:
    """The status of a resume, without waiting for a stream that was (wrongly) opened to end."""
    async with http.stream("GET", url, headers={"Last-Event-ID": last_event_id}) as response:
        return response.status_code


def _open_streams(server: Server) -> int:
    return sum(bound.open_streams for bound in server.auth.tickets._bound.values())


# -- 13a: crit --------------------------------------------------------------------------------------


def _signed(idp: IdP, header: dict[str, Any]) -> str:
    key = idp.keys[0]
    full = {"alg": "RS256", "typ": "at+jwt", "kid": key.kid, **header}
    payload = json.dumps(idp.claims()).encode()
    return jws.serialize_compact(
        full, payload, key, registry=JWSRegistry(strict_check_header=False)
    )


async def test_a_jwt_with_an_empty_crit_is_refused(jwt_server: tuple[Server, IdP]) -> None:
    """``crit: []`` (RFC 7515 says it must not be empty) signed with the IdP's real key: joserfc
    lets it through, since no extension is named; we understand no ``crit`` at all. (Other
    ``crit`` values are refused by ``check_header``: tests/unit/test_auth_hardening.py.)"""
    server, idp = jwt_server
    token = _signed(idp, {"crit": []})
    async with client_for(server) as http:
        assert (await http.post("/tickets", headers=bearer(idp.mint()))).status_code == 200
        refused = await http.post("/tickets", headers=bearer(token))
        assert refused.status_code == 401, refused.text  # FAILS without the fix: 200
        assert "crit" in refused.headers["www-authenticate"]


bound_tests(globals(), TIMEOUT)
