"""``Dispatcher``: the server-wide half of the protocol layer, shared by every session.

It holds the settings every session reads (names, page size, limits, timeouts) and the two method
tables: which MCP method runs which handler in ``protocol.methods``, per era. ``McpSession``
(``protocol.session``) routes each request through them; it reads this class through
``DispatcherView``, so the import arrow points one way only: dispatch -> methods -> session.
"""

from __future__ import annotations

import secrets
from typing import Any

import jsonschema

from datapulse.core import mcp
from datapulse.core.jsonrpc import DEFAULT_MAX_BATCH_ITEMS, DEFAULT_MAX_DEPTH
from datapulse.features.catalog import Catalog
from datapulse.metrics import Metrics
from datapulse.protocol import methods
from datapulse.protocol import tasks as task_methods
from datapulse.protocol.notices import Notices
from datapulse.protocol.roundtrip import RoundTrips
from datapulse.protocol.session import Handler
from datapulse.protocol.tasks import TaskRunner
from datapulse.store.memory import MemorySessionStore
from datapulse.tools.registry import Tool, ToolRegistry
from datapulse.version import __version__

# The methods both eras serve, with the same meaning.
_SHARED_METHODS: dict[str, Handler] = {
    "tools/list": methods.list_tools,
    "tools/call": methods.call_tool,
    "resources/list": methods.list_resources,
    "resources/templates/list": methods.list_resource_templates,
    "resources/read": methods.read_resource,
    "prompts/list": methods.list_prompts,
    "prompts/get": methods.get_prompt,
    "completion/complete": methods.complete,
}


class Dispatcher:
    """Server-wide configuration and the method tables; each ``McpSession`` is given one."""

    def __init__(
        self,
        registry: ToolRegistry | Catalog,
        *,
        server_name: str = "datapulse",
        server_version: str = __version__,
        instructions: str | None = None,
        page_size: int = 50,
        max_concurrent_calls: int = 16,
        call_timeout_s: float | None = 60.0,
        default_log_level: str | None = "debug",
        max_depth: int = DEFAULT_MAX_DEPTH,
        max_batch_items: int = DEFAULT_MAX_BATCH_ITEMS,
        metrics: Metrics | None = None,
        notices: Notices | None = None,
        max_subscriptions: int = 256,
        round_trips: RoundTrips | None = None,
        input_timeout_s: float = 300.0,
        tasks: TaskRunner | None = None,
    ) -> None:
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        if max_concurrent_calls < 1:
            # Checked here: trio.CapacityLimiter(0) is accepted and would refuse every call.
            raise ValueError("max_concurrent_calls must be at least 1")
        if call_timeout_s is not None and not call_timeout_s > 0:
            raise ValueError("call_timeout_s must be positive")
        if default_log_level is not None and not mcp.is_log_level(default_log_level):
            raise ValueError(f"unknown log level {default_log_level!r}")
        # A bare ToolRegistry (tools only) is a catalog with nothing else in it.
        self.catalog = registry if isinstance(registry, Catalog) else Catalog(registry)
        self.registry = self.catalog.tools
        self.notices = notices if notices is not None else Notices()
        self.max_subscriptions = max_subscriptions
        if round_trips is None:
            # One process's own: a random key, states in memory (Server passes its store's).
            states = MemorySessionStore(1, 1)
            round_trips = RoundTrips(
                [secrets.token_bytes(32)], states.put_state, states.take_state, input_timeout_s
            )
        self.round_trips = round_trips
        self.input_timeout_s = input_timeout_s
        self.tasks = tasks
        self.metrics = metrics if metrics is not None else Metrics()
        self.server_name = server_name
        self.server_version = server_version
        self.instructions = instructions
        self.page_size = page_size
        self.max_concurrent_calls = max_concurrent_calls
        self.call_timeout_s = call_timeout_s
        # Both SDKs send every level until the client calls logging/setLevel; so do we by default.
        self.default_log_level = default_log_level
        self.max_depth = max_depth
        self.max_batch_items = max_batch_items
        self.info = mcp.server_info(server_name, server_version)
        self._output_validators: dict[str, tuple[Tool, Any]] = {}
        self.handshake_methods: dict[str, Handler] = {
            "initialize": methods.initialize,
            "ping": methods.ping,
            "logging/setLevel": methods.set_level,
            "resources/subscribe": methods.subscribe,
            "resources/unsubscribe": methods.unsubscribe,
            **_SHARED_METHODS,
            **task_methods.HANDSHAKE_METHODS,  # each refuses a session older than 2025-11-25
        }
        # 2026-07-28 removed initialize, ping, logging/setLevel and resources/(un)subscribe
        # (subscriptions/listen replaces them, with the GET stream): -32601 there.
        self.modern_methods: dict[str, Handler] = {
            "server/discover": methods.discover,
            "subscriptions/listen": methods.listen,
            **_SHARED_METHODS,
            **task_methods.MODERN_METHODS,  # the extension: no tasks/result, no tasks/list
        }

    def check_output(self, tool: Tool, output: Any) -> str | None:
        """Why ``output`` breaks the tool's outputSchema (the spec's MUST), or None if it fits."""
        if tool.output_schema is None or isinstance(output, mcp.ToolOutput):
            return None
        cached = self._output_validators.get(tool.name)
        # Kept with the Tool it was built for: a tool removed and registered again under the
        # same name is checked against its own schema, not its predecessor's.
        if cached is None or cached[0] is not tool:
            schema = dict(tool.output_schema)
            cached = (tool, jsonschema.validators.validator_for(schema)(schema))
            self._output_validators[tool.name] = cached
        validator = cached[1]
        if validator.is_valid(output):  # the common case builds no error objects
            return None
        error = jsonschema.exceptions.best_match(validator.iter_errors(output))
        if error is None:
            return None
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        return f"{tool.name} returned output that does not match its outputSchema at {where}"
