"""Embedding: the example program runs under a test's nursery, serves, and publishes."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import httpx
import trio

from tests.helpers import SSEReader

EXAMPLE = Path(__file__).parents[2] / "examples" / "embedded_app.py"


def load_example():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("embedded_app", EXAMPLE)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_example_embeds_publishes_and_serves_its_own_tool() -> None:
    example = load_example()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(example.main, 0)
            assert server.info.port > 0  # port 0 -> the bound port is reported
            headers = {"Authorization": "Bearer demo-token"}
            async with httpx.AsyncClient(base_url=server.info.url, headers=headers) as client:
                async with client.stream("GET", "/events?session_id=demo") as response:
                    reader = SSEReader(response)
                    beat = await reader.next_data()
                    assert beat.event == "heartbeat"
                    assert json.loads(beat.data)["type"] == "heartbeat"
                    await client.post(
                        "/message?session_id=demo",
                        json={
                            "type": "call_tool",
                            "request_id": "1",
                            "data": {"name": "add", "arguments": {"a": 2, "b": 3}},
                        },
                    )
                    while True:
                        event = await reader.next_data()
                        if event.event != "heartbeat":
                            break
                    assert json.loads(event.data)["data"] == {"sum": 5}
            nursery.cancel_scope.cancel()  # the server stops with its scope


async def test_serve_stops_when_its_scope_is_cancelled() -> None:
    from datapulse import Config, serve

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            info = await nursery.start(serve, Config(port=0, token="t"))
            async with httpx.AsyncClient(base_url=info.url) as client:
                assert (await client.get("/healthz")).status_code == 200
            nursery.cancel_scope.cancel()
    with trio.fail_after(2):
        try:
            await trio.open_tcp_stream("127.0.0.1", info.port)
        except OSError:
            return
    raise AssertionError("the port still accepts connections after cancellation")


async def test_graceful_shutdown_tells_streams_and_returns(nursery: trio.Nursery) -> None:
    from datapulse import Server
    from tests.helpers import AUTH, make_config

    server = Server(builtin_tools=True, config=make_config())
    done = trio.Event()

    async def run() -> None:
        await server.serve(task_status=started)
        done.set()

    class Started:
        def __init__(self) -> None:
            self.event = trio.Event()
            self.info = None

        def started(self, info=None) -> None:  # type: ignore[no-untyped-def]
            self.info = info
            self.event.set()

    started = Started()
    nursery.start_soon(run)
    await started.event.wait()
    async with httpx.AsyncClient(base_url=started.info.url, headers=AUTH) as client:  # type: ignore[attr-defined]
        async with client.stream("GET", "/events?session_id=bye") as response:
            reader = SSEReader(response)
            await reader.next()
            server.shutdown()
            final = await reader.next_data()
            assert final.event == "close"
            assert json.loads(final.data or "") == {"reason": "shutdown"}
    with trio.fail_after(3):
        await done.wait()
