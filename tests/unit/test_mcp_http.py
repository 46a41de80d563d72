"""Streamable HTTP rules of 2026-07-28 (core.mcp_http), and Content-Type/Accept (core.media)."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from datapulse.core import mcp, mcp_http
from datapulse.core.jsonrpc import Request
from datapulse.core.media import accepted_media_types, accepts, media_type

META = {
    mcp.META_PROTOCOL_VERSION: mcp.MODERN_VERSION,
    mcp.META_CLIENT_CAPABILITIES: {},
}


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (None, 200),
        (-32600, 400),
        (-32602, 400),
        (-32020, 400),
        (-32021, 400),
        (-32022, 400),
        (-32700, 400),
        (-32601, 404),
        (-32603, 500),
        (-32000, 429),
        (-1, 200),
    ],
)
def test_modern_http_status(code: int | None, status: int) -> None:
    assert mcp_http.modern_http_status(code) == status


def _call(name: str = "echo") -> Request:
    return Request(1, "tools/call", {"name": name, "_meta": META})


def _headers(**extra: str) -> dict[str, str]:
    headers = {
        "mcp-protocol-version": mcp.MODERN_VERSION,
        "mcp-method": "tools/call",
        "mcp-name": "echo",
    }
    headers.update(extra)
    return headers


def test_routing_headers_match() -> None:
    mcp_http.check_routing_headers(_call(), _headers())
    b64 = base64.b64encode(b"echo").decode()
    mcp_http.check_routing_headers(_call(), _headers(**{"mcp-name": f"=?base64?{b64}?="}))
    name = "héllo wörld"
    b64 = base64.b64encode(name.encode()).decode()
    mcp_http.check_routing_headers(_call(name), _headers(**{"mcp-name": f"=?base64?{b64}?="}))


@pytest.mark.parametrize(
    "headers",
    [
        _headers(**{"mcp-protocol-version": "2025-11-25"}),
        {k: v for k, v in _headers().items() if k != "mcp-protocol-version"},
        _headers(**{"mcp-method": "TOOLS/CALL"}),
        {k: v for k, v in _headers().items() if k != "mcp-method"},
        _headers(**{"mcp-name": "other"}),
        {k: v for k, v in _headers().items() if k != "mcp-name"},
        _headers(**{"mcp-name": "=?base64?!!!?="}),
    ],
)
def test_routing_headers_mismatch(headers: dict[str, str]) -> None:
    with pytest.raises(mcp_http.HeaderMismatch) as info:
        mcp_http.check_routing_headers(_call(), headers)
    assert (info.value.jsonrpc_code, info.value.http_status) == (-32020, 400)


def test_header_sent_twice_is_a_mismatch_in_the_routing_set() -> None:
    assert set(mcp_http.ROUTING_HEADERS) == {"mcp-protocol-version", "mcp-method", "mcp-name"}


@pytest.mark.parametrize(
    ("raw", "decoded"),
    [
        ("plain", "plain"),
        ("=?base64?aMOpbGxv?=", "héllo"),
        ("=?base64?!!!?=", None),
        ("=?base64?/w==?=", None),  # not UTF-8
        ("=?base64?=", "=?base64?="),  # too short to be wrapped: taken as it is
    ],
)
def test_decode_header_value(raw: str, decoded: str | None) -> None:
    assert mcp_http.decode_header_value(raw) == decoded


SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "region": {"type": "string", "x-mcp-header": "Region"},
        "count": {"type": "integer", "x-mcp-header": "Count"},
        "free": {"type": "string"},
    },
}


def test_param_headers_match() -> None:
    sent = {"mcp-param-region": ["eu"], "mcp-param-count": ["42.0"]}
    mcp_http.check_param_headers(SCHEMA, {"region": "eu", "count": 42}, sent)
    mcp_http.check_param_headers(SCHEMA, {"free": "x"}, {})


@pytest.mark.parametrize(
    ("arguments", "sent"),
    [
        ({"region": "eu"}, {}),
        ({"region": "eu"}, {"mcp-param-region": ["us"]}),
        ({"region": "eu"}, {"mcp-param-region": ["eu", "eu"]}),
        ({}, {"mcp-param-region": ["eu"]}),
        ({"count": 42}, {"mcp-param-count": ["41"]}),
    ],
)
def test_param_headers_mismatch(arguments: dict[str, Any], sent: dict[str, list[str]]) -> None:
    with pytest.raises(mcp_http.HeaderMismatch):
        mcp_http.check_param_headers(SCHEMA, arguments, sent)


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "object", "properties": {"a": {"type": "object", "x-mcp-header": "A"}}},
        {"type": "object", "properties": {"a": {"type": "string", "x-mcp-header": "no space"}}},
        {"type": "object", "items": {"type": "string", "x-mcp-header": "A"}},
        {
            "type": "object",
            "properties": {
                "a": {"type": "string", "x-mcp-header": "A"},
                "b": {"type": "string", "x-mcp-header": "a"},
            },
        },
    ],
)
def test_invalid_header_annotation(schema: dict[str, Any]) -> None:
    assert mcp_http.invalid_header_annotation(schema) is not None
    assert mcp_http.invalid_header_annotation(SCHEMA) is None


# -- core.media ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("application/json", "application/json"),
        ("Application/JSON; charset=utf-8", "application/json"),
        ("  text/plain ;x=y", "text/plain"),
        ("", ""),
        (None, ""),
    ],
)
def test_media_type(header: str | None, expected: str) -> None:
    assert media_type(header) == expected


def test_accepted_media_types() -> None:
    assert accepted_media_types(None) == {"*/*"}
    assert accepted_media_types("") == set()
    header = "Application/JSON, text/event-stream;q=0, text/html;q=0.5, image/*;q=bad"
    assert accepted_media_types(header) == {"application/json", "text/html", "image/*"}


@pytest.mark.parametrize(
    ("accept", "wanted", "ok"),
    [
        (None, "application/json", True),
        ("*/*", "text/event-stream", True),
        ("application/*", "application/json", True),
        ("application/*", "text/event-stream", False),
        ("application/json, text/event-stream", "text/event-stream", True),
        ("application/json;q=0", "application/json", False),
        ("application/json;q=0.0", "application/json", False),
        ("application/json;q=0.1", "application/json", True),
        ("text/html", "application/json", False),
    ],
)
def test_accepts(accept: str | None, wanted: str, ok: bool) -> None:
    assert accepts(accept, wanted) is ok
