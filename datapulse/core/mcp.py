"""MCP protocol rules that need no I/O: versions, result shapes, cursors, levels, 2026 envelopes.

``datapulse.protocol`` decides *when* each of these applies; this module only knows *what* the
spec says, revision by revision, so it can be tested with plain values. It takes tools as the
plain values it needs (their ``tools/list`` entries, their output schema), never ``Tool``
objects: ``datapulse.tools`` builds on ``core``, not the other way round. The Streamable HTTP
rules of 2026-07-28 (routing headers, ``Mcp-Param-*``, statuses) are in ``core.mcp_http``. The 2026-07-28 ("modern")
revision has no handshake: every request carries its protocol version and client capabilities in
``params._meta``, and every result carries ``resultType`` and our ``serverInfo``.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import orjson

from datapulse.errors import QUOTE_CHARS, BadRequest, InvalidParams, quote

T = TypeVar("T")

# Handshake revisions, oldest first; negotiation falls back to the newest.
SUPPORTED_VERSIONS: Final = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
LATEST_HANDSHAKE_VERSION: Final = SUPPORTED_VERSIONS[-1]
MODERN_VERSION: Final = "2026-07-28"
MODERN_VERSIONS: Final = (MODERN_VERSION,)
# Newest first: the list a -32022 error offers, so a client can fall back to a handshake revision.
ALL_VERSIONS: Final = (*MODERN_VERSIONS[::-1], *SUPPORTED_VERSIONS[::-1])
_ORDER: Final = {v: i for i, v in enumerate((*SUPPORTED_VERSIONS, *MODERN_VERSIONS))}

META_PROTOCOL_VERSION: Final = "io.modelcontextprotocol/protocolVersion"
META_CLIENT_CAPABILITIES: Final = "io.modelcontextprotocol/clientCapabilities"
META_CLIENT_INFO: Final = "io.modelcontextprotocol/clientInfo"
META_LOG_LEVEL: Final = "io.modelcontextprotocol/logLevel"
META_SERVER_INFO: Final = "io.modelcontextprotocol/serverInfo"

# RFC 5424 severities, least severe first (the order MCP's LoggingLevel declares them in).
LOG_LEVELS: Final = (
    "debug",
    "info",
    "notice",
    "warning",
    "error",
    "critical",
    "alert",
    "emergency",
)
_LOG_RANK: Final = {level: rank for rank, level in enumerate(LOG_LEVELS)}


class MissingClientCapability(BadRequest):
    """2026-07-28: the request needs a client capability its ``_meta`` did not declare."""

    jsonrpc_code = -32021
    error = "missing_client_capability"

    def __init__(self, capability: str) -> None:
        super().__init__(
            f"this request needs the client capability {capability!r}",
            data={"requiredCapabilities": {capability: {}}},
        )


class UnsupportedProtocolVersion(BadRequest):
    """2026-07-28: the request's protocol version is not one we serve."""

    jsonrpc_code = -32022
    error = "unsupported_protocol_version"

    def __init__(self, requested: str) -> None:
        super().__init__(
            f"unsupported protocol version {quote(requested)}",
            # What server/discover lists (they must agree): a version this path serves. A
            # handshake revision is not one: the client would send it in _meta and be refused.
            data={"supported": list(MODERN_VERSIONS), "requested": requested[:QUOTE_CHARS]},
        )


# -- versions ---------------------------------------------------------------------------------


def negotiate_version(requested: object) -> str:
    """The version an ``initialize`` answer carries: the client's if we speak it, else our newest."""
    if isinstance(requested, str) and requested in SUPPORTED_VERSIONS:
        return requested
    return LATEST_HANDSHAKE_VERSION


def version_at_least(version: str | None, minimum: str) -> bool:
    """Known ``version`` no older than ``minimum``; unknown or None versions count as too old."""
    rank = _ORDER.get(version) if version is not None else None
    return rank is not None and rank >= _ORDER[minimum]


def batches_allowed(version: str | None) -> bool:
    """JSON-RPC arrays: 2025-03-26 requires accepting them, 2024-11-05 inherits JSON-RPC's; 2025-06-18
    removed them. No version yet (before ``initialize``) means no batches: it may not be batched."""
    return version in ("2024-11-05", "2025-03-26")


# -- handshake and discovery ------------------------------------------------------------------


def server_capabilities(version: str | None = MODERN_VERSION) -> dict[str, Any]:
    """Everything we serve. Declared whether or not anything is registered yet: lists may fill
    (and change, hence ``listChanged``) while clients are connected. The ``completions``
    capability arrived in 2025-03-26 (2024-11-05 served ``completion/complete`` without one)."""
    capabilities: dict[str, Any] = {
        "tools": {"listChanged": True},
        "resources": {"subscribe": True, "listChanged": True},
        "prompts": {"listChanged": True},
        "logging": {},
    }
    if version_at_least(version, "2025-03-26"):
        capabilities["completions"] = {}
    return capabilities


def server_info(name: str, version: str) -> dict[str, Any]:
    return {"name": name, "version": version}


def initialize_result(
    version: str, server_name: str, server_version: str, instructions: str | None = None
) -> dict[str, Any]:
    result: dict[str, Any] = {
        "protocolVersion": version,
        "capabilities": server_capabilities(version),
        "serverInfo": server_info(server_name, server_version),
    }
    if instructions:
        result["instructions"] = instructions
    return result


def discover_result(instructions: str | None = None) -> dict[str, Any]:
    """``server/discover``. Lists the modern versions only, like the Python SDK: the client uses
    one of them in its next request's ``_meta``, where a handshake version would be refused."""
    result: dict[str, Any] = {"supportedVersions": list(MODERN_VERSIONS)}
    result["capabilities"] = server_capabilities()
    if instructions:
        result["instructions"] = instructions
    return cacheable(result)


def cacheable(result: dict[str, Any]) -> dict[str, Any]:
    """2026 caching fields. ``private`` + 0 ms: nothing may be shared across tokens or reused,
    which is always correct; widening it is an optimisation we have not needed."""
    result.setdefault("ttlMs", 0)
    result.setdefault("cacheScope", "private")
    return result


def modern_result(result: dict[str, Any], info: Mapping[str, Any]) -> dict[str, Any]:
    """Stamp a 2026-07-28 result: ``resultType`` is required, ``serverInfo`` is a SHOULD."""
    result.setdefault("resultType", "complete")
    meta = result.get("_meta")
    result["_meta"] = {**(meta if isinstance(meta, dict) else {}), META_SERVER_INFO: dict(info)}
    return result


# -- pagination -------------------------------------------------------------------------------

_CURSOR_PREFIX: Final = "dp1:"
_CURSOR_MAX_DIGITS: Final = 18


def _encode_cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(f"{_CURSOR_PREFIX}{offset}".encode()).decode("ascii")


def _decode_cursor(cursor: object, total: int) -> int:
    # Opaque to clients; we only need to recognise our own and refuse everything else (SHOULD -32602).
    if not isinstance(cursor, str):
        raise InvalidParams("cursor must be a string")
    try:
        text = base64.urlsafe_b64decode(cursor.encode("ascii")).decode("ascii")
    except (binascii.Error, UnicodeError, ValueError):
        raise InvalidParams("invalid cursor") from None
    digits = text.removeprefix(_CURSOR_PREFIX)
    # An offset of ours has a few digits; the length check comes first because int() of a
    # long digit string is slow and, past sys.get_int_max_str_digits(), a ValueError.
    if text == digits or len(digits) > _CURSOR_MAX_DIGITS or not digits.isdigit():
        raise InvalidParams("invalid cursor")
    offset = int(digits)
    if not 0 < offset < total:
        raise InvalidParams("invalid cursor")
    return offset


def paginate(items: Sequence[T], cursor: object, page_size: int) -> tuple[list[T], str | None]:
    """One page of ``items`` and the cursor of the next page (None on the last page).

    A cursor is the base64 of an offset: stateless, so it survives across sessions and servers.
    It points past the end only if the list shrank, which ours never does, so that is refused.
    """
    if page_size < 1:
        raise ValueError("page_size must be at least 1")
    start = 0 if cursor is None else _decode_cursor(cursor, len(items))
    end = start + page_size
    return list(items[start:end]), (_encode_cursor(end) if end < len(items) else None)


def list_tools_result(entries: Sequence[Mapping[str, Any]], version: str | None) -> dict[str, Any]:
    """``tools/list`` for these entries (each a ``Tool.describe()``), copied, not modified."""
    return {"tools": for_version(entries, version)}


# Fields of list entries, and the revision each arrived in: older wires keep to their own schema.
# Resources had annotations from the start (2024-11-05); tools got theirs in 2025-03-26.
_COMMON_FIELDS_SINCE: Final = {"title": "2025-06-18", "icons": "2025-11-25"}
_ENTRY_FIELDS_SINCE: Final[dict[str, dict[str, str]]] = {
    "tools": {**_COMMON_FIELDS_SINCE, "annotations": "2025-03-26", "outputSchema": "2025-06-18"},
    "resources": _COMMON_FIELDS_SINCE,
    "resourceTemplates": _COMMON_FIELDS_SINCE,
    "prompts": _COMMON_FIELDS_SINCE,
}


def for_version(
    entries: Sequence[Mapping[str, Any]], version: str | None, *, kind: str = "tools"
) -> list[dict[str, Any]]:
    """List entries of ``kind`` (the result key: ``tools``, ``resources``,
    ``resourceTemplates``, ``prompts``) as ``version`` defines them."""
    since_table = _ENTRY_FIELDS_SINCE[kind]
    dropped = [k for k, since in since_table.items() if not version_at_least(version, since)]
    out = []
    for entry in entries:
        copy = dict(entry)
        for key in dropped:
            copy.pop(key, None)
        out.append(copy)
    return out


# -- tool results -----------------------------------------------------------------------------

_NOTHING: Final[Any] = object()


@dataclass(frozen=True)
class ToolOutput:
    """A tool's return value when plain JSON is not enough: ready-made content blocks
    (``image``, ``audio``, ``resource``...), optional structured content, or a deliberate error."""

    content: list[dict[str, Any]]
    structured_content: Any = field(default=_NOTHING)
    is_error: bool = False


def _text_of(output: Any) -> str:
    if isinstance(output, str):
        return output
    return orjson.dumps(output, option=orjson.OPT_NON_STR_KEYS).decode("utf-8")


def text_content(value: Any) -> list[dict[str, Any]]:
    """``value`` as MCP content: one text block (a string as is, anything else as JSON);
    nothing for None. Raises TypeError when ``value`` is not JSON."""
    return [] if value is None else [{"type": "text", "text": _text_of(value)}]


def tool_call_result(
    output: Any, version: str | None, *, output_schema: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The ``tools/call`` result for a tool (declaring ``output_schema``) that returned ``output``.

    Raises TypeError when ``output`` is not JSON-serialisable; the caller reports that as a tool
    failure. structuredContent only exists from 2025-06-18 and only for tools that declare an
    outputSchema (the spec then also wants the same JSON as text, for older clients).
    """
    structured = version_at_least(version, "2025-06-18")
    if isinstance(output, ToolOutput):
        result: dict[str, Any] = {"content": list(output.content)}
        if structured and output.structured_content is not _NOTHING:
            result["structuredContent"] = output.structured_content
        result["isError"] = output.is_error
        return result
    result = {"content": text_content(output)}
    if structured and output_schema is not None:
        result["structuredContent"] = output
    result["isError"] = False
    return result


def tool_error_result(message: str) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": message}], "isError": True}


# -- logging and progress ---------------------------------------------------------------------


def is_log_level(value: object) -> bool:
    return isinstance(value, str) and value in _LOG_RANK


def log_level_allows(threshold: str | None, level: str) -> bool:
    """Whether a message at ``level`` passes a client's minimum ``threshold`` (None: send none)."""
    return threshold is not None and _LOG_RANK[level] >= _LOG_RANK[threshold]


def progress_token(params: Mapping[str, Any] | None) -> str | int | None:
    """``params._meta.progressToken`` if present; a token that is not a string/integer is -32602."""
    meta = (params or {}).get("_meta")
    if not isinstance(meta, Mapping) or meta.get("progressToken") is None:
        return None
    token = meta["progressToken"]
    if isinstance(token, bool) or not isinstance(token, str | int):
        raise InvalidParams("_meta.progressToken must be a string or an integer")
    return token


def progress_params(
    token: str | int, progress: float, total: float | None, message: str | None, version: str | None
) -> dict[str, Any] | None:
    """``notifications/progress`` params, or None when the values cannot go on the wire."""
    if not math.isfinite(progress) or (total is not None and not math.isfinite(total)):
        return None  # orjson would write NaN/inf as null, which no schema accepts
    params: dict[str, Any] = {"progressToken": token, "progress": progress}
    if total is not None:
        params["total"] = total
    if message is not None and version_at_least(version, "2025-03-26"):
        params["message"] = message
    return params


# -- 2026-07-28 subscriptions/listen --------------------------------------------------------

META_SUBSCRIPTION_ID: Final = "io.modelcontextprotocol/subscriptionId"
MAX_LISTEN_URIS: Final = 256
"""The most resource URIs one listen request may watch: its filter is held for its lifetime."""


@dataclass(frozen=True)
class ListenFilter:
    """What a ``subscriptions/listen`` request asked to hear (all of it we support)."""

    tools_list_changed: bool = False
    prompts_list_changed: bool = False
    resources_list_changed: bool = False
    resource_subscriptions: frozenset[str] = frozenset()
    _uri_order: tuple[str, ...] = ()

    def wants_list(self, kind: str) -> bool:
        return {
            "tools": self.tools_list_changed,
            "prompts": self.prompts_list_changed,
            "resources": self.resources_list_changed,
        }.get(kind, False)

    def to_wire(self) -> dict[str, Any]:
        """The filter as the acknowledgment echoes it: only what was asked and is honoured."""
        wire: dict[str, Any] = {}
        if self.tools_list_changed:
            wire["toolsListChanged"] = True
        if self.prompts_list_changed:
            wire["promptsListChanged"] = True
        if self.resources_list_changed:
            wire["resourcesListChanged"] = True
        if self._uri_order:
            wire["resourceSubscriptions"] = list(self._uri_order)
        return wire


def parse_listen_filter(params: Mapping[str, Any]) -> ListenFilter:
    """``params.notifications`` of a listen request (-32602 when malformed). Unknown keys are
    ignored: the acknowledgment leaves out what we do not serve, which is how a client learns."""
    wanted = params.get("notifications", {})
    if not isinstance(wanted, dict):
        raise InvalidParams("notifications must be an object")
    flags = {}
    for key in ("toolsListChanged", "promptsListChanged", "resourcesListChanged"):
        value = wanted.get(key, False)
        if not isinstance(value, bool):
            raise InvalidParams(f"notifications.{key} must be a boolean")
        flags[key] = value
    uris = wanted.get("resourceSubscriptions", [])
    if not isinstance(uris, list) or not all(isinstance(u, str) for u in uris):
        raise InvalidParams("notifications.resourceSubscriptions must be a list of strings")
    if len(uris) > MAX_LISTEN_URIS:
        raise InvalidParams(f"at most {MAX_LISTEN_URIS} resourceSubscriptions per listen request")
    ordered = tuple(dict.fromkeys(uris))
    return ListenFilter(
        flags["toolsListChanged"],
        flags["promptsListChanged"],
        flags["resourcesListChanged"],
        frozenset(ordered),
        ordered,
    )


def listen_meta(subscription_id: str | int) -> dict[str, Any]:
    return {META_SUBSCRIPTION_ID: subscription_id}


def listen_notification(
    method: str, params: Mapping[str, Any], subscription_id: str | int
) -> bytes:
    """A notification for a listen stream: ``params._meta`` carries the subscription id."""
    body = {**params, "_meta": listen_meta(subscription_id)}
    return orjson.dumps({"jsonrpc": "2.0", "method": method, "params": body})


# -- 2026-07-28 per-request envelope ----------------------------------------------------------


@dataclass(frozen=True)
class ModernMeta:
    """What a 2026-07-28 request says about its client in ``params._meta``."""

    protocol_version: str
    client_capabilities: dict[str, Any]
    client_info: dict[str, Any] | None = None
    log_level: str | None = None


def parse_modern_meta(params: object) -> ModernMeta:
    """Check the envelope's shape (all failures -32602, HTTP 400); the version is checked apart,
    by ``check_modern_version``, because the HTTP layer compares headers in between."""
    meta = params.get("_meta") if isinstance(params, dict) else None
    if not isinstance(meta, dict):
        raise InvalidParams(
            f"params._meta must be an object carrying {META_PROTOCOL_VERSION!r}"
            f" and {META_CLIENT_CAPABILITIES!r}"
        )
    missing = [k for k in (META_PROTOCOL_VERSION, META_CLIENT_CAPABILITIES) if k not in meta]
    if missing:
        raise InvalidParams(f"params._meta is missing {', '.join(missing)}")
    version, capabilities = meta[META_PROTOCOL_VERSION], meta[META_CLIENT_CAPABILITIES]
    if not isinstance(version, str):
        raise InvalidParams(f"{META_PROTOCOL_VERSION} must be a string")
    if not isinstance(capabilities, dict):
        raise InvalidParams(f"{META_CLIENT_CAPABILITIES} must be an object")
    # clientInfo is only a SHOULD: absent or malformed, the request is still served.
    info = meta.get(META_CLIENT_INFO)
    level = meta.get(META_LOG_LEVEL)
    if level is not None and not is_log_level(level):
        raise InvalidParams(f"{META_LOG_LEVEL} must be one of {', '.join(LOG_LEVELS)}")
    return ModernMeta(version, capabilities, info if isinstance(info, dict) else None, level)


def check_modern_version(version: str) -> None:
    if version not in MODERN_VERSIONS:
        raise UnsupportedProtocolVersion(version)
