"""Prompts (prompts/list, prompts/get) and completions (completion/complete)."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any, Literal

import pydantic
import pytest

from datapulse.errors import ToolError
from datapulse.features.catalog import Catalog
from datapulse.features.completions import MAX_VALUES
from datapulse.features.prompts import PromptMessage, messages_of
from datapulse.protocol.dispatch import Dispatcher
from datapulse.protocol.session import McpSession
from tests.unit.test_dispatch import request
from tests.unit.test_typed_tools import session_for


class Color(Enum):
    RED = "red"
    ROSE = "rose"
    BLUE = "blue"


async def review(
    code: Annotated[str, pydantic.Field(description="The code to review")],
    language: Literal["python", "perl", "go"] = "python",
    rounds: int = 1,
) -> str:
    """Review some code."""
    return f"review {code} in {language} x{rounds}"


async def paint(color: Color) -> list[Any]:
    return [
        f"paint it {color.value}",
        PromptMessage("assistant", "sure"),
        PromptMessage("user", {"type": "image", "data": "AA==", "mimeType": "image/png"}),
        {"role": "assistant", "content": {"type": "text", "text": "done"}},
    ]


def plain() -> PromptMessage:
    """A sync prompt returning one message."""
    return PromptMessage("assistant", "hello")


async def bad_item() -> list[Any]:
    return ["ok", 42]


async def note(name: str) -> str:
    return f"note {name}"


async def issue(owner: str, repo: str, number: int) -> str:
    return f"{owner}/{repo}#{number}"


def catalog() -> Catalog:
    cat = Catalog()
    cat.prompts.add(review, title="Code review")
    cat.prompts.add(paint)
    cat.prompts.add(plain)
    cat.prompts.add(bad_item)
    cat.resources.add("notes://{name}", note)
    cat.resources.add("gh://{owner}/{repo}/issues/{number}", issue)
    return cat


def dispatcher(cat: Catalog | None = None, **kwargs: Any) -> Dispatcher:
    return Dispatcher(cat if cat is not None else catalog(), **kwargs)


async def session(cat: Catalog | None = None, version: str = "2025-11-25") -> McpSession:
    return await session_for(version, dispatcher(cat))


async def get(s: McpSession, name: Any, arguments: Any = None) -> dict[str, Any]:
    params: dict[str, Any] = {"name": name}
    if arguments is not None:
        params["arguments"] = arguments
    return (await request(s, "prompts/get", params)).last


# -- prompts/list -------------------------------------------------------------------------------


async def test_prompts_list() -> None:
    result = (await request(await session(), "prompts/list")).last["result"]
    assert result == {
        "prompts": [
            {
                "name": "review",
                "title": "Code review",
                "description": "Review some code.",
                "arguments": [
                    {"name": "code", "description": "The code to review", "required": True},
                    {"name": "language", "required": False},
                    {"name": "rounds", "required": False},
                ],
            },
            {"name": "paint", "arguments": [{"name": "color", "required": True}]},
            {
                "name": "plain",
                "description": "A sync prompt returning one message.",
                "arguments": [],
            },
            {"name": "bad_item", "arguments": []},
        ]
    }


async def test_prompts_list_title_is_not_on_old_revisions() -> None:
    result = (await request(await session(version="2025-03-26"), "prompts/list")).last["result"]
    assert "title" not in result["prompts"][0]
    assert result["prompts"][0]["description"] == "Review some code."


async def test_prompts_list_pages() -> None:
    s = await session_for("2025-11-25", dispatcher(page_size=3))
    first = (await request(s, "prompts/list")).last["result"]
    assert [p["name"] for p in first["prompts"]] == ["review", "paint", "plain"]
    second = (await request(s, "prompts/list", {"cursor": first["nextCursor"]})).last["result"]
    assert [p["name"] for p in second["prompts"]] == ["bad_item"]
    assert "nextCursor" not in second


# -- prompts/get --------------------------------------------------------------------------------


async def test_get_converts_arguments_and_applies_defaults() -> None:
    s = await session()
    reply = await get(s, "review", {"code": "x = 1", "rounds": "3"})
    assert reply["result"] == {
        "description": "Review some code.",
        "messages": [
            {"role": "user", "content": {"type": "text", "text": "review x = 1 in python x3"}}
        ],
    }
    reply = await get(s, "review", {"code": "y", "language": "go"})
    assert reply["result"]["messages"][0]["content"]["text"] == "review y in go x1"


async def test_get_every_message_shape() -> None:
    reply = await get(await session(), "paint", {"color": "rose"})
    assert reply["result"] == {
        "messages": [
            {"role": "user", "content": {"type": "text", "text": "paint it rose"}},
            {"role": "assistant", "content": {"type": "text", "text": "sure"}},
            {
                "role": "user",
                "content": {"type": "image", "data": "AA==", "mimeType": "image/png"},
            },
            {"role": "assistant", "content": {"type": "text", "text": "done"}},
        ]
    }


async def test_sync_prompt_with_no_arguments() -> None:
    s = await session()
    for arguments in (None, {}):
        reply = await get(s, "plain", arguments)
        assert reply["result"] == {
            "description": "A sync prompt returning one message.",
            "messages": [{"role": "assistant", "content": {"type": "text", "text": "hello"}}],
        }


async def test_missing_required_argument_is_named() -> None:
    reply = await get(await session(), "review", {"language": "go"})
    assert reply["error"] == {
        "code": -32602,
        "message": "invalid arguments for prompt review: 'code': Field required",
    }


async def test_argument_outside_its_type_is_named() -> None:
    reply = await get(await session(), "review", {"code": "c", "language": "cobol"})
    assert reply["error"]["code"] == -32602
    assert reply["error"]["message"].startswith(
        "invalid arguments for prompt review: 'language': Input should be 'python', 'perl' or"
    )
    reply = await get(await session(), "paint", {"color": "green"})
    assert reply["error"]["code"] == -32602
    assert "'color'" in reply["error"]["message"]


@pytest.mark.parametrize("arguments", [{"code": 5}, {"code": "c", "rounds": 2}, ["code"], "code"])
async def test_arguments_must_be_strings(arguments: Any) -> None:
    reply = await get(await session(), "review", arguments)
    assert reply["error"] == {
        "code": -32602,
        "message": "arguments for prompt review must map names to strings",
    }


@pytest.mark.parametrize("name", ["nope", 5, None])
async def test_unknown_prompt(name: Any) -> None:
    reply = await get(await session(), name, {})
    assert reply["error"] == {"code": -32602, "message": f"unknown prompt: {str(name)!r}"}


async def test_bad_message_item_is_an_error() -> None:
    reply = await get(await session(), "bad_item")
    assert reply["error"] == {
        "code": -32603,
        "message": "prompt bad_item returned int, not a message",
    }


def test_messages_of() -> None:
    text = {"role": "user", "content": {"type": "text", "text": "a"}}
    assert messages_of("p", "a") == [text]
    assert messages_of("p", ("a", "a")) == [text, text]
    assert messages_of("p", []) == []
    assert messages_of("p", PromptMessage("assistant", "b")) == [
        {"role": "assistant", "content": {"type": "text", "text": "b"}}
    ]
    for bad in (
        None,
        {"role": "system", "content": {"type": "text", "text": "a"}},
        {"role": "user", "content": "not an object"},
        [b"bytes"],
    ):
        with pytest.raises(ToolError, match=r"^prompt p returned \w+, not a message$"):
            messages_of("p", bad)


def test_prompt_registry_add_remove() -> None:
    cat = Catalog()
    kinds: list[str] = []
    cat.on_change.append(kinds.append)
    cat.prompts.add(review)
    with pytest.raises(ValueError, match="prompt 'review' is already registered"):
        cat.prompts.add(review)
    cat.prompts.add(review, name="review2")
    assert [p.name for p in cat.prompts] == ["review", "review2"]
    cat.prompts.remove("review")
    assert "review" not in cat.prompts and len(cat.prompts) == 1
    assert kinds == ["prompts", "prompts", "prompts"]


# -- completion/complete ------------------------------------------------------------------------


async def complete(s: McpSession, ref: Any, name: Any, value: Any, **extra: Any) -> dict[str, Any]:
    params = {"ref": ref, "argument": {"name": name, "value": value}, **extra}
    return (await request(s, "completion/complete", params)).last


PROMPT = {"type": "ref/prompt", "name": "review"}
NOTES = {"type": "ref/resource", "uri": "notes://{name}"}
ISSUES = {"type": "ref/resource", "uri": "gh://{owner}/{repo}/issues/{number}"}


async def test_literal_argument_completed_by_prefix() -> None:
    s = await session()
    reply = await complete(s, PROMPT, "language", "p")
    assert reply["result"] == {
        "completion": {"values": ["python", "perl"], "total": 2, "hasMore": False}
    }
    reply = await complete(s, PROMPT, "language", "")
    assert reply["result"]["completion"]["values"] == ["python", "perl", "go"]
    reply = await complete(s, PROMPT, "language", "x")
    assert reply["result"]["completion"] == {"values": [], "total": 0, "hasMore": False}


async def test_enum_argument_completed_by_prefix() -> None:
    reply = await complete(await session(), {"type": "ref/prompt", "name": "paint"}, "color", "r")
    assert reply["result"]["completion"] == {
        "values": ["red", "rose"],
        "total": 2,
        "hasMore": False,
    }


async def optional_choice(
    language: Literal["python", "perl"] | None = None, color: Color | None = None
) -> str:
    return f"{language} {color}"


async def test_optional_enumerated_argument_is_completed_too() -> None:
    # Regression test (fixed; it was: features/completions.py, _choices): only a bare {"enum": ...} or {"$ref": ...} is
    # read, so an optional argument (``Literal[...] | None = None``, ``Color | None``), whose
    # schema is {"anyOf": [{"enum": [...]}, {"type": "null"}]}, gets no suggestions, though its
    # type has a fixed set of values (the module docstring's promise).
    cat = catalog()
    cat.prompts.add(optional_choice)
    s = await session(cat)
    ref = {"type": "ref/prompt", "name": "optional_choice"}
    reply = await complete(s, ref, "language", "p")
    assert reply["result"]["completion"]["values"] == ["python", "perl"]
    reply = await complete(s, ref, "color", "r")
    assert reply["result"]["completion"]["values"] == ["red", "rose"]


async def test_free_argument_without_completer_gets_nothing() -> None:
    s = await session()
    assert (await complete(s, PROMPT, "code", "x"))["result"]["completion"]["values"] == []
    assert (await complete(s, NOTES, "name", "x"))["result"]["completion"]["values"] == []


async def test_prompt_argument_completer() -> None:
    cat = catalog()
    seen: list[str] = []

    async def codes(value: str) -> list[str]:
        seen.append(value)
        return [c for c in ("print()", "pass", "import") if c.startswith(value)]

    cat.completions.add("prompt", "review", "code", codes)
    reply = await complete(await session(cat), PROMPT, "code", "p")
    assert reply["result"]["completion"] == {
        "values": ["print()", "pass"],
        "total": 2,
        "hasMore": False,
    }
    assert seen == ["p"]
    # A completer replaces the choices of an enumerated argument.
    cat.completions.add("prompt", "review", "language", lambda value: ["only-mine"])
    reply = await complete(await session(cat), PROMPT, "language", "p")
    assert reply["result"]["completion"]["values"] == ["only-mine"]


async def test_template_variable_completer_gets_the_other_arguments() -> None:
    cat = catalog()
    calls: list[tuple[str, dict[str, str]]] = []

    def repos(value: str, arguments: dict[str, str]) -> list[str]:  # sync: a worker thread
        calls.append((value, arguments))
        owned = {"me": ["datapulse", "dotfiles"], "you": ["docs"]}
        return [r for r in owned.get(arguments.get("owner", ""), []) if r.startswith(value)]

    cat.completions.add("resource", "gh://{owner}/{repo}/issues/{number}", "repo", repos)
    s = await session(cat)
    context = {"arguments": {"owner": "me", "number": 3, "junk": None}}
    reply = await complete(s, ISSUES, "repo", "d", context=context)
    assert reply["result"]["completion"]["values"] == ["datapulse", "dotfiles"]
    reply = await complete(s, ISSUES, "repo", "d")  # no context: no other arguments
    assert reply["result"]["completion"]["values"] == []
    reply = await complete(s, ISSUES, "repo", "d", context={"arguments": "not an object"})
    assert reply["result"]["completion"]["values"] == []
    # Only string values are passed on (MCP's context.arguments maps names to strings).
    assert calls == [("d", {"owner": "me"}), ("d", {}), ("d", {})]


async def test_completer_without_arguments_parameter_is_called_with_the_value_only() -> None:
    cat = catalog()
    calls: list[tuple[Any, ...]] = []

    async def names(*args: Any, **kwargs: Any) -> list[str]:
        calls.append((args, kwargs))
        return []

    cat.completions.add("resource", "notes://{name}", "name", names)
    await complete(await session(cat), NOTES, "name", "t", context={"arguments": {"a": "b"}})
    assert calls == [(("t",), {})]


@pytest.mark.parametrize(
    ("count", "has_more"), [(MAX_VALUES - 1, False), (MAX_VALUES, False), (150, True)]
)
async def test_values_capped_at_100(count: int, has_more: bool) -> None:
    cat = catalog()
    everything = [f"v{i:03}" for i in range(count)]
    cat.completions.add("resource", "notes://{name}", "name", lambda value: everything)
    reply = await complete(await session(cat), NOTES, "name", "")
    completion = reply["result"]["completion"]
    assert completion["values"] == everything[:MAX_VALUES]
    assert completion["total"] == count
    assert completion["hasMore"] is has_more


async def test_completer_returning_non_strings_is_an_error() -> None:
    cat = catalog()
    cat.completions.add("resource", "notes://{name}", "name", lambda value: [1, 2])
    reply = await complete(await session(cat), NOTES, "name", "")
    assert reply["error"] == {
        "code": -32603,
        "message": "a completer must return a list of strings",
    }


def test_duplicate_completer_refused() -> None:
    cat = catalog()
    cat.completions.add("prompt", "review", "code", lambda value: [])
    with pytest.raises(ValueError, match="a completer for prompt 'review' argument 'code' exists"):
        cat.completions.add("prompt", "review", "code", lambda value: [])
    assert len(cat.completions) == 1


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, "completion/complete needs ref and argument objects"),
        (
            {"ref": "review", "argument": {"name": "code", "value": ""}},
            "completion/complete needs ref and argument objects",
        ),
        (
            {"ref": PROMPT, "argument": {"name": "code"}},
            "argument needs a string name and a string value",
        ),
        (
            {"ref": PROMPT, "argument": {"name": 1, "value": ""}},
            "argument needs a string name and a string value",
        ),
        (
            {"ref": {"type": "ref/tool", "name": "x"}, "argument": {"name": "a", "value": ""}},
            "ref.type must be 'ref/prompt' or 'ref/resource'",
        ),
        (
            {"ref": {"type": "ref/prompt", "name": "nope"}, "argument": {"name": "a", "value": ""}},
            "unknown prompt: 'nope'",
        ),
        (
            {"ref": PROMPT, "argument": {"name": "nope", "value": ""}},
            "prompt 'review' has no argument 'nope'",
        ),
        (
            {
                "ref": {"type": "ref/resource", "uri": "notes://x"},
                "argument": {"name": "name", "value": ""},
            },
            "no resource template 'notes://x'",
        ),
        (
            {"ref": {"type": "ref/resource"}, "argument": {"name": "name", "value": ""}},
            "no resource template 'None'",
        ),
        (
            {"ref": NOTES, "argument": {"name": "title", "value": ""}},
            "resource 'notes://{name}' has no argument 'title'",
        ),
    ],
)
async def test_bad_completion_requests(params: dict[str, Any], message: str) -> None:
    reply = (await request(await session(), "completion/complete", params)).last
    assert reply["error"] == {"code": -32602, "message": message}
