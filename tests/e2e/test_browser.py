"""A real browser (headless Chromium via Playwright) on the ticket + EventSource + CORS path.

The page is served from a second origin (a tiny static server on 127.0.0.1, tests/httpserver.py)
so every request to datapulse is cross-origin: ``POST /tickets`` and ``POST /message`` are
preflighted, the EventSource needs ``Access-Control-Allow-Origin``. The page gets the bearer
token from the test, asks for a ticket, opens ``EventSource(/events?session_id=..&ticket=..)``
and calls a tool. The test then drops the stream's connection from the server side and queues
more results while it is down: EventSource must reconnect to the same URL (same ticket) with
``Last-Event-ID`` and receive exactly the missing results, once each. A fresh open with the spent
ticket must be refused (401), and a fresh ticket resumes through ``last_event_id``.

Playwright's API is synchronous here, in a worker thread; the thread calls back into Trio for
the server-side steps. Chromium is the Debian package (``/usr/bin/chromium``, installed by
``.ci/run``); ``playwright install`` is never used. A browser that cannot start fails the test.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from typing import Any

import h11
import httpx
import trio

from datapulse import Server
from datapulse.net.http import Request, Response, StreamingResponse, Upgrade
from datapulse.store import LogKey
from datapulse.tools.registry import ToolContext
from tests.helpers import AUTH, CHROMIUM, CHROMIUM_ARGS, TOKEN, Canned, CannedServer, make_config

SESSION = "browser-1"
BROWSER_TIMEOUT_MS = 10_000

PAGE = b"""<!doctype html>
<html><head><meta charset="utf-8"><title>datapulse ticket test</title></head><body>
<script>
window.received = [];   // {id, n} per message, in arrival order
window.resumed = [];    // the same, for the stream opened with a fresh ticket
window.opens = 0;
const dp = {
  base: null,
  token: null,
  headers() {
    return {"Authorization": "Bearer " + this.token, "Content-Type": "application/json"};
  },
  async ticket(sessionId) {
    const r = await fetch(this.base + "/tickets", {
      method: "POST", headers: this.headers(), body: JSON.stringify({session_id: sessionId}),
    });
    if (r.status !== 200) throw new Error("POST /tickets: " + r.status);
    return (await r.json()).ticket;
  },
  open(url, sink) {
    const es = new EventSource(url);
    es.onopen = () => { window.opens++; };
    es.onmessage = (e) => { sink.push({id: e.lastEventId, n: JSON.parse(e.data).data.n}); };
    return es;
  },
  async call(sessionId, n) {
    const r = await fetch(this.base + "/message?session_id=" + sessionId, {
      method: "POST", headers: this.headers(),
      body: JSON.stringify({type: "call_tool", request_id: "r" + n,
                            data: {name: "echo", arguments: {n: n}}}),
    });
    return r.status;
  },
};
window.dp = dp;
</script></body></html>
"""


@dataclass
class Seen:
    """One ``GET /events`` as the server saw it (recorded by a router ``after`` hook)."""

    ticket: str | None
    last_event_id: str | None
    status: int


@dataclass
class Harness:
    server: Server
    page_url: str
    seen: list[Seen] = field(default_factory=list)

    def record(self, request: Request, response: Response | StreamingResponse | Upgrade) -> None:
        if request.path == "/events" and request.method == "GET":
            status = response.status if not isinstance(response, Upgrade) else 101
            self.seen.append(
                Seen(request.query_param("ticket"), request.header("last-event-id"), status)
            )

    async def drop_streams(self) -> int:
        """Close, from the server side, every connection in the middle of a streamed body."""
        dropped = 0
        for connection in list(self.server.http.connections):
            if connection.conn.our_state is h11.SEND_BODY:
                await trio.aclose_forcefully(connection.stream)
                dropped += 1
        return dropped

    async def call_while_down(self, numbers: range) -> None:
        """Queue tool calls (not from the page) while the stream is down, and wait for their
        results to be in the session's log."""
        assert self.server.info is not None
        async with httpx.AsyncClient(base_url=self.server.info.url, headers=AUTH) as http:
            for n in numbers:
                body = {
                    "type": "call_tool",
                    "request_id": f"r{n}",
                    "data": {"name": "echo", "n": n},
                }
                response = await http.post(f"/message?session_id={SESSION}", json=body)
                assert response.status_code == 202
        live = self.server.sessions.lookup(SESSION)
        assert live is not None
        # The store names a client-chosen id by its owner too (issue 12): live.key, not SESSION.
        while await self.server.store.last_seq(LogKey(live.key)) < numbers[-1]:
            await trio.sleep(0.01)


async def echo(arguments: dict[str, Any], context: ToolContext) -> dict[str, Any]:
    return {"n": arguments["n"]}


def drive_browser(harness: Harness) -> dict[str, Any]:
    """Runs in a worker thread: the whole browser session, bounded by Playwright timeouts."""
    from playwright.sync_api import sync_playwright

    assert harness.server.info is not None
    base = harness.server.info.url
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=BROWSER_TIMEOUT_MS
        )
        try:
            page = browser.new_page()
            page.set_default_timeout(BROWSER_TIMEOUT_MS)
            page.goto(harness.page_url)
            page.evaluate("([b, t]) => { dp.base = b; dp.token = t; }", [base, TOKEN])
            ticket = page.evaluate("s => dp.ticket(s)", SESSION)
            url = f"{base}/events?session_id={SESSION}&ticket={ticket}"
            page.evaluate("u => { window.es = dp.open(u, window.received); }", url)
            page.wait_for_function("window.opens === 1")
            for n in (1, 2, 3):
                assert page.evaluate("([s, n]) => dp.call(s, n)", [SESSION, n]) == 202
            page.wait_for_function("window.received.length === 3")

            # The server drops the stream; results 4-6 are queued while it is down.
            assert trio.from_thread.run(harness.drop_streams) == 1
            trio.from_thread.run(harness.call_while_down, range(4, 7))
            page.wait_for_function("window.opens === 2 && window.received.length >= 6")
            page.wait_for_timeout(300)  # anything repeated would arrive now
            for n in (7,):
                assert page.evaluate("([s, n]) => dp.call(s, n)", [SESSION, n]) == 202
            page.wait_for_function("window.received.length >= 7")
            received = page.evaluate("window.received")

            # The spent ticket cannot open a new stream (EventSource gives up: CLOSED).
            page.evaluate("u => { window.es.close(); window.reused = new EventSource(u); }", url)
            page.wait_for_function("window.reused.readyState === EventSource.CLOSED")

            # A fresh ticket resumes after a given id through the query parameter.
            fresh = page.evaluate("s => dp.ticket(s)", SESSION)
            after = received[4]["id"]  # the id of result 5: only 6 and 7 follow
            fresh_url = f"{base}/events?session_id={SESSION}&ticket={fresh}&last_event_id={after}"
            page.evaluate("u => { window.es2 = dp.open(u, window.resumed); }", fresh_url)
            page.wait_for_function("window.resumed.length >= 2")
            page.wait_for_timeout(200)
            resumed = page.evaluate("window.resumed")
            page.evaluate("window.es2.close()")
            return {"ticket": ticket, "received": received, "resumed": resumed}
        finally:
            browser.close()


async def test_eventsource_with_a_ticket_reconnects_and_misses_nothing(
    nursery: trio.Nursery,
) -> None:
    assert shutil.which(CHROMIUM), f"{CHROMIUM} is missing: apt-get install -y chromium"
    static = CannedServer(
        routes={"/": Canned(headers=(("Content-Type", "text/html; charset=utf-8"),), body=PAGE)}
    )
    await nursery.start(static.run)
    server = Server(
        builtin_tools=True,
        config=make_config(cors_origins=static.url, retry_ms=1000, ping_interval_s=1.0),
    )
    server.tool("echo", input_schema={"type": "object", "required": ["n"]})(echo)
    await nursery.start(server.serve)
    harness = Harness(server, static.url + "/")
    server.router.after.append(harness.record)

    with trio.fail_after(60):
        result = await trio.to_thread.run_sync(drive_browser, harness)

    numbers = [message["n"] for message in result["received"]]
    assert numbers == [1, 2, 3, 4, 5, 6, 7]  # nothing lost, nothing repeated, in order
    ids = [int(message["id"]) for message in result["received"]]
    assert ids == sorted(set(ids))
    assert [message["n"] for message in result["resumed"]] == [6, 7]

    ticket = result["ticket"]
    opens = [s for s in harness.seen if s.ticket == ticket]
    # First open; the reconnect to the same URL with Last-Event-ID (the id of result 3);
    # then the fresh open with the spent ticket, refused.
    assert [(s.last_event_id, s.status) for s in opens] == [
        (None, 200),
        (result["received"][2]["id"], 200),
        (None, 401),
    ]
