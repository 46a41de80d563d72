"""MCP rules that exist only on Streamable HTTP, 2026-07-28: routing headers, ``Mcp-Param-*``
(the ``x-mcp-header`` schema annotation) and which HTTP status a JSON-RPC reply travels with.

Pure, like ``core.mcp`` (which holds the transport-neutral rules): ``transports.streamable``
applies these to a request's headers, and ``tools.registry`` refuses a tool whose annotations
clients would reject, at registration rather than on the first call.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterator, Mapping
from typing import Any, Final

from datapulse.core.jsonrpc import Request
from datapulse.core.mcp import META_PROTOCOL_VERSION
from datapulse.errors import BadRequest

# The headers ``check_routing_headers`` compares; each may be sent at most once.
ROUTING_HEADERS: Final = ("mcp-protocol-version", "mcp-method", "mcp-name")


class HeaderMismatch(BadRequest):
    """2026-07-28: an HTTP routing header is missing or disagrees with the body."""

    jsonrpc_code = -32020
    error = "header_mismatch"


# Body field mirrored in the Mcp-Name header, per method.
_NAME_FIELDS: Final = {
    "tools/call": "name",
    "prompts/get": "name",
    "resources/read": "uri",
    # SEP-2663 (the tasks extension): Mcp-Name carries params.taskId.
    "tasks/get": "taskId",
    "tasks/update": "taskId",
    "tasks/cancel": "taskId",
}


def decode_header_value(value: str) -> str | None:
    """Undo the ``=?base64?...?=`` wrapping of Mcp-Name/Mcp-Param values; None if malformed."""
    if not (value.startswith("=?base64?") and value.endswith("?=") and len(value) >= 11):
        return value
    try:
        return base64.b64decode(value[9:-2], validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None


def check_routing_headers(request: Request, headers: Mapping[str, str]) -> None:
    """2026-07-28 SEP-2243: ``MCP-Protocol-Version``, ``Mcp-Method`` and ``Mcp-Name`` must mirror
    the body. ``headers`` maps lowercase names to values already stripped of edge whitespace;
    values compare case-sensitively. ``Mcp-Param-*`` needs the tool schema: ``check_param_headers``.
    """
    params = request.params if isinstance(request.params, dict) else {}
    meta = params.get("_meta")
    body_version = meta.get(META_PROTOCOL_VERSION) if isinstance(meta, dict) else None
    header_version = headers.get("mcp-protocol-version")
    if header_version is None or header_version != body_version:
        raise HeaderMismatch("MCP-Protocol-Version header does not match params._meta")
    if headers.get("mcp-method") != request.method:
        raise HeaderMismatch("Mcp-Method header does not match the request method")
    name_field = _NAME_FIELDS.get(request.method)
    if name_field is not None and params.get(name_field) is not None:
        raw = headers.get("mcp-name")
        if raw is None or decode_header_value(raw) != params[name_field]:
            raise HeaderMismatch(f"Mcp-Name header does not match params.{name_field}")


# -- Mcp-Param-* headers (x-mcp-header annotations) -----------------------------------------

X_MCP_HEADER: Final = "x-mcp-header"
_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 field-name token
_HEADER_TYPES: Final = frozenset({"string", "integer", "boolean"})
_INTEGRAL: Final = re.compile(r"-?[0-9]+(\.0+)?")
# JSON Schema 2020-12 keywords whose values are subschemas. Only a chain of plain `properties`
# keeps a property "statically reachable"; anything else may annotate nothing.
_SUBSCHEMA: Final = frozenset(
    {"items", "contains", "additionalProperties", "unevaluatedItems", "unevaluatedProperties"}
    | {"propertyNames", "not", "if", "then", "else", "contentSchema"}
)
_SUBSCHEMA_LISTS: Final = frozenset({"allOf", "anyOf", "oneOf", "prefixItems"})
_SUBSCHEMA_MAPS: Final = frozenset(
    {"patternProperties", "dependentSchemas", "$defs", "definitions"}
)


def _positions(schema: object) -> Iterator[tuple[tuple[str, ...] | None, Mapping[str, Any]]]:
    """Every subschema with its ``properties`` path (None once another keyword was crossed)."""
    stack: list[tuple[tuple[str, ...] | None, object]] = [((), schema)]
    while stack:
        path, node = stack.pop()
        if not isinstance(node, Mapping):
            continue
        yield path, node
        for key, value in node.items():
            if key == "properties" and isinstance(value, Mapping):
                stack.extend((None if path is None else (*path, k), v) for k, v in value.items())
            elif key in _SUBSCHEMA:
                stack.append((None, value))
            elif key in _SUBSCHEMA_LISTS and isinstance(value, list):
                stack.extend((None, v) for v in value)
            elif key in _SUBSCHEMA_MAPS and isinstance(value, Mapping):
                stack.extend((None, v) for v in value.values())


def invalid_header_annotation(schema: object) -> str | None:
    """Why the ``x-mcp-header`` annotations of an input schema are invalid, or None if they are
    fine: each must be a token, unique ignoring case, on a string/integer/boolean property reached
    through plain ``properties`` (clients drop tools that break this)."""
    seen: dict[str, str] = {}
    for path, node in _positions(schema):
        if X_MCP_HEADER not in node:
            continue
        if not path:
            return f"{X_MCP_HEADER} outside a plain `properties` chain"
        where, token = ".".join(path), node[X_MCP_HEADER]
        if not isinstance(token, str) or not _TOKEN.fullmatch(token):
            return f"{where}: {X_MCP_HEADER} must be an RFC 9110 token"
        if node.get("type") not in _HEADER_TYPES:
            return f"{where}: {X_MCP_HEADER} needs type string, integer or boolean"
        if token.lower() in seen:
            return f"{where}: {X_MCP_HEADER} {token!r} repeats the one on {seen[token.lower()]}"
        seen[token.lower()] = where
    return None


def _param_matches(kind: object, value: object, text: str) -> bool:
    if isinstance(value, bool):
        return text == ("true" if value else "false")
    whole = value if isinstance(value, int) else None
    if isinstance(value, float) and value.is_integer():
        whole = int(value)
    try:
        if kind == "integer" and whole is not None:
            # Integers compare numerically (SHOULD): "42.0" matches 42.
            return _INTEGRAL.fullmatch(text) is not None and int(text.partition(".")[0]) == whole
        return isinstance(value, str | int | float) and text == str(value)
    except ValueError:  # an integer past Python's int/str digit limit
        return False


def check_param_headers(
    schema: Mapping[str, Any], arguments: Mapping[str, Any], sent: Mapping[str, list[str]]
) -> None:
    """``tools/call``: every annotated argument present (not null) must arrive mirrored in
    ``Mcp-Param-<token>``, and no such header may come without its argument. ``sent`` maps
    lowercase header names to their values. A schema with invalid annotations is not checked:
    clients drop such tools, so they send nothing to compare."""
    if invalid_header_annotation(schema) is not None:
        return
    for path, node in _positions(schema):
        token = node.get(X_MCP_HEADER)
        if not path or not isinstance(token, str):
            continue
        header, values = f"Mcp-Param-{token}", sent.get(f"mcp-param-{token.lower()}", [])
        value: Any = arguments
        for key in path:
            value = value.get(key) if isinstance(value, Mapping) else None
        if len(values) > 1:
            raise HeaderMismatch(f"{header} header sent twice")
        if value is None and values:
            raise HeaderMismatch(f"{header} header sent without the {'.'.join(path)} argument")
        if value is None:
            continue
        if not values:
            raise HeaderMismatch(f"{header} header missing for the {'.'.join(path)} argument")
        text = decode_header_value(values[0])
        if text is None or not _param_matches(node.get("type"), value, text):
            raise HeaderMismatch(f"{header} header does not match the {'.'.join(path)} argument")


# JSON-RPC error code -> HTTP status on the 2026-07-28 path (everything else: 200). -32603 is 500
# by our choice: both SDKs answer 200, but an internal error is a server fault, and dual-era
# clients read the JSON-RPC body on any status. -32000 is only ever our concurrency limit.
_MODERN_STATUS: Final = {
    -32700: 400,
    -32600: 400,
    -32602: 400,
    -32020: 400,
    -32021: 400,
    -32022: 400,
    -32601: 404,
    -32000: 429,
    -32603: 500,
}


def modern_http_status(code: int | None) -> int:
    """HTTP status for a 2026-07-28 reply whose JSON-RPC error code is ``code`` (None: success)."""
    return 200 if code is None else _MODERN_STATUS.get(code, 200)
