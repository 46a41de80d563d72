"""Graceful shutdown: stop accepting, tell streams, let in-flight calls finish within the grace
period, cancel the rest, exit 0.

The subprocess tests run the real CLI (``datapulse.__main__.main``) with one extra tool, ``nap``,
registered by a small launcher script; the tool reports on stderr when it starts, returns or is
cancelled, so the test can see the process's calls end from outside.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from functools import partial
from pathlib import Path

import trio

from tests.fakes import FakeBody
from tests.helpers import (
    AUTH_HEADER,
    TOKEN,
    RawClient,
    add_counted_tools,
    modern_call,
    open_events_stream,
    start_server,
)

LAUNCHER = textwrap.dedent(
    """
    import sys

    import trio

    import datapulse.__main__ as cli
    from datapulse.server import Server


    class WithNap(Server):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            schema = {
                "type": "object",
                "properties": {"seconds": {"type": "number"}, "tag": {"type": "string"}},
            }

            @self.tool("nap", input_schema=schema)
            async def nap(arguments, context):
                tag = arguments.get("tag", "-")
                print(f"nap {tag} started", file=sys.stderr, flush=True)
                try:
                    await trio.sleep(arguments["seconds"])
                except trio.Cancelled:
                    print(f"nap {tag} cancelled", file=sys.stderr, flush=True)
                    raise
                print(f"nap {tag} returned", file=sys.stderr, flush=True)
                return {"slept": arguments["seconds"]}


    cli.Server = WithNap
    sys.exit(cli.main(sys.argv[1:]))
    """
)


class Proc:
    """The server process and everything it wrote to stderr so far."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.stderr = ""
        self.port = 0

    async def collect(self) -> None:
        assert self.process.stderr is not None
        while chunk := await self.process.stderr.receive_some(4096):
            self.stderr += chunk.decode(errors="replace")

    async def until(self, text: str, count: int = 1, timeout: float = 15) -> None:
        with trio.move_on_after(timeout):
            while self.stderr.count(text) < count:
                await trio.sleep(0.02)
        assert self.stderr.count(text) >= count, self.stderr

    async def refuses_connections(self, timeout: float = 3) -> bool:
        with trio.move_on_after(timeout):
            while True:
                try:
                    stream = await trio.open_tcp_stream("127.0.0.1", self.port)
                except OSError:
                    return True
                await stream.aclose()
                await trio.sleep(0.02)
        return False


async def start_process(nursery: trio.Nursery, tmp_path: Path, grace: float) -> Proc:
    launcher = tmp_path / "launch.py"
    launcher.write_text(LAUNCHER)
    # The same datapulse the tests import (the repository root first on the path).
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "LOCAL_BEARER_TOKEN": TOKEN, "PYTHONPATH": root}
    argv = [sys.executable, str(launcher), "--port", "0", "--shutdown-grace", str(grace)]
    argv += ["--ping-interval", "30"]
    process = await nursery.start(
        lambda task_status=trio.TASK_STATUS_IGNORED: trio.run_process(
            argv, stderr=subprocess.PIPE, env=env, cwd=root, check=False, task_status=task_status
        )
    )
    proc = Proc(process)
    nursery.start_soon(proc.collect)
    await proc.until("listening on")
    found = re.search(r"listening on http://127\.0\.0\.1:(\d+)", proc.stderr)
    assert found, proc.stderr
    proc.port = int(found.group(1))
    return proc


async def post_message(port: int, session_id: str, request_id: str, seconds: float) -> None:
    client = await RawClient.connect(port)
    message = {
        "type": "call_tool",
        "request_id": request_id,
        "data": {"name": "nap", "arguments": {"seconds": seconds, "tag": request_id}},
    }
    response = await client.exchange(
        "POST", f"/message?session_id={session_id}", [AUTH_HEADER], json.dumps(message).encode()
    )
    assert response.status_code == 202
    await client.aclose()


async def test_sigterm_delivers_calls_that_finish_within_the_grace_period_and_exits_0(
    tmp_path: Path,
) -> None:
    grace = 5.0
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            proc = await start_process(nursery, tmp_path, grace)
            idle = await open_events_stream(proc.port, "idle")
            busy = await open_events_stream(proc.port, "busy")
            for stream in (idle, busy):  # the GET has created its session
                await stream.read_until(lambda c: c.response is not None)
            await post_message(proc.port, "busy", "on-stream", 0.5)
            modern = await RawClient.connect(proc.port)
            headers, body = modern_call("nap", {"seconds": 0.7, "tag": "modern"})
            await modern.send("POST", "/mcp", headers, body)
            await proc.until("started", count=2)

            signalled = trio.current_time()
            proc.process.send_signal(signal.SIGTERM)
            assert await proc.refuses_connections()  # stopped accepting
            await idle.read_to_end(3)  # told at once: nothing in flight there
            told_idle = trio.current_time() - signalled
            await busy.read_to_end(10)  # the result first, then the goodbye
            await modern.read_to_end(10)
            await proc.process.wait()
            exited = trio.current_time() - signalled
            nursery.cancel_scope.cancel()
    assert proc.process.returncode == 0, proc.stderr
    assert "nap on-stream returned" in proc.stderr and "nap modern returned" in proc.stderr
    assert told_idle < 2
    assert exited < grace - 1, exited  # done when the work is done, not at the grace deadline
    assert [e.event for e in idle.data_events()] == ["close"]
    assert json.loads(idle.data_events()[-1].data or "") == {"reason": "shutdown"}
    busy_events = busy.data_events()
    assert json.loads(busy_events[0].data or "")["type"] == "tool_result"
    assert busy_events[-1].event == "close" and "shutdown" in (busy_events[-1].data or "")
    assert modern.response is not None and modern.response.status_code == 200
    assert b'\\"slept\\":0.7' in modern.body or b'"slept":0.7' in modern.body


async def test_sigterm_cancels_calls_that_outlive_the_grace_period_and_exits_0(
    tmp_path: Path,
) -> None:
    grace = 1.0
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            proc = await start_process(nursery, tmp_path, grace)
            busy = await open_events_stream(proc.port, "busy")
            await busy.read_until(lambda c: c.response is not None)
            await post_message(proc.port, "busy", "on-stream", 60)
            modern = await RawClient.connect(proc.port)
            headers, body = modern_call("nap", {"seconds": 60, "tag": "modern"})
            await modern.send("POST", "/mcp", headers, body)
            await proc.until("started", count=2)

            signalled = trio.current_time()
            proc.process.send_signal(signal.SIGTERM)
            await proc.process.wait()
            exited = trio.current_time() - signalled
            await busy.read_to_end(5)
            await modern.read_to_end(5)
            nursery.cancel_scope.cancel()
    assert proc.process.returncode == 0, proc.stderr
    assert grace - 0.1 < exited < grace + 3, exited
    assert "nap on-stream cancelled" in proc.stderr and "nap modern cancelled" in proc.stderr
    assert "returned" not in proc.stderr
    assert not any(json.loads(e.data or "{}").get("type") == "tool_result" for e in busy.events)


# -- in process: the drain that lets results reach their stream -------------------------------------


async def test_streams_with_calls_in_flight_close_after_their_results() -> None:
    seconds = 0.3
    with trio.fail_after(15):
        async with trio.open_nursery() as serving:
            server, info = await start_server(serving, shutdown_grace_s=5, ping_interval_s=30)
            probe = add_counted_tools(server)
            busy = await open_events_stream(info.port, "busy")
            await busy.read_until(lambda c: c.response is not None)
            message = {
                "type": "call_tool",
                "request_id": "r1",
                "data": {"name": "nap", "arguments": {"seconds": seconds}},
            }
            poster = await RawClient.connect(info.port)
            response = await poster.exchange(
                "POST", "/message?session_id=busy", [AUTH_HEADER], json.dumps(message).encode()
            )
            assert response.status_code == 202
            await poster.aclose()
            await probe.until(lambda p: p.started == 1)
            started = trio.current_time()
            server.shutdown()
            await busy.read_to_end(5)
            elapsed = trio.current_time() - started
        stopped = trio.current_time() - started
    kinds = [(e.event, json.loads(e.data or "{}")) for e in busy.data_events()]
    assert kinds[0][1]["type"] == "tool_result" and kinds[0][1]["request_id"] == "r1"
    assert kinds[-1] == ("close", {"reason": "shutdown"})
    assert probe.finished == 1
    assert elapsed < 5 and stopped < 5  # well before the grace deadline


async def test_a_stream_attached_while_draining_is_told_at_once(nursery: trio.Nursery) -> None:
    """A GET read just before shutdown began may attach after it: it must not wait for ever."""
    server, _ = await start_server(nursery)
    sessions = server.sessions
    idle = await sessions.create("p", "events")
    busy = await sessions.create("p", "events")
    sessions.spawn(busy, trio.sleep_forever)
    sessions.close_all_streams("shutdown")
    with trio.fail_after(5):
        told = FakeBody()
        await sessions.stream_session(idle, told, resume_after=None)  # returns by itself
        assert told.written.endswith(b'event: close\ndata: {"reason":"shutdown"}\n\n')
        waiting = FakeBody()
        async with trio.open_nursery() as streams:
            streams.start_soon(partial(sessions.stream_session, busy, waiting, resume_after=None))
            await waiting.waiting.wait()  # parked with its call still in flight: no goodbye yet
            assert b"event: close" not in waiting.written
            await sessions.close(busy, "done")
        assert waiting.written.endswith(b'event: close\ndata: {"reason":"done"}\n\n')
