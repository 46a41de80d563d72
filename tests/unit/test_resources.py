"""Resources and resource templates: the registry, its contents, and the MCP methods over them."""

from __future__ import annotations

import base64
from typing import Any

import pydantic
import pytest

from datapulse.core import mcp
from datapulse.errors import InvalidParams, ResourceNotFound, ToolError
from datapulse.features.catalog import Catalog
from datapulse.features.resources import (
    ResourceContents,
    ResourceRegistry,
    ResourceTemplate,
    compile_template,
    contents_of,
)
from datapulse.protocol.dispatch import Dispatcher
from datapulse.protocol.session import McpSession
from tests.unit.test_dispatch import modern_params, request
from tests.unit.test_typed_tools import session_for


async def read_a() -> str:
    """Fixed resource a."""
    return "A"


async def read_b() -> bytes:
    return b"\x00\x01"


async def read_c() -> dict[str, Any]:
    return {"c": [1, 2]}


async def note(name: str) -> str:
    return f"note {name}"


async def item(id: int) -> dict[str, int]:
    return {"id": id, "double": id * 2}


def catalog() -> Catalog:
    cat = Catalog()
    res = cat.resources
    res.add("x://a", read_a, title="A", annotations={"priority": 1})
    res.add("x://b", read_b, mime_type="application/x-bin")
    res.add("x://c", read_c)
    res.add("notes://{name}", note, description="A note by name.", mime_type="text/markdown")
    res.add("items://{id}", item)
    return cat


def dispatcher(**kwargs: Any) -> Dispatcher:
    return Dispatcher(catalog(), **kwargs)


# -- templates ----------------------------------------------------------------------------------


def test_compile_template() -> None:
    variables, pattern = compile_template("repo://{owner}/{name}/issues")
    assert variables == ("owner", "name")
    found = pattern.fullmatch("repo://me/dp/issues")
    assert found is not None and found.groupdict() == {"owner": "me", "name": "dp"}
    assert pattern.fullmatch("repo://me/dp/pulls") is None
    assert pattern.fullmatch("repo://me/a/b/issues") is None  # no '/' inside a value


def test_literal_parts_are_escaped() -> None:
    _, pattern = compile_template("x://a.b/{n}")
    assert pattern.fullmatch("x://a.b/1") is not None
    assert pattern.fullmatch("x://aXb/1") is None


def make_template(uri: str, fn: Any) -> ResourceTemplate:
    registry = ResourceRegistry()
    entry = registry.add(uri, fn)
    assert isinstance(entry, ResourceTemplate)
    return entry


def test_template_match_percent_decodes_and_stops_at_delimiters() -> None:
    template = make_template("notes://{name}", note)
    assert template.match("notes://to%20do") == {"name": "to do"}
    assert template.match("notes://a%2Fb") == {"name": "a/b"}  # encoded, so part of the value
    assert template.match("notes://a/b") is None
    assert template.match("notes://a?b") is None
    assert template.match("notes://a#b") is None
    assert template.match("notes://") is None  # a value is never empty
    assert template.match("other://a") is None


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("x://plain", "'x://plain' has no {variable}"),
        ("x://{}", "'x://{}' has no {variable}"),
        ("x://{+path}", "'x://{+path}' has no {variable}"),
        ("x://{a}/{a}", "'x://{a}/{a}' names a variable twice"),
        ("x://{a}/{+b}", "'x://{a}/{+b}': only simple {name} variables are supported"),
        ("x://{a}/{b,c}", "'x://{a}/{b,c}': only simple {name} variables are supported"),
        ("x://{a}{", "'x://{a}{': only simple {name} variables are supported"),
        ("x://}{a}", "'x://}{a}': only simple {name} variables are supported"),
    ],
)
def test_bad_templates(uri: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        compile_template(uri)
    assert str(info.value) == message


# -- the registry -------------------------------------------------------------------------------


async def test_find_prefers_fixed_resources_then_templates_in_order() -> None:
    registry = ResourceRegistry()
    changes: list[int] = []
    registry.on_change.append(lambda: changes.append(len(registry)))

    async def first(key: str) -> str:
        return f"first {key}"

    async def second(key: str) -> str:
        return f"second {key}"

    registry.add("k://{key}", first)
    registry.add("k://fixed", read_a)
    registry.add("k://{key}/", second)  # matches other URIs
    registry.add("k:/{key}", second)  # a different template that never competes
    assert changes == [1, 2, 3, 4]

    entry, variables = registry.find("k://fixed") or (None, None)
    assert entry is not None and entry.name == "read_a" and variables == {}
    entry, variables = registry.find("k://other") or (None, None)
    assert entry is not None and entry.name == "first" and variables == {"key": "other"}
    assert registry.find("k://other/x") is None
    assert await registry.read("k://fixed") == [
        {"uri": "k://fixed", "mimeType": "text/plain", "text": "A"}
    ]

    registry.remove("k://fixed")
    assert changes[-1] == 3
    entry, variables = registry.find("k://fixed") or (None, None)
    assert entry is not None and entry.name == "first" and variables == {"key": "fixed"}
    registry.remove("k://{key}")
    assert registry.find("k://fixed") is None
    with pytest.raises(ResourceNotFound):
        registry.remove("k://{key}")
    assert changes == [1, 2, 3, 4, 3, 2]
    assert [t.uri_template for t in registry.templates()] == ["k://{key}/", "k:/{key}"]


async def test_first_registered_template_wins() -> None:
    registry = ResourceRegistry()

    async def one(a: str) -> str:
        return "one"

    async def two(b: str) -> str:
        return "two"

    registry.add("t://{a}", one)
    registry.add("t://{b}", two)
    assert await registry.read("t://z") == [
        {"uri": "t://z", "mimeType": "text/plain", "text": "one"}
    ]


def test_reader_signature_checks() -> None:
    registry = ResourceRegistry()
    with pytest.raises(TypeError, match=r"^resource 'x://a': its reader must take no arguments$"):
        registry.add("x://a", note)
    with pytest.raises(TypeError) as info:
        registry.add("x://{id}", note)
    assert str(info.value) == (
        "resource template 'x://{id}': its reader's parameters ['name'] must be its variables"
        " ['id']"
    )
    with pytest.raises(ValueError, match="needs a scheme"):
        registry.add("no-scheme", read_a)
    registry.add("x://a", read_a)
    with pytest.raises(ValueError, match="'x://a' is already registered"):
        registry.add("x://a", read_a)
    registry.add("x://{name}", note)
    with pytest.raises(ValueError, match=r"template 'x://\{name\}' is already registered"):
        registry.add("x://{name}", note)
    with pytest.raises(ValueError, match=r"has no \{variable\}$"):
        registry.add("x://{+name}", note)
    assert len(registry) == 2


async def test_template_variables_are_converted_to_the_readers_types() -> None:
    registry = ResourceRegistry()
    registry.add("items://{id}", item)
    assert await registry.read("items://21") == [
        {"uri": "items://21", "mimeType": "application/json", "text": '{"id":21,"double":42}'}
    ]
    with pytest.raises(InvalidParams, match=r"^invalid variables of items://x: 'id': Input"):
        await registry.read("items://x")
    with pytest.raises(ResourceNotFound):
        await registry.read("items://")


def test_describe_entries() -> None:
    cat = catalog()
    assert [r.describe() for r in cat.resources.resources()] == [
        {
            "uri": "x://a",
            "name": "read_a",
            "title": "A",
            "description": "Fixed resource a.",
            "annotations": {"priority": 1},
        },
        {"uri": "x://b", "name": "read_b", "mimeType": "application/x-bin"},
        {"uri": "x://c", "name": "read_c"},
    ]
    assert [t.describe() for t in cat.resources.templates()] == [
        {
            "uriTemplate": "notes://{name}",
            "name": "note",
            "description": "A note by name.",
            "mimeType": "text/markdown",
        },
        {"uriTemplate": "items://{id}", "name": "item"},
    ]


# -- contents -----------------------------------------------------------------------------------


def test_contents_of_str_bytes_and_json() -> None:
    assert contents_of("u://1", "hi", None) == [
        {"uri": "u://1", "mimeType": "text/plain", "text": "hi"}
    ]
    assert contents_of("u://1", "# hi", "text/markdown") == [
        {"uri": "u://1", "mimeType": "text/markdown", "text": "# hi"}
    ]
    assert contents_of("u://1", b"\x00\xff", None) == [
        {"uri": "u://1", "mimeType": "application/octet-stream", "blob": "AP8="}
    ]
    assert contents_of("u://1", bytearray(b"ab"), "image/png") == [
        {"uri": "u://1", "mimeType": "image/png", "blob": "YWI="}
    ]
    assert contents_of("u://1", {"a": [1, None]}, None) == [
        {"uri": "u://1", "mimeType": "application/json", "text": '{"a":[1,null]}'}
    ]
    # A list of plain values is one JSON document, not several items.
    assert contents_of("u://1", [1, "two"], "application/vnd.x+json") == [
        {"uri": "u://1", "mimeType": "application/vnd.x+json", "text": '[1,"two"]'}
    ]


def test_contents_of_resource_contents() -> None:
    one = ResourceContents(text="t")
    assert contents_of("u://1", one, None) == [{"uri": "u://1", "text": "t"}]
    assert contents_of("u://1", one, "text/csv") == [
        {"uri": "u://1", "mimeType": "text/csv", "text": "t"}
    ]
    several = [
        ResourceContents(text="t", mime_type="text/plain"),
        ResourceContents(blob=b"\x01", uri="u://1/part", mime_type="image/gif"),
    ]
    assert contents_of("u://1", several, "ignored/when-given") == [
        {"uri": "u://1", "mimeType": "text/plain", "text": "t"},
        {"uri": "u://1/part", "mimeType": "image/gif", "blob": base64.b64encode(b"\x01").decode()},
    ]
    for bad in ({}, {"text": "t", "blob": b"b"}):
        with pytest.raises(ValueError, match="exactly one of text and blob"):
            ResourceContents(**bad)


def test_contents_of_none_and_non_json_are_refused() -> None:
    with pytest.raises(ToolError, match=r"^the reader of u://1 returned None; raise ResourceNot"):
        contents_of("u://1", None, None)
    with pytest.raises(ToolError, match=r"^the reader of u://1 returned a value that is not JSON$"):
        contents_of("u://1", object(), None)


def test_contents_of_a_model_is_its_json() -> None:
    class Point(pydantic.BaseModel):
        x: int

    assert contents_of("u://1", Point(x=2), None) == [
        {"uri": "u://1", "mimeType": "application/json", "text": '{"x":2}'}
    ]


# -- through the dispatcher ---------------------------------------------------------------------


async def test_list_pages() -> None:
    session = await session_for("2025-11-25", dispatcher(page_size=2))
    first = (await request(session, "resources/list")).last["result"]
    assert [r["uri"] for r in first["resources"]] == ["x://a", "x://b"]
    assert isinstance(first["nextCursor"], str)
    second = await request(session, "resources/list", {"cursor": first["nextCursor"]})
    assert second.last["result"] == {"resources": [{"uri": "x://c", "name": "read_c"}]}
    bad = await request(session, "resources/list", {"cursor": "not-a-cursor"})
    assert bad.last["error"]["code"] == -32602


async def test_list_entries_follow_the_revision() -> None:
    old = await session_for("2025-03-26", dispatcher())
    (entry, *_) = (await request(old, "resources/list")).last["result"]["resources"]
    assert entry == {
        "uri": "x://a",
        "name": "read_a",
        "description": "Fixed resource a.",
        "annotations": {"priority": 1},
    }  # title arrived in 2025-06-18


async def test_resource_annotations_are_kept_on_2024_11_05() -> None:
    # Regression test (fixed; it was: core/mcp.py:216, _ENTRY_FIELDS_SINCE): "annotations" arrived in 2025-03-26 for tools
    # only; a Resource and a ResourceTemplate carry them since 2024-11-05 (its schema.ts:
    # "export interface Resource extends Annotated", annotations {audience, priority}), but
    # for_version drops them from every kind of entry, so resources/list loses them there.
    session = await session_for("2024-11-05", dispatcher())
    (entry, *_) = (await request(session, "resources/list")).last["result"]["resources"]
    assert entry == {
        "uri": "x://a",
        "name": "read_a",
        "description": "Fixed resource a.",
        "annotations": {"priority": 1},
    }


async def test_templates_list() -> None:
    session = await session_for("2025-11-25", dispatcher(page_size=1))
    first = (await request(session, "resources/templates/list")).last["result"]
    assert first["resourceTemplates"] == [
        {
            "uriTemplate": "notes://{name}",
            "name": "note",
            "description": "A note by name.",
            "mimeType": "text/markdown",
        }
    ]
    second = await request(session, "resources/templates/list", {"cursor": first["nextCursor"]})
    assert second.last["result"] == {
        "resourceTemplates": [{"uriTemplate": "items://{id}", "name": "item"}]
    }


async def test_read() -> None:
    session = await session_for("2025-11-25", dispatcher())
    sink = await request(session, "resources/read", {"uri": "notes://to%20do"})
    assert sink.last["result"] == {
        "contents": [{"uri": "notes://to%20do", "mimeType": "text/markdown", "text": "note to do"}]
    }
    sink = await request(session, "resources/read", {"uri": "x://b"})
    assert sink.last["result"] == {
        "contents": [{"uri": "x://b", "mimeType": "application/x-bin", "blob": "AAE="}]
    }
    for params in ({}, {"uri": ""}, {"uri": 5}):
        sink = await request(session, "resources/read", params)
        assert sink.last["error"] == {
            "code": -32602,
            "message": "resources/read needs a string uri",
        }


async def test_read_unknown_uri_on_the_handshake() -> None:
    session = await session_for("2025-11-25", dispatcher())
    sink = await request(session, "resources/read", {"uri": "x://nope"})
    assert sink.last["error"] == {
        "code": -32002,
        "message": "resource not found: 'x://nope'",
        "data": {"uri": "x://nope"},
    }


async def test_read_unknown_uri_on_2026() -> None:
    session = McpSession(dispatcher(), modern=True)
    sink = await request(session, "resources/read", modern_params(uri="x://nope"))
    assert sink.last["error"] == {
        "code": -32602,
        "message": "resource not found: 'x://nope'",
        "data": {"uri": "x://nope"},
    }


async def test_not_found_echoes_a_bounded_uri_on_every_revision() -> None:
    # Regression test (fixed; it was: protocol/methods.py:101, _not_found): the 2026 path rebuilds the error with
    # ``data={"uri": exc.uri}``, the whole URI, where ResourceNotFound bounds it to 2000
    # characters (errors.py:235; "no error a client can cause echoes its input at length").
    # methods.py:143 (subscriptions/listen, unknown URI) has the same unbounded echo.
    uri = "x://" + "a" * 5000
    handshake = await session_for("2025-11-25", dispatcher())
    old = (await request(handshake, "resources/read", {"uri": uri})).last["error"]
    assert old["data"] == {"uri": uri[:2000]}
    new = await request(
        McpSession(dispatcher(), modern=True), "resources/read", modern_params(uri=uri)
    )
    assert new.last["error"]["data"] == {"uri": uri[:2000]}


async def test_modern_read_is_cacheable() -> None:
    session = McpSession(dispatcher(), modern=True)
    result = (await request(session, "resources/read", modern_params(uri="x://c"))).last["result"]
    assert result["contents"] == [
        {"uri": "x://c", "mimeType": "application/json", "text": '{"c":[1,2]}'}
    ]
    assert result["ttlMs"] == 0 and result["cacheScope"] == "private"
    assert result["resultType"] == "complete"
    listed = (await request(session, "resources/list", modern_params())).last["result"]
    assert listed["ttlMs"] == 0 and listed["cacheScope"] == "private"
    handshake = await session_for("2025-11-25", dispatcher())
    old = (await request(handshake, "resources/read", {"uri": "x://c"})).last["result"]
    assert set(old) == {"contents"}


# -- subscriptions ------------------------------------------------------------------------------


async def test_subscribe_and_unsubscribe() -> None:
    session = await session_for("2025-11-25", dispatcher(max_subscriptions=2))
    ok = await request(session, "resources/subscribe", {"uri": "x://a"})
    assert ok.last["result"] == {}
    await request(session, "resources/subscribe", {"uri": "x://a"})  # again: held once
    await request(session, "resources/subscribe", {"uri": "notes://n1"})  # a template's URI
    assert session.state.subscriptions == ["x://a", "notes://n1"]

    full = await request(session, "resources/subscribe", {"uri": "x://b"})
    assert full.last["error"] == {
        "code": -32602,
        "message": "at most 2 resource subscriptions per session",
    }
    again = await request(session, "resources/subscribe", {"uri": "x://a"})
    assert again.last["result"] == {}  # already held: not a new one, so not over the bound

    unknown = await request(session, "resources/subscribe", {"uri": "x://nope"})
    assert unknown.last["error"]["code"] == -32002
    assert unknown.last["error"]["data"] == {"uri": "x://nope"}
    bad = await request(session, "resources/subscribe", {"uri": 3})
    assert bad.last["error"]["code"] == -32602

    gone = await request(session, "resources/unsubscribe", {"uri": "x://a"})
    assert gone.last["result"] == {}
    assert session.state.subscriptions == ["notes://n1"]
    never = await request(session, "resources/unsubscribe", {"uri": "x://never"})
    assert never.last["result"] == {}
    room = await request(session, "resources/subscribe", {"uri": "x://b"})
    assert room.last["result"] == {}
    assert session.state.subscriptions == ["notes://n1", "x://b"]


@pytest.mark.parametrize("method", ["resources/subscribe", "resources/unsubscribe"])
async def test_subscribe_is_not_a_2026_method(method: str) -> None:
    session = McpSession(dispatcher(), modern=True)
    sink = await request(session, method, modern_params(uri="x://a"))
    assert sink.last["error"]["code"] == -32601
    assert session.state.subscriptions == []


def test_capabilities_declare_subscribe() -> None:
    assert mcp.server_capabilities("2025-11-25")["resources"] == {
        "subscribe": True,
        "listChanged": True,
    }
