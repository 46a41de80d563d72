"""``python -m datapulse --app examples/pulse_app.py:server``: the README's example app, run by
the real command line, exercised over /mcp with raw HTTP; and ``--app`` strings that do not
load, refused with one line and exit status 2."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import trio

from datapulse.__main__ import main
from tests.helpers import SSEReader, read_stderr_until

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "examples" / "pulse_app.py"
TOKEN = "example-token"
VERSION = "2025-11-25"
HEADERS = {
    "Authorization": f"Bearer {TOKEN}",
    "Accept": "application/json, text/event-stream",
    "MCP-Protocol-Version": VERSION,
}


@asynccontextmanager
async def running_app(*extra: str) -> AsyncIterator[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATAPULSE_")}
    command = [sys.executable, "-m", "datapulse", "--app", f"{APP}:server", "--port", "0"]
    async with trio.open_nursery() as nursery:
        proc: trio.Process = await nursery.start(
            lambda task_status=trio.TASK_STATUS_IGNORED: trio.run_process(
                [*command, "--token", TOKEN, "--ping-interval", "1", *extra],
                stderr=subprocess.PIPE,
                env=env,
                check=False,
                task_status=task_status,
            )
        )
        text = (await read_stderr_until(proc, b"listening on")).decode()
        found = re.search(r"listening on (http://[^\s\"]+)", text)
        assert found, text
        url = found.group(1)
        try:
            yield url
        finally:
            proc.terminate()
            with trio.fail_after(10):
                await proc.wait()


async def rpc(http: httpx.AsyncClient, sid: str, method: str, params: Any, rid: int) -> Any:
    response = await http.post(
        "/mcp",
        headers={**HEADERS, "Mcp-Session-Id": sid},
        json={"jsonrpc": "2.0", "id": rid, "method": method, "params": params},
    )
    assert response.status_code == 200, response.text
    return response.json()


async def next_message(reader: SSEReader) -> dict[str, Any]:
    """The next JSON-RPC message on a GET stream (comments and the priming event skipped)."""
    while True:
        event = await reader.next_data(timeout=3)
        if event.data:
            message: dict[str, Any] = orjson.loads(event.data)
            return message


async def test_the_example_app_serves_its_whole_surface() -> None:
    with trio.fail_after(40):
        async with running_app() as url, httpx.AsyncClient(base_url=url, timeout=10) as http:
            init = await http.post(
                "/mcp",
                headers=HEADERS,
                json={
                    "jsonrpc": "2.0",
                    "id": 0,
                    "method": "initialize",
                    "params": {
                        "protocolVersion": VERSION,
                        "capabilities": {},
                        "clientInfo": {"name": "t", "version": "1"},
                    },
                },
            )
            sid = init.headers["mcp-session-id"]
            await http.post(
                "/mcp",
                headers={**HEADERS, "Mcp-Session-Id": sid},
                json={"jsonrpc": "2.0", "method": "notifications/initialized"},
            )
            # The app's own surface, and nothing of the built-ins.
            tools = (await rpc(http, sid, "tools/list", {}, 1))["result"]["tools"]
            assert [t["name"] for t in tools] == ["add", "slow", "to_fahrenheit", "retire_add"]
            add = tools[0]
            assert add["description"] == "Add two integers."
            assert add["inputSchema"]["required"] == ["a"]
            assert add["inputSchema"]["properties"]["b"]["default"] == 1
            assert add["outputSchema"]["properties"]["result"] == {"type": "integer"}
            called = await rpc(http, sid, "tools/call", {"name": "add", "arguments": {"a": 2}}, 2)
            assert called["result"]["structuredContent"] == {"result": 3}
            converted = await rpc(
                http,
                sid,
                "tools/call",
                {
                    "name": "to_fahrenheit",
                    "arguments": {"reading": {"sensor": "s", "celsius": 100}},
                },
                3,
            )
            assert converted["result"]["structuredContent"] == {"result": 212.0}
            note = await rpc(http, sid, "resources/read", {"uri": "notes://todo"}, 4)
            assert note["result"]["contents"] == [
                {"uri": "notes://todo", "mimeType": "text/plain", "text": "write the docs"}
            ]
            missing = await rpc(http, sid, "resources/read", {"uri": "notes://nope"}, 5)
            assert missing["error"]["code"] == -32002
            assert missing["error"]["data"] == {"uri": "notes://nope"}
            prompt = await rpc(
                http, sid, "prompts/get", {"name": "review", "arguments": {"code": "x = 1"}}, 6
            )
            text = prompt["result"]["messages"][0]["content"]["text"]
            assert text == "Please review this python code:\n\nx = 1"
            completion = await rpc(
                http,
                sid,
                "completion/complete",
                {
                    "ref": {"type": "ref/prompt", "name": "review"},
                    "argument": {"name": "language", "value": "ty"},
                },
                7,
            )
            assert completion["result"]["completion"]["values"] == ["typescript"]
            names = await rpc(
                http,
                sid,
                "completion/complete",
                {
                    "ref": {"type": "ref/resource", "uri": "notes://{name}"},
                    "argument": {"name": "name", "value": "i"},
                },
                8,
            )
            assert names["result"]["completion"]["values"] == ["ideas"]

            # A live subscription on the session's GET stream, fed by the app's background task.
            assert (await rpc(http, sid, "resources/subscribe", {"uri": "pulse://clock"}, 9))[
                "result"
            ] == {}
            get_headers = {**HEADERS, "Mcp-Session-Id": sid, "Accept": "text/event-stream"}
            async with http.stream("GET", "/mcp", headers=get_headers) as stream:
                assert stream.status_code == 200
                reader = SSEReader(stream)
                with trio.fail_after(3):
                    update = await next_message(reader)
                assert update == {
                    "jsonrpc": "2.0",
                    "method": "notifications/resources/updated",
                    "params": {"uri": "pulse://clock"},
                }
                retired = await rpc(http, sid, "tools/call", {"name": "retire_add"}, 10)
                assert retired["result"]["isError"] is False
                with trio.fail_after(3):
                    while (message := await next_message(reader))["method"] != (
                        "notifications/tools/list_changed"
                    ):
                        assert message["method"] == "notifications/resources/updated"
            tools = (await rpc(http, sid, "tools/list", {}, 11))["result"]["tools"]
            assert "add" not in [t["name"] for t in tools]


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("examples/no_such_app.py:server", "no such file"),
        (f"{APP}:nothing", "has no attribute 'nothing'"),
        (f"{APP}:NOTES", "is a dict, not a datapulse Server"),
        ("no_such_package.app:server", "no module named 'no_such_package'"),
        (":server", "is not 'path/to/app.py:attribute'"),
    ],
)
def test_an_app_that_does_not_load_is_refused_with_one_line(
    spec: str, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--app", spec, "--port", "0", "--token", "t"]) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err, err
