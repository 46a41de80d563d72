"""Embedding datapulse in your own Trio program.

Run it:  python examples/embedded_app.py
Then:    curl -N -H "Authorization: Bearer demo-token" "http://127.0.0.1:8001/events?session_id=demo"

The host program registers its own tool, starts the server in its own nursery (the bound port
comes back through ``nursery.start``), and pushes its own events into a live session's stream
with ``server.publish`` under the same bounds and replay rules as tool results.
"""

from __future__ import annotations

import sys
from typing import Any

import trio

from datapulse import Config, Server, SessionNotFound, ToolContext


def build_server(port: int = 8001) -> Server:
    server = Server(
        builtin_tools=True, config=Config(port=port, token="demo-token", ping_interval_s=5)
    )

    @server.tool(
        "add",
        description="Add two integers.",
        input_schema={
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
        },
    )
    async def add(arguments: dict[str, Any], context: ToolContext) -> dict[str, int]:
        return {"sum": arguments["a"] + arguments["b"]}

    return server


async def heartbeat(server: Server, session_id: str, interval_s: float) -> None:
    """The host's own events: a counter published into ``session_id`` once it is open."""
    beat = 0
    while True:
        await trio.sleep(interval_s)
        try:
            await server.publish(session_id, {"type": "heartbeat", "beat": beat}, event="heartbeat")
            beat += 1
        except SessionNotFound:
            pass  # nobody has opened that session yet


async def main(
    port: int = 8001, *, task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED
) -> None:
    server = build_server(port)
    async with trio.open_nursery() as nursery:
        info = await nursery.start(server.serve)
        print(f"embedded datapulse on {info.url}", file=sys.stderr)
        nursery.start_soon(heartbeat, server, "demo", 0.2)
        task_status.started(server)


if __name__ == "__main__":
    trio.run(main)
