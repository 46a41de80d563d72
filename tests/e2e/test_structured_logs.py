"""--log-format: access lines, stream lines, request ids and redaction, against real servers."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import trio

from datapulse.auth.redact import redact, redact_handlers
from datapulse.logs import make_handler
from datapulse.net import connection
from tests.helpers import (
    AUTH,
    bearer,
    bound_tests,
    client_for,
    raw_exchange,
    read_stderr_until,
    start_server,
)

TIMEOUT = 15
SECRET = "structured-logs-secret-0123456789"
OTHER_BEARER = "opaque-bearer-credential-Qx42"
SHORT_JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln"  # JWT-shaped, 1-64 visible chars
TICKET = "ticket-value-that-must-not-show-7f3a"


class Lines:
    """What a JSON handler on ``datapulse`` printed, one parsed object per line."""

    def __init__(self) -> None:
        self.out = io.StringIO()

    def all(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.out.getvalue().splitlines()]

    def of(self, logger: str) -> list[dict[str, Any]]:
        return [line for line in self.all() if line["logger"] == logger]


@pytest.fixture
def lines() -> Iterator[Lines]:
    captured = Lines()
    handler = make_handler("json", captured.out, redact)  # type: ignore[arg-type]
    redact_handlers([handler])
    logger = logging.getLogger("datapulse")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield captured
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


async def test_one_access_line_per_request_without_the_query(
    nursery: trio.Nursery, lines: Lines
) -> None:
    server, _ = await start_server(nursery)
    async with client_for(server) as http:
        response = await http.get(
            "/healthz?ticket=abc&x=1", headers={**AUTH, "X-Request-Id": "client-id-1"}
        )
        assert response.status_code == 200
        assert response.headers["x-request-id"] == "client-id-1"
        ticket = await http.post("/tickets", headers=AUTH)
    (ok, issued) = lines.of("datapulse.access")
    assert ok["method"] == "GET" and ok["path"] == "/healthz" and ok["status"] == 200
    assert ok["request_id"] == "client-id-1"
    assert ok["bytes"] == len(response.content)
    assert ok["client"] == "127.0.0.1"
    assert isinstance(ok["duration_ms"], float) and ok["duration_ms"] >= 0
    assert ok["level"] == "INFO" and ok["time"].endswith("Z")
    assert "ticket" not in json.dumps(ok)
    assert ok["event"].startswith("GET /healthz 200 ")
    assert issued["status"] == 200 and issued["principal_id"] and "token" not in issued
    assert re.fullmatch(r"[0-9a-f]{16}", issued["request_id"])
    assert ticket.headers["x-request-id"] == issued["request_id"]


async def test_an_invalid_request_id_is_replaced(nursery: trio.Nursery, lines: Lines) -> None:
    server, _ = await start_server(nursery)
    async with client_for(server) as http:
        response = await http.get("/healthz", headers={"X-Request-Id": "x" * 65})
    echoed = response.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{16}", echoed)
    assert lines.of("datapulse.access")[0]["request_id"] == echoed


async def test_a_refused_head_has_its_access_line_and_request_id(
    nursery: trio.Nursery, lines: Lines
) -> None:
    server, _ = await start_server(nursery)
    async with client_for(server) as http:
        response = await http.get("/events?session_id=a", headers={"X-Request-Id": "r-401"})
    assert response.status_code == 401 and response.headers["x-request-id"] == "r-401"
    (line,) = lines.of("datapulse.access")
    assert line["status"] == 401 and line["path"] == "/events" and line["session_id"] == "a"
    assert "principal_id" not in line


async def test_a_closed_stream_has_its_line_and_its_access_line(
    nursery: trio.Nursery, lines: Lines
) -> None:
    server, _ = await start_server(nursery)
    async with client_for(server) as http:
        async with http.stream(
            "GET", "/events?session_id=s1", headers={**AUTH, "X-Request-Id": "stream-1"}
        ) as stream:
            assert stream.status_code == 200
            body = b""
            async for chunk in stream.aiter_raw():
                body += chunk
                break
    await _until(lambda: lines.of("datapulse.stream") and lines.of("datapulse.access"))
    (closed,) = lines.of("datapulse.stream")
    assert closed["session_id"] == "s1" and closed["reason"] == "client_gone"
    assert closed["events"] == 0 and closed["bytes"] >= len(b"retry: 3000\n\n")
    assert closed["request_id"] == "stream-1"
    (access,) = lines.of("datapulse.access")
    assert access["session_id"] == "s1" and access["status"] == 200
    assert access["bytes"] == closed["bytes"]


async def test_a_stream_told_to_close_names_the_reason_and_counts_events(
    nursery: trio.Nursery, lines: Lines
) -> None:
    server, _ = await start_server(nursery)
    async with client_for(server) as http:
        async with http.stream("GET", "/events?session_id=s2", headers=AUTH) as first:
            assert first.status_code == 200
            call = {"type": "call_tool", "request_id": "r1", "data": {"name": "get_time"}}
            posted = await http.post("/message?session_id=s2", headers=AUTH, json=call)
            assert posted.status_code == 202
            async with http.stream("GET", "/events?session_id=s2", headers=AUTH) as second:
                assert second.status_code == 200
                await _until(lambda: lines.of("datapulse.stream"))
    superseded = lines.of("datapulse.stream")[0]
    assert superseded["reason"] == "superseded" and superseded["events"] >= 1


async def test_nothing_is_measured_when_the_access_logger_is_off(
    nursery: trio.Nursery, lines: Lines, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[object] = []
    monkeypatch.setattr(connection.HTTPConnection, "_log_access", lambda *a: calls.append(a))
    monkeypatch.setattr(connection, "_CountedBody", None)  # a counted body would fail
    access = logging.getLogger("datapulse.access")
    monkeypatch.setattr(access, "level", logging.WARNING)
    server, _ = await start_server(nursery)
    async with client_for(server) as http:
        response = await http.get("/healthz", headers={"X-Request-Id": "still-echoed"})
        async with http.stream("GET", "/events?session_id=q", headers=AUTH) as stream:
            async for _ in stream.aiter_raw():
                break
    assert response.headers["x-request-id"] == "still-echoed"
    assert calls == [] and lines.of("datapulse.access") == []


async def _until(condition: Any) -> None:
    with trio.fail_after(5):
        while not condition():
            await trio.sleep(0.01)


# -- the CLI: both formats, every line redacted ---------------------------------------------------


def _hostile_requests() -> list[bytes]:
    """A header line h11 refuses, with a bearer token, and a malformed request line with a
    ticket in its query: the 400's log line quotes each of them."""
    head = b"GET /events?session_id=s1 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    return [
        head + f"Authorization : Bearer {OTHER_BEARER}\r\n\r\n".encode(),
        head + f"Authorization: Bearer {SECRET}\x00tail\r\n\r\n".encode(),
        f"GET /events?ticket={TICKET}&x=1 junk HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
    ]


async def _run_cli(*flags: str) -> str:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("JWT_", "DATAPULSE_"))},
        "LOCAL_BEARER_TOKEN": SECRET,
        "DATAPULSE_LOG_LEVEL": "DEBUG",
    }
    async with trio.open_nursery() as nursery:
        proc = await nursery.start(
            lambda task_status=trio.TASK_STATUS_IGNORED: trio.run_process(
                [sys.executable, "-m", "datapulse", "--port", "0", *flags],
                env=env,
                stderr=subprocess.PIPE,
                check=False,
                task_status=task_status,
            )
        )
        assert proc.stderr is not None
        try:
            text = (await read_stderr_until(proc, b"listening on", b"curl")).decode()
            found = re.search(r"listening on http://127\.0\.0\.1:(\d+)", text)
            assert found, text
            port = int(found.group(1))
            for payload in _hostile_requests():
                answer = await raw_exchange(port, payload, read_timeout=2)
                assert answer.startswith(b"HTTP/1.1 400"), answer
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
                ok = await http.get(
                    f"/healthz?ticket={TICKET}", headers={**bearer(SECRET), "X-Request-Id": "cli-1"}
                )
                assert ok.status_code == 200
                # Credentials where a log line quotes what the client sent: the request id (the
                # local token, a JWT), the session id (the token again), a ticket in the query.
                for rid in (SECRET, SHORT_JWT):
                    echoed = await http.get("/healthz", headers={"X-Request-Id": rid})
                    assert echoed.headers["x-request-id"] == rid
                refused = await http.get(f"/events?session_id=s9&ticket={TICKET}")
                assert refused.status_code == 401
                url = f"/events?session_id={SECRET}"
                async with http.stream("GET", url, headers=bearer(SECRET)) as stream:
                    assert stream.status_code == 200
        finally:
            proc.terminate()
        with trio.move_on_after(5):
            while chunk := await proc.stderr.receive_some(65536):
                text += chunk.decode()
    for secret in (SECRET, OTHER_BEARER, TICKET, SHORT_JWT):
        assert secret not in text, f"{secret!r} reached the log:\n{text}"
    assert "<redacted>" in text, text
    return text


def _log_lines(text: str) -> list[str]:
    """stderr without the start-up announcement (printed, not logged)."""
    return [
        line
        for line in text.splitlines()
        if line and not line.startswith(("datapulse ", "bearer token", "  curl"))
    ]


async def test_the_cli_logs_json_when_stderr_is_not_a_terminal() -> None:
    lines = [json.loads(line) for line in _log_lines(await _run_cli())]  # every line parses
    access = [line for line in lines if line["logger"] == "datapulse.access"]
    assert any(line["status"] == 400 for line in lines if "400 from" in line["event"])
    (ok,) = [line for line in access if line.get("request_id") == "cli-1"]
    assert ok["path"] == "/healthz" and ok["status"] == 200
    assert {"time", "level", "logger", "event"} <= set(ok)
    redacted = {line["request_id"] for line in access if "<redacted" in line.get("request_id", "")}
    assert redacted == {"<redacted>", "<redacted-jwt>"}, access
    (closed,) = [line for line in lines if line["logger"] == "datapulse.stream"]
    assert closed["session_id"] == "<redacted>" and "stream closed" in closed["event"]


async def test_the_cli_logs_text_when_asked() -> None:
    lines = _log_lines(await _run_cli("--log-format", "text"))
    assert lines and not any(line.startswith("{") for line in lines)
    assert any(" INFO datapulse.access: GET /healthz 200 " in line for line in lines), lines
    assert any("stream closed: session <redacted>" in line for line in lines), lines


bound_tests(globals(), TIMEOUT)
