"""A complete datapulse app: typed tools, a live resource, a template, a prompt, completions.

Run it with every command-line setting available:

    python -m datapulse --app examples/pulse_app.py:server --port 8000 --token secret

Then point any MCP client at http://127.0.0.1:8000/mcp (bearer token ``secret``). Subscribe to
``pulse://clock`` (``resources/subscribe``, or ``subscriptions/listen`` on 2026-07-28) and an
update arrives every second; call ``retire_add`` and connected clients hear
``notifications/tools/list_changed``. tests/e2e/test_example_app.py runs this file.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

import trio
from pydantic import BaseModel

from datapulse import ResourceNotFound, Server, ToolContext

server = Server()

NOTES: dict[str, str] = {"todo": "write the docs", "ideas": "a faster stream"}


@server.tool()
async def add(a: int, b: int = 1) -> int:
    """Add two integers."""
    return a + b


@server.tool()
async def slow(n: int, context: ToolContext) -> str:
    """Count to n, reporting progress at every step."""
    for i in range(n):
        await trio.sleep(0.01)
        await context.report_progress(i + 1, n)
    return "done"


class Reading(BaseModel):
    sensor: str
    celsius: float


@server.tool(annotations={"readOnlyHint": True})
def to_fahrenheit(reading: Reading) -> float:
    """Convert a sensor reading to Fahrenheit (a sync tool: it runs in a worker thread)."""
    return reading.celsius * 9 / 5 + 32


@server.tool()
async def retire_add() -> str:
    """Remove the add tool: every connected client is told its tool list changed."""
    server.remove_tool("add")
    return "add removed"


@server.resource("pulse://clock", mime_type="application/json")
async def clock() -> dict[str, str]:
    """The server's clock, updated every second."""
    return {"time": datetime.now(UTC).replace(microsecond=0).isoformat()}


@server.background
async def tick() -> None:
    """Tell pulse://clock's subscribers, every second, that it changed."""
    while True:
        await trio.sleep(1)
        await server.notify_resource_updated("pulse://clock")


@server.resource("notes://{name}", mime_type="text/plain")
async def note(name: str) -> str:
    """One of the notes, by name."""
    if name not in NOTES:
        raise ResourceNotFound(f"notes://{name}")  # the client gets the spec's not-found error
    return NOTES[name]


@server.completion(resource="notes://{name}", argument="name")
async def note_names(value: str) -> list[str]:
    return sorted(n for n in NOTES if n.startswith(value))


@server.prompt()
async def review(code: str, language: Literal["python", "rust", "typescript"] = "python") -> str:
    """Ask for a code review."""
    return f"Please review this {language} code:\n\n{code}"
