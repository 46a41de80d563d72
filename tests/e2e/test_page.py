"""The page at ``/`` (datapulse/static, transports/page.py) in a real browser.

Headless Chromium (Debian's package, Playwright with ``executable_path``, the launch flags of
tests/e2e/test_browser.py) loads the page from the server itself on 127.0.0.1, the user pastes
the token, opens the stream, lists the tools and calls ``get_time`` through the form generated
from its input schema. Then the server drops the stream twice while numbered events are
published: the first time EventSource reconnects by itself with ``Last-Event-ID`` (same ticket,
inside the resume window); the second time the resume window is closed, the spent ticket is
refused (401) and the page must get a new ticket and reopen with ``last_event_id=``. Every
number must be shown once, in order. A screenshot is saved under ``tmp_path``.

The page's static routes are checked over plain HTTP too: types, CSP, caching, no traversal.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h11
import httpx
import trio

from datapulse import Server
from datapulse.net.http import Request, Response, StreamingResponse, Upgrade
from tests.helpers import CHROMIUM, CHROMIUM_ARGS, TOKEN, make_config

SESSION = "page-e2e"
BROWSER_TIMEOUT_MS = 10_000
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass
class Seen:
    """One ``GET /events`` as the server answered it."""

    ticket: str | None
    header_last_id: str | None
    query_last_id: str | None
    status: int


@dataclass
class Harness:
    server: Server
    screenshot: Path
    seen: list[Seen] = field(default_factory=list)

    def record(self, request: Request, response: Response | StreamingResponse | Upgrade) -> None:
        if request.path == "/events" and request.method == "GET":
            status = response.status if not isinstance(response, Upgrade) else 101
            self.seen.append(
                Seen(
                    request.query_param("ticket"),
                    request.header("last-event-id"),
                    request.query_param("last_event_id"),
                    status,
                )
            )

    async def drop_streams(self) -> int:
        """Close, from the server side, every connection in the middle of a streamed body."""
        dropped = 0
        for connection in list(self.server.http.connections):
            if connection.conn.our_state is h11.SEND_BODY:
                await trio.aclose_forcefully(connection.stream)
                dropped += 1
        return dropped

    async def publish(self, numbers: list[int]) -> None:
        for n in numbers:
            await self.server.publish(SESSION, {"n": n})

    def close_resume_window(self) -> None:
        """From now on a spent ticket cannot resume a cut stream: the page needs a new one."""
        self.server.auth.tickets.resume_window_s = 0.0


SHOWN_NUMBERS = """() => Array.from(document.querySelectorAll('#events li')).flatMap(li => {
  let d; try { d = JSON.parse(li.querySelector('.data').textContent); } catch (_) { return []; }
  const n = d && typeof d === 'object' ? (d.n ?? (d.data && d.data.n)) : undefined;
  return n === undefined ? [] : [n];
})"""


def wait_for_numbers(page: Any, last: int) -> None:
    page.wait_for_function(f"() => ({SHOWN_NUMBERS})().includes({last})")


def drive_browser(harness: Harness) -> dict[str, Any]:
    """Runs in a worker thread; every wait is a Playwright timeout."""
    from playwright.sync_api import sync_playwright

    assert harness.server.info is not None
    base = harness.server.info.url
    requests: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=BROWSER_TIMEOUT_MS
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(BROWSER_TIMEOUT_MS)
            page.on("request", lambda r: requests.append(r.url))
            errors: list[str] = []
            # The drops and the refused resume are logged as failed loads; anything else (a
            # script error, a CSP violation) is a failure.
            page.on(
                "console",
                lambda m: (
                    errors.append(m.text)
                    if m.type == "error" and not m.text.startswith("Failed to load resource")
                    else None
                ),
            )
            page.on("pageerror", lambda e: errors.append(str(e)))
            response = page.goto(base + "/")
            assert response is not None and response.status == 200

            page.fill("#token", TOKEN)
            page.fill("#session-id", SESSION)
            page.click("#connect")
            page.wait_for_function("() => document.querySelector('#opens').textContent === '1'")
            assert page.input_value("#token") == ""  # not left in the DOM

            page.click("#list-tools")
            form = page.locator('form.tool-form[data-tool="get_time"]')
            form.wait_for()
            assert page.locator('form.tool-form[data-tool="fetch_url"] input[name="url"]').evaluate(
                "e => e.required"
            )
            form.locator("button[type=submit]").click()
            result = page.locator('.result[data-tool="get_time"] pre.tool_result')
            result.wait_for()
            time_text = result.text_content() or ""

            trio.from_thread.run(harness.publish, [1, 2, 3])
            wait_for_numbers(page, 3)

            # Drop 1: EventSource reconnects to the same URL with Last-Event-ID by itself.
            assert trio.from_thread.run(harness.drop_streams) == 1
            trio.from_thread.run(harness.publish, [4, 5, 6])
            page.wait_for_function(
                "() => document.querySelector('#reconnects').textContent === '1'"
            )
            wait_for_numbers(page, 6)

            # Drop 2: the spent ticket is refused; the page gets a new one, last_event_id=.
            harness.close_resume_window()
            assert trio.from_thread.run(harness.drop_streams) == 1
            trio.from_thread.run(harness.publish, [7, 8, 9])
            page.wait_for_function("() => document.querySelector('#opens').textContent === '3'")
            wait_for_numbers(page, 9)
            trio.from_thread.run(harness.publish, [10])
            wait_for_numbers(page, 10)
            page.wait_for_timeout(300)  # anything repeated would arrive now

            page.screenshot(path=str(harness.screenshot), full_page=True)
            shown = page.evaluate(SHOWN_NUMBERS)
            events = page.evaluate(
                "() => Array.from(document.querySelectorAll('#events li'), li => li.dataset.id)"
            )
            connlog = page.evaluate(
                "() => Array.from(document.querySelectorAll('#connlog li'), li => li.className)"
            )
            storage = page.evaluate("() => [localStorage.length, sessionStorage.length]")
            placeholder = page.text_content("#resources-placeholder") or ""
            return {
                "time": time_text,
                "shown": shown,
                "ids": events,
                "connlog": connlog,
                "storage": storage,
                "requests": requests,
                "errors": errors,
                "placeholder": placeholder,
            }
        finally:
            browser.close()


async def test_page_lists_and_calls_tools_and_survives_drops(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    assert shutil.which(CHROMIUM), f"{CHROMIUM} is missing: apt-get install -y chromium"
    server = Server(builtin_tools=True, config=make_config(retry_ms=500, ping_interval_s=1.0))
    info = await nursery.start(server.serve)
    harness = Harness(server, tmp_path / "page.png")
    server.router.after.append(harness.record)

    with trio.fail_after(90):
        result = await trio.to_thread.run_sync(drive_browser, harness)

    assert "tool_result" in result["time"] and "time" in result["time"]
    assert result["shown"] == list(range(1, 11))  # every number once, in order
    ids = [int(i) for i in result["ids"]]
    assert ids == sorted(set(ids))  # ids shown strictly increasing: nothing repeated
    assert result["errors"] == []
    assert "reconnected" in result["connlog"] and "refused" in result["connlog"]
    assert "PLACEHOLDER" in result["placeholder"]

    # The token never left page memory: no storage, no URL; every request went to the server.
    assert result["storage"] == [0, 0]
    assert all(url.startswith(info.url + "/") for url in result["requests"])
    assert not any(TOKEN in url for url in result["requests"])

    # The server's view: open, resume by Last-Event-ID (same ticket), the resume refused once
    # the window closed, then a new ticket resuming through the query parameter.
    first = harness.seen[0].ticket
    assert [(s.ticket == first, s.query_last_id is None, s.status) for s in harness.seen] == [
        (True, True, 200),
        (True, True, 200),
        (True, True, 401),
        (False, False, 200),
    ]
    assert harness.seen[1].header_last_id is not None
    assert harness.seen[2].header_last_id is not None
    assert harness.seen[3].query_last_id == harness.seen[2].header_last_id

    shot = harness.screenshot
    assert shot.is_file() and shot.stat().st_size > 0
    assert shot.read_bytes()[:8] == PNG_MAGIC


async def test_page_files_are_served_with_strict_headers(nursery: trio.Nursery) -> None:
    server = Server(builtin_tools=True, config=make_config())
    info = await nursery.start(server.serve)
    async with httpx.AsyncClient(base_url=info.url, timeout=5) as http:
        index = await http.get("/")  # public: no Authorization
        assert index.status_code == 200
        assert index.headers["content-type"] == "text/html; charset=utf-8"
        csp = index.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "default-src 'none'" in csp
        assert "unsafe-inline" not in csp
        assert index.headers["cache-control"] == "no-cache"
        assert index.headers["x-content-type-options"] == "nosniff"
        assert "<script>" not in index.text  # no inline script: only src=
        for name, kind in (("app.js", "text/javascript"), ("app.css", "text/css")):
            response = await http.get(f"/static/{name}")
            assert response.status_code == 200
            assert response.headers["content-type"].startswith(kind)
            assert "content-security-policy" in response.headers
        head = await http.head("/static/app.js")
        assert head.status_code == 200 and head.content == b""
        for bad in (
            "/static/../server.py",
            "/static/%2e%2e/server.py",
            "/static/",
            "/static/nothing.js",
            "/static/__init__.py",
            "/index.html",
        ):
            assert (await http.get(bad)).status_code == 404, bad
        assert (await http.post("/", content=b"")).status_code == 405
