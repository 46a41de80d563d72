"""The built-in tools: get_time and fetch_url."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from datapulse.tools.fetch import FetchPolicy, fetch_url
from datapulse.tools.registry import ToolContext, ToolRegistry

TIME_SCHEMA = {
    "type": "object",
    "properties": {"time": {"type": "string", "description": "UTC, ISO 8601, 'Z' suffix"}},
    "required": ["time"],
}

FETCH_INPUT = {
    "type": "object",
    "properties": {"url": {"type": "string", "description": "http or https URL to fetch"}},
    "required": ["url"],
}

FETCH_OUTPUT = {
    "type": "object",
    "properties": {
        "status": {"type": "integer", "description": "HTTP status of the final response"},
        "content": {"type": "string", "description": "first 200 characters of the body"},
    },
    "required": ["status", "content"],
}


def utc_now_iso() -> str:
    """Current UTC time as ISO 8601 with a ``Z`` suffix, whole seconds."""
    # isoformat is several times cheaper than strftime; "+00:00" is spelled "Z" as ISO 8601 allows.
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def register_builtins(
    registry: ToolRegistry, policy: FetchPolicy | Callable[[], FetchPolicy]
) -> None:
    """Register get_time and fetch_url. ``policy`` may be a function returning the policy in
    force, read at each call (a server reconfigured before it serves changes it)."""
    policy_now = policy if callable(policy) else (lambda: policy)

    @registry.tool(
        "get_time",
        description="Current UTC time in ISO 8601 with a Z suffix.",
        output_schema=TIME_SCHEMA,
    )
    async def get_time(arguments: dict[str, Any], context: ToolContext) -> dict[str, Any]:
        return {"time": utc_now_iso()}

    @registry.tool(
        "fetch_url",
        description=(
            "Fetch an http(s) URL and return its status and the first 200 characters of its "
            "body. Private, loopback and link-local addresses are refused."
        ),
        input_schema=FETCH_INPUT,
        output_schema=FETCH_OUTPUT,
    )
    async def fetch(arguments: dict[str, Any], context: ToolContext) -> dict[str, Any]:
        return await fetch_url(arguments["url"], policy_now())
