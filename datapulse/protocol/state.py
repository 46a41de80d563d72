"""``ProtocolState``: what an MCP session has learnt about its client, as plain data.

Kept apart from ``McpSession`` (which also holds tasks, locks and the dispatcher) so a session
store can persist it: ``to_dict`` gives JSON-safe values and ``from_dict`` reads them back,
refusing anything of the wrong type rather than restoring a session that would misbehave.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from datapulse.core import mcp


@dataclass
class ProtocolState:
    """``initialized`` turns true once ``initialize`` has been answered (which is when the Python
    SDK starts serving requests too); ``client_ready`` records ``notifications/initialized``.
    ``client_info`` and ``client_capabilities`` are what ``initialize`` said, kept for the record
    and for a restored session; no rule reads them yet."""

    protocol_version: str | None = None
    initialized: bool = False
    client_info: dict[str, Any] | None = None
    client_capabilities: dict[str, Any] | None = None
    client_ready: bool = False
    log_level: str | None = None
    subscriptions: list[str] = dataclasses.field(default_factory=list)
    """The resource URIs the client subscribed to (``resources/subscribe``), in order."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe copy (the client's objects came from JSON, so they are JSON too)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProtocolState:
        """Read back what ``to_dict`` wrote; missing keys take their defaults.

        Raises ValueError on a key we do not know or a value of the wrong type.
        """
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown protocol state fields: {', '.join(sorted(unknown))}")
        state = cls(**data)
        for name in ("protocol_version", "log_level"):
            if not isinstance(getattr(state, name), str | None):
                raise ValueError(f"{name} must be a string or null")
        for name in ("initialized", "client_ready"):
            if not isinstance(getattr(state, name), bool):
                raise ValueError(f"{name} must be a boolean")
        for name in ("client_info", "client_capabilities"):
            if not isinstance(getattr(state, name), dict | None):
                raise ValueError(f"{name} must be an object or null")
        if not isinstance(state.subscriptions, list) or not all(
            isinstance(uri, str) for uri in state.subscriptions
        ):
            raise ValueError("subscriptions must be a list of strings")
        if state.log_level is not None and not mcp.is_log_level(state.log_level):
            raise ValueError(f"unknown log level {state.log_level!r}")
        return state
