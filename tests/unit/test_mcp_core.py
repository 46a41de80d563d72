"""MCP protocol rules, tested with plain values."""

from __future__ import annotations

import base64

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from datapulse.core import mcp
from datapulse.errors import InvalidParams

# core.mcp takes tools as plain values: a tools/list entry, an output schema.
OUTPUT_SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}}
TYPED_ENTRY = {
    "name": "typed",
    "description": "with output schema",
    "inputSchema": {"type": "object", "properties": {}},
    "outputSchema": OUTPUT_SCHEMA,
}

META = {
    mcp.META_PROTOCOL_VERSION: mcp.MODERN_VERSION,
    mcp.META_CLIENT_CAPABILITIES: {},
}


# -- versions -----------------------------------------------------------------------------------


@pytest.mark.parametrize("version", mcp.SUPPORTED_VERSIONS)
def test_negotiate_echoes_supported(version: str) -> None:
    assert mcp.negotiate_version(version) == version


@pytest.mark.parametrize("requested", ["2099-01-01", "2026-07-28", "", None, 3])
def test_negotiate_falls_back_to_newest_handshake(requested: object) -> None:
    assert mcp.negotiate_version(requested) == "2025-11-25"


def test_version_order_and_batches() -> None:
    assert mcp.version_at_least("2025-11-25", "2025-06-18")
    assert not mcp.version_at_least("2025-03-26", "2025-06-18")
    assert not mcp.version_at_least(None, "2024-11-05")
    assert not mcp.version_at_least("2099-01-01", "2024-11-05")
    assert mcp.version_at_least(mcp.MODERN_VERSION, "2025-11-25")
    assert mcp.batches_allowed("2025-03-26") and mcp.batches_allowed("2024-11-05")
    assert not any(mcp.batches_allowed(v) for v in ("2025-06-18", "2025-11-25", None, "2026-07-28"))


def test_initialize_result() -> None:
    result = mcp.initialize_result("2025-06-18", "dp", "1.2")
    assert result == {
        "protocolVersion": "2025-06-18",
        "capabilities": {
            "tools": {"listChanged": True},
            "resources": {"subscribe": True, "listChanged": True},
            "prompts": {"listChanged": True},
            "logging": {},
            "completions": {},
        },
        "serverInfo": {"name": "dp", "version": "1.2"},
    }
    assert mcp.initialize_result("2025-06-18", "dp", "1", "hi")["instructions"] == "hi"


# -- pagination ---------------------------------------------------------------------------------


def test_paginate_walks_every_page() -> None:
    items = list(range(7))
    seen: list[int] = []
    cursor: str | None = None
    pages = 0
    while True:
        page, cursor = mcp.paginate(items, cursor, 3)
        seen += page
        pages += 1
        if cursor is None:
            break
    assert seen == items and pages == 3


def test_paginate_single_page_has_no_cursor() -> None:
    assert mcp.paginate([1, 2], None, 2) == ([1, 2], None)
    assert mcp.paginate([], None, 5) == ([], None)


@pytest.mark.parametrize(
    "cursor",
    [
        "nope!",
        "",
        5,
        base64.urlsafe_b64encode(b"dp1:0").decode(),  # never issued: first page has no cursor
        base64.urlsafe_b64encode(b"dp1:99").decode(),
        base64.urlsafe_b64encode(b"dp1:-1").decode(),
        base64.urlsafe_b64encode(b"xx:3").decode(),
        base64.urlsafe_b64encode(b"\xff").decode(),
    ],
)
def test_invalid_cursor(cursor: object) -> None:
    with pytest.raises(InvalidParams) as info:
        mcp.paginate(list(range(10)), cursor, 3)
    assert info.value.jsonrpc_code == -32602


@given(st.integers(0, 40), st.integers(1, 10))
def test_paginate_property(n: int, size: int) -> None:
    items = list(range(n))
    out: list[int] = []
    page, cursor = mcp.paginate(items, None, size)
    out += page
    while cursor is not None:
        assert len(page) == size
        page, cursor = mcp.paginate(items, cursor, size)
        out += page
    assert out == items


def test_list_tools_hides_output_schema_before_0618() -> None:
    old = mcp.list_tools_result([TYPED_ENTRY], "2025-03-26")["tools"][0]
    new = mcp.list_tools_result([TYPED_ENTRY], "2025-06-18")["tools"][0]
    assert "outputSchema" not in old and new["outputSchema"]["type"] == "object"
    assert new["inputSchema"]["type"] == "object"
    assert "outputSchema" in TYPED_ENTRY  # the caller's entries are copied, not edited


# -- tool results -------------------------------------------------------------------------------


def test_tool_call_result_text_and_json() -> None:
    assert mcp.tool_call_result("hi", "2025-11-25") == {
        "content": [{"type": "text", "text": "hi"}],
        "isError": False,
    }
    result = mcp.tool_call_result({"a": 1}, "2025-11-25")
    assert orjson.loads(result["content"][0]["text"]) == {"a": 1}
    assert "structuredContent" not in result
    assert mcp.tool_call_result(None, "2025-11-25")["content"] == []


def test_structured_content_only_with_schema_and_0618() -> None:
    result = mcp.tool_call_result({"n": 1}, "2025-06-18", output_schema=OUTPUT_SCHEMA)
    assert result["structuredContent"] == {"n": 1}
    assert orjson.loads(result["content"][0]["text"]) == {"n": 1}
    old = mcp.tool_call_result({"n": 1}, "2025-03-26", output_schema=OUTPUT_SCHEMA)
    assert "structuredContent" not in old


def test_tool_output_passthrough() -> None:
    image = {"type": "image", "data": "AAAA", "mimeType": "image/png"}
    out = mcp.ToolOutput([image], structured_content={"k": 1}, is_error=True)
    assert mcp.tool_call_result(out, "2025-11-25") == {
        "content": [image],
        "structuredContent": {"k": 1},
        "isError": True,
    }


def test_unserialisable_output_is_type_error() -> None:
    with pytest.raises(TypeError):
        mcp.tool_call_result(object(), "2025-11-25")


def test_tool_error_result() -> None:
    assert mcp.tool_error_result("boom") == {
        "content": [{"type": "text", "text": "boom"}],
        "isError": True,
    }


# -- logging and progress -----------------------------------------------------------------------


def test_log_levels() -> None:
    assert mcp.LOG_LEVELS[0] == "debug" and mcp.LOG_LEVELS[-1] == "emergency"
    assert mcp.is_log_level("notice") and not mcp.is_log_level("warn")
    assert not mcp.is_log_level(None)
    assert mcp.log_level_allows("info", "error")
    assert mcp.log_level_allows("info", "info")
    assert not mcp.log_level_allows("warning", "info")
    assert not mcp.log_level_allows(None, "emergency")


def test_progress_token() -> None:
    assert mcp.progress_token(None) is None
    assert mcp.progress_token({"_meta": {"progressToken": "t"}}) == "t"
    assert mcp.progress_token({"_meta": {"progressToken": 0}}) == 0
    assert mcp.progress_token({"_meta": "x"}) is None
    bad: object
    for bad in (True, 1.5, {}):
        with pytest.raises(InvalidParams):
            mcp.progress_token({"_meta": {"progressToken": bad}})


def test_progress_params() -> None:
    assert mcp.progress_params("t", 1, 2, "m", "2025-03-26") == {
        "progressToken": "t",
        "progress": 1,
        "total": 2,
        "message": "m",
    }
    assert mcp.progress_params("t", 1, None, "m", "2024-11-05") == {
        "progressToken": "t",
        "progress": 1,
    }
    assert mcp.progress_params("t", float("nan"), None, None, "2025-11-25") is None
    assert mcp.progress_params("t", 1, float("inf"), None, "2025-11-25") is None


# -- 2026-07-28 ---------------------------------------------------------------------------------


def test_parse_modern_meta() -> None:
    meta = mcp.parse_modern_meta({"_meta": META})
    assert meta == mcp.ModernMeta(mcp.MODERN_VERSION, {}, None, None)
    full = mcp.parse_modern_meta(
        {
            "_meta": {
                **META,
                mcp.META_CLIENT_INFO: {"name": "c", "version": "1"},
                mcp.META_LOG_LEVEL: "warning",
            }
        }
    )
    assert full.client_info == {"name": "c", "version": "1"} and full.log_level == "warning"


@pytest.mark.parametrize(
    "params",
    [
        None,
        [],
        {},
        {"_meta": None},
        {"_meta": {mcp.META_PROTOCOL_VERSION: mcp.MODERN_VERSION}},
        {"_meta": {mcp.META_CLIENT_CAPABILITIES: {}}},
        {"_meta": {**META, mcp.META_PROTOCOL_VERSION: 20260728}},
        {"_meta": {**META, mcp.META_CLIENT_CAPABILITIES: []}},
        {"_meta": {**META, mcp.META_LOG_LEVEL: "loud"}},
    ],
)
def test_parse_modern_meta_rejects(params: object) -> None:
    with pytest.raises(InvalidParams) as info:
        mcp.parse_modern_meta(params)
    assert (info.value.jsonrpc_code, info.value.http_status) == (-32602, 400)


def test_unsupported_version_error() -> None:
    mcp.check_modern_version(mcp.MODERN_VERSION)
    with pytest.raises(mcp.UnsupportedProtocolVersion) as info:
        mcp.check_modern_version("2099-01-01")
    exc = info.value
    assert (exc.jsonrpc_code, exc.http_status) == (-32022, 400)
    assert exc.extra["data"]["requested"] == "2099-01-01"
    # The same list as server/discover (the conformance suite checks that they agree).
    assert exc.extra["data"]["supported"] == mcp.discover_result()["supportedVersions"]


def test_missing_capability() -> None:
    exc = mcp.MissingClientCapability("sampling")
    assert (exc.jsonrpc_code, exc.http_status) == (-32021, 400)
    assert exc.extra["data"] == {"requiredCapabilities": {"sampling": {}}}


def test_discover_and_modern_result() -> None:
    result = mcp.modern_result(mcp.discover_result("hi"), mcp.server_info("dp", "1"))
    assert result["resultType"] == "complete"
    assert mcp.MODERN_VERSION in result["supportedVersions"]
    assert result["capabilities"]["tools"] == {"listChanged": True}
    assert "completions" not in mcp.server_capabilities("2024-11-05")
    assert result["ttlMs"] == 0 and result["cacheScope"] in ("public", "private")
    assert result["_meta"][mcp.META_SERVER_INFO] == {"name": "dp", "version": "1"}
    assert result["instructions"] == "hi"


def test_modern_result_keeps_existing_meta() -> None:
    result = mcp.modern_result({"_meta": {"k": 1}}, {"name": "n", "version": "v"})
    assert result["_meta"] == {"k": 1, mcp.META_SERVER_INFO: {"name": "n", "version": "v"}}
