"""Issue 13 part 3: ``GET /healthz`` (liveness) and ``GET /readyz`` (readiness), over 127.0.0.1.

/healthz answers 200 while the process runs, a graceful shutdown included. /readyz answers 503
with ``Retry-After`` and short public reasons while the JWT keys are not loaded (an IdP that is
down at start), while the session store says it is not ready, and once a graceful shutdown has
begun (so a load balancer stops sending while streams still drain); 200 otherwise. Neither needs
``Authorization``, neither makes a session, HEAD works on both.

Every test runs under ``trio.fail_after`` (``bound_tests`` at the end of the module).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import h11
import httpx
import pytest
import trio

from datapulse import Server
from datapulse.store import MemorySessionStore
from datapulse.transports import health
from tests.helpers import (
    AUTH_HEADER,
    RawClient,
    add_counted_tools,
    bearer,
    bound_tests,
    client_for,
    make_config,
    open_events_stream,
    start_auth_server,
    start_server,
    wait_for,
)
from tests.idp import rsa_key, start_idp

TIMEOUT = 20
READY_CHECKS = {"listening": "ok", "auth": "ok", "store": "ok"}


def _json(response: httpx.Response) -> Any:
    assert response.headers["content-type"] == "application/json"
    return response.json()


async def _assert_head(http: httpx.AsyncClient, path: str, status: int) -> None:
    head = await http.head(path)
    assert head.status_code == status and head.content == b""
    assert int(head.headers["content-length"]) > 0
    if status == 503:
        assert head.headers["retry-after"] == str(health.RETRY_AFTER_S)


# -- a server that is ready -------------------------------------------------------------------


async def test_both_answer_without_authorization_and_make_no_session(
    nursery: trio.Nursery,
) -> None:
    server, _ = await start_server(nursery)
    async with client_for(server) as http:
        for headers in ({}, bearer("not-the-token")):  # FAILS if either route is not public
            ready = await http.get("/readyz", headers=headers)
            assert ready.status_code == 200, ready.text
            assert _json(ready) == {"status": "ready", "checks": READY_CHECKS}
            assert "retry-after" not in ready.headers
            live = await http.get("/healthz", headers=headers)
            assert live.status_code == 200 and _json(live) == {
                "status": "ok",
                "sessions": 0,
                "pid": os.getpid(),
            }
        await _assert_head(http, "/readyz", 200)
        await _assert_head(http, "/healthz", 200)
        # A probe every few ms for a while: never limited, never a session.
        for _ in range(100):
            assert (await http.get("/readyz")).status_code == 200
            assert (await http.head("/healthz")).status_code == 200
    assert len(server.sessions) == 0


async def test_readyz_is_not_ready_before_serve_listens() -> None:
    server = Server(builtin_tools=True, config=make_config())  # never served: nothing is listening
    readiness = await server.health.readiness()
    assert not readiness.ready
    assert readiness.body() == {
        "status": "not_ready",
        "reasons": ["not listening"],
        "checks": {**READY_CHECKS, "listening": "not listening"},
    }


# -- JWT keys: an IdP that is down at start ---------------------------------------------------


async def test_readyz_waits_for_the_jwt_keys_of_an_idp_down_at_start(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="datapulse.health")
    idp = await start_idp(nursery, keys=[rsa_key("rsa-1")], down="503")
    server, _ = await start_auth_server(nursery, idp)
    verifier: Any = server.verifier
    assert not verifier.ready
    async with client_for(server) as http:
        for _ in range(3):  # FAILS without the auth check: 200 although JWTs get 503
            refused = await http.get("/readyz")
            assert refused.status_code == 503, refused.text
            assert refused.headers["retry-after"] == str(health.RETRY_AFTER_S)
            assert _json(refused) == {
                "status": "not_ready",
                "reasons": ["authentication not ready"],
                "checks": {**READY_CHECKS, "auth": "authentication not ready"},
            }
            # The details (the IdP's address, its error) are for the log, not a public body.
            assert idp.origin not in refused.text and "127.0.0.1" not in refused.text
        await _assert_head(http, "/readyz", 503)
        live = await http.get("/healthz")
        assert live.status_code == 200 and _json(live)["status"] == "ok"
        # The IdP comes up: ready without a restart.
        idp.down = None
        await wait_for(lambda: verifier.ready, 10, "the background retry to load the keys")
        ready = await http.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert _json(ready) == {"status": "ready", "checks": READY_CHECKS}
        await _assert_head(http, "/readyz", 200)
        assert (await http.get("/healthz")).status_code == 200
    lines = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "datapulse.health"]
    # One line per change of state (not per probe); the warning carries the operator's detail.
    assert len(lines) == 2, lines
    assert lines[0][0] == logging.WARNING and "authentication not ready" in lines[0][1]
    assert "JWT signing keys unavailable" in lines[0][1] and idp.origin in lines[0][1]
    assert lines[1] == (logging.INFO, "ready")


# -- graceful shutdown --------------------------------------------------------------------------


class HeldRequest:
    """A GET whose head is sent (and admitted) before shutdown, and its one body byte after:
    the way a request already in flight on a connection reaches the handler during the drain
    (the listener is closed by then, so no new connection can)."""

    def __init__(self, client: RawClient) -> None:
        self.client = client

    @classmethod
    async def start(cls, port: int, method: str, path: str) -> HeldRequest:
        client = await RawClient.connect(port)
        head = h11.Request(
            method=method,
            target=path,
            headers=[("Host", "localhost"), ("Content-Length", "1")],
        )
        await client.stream.send_all(client.conn.send(head) or b"")
        return cls(client)

    async def finish(self) -> h11.Response:
        tail = (self.client.conn.send(h11.Data(data=b"x")) or b"") + (
            self.client.conn.send(h11.EndOfMessage()) or b""
        )
        await self.client.stream.send_all(tail)
        await self.client.read_to_end()
        assert self.client.response is not None
        return self.client.response


def _header(response: h11.Response, name: bytes) -> str | None:
    return next((v.decode() for k, v in response.headers if k == name), None)


async def test_readyz_is_503_while_a_stream_drains_and_healthz_stays_200() -> None:
    with trio.fail_after(15):
        async with trio.open_nursery() as serving:
            server, info = await start_server(serving, shutdown_grace_s=10, ping_interval_s=30)
            probe = add_counted_tools(server)
            busy = await open_events_stream(info.port, "busy")
            await busy.read_until(lambda c: c.response is not None)
            poster = await RawClient.connect(info.port)
            message = {"type": "call_tool", "request_id": "r1", "data": {"name": "gated"}}
            posted = await poster.exchange(
                "POST", "/message?session_id=busy", [AUTH_HEADER], json.dumps(message).encode()
            )
            assert posted.status_code == 202
            await poster.aclose()
            await probe.until(lambda p: p.started == 1)

            held = {
                "ready": await HeldRequest.start(info.port, "GET", "/readyz"),
                "live": await HeldRequest.start(info.port, "GET", "/healthz"),
            }
            await wait_for(
                lambda: (
                    sum(c.conn.their_state is h11.SEND_BODY for c in server.http.connections)
                    == len(held)
                ),
                5,
                "the held heads to be admitted",
            )
            server.shutdown()
            await wait_for(lambda: server.http.shutting_down, 5, "the graceful stop to begin")
            assert not busy.ended and not busy.data_events()  # the stream is still draining

            ready = await held["ready"].finish()  # FAILS without the shutdown check: 200
            assert ready.status_code == 503
            assert _header(ready, b"retry-after") == str(health.RETRY_AFTER_S)
            assert json.loads(held["ready"].client.body) == {
                "status": "shutting_down",
                "reasons": ["shutting down"],
                "checks": READY_CHECKS,
            }
            live = await held["live"].finish()
            assert live.status_code == 200  # liveness: the process is still alive
            assert json.loads(held["live"].client.body) == {
                "status": "ok",
                "sessions": 1,
                "pid": os.getpid(),
            }
            assert not busy.ended  # still draining while both were answered

            probe.gate.set()  # the call ends; its result, then the goodbye, close the stream
            await busy.read_to_end(5)
    kinds = [(e.event, json.loads(e.data or "{}")) for e in busy.data_events()]
    assert kinds[0][1]["type"] == "tool_result" and kinds[-1] == ("close", {"reason": "shutdown"})


# -- the session store's seam -------------------------------------------------------------------


class ProbedStore(MemorySessionStore):
    """A store with the optional ``ready()`` (as a Redis backend will have)."""

    def __init__(self) -> None:
        super().__init__(100, 1 << 20)
        self.answer: str | None = "redis://:hunter2@10.0.0.5:6379 unreachable"
        self.hang = False
        self.fail = False
        self.calls = 0

    def __bool__(self) -> bool:
        # Server(store=...) keeps ``store or MemorySessionStore(...)``, and an empty store is
        # falsy (it has __len__): without this the server would drop it for a new one.
        return True

    async def ready(self) -> str | None:
        self.calls += 1
        if self.hang:
            await trio.sleep_forever()
        if self.fail:
            raise ConnectionError("redis://:hunter2@10.0.0.5:6379 refused")
        return self.answer


async def test_readyz_asks_a_store_that_can_say(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(health, "STORE_TIMEOUT_S", 0.2)
    store = ProbedStore()
    server = Server(builtin_tools=True, config=make_config(), store=store)
    assert server.store is store
    await nursery.start(server.serve)
    not_ready = {
        "status": "not_ready",
        "reasons": ["session store not ready"],
        "checks": {**READY_CHECKS, "store": "session store not ready"},
    }
    async with client_for(server) as http:
        for state in ("answer", "hang", "fail"):
            store.hang, store.fail = state == "hang", state == "fail"
            refused = await http.get("/readyz")  # FAILS without the store check: 200
            assert refused.status_code == 503, (state, refused.text)
            assert _json(refused) == not_ready
            assert "hunter2" not in refused.text and "10.0.0.5" not in refused.text
            assert refused.headers["retry-after"] == str(health.RETRY_AFTER_S)
            assert (await http.get("/healthz")).status_code == 200
        store.hang = store.fail = False
        store.answer = None
        ready = await http.get("/readyz")
        assert ready.status_code == 200 and _json(ready)["status"] == "ready"
    assert store.calls == 4


bound_tests(globals(), TIMEOUT)
