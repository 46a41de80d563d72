"""FunctionSignature: a typed function's input and output schemas, validation and call."""

from __future__ import annotations

import threading
import time
import warnings
from dataclasses import dataclass
from typing import Annotated, Any, Optional

import pydantic
import pytest
import trio

from datapulse.core.mcp import ToolOutput
from datapulse.errors import InvalidParams, ToolError
from datapulse.tools.registry import ToolContext, make_tool
from datapulse.tools.signature import FunctionSignature

# Annotations are strings here (``from __future__ import annotations``): get_type_hints resolves
# them in the module's globals, so every type a signature names lives at module level.


class Point(pydantic.BaseModel):
    x: int
    y: int = 0


class Shape(pydantic.BaseModel):
    name: str
    corners: list[Point]


@dataclass
class Pair:
    left: int
    right: str


def sig(fn: Any) -> FunctionSignature:
    return FunctionSignature.of(fn, inject=(ToolContext,))


POINT_DEF = {
    "properties": {
        "x": {"title": "X", "type": "integer"},
        "y": {"default": 0, "title": "Y", "type": "integer"},
    },
    "required": ["x"],
    "title": "Point",
    "type": "object",
}


# -- input schema -------------------------------------------------------------------------------


def test_defaults_optional_and_lists() -> None:
    async def f(a: int, b: str = "x", c: int | None = None, d: list[int] | None = None) -> None:
        return None

    s = sig(f)
    assert s.name == "f"
    assert s.parameters == ("a", "b", "c", "d")
    assert s.input_schema == {
        "properties": {
            "a": {"title": "A", "type": "integer"},
            "b": {"default": "x", "title": "B", "type": "string"},
            "c": {"anyOf": [{"type": "integer"}, {"type": "null"}], "default": None, "title": "C"},
            "d": {
                "anyOf": [{"items": {"type": "integer"}, "type": "array"}, {"type": "null"}],
                "default": None,
                "title": "D",
            },
        },
        "required": ["a"],
        "type": "object",
    }


def test_no_parameters_still_has_properties() -> None:
    async def f() -> None:
        return None

    assert sig(f).input_schema == {"properties": {}, "type": "object"}


def test_nested_models_use_defs() -> None:
    async def f(shape: Shape, at: Point | None = None) -> None:
        return None

    schema = sig(f).input_schema
    assert schema["properties"] == {
        "shape": {"$ref": "#/$defs/Shape"},
        "at": {"anyOf": [{"$ref": "#/$defs/Point"}, {"type": "null"}], "default": None},
    }
    assert schema["required"] == ["shape"]
    assert schema["$defs"]["Point"] == POINT_DEF
    assert schema["$defs"]["Shape"]["properties"]["corners"] == {
        "items": {"$ref": "#/$defs/Point"},
        "title": "Corners",
        "type": "array",
    }
    assert "title" not in schema  # the generated model's name is not shown


def test_annotated_field_description() -> None:
    async def f(
        q: Annotated[str, pydantic.Field(description="what to look for")],
        n: Annotated[int, pydantic.Field(description="how many", ge=1)] = 3,
    ) -> None:
        return None

    props = sig(f).input_schema["properties"]
    assert props["q"] == {"description": "what to look for", "title": "Q", "type": "string"}
    assert props["n"] == {
        "default": 3,
        "description": "how many",
        "minimum": 1,
        "title": "N",
        "type": "integer",
    }


@pytest.mark.parametrize("style", ["plain", "union", "optional"])
def test_tool_context_is_injected_not_a_parameter(style: str) -> None:
    async def plain(a: int, ctx: ToolContext) -> None:
        return None

    async def union(a: int, ctx: ToolContext | None = None) -> None:
        return None

    async def optional(a: int, ctx: Optional[ToolContext] = None) -> None:  # noqa: UP045
        return None

    s = sig({"plain": plain, "union": union, "optional": optional}[style])
    assert s.injected == {"ctx": ToolContext}
    assert s.parameters == ("a",)
    assert list(s.input_schema["properties"]) == ["a"]
    assert s.input_schema["required"] == ["a"]


def test_injected_parameter_may_start_with_underscore() -> None:
    async def f(a: int, _ctx: ToolContext) -> None:
        return None

    assert sig(f).injected == {"_ctx": ToolContext}


async def event_param(done: trio.Event) -> None:
    return None


def test_parameter_without_json_schema_is_a_type_error() -> None:
    # Regression test (fixed; it was: signature.py, FunctionSignature.of: ``model.model_json_schema()`` is not guarded):
    # a parameter whose type has no JSON Schema escapes as pydantic's PydanticInvalidForJsonSchema
    # (a RuntimeError that names neither the function nor the parameter), where a return
    # annotation without one is a TypeError naming the function (``_output_of``). It is the same
    # for a prompt or resource reader that takes a ToolContext (nothing is injected there).
    with pytest.raises(TypeError, match=r"^event_param: "):
        sig(event_param)


# -- output schema ------------------------------------------------------------------------------


def wrapped(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": {"result": schema}, "required": ["result"]}


async def ret_int() -> int:
    return 1


async def ret_str() -> str:
    return ""


async def ret_list() -> list[int]:
    return []


async def ret_optional_point() -> Point | None:
    return None


async def ret_dict() -> dict[str, int]:
    return {}


async def ret_model() -> Point:
    return Point(x=1)


async def ret_dataclass() -> Pair:
    return Pair(1, "r")


async def ret_none() -> None:
    return None


async def ret_any() -> Any:
    return None


async def ret_tool_output() -> ToolOutput:
    return ToolOutput(content=[])


async def ret_unannotated():  # type: ignore[no-untyped-def]
    return None


@pytest.mark.parametrize(
    ("fn", "schema", "wrap"),
    [
        (ret_int, wrapped({"type": "integer"}), True),
        (ret_str, wrapped({"type": "string"}), True),
        (ret_list, wrapped({"items": {"type": "integer"}, "type": "array"}), True),
        (ret_dict, {"additionalProperties": {"type": "integer"}, "type": "object"}, False),
        (
            ret_model,
            {k: v for k, v in POINT_DEF.items() if k != "title"},
            False,
        ),
        (
            ret_dataclass,
            {
                "properties": {
                    "left": {"title": "Left", "type": "integer"},
                    "right": {"title": "Right", "type": "string"},
                },
                "required": ["left", "right"],
                "type": "object",
            },
            False,
        ),
        (ret_none, None, False),
        (ret_any, None, False),
        (ret_tool_output, None, False),
        (ret_unannotated, None, False),
    ],
    ids=lambda v: getattr(v, "__name__", None),
)
def test_output_schema_wrapping(fn: Any, schema: dict[str, Any] | None, wrap: bool) -> None:
    s = sig(fn)
    assert s.output_schema == schema
    assert s.wrap_output is wrap
    assert (s.output_adapter is None) is (schema is None)


def test_wrapped_output_keeps_defs_at_the_root() -> None:
    async def f() -> list[Point]:
        return []

    s = sig(f)
    assert s.wrap_output is True
    assert s.output_schema == {
        "type": "object",
        "properties": {"result": {"items": {"$ref": "#/$defs/Point"}, "type": "array"}},
        "required": ["result"],
        "$defs": {"Point": POINT_DEF},
    }


def test_optional_model_is_wrapped() -> None:
    s = sig(ret_optional_point)
    assert s.wrap_output is True
    assert s.output_schema is not None
    assert s.output_schema["required"] == ["result"]
    assert s.output_schema["properties"]["result"] == {
        "anyOf": [{"$ref": "#/$defs/Point"}, {"type": "null"}]
    }


# -- bind ---------------------------------------------------------------------------------------


async def add(a: int, b: int = 1) -> int:
    return a + b


def test_bind_converts_fills_defaults_and_ignores_extras() -> None:
    s = sig(add)
    assert s.bind({"a": 2}, "arguments for add") == {"a": 2, "b": 1}
    assert s.bind({"a": 2, "b": 5, "stray": True}, "arguments for add") == {"a": 2, "b": 5}


def test_bind_builds_nested_models() -> None:
    async def f(shape: Shape) -> None:
        return None

    kwargs = sig(f).bind({"shape": {"name": "tri", "corners": [{"x": 1}, {"x": 2, "y": 3}]}}, "w")
    assert kwargs == {"shape": Shape(name="tri", corners=[Point(x=1), Point(x=2, y=3)])}
    assert isinstance(kwargs["shape"].corners[0], Point)


def test_bind_names_every_bad_argument() -> None:
    with pytest.raises(InvalidParams) as info:
        sig(add).bind({"b": "many"}, "arguments for add")
    assert str(info.value) == (
        "invalid arguments for add: 'a': Field required;"
        " 'b': Input should be a valid integer, unable to parse string as an integer"
    )
    assert info.value.jsonrpc_code == -32602


def test_bind_names_nested_locations() -> None:
    async def f(shape: Shape) -> None:
        return None

    with pytest.raises(InvalidParams) as info:
        sig(f).bind({"shape": {"name": "t", "corners": [{"x": 1}, {"y": 2}]}}, "arguments for f")
    assert str(info.value) == "invalid arguments for f: 'shape.corners.1.x': Field required"


async def seven(a: int, b: int, c: int, d: int, e: int, f: int, g: int) -> None:
    return None


def test_bind_names_at_most_five_problems() -> None:
    with pytest.raises(InvalidParams) as info:
        sig(seven).bind({}, "arguments for seven")
    message = str(info.value)
    assert message == (
        "invalid arguments for seven: 'a': Field required; 'b': Field required;"
        " 'c': Field required; 'd': Field required; 'e': Field required; and 2 more"
    )
    assert "'f'" not in message and "'g'" not in message


def test_bind_exactly_five_problems_has_no_more() -> None:
    with pytest.raises(InvalidParams) as info:
        sig(seven).bind({"f": 1, "g": 2}, "x")
    assert "more" not in str(info.value)
    assert str(info.value).count("Field required") == 5


# -- to_json ------------------------------------------------------------------------------------


def test_to_json_wraps_and_dumps() -> None:
    assert sig(ret_int).to_json(3) == {"result": 3}
    assert sig(ret_str).to_json("hi") == {"result": "hi"}
    assert sig(ret_list).to_json([1, 2]) == {"result": [1, 2]}
    assert sig(ret_model).to_json(Point(x=4)) == {"x": 4, "y": 0}
    assert sig(ret_model).to_json({"x": 4, "y": 5}) == {"x": 4, "y": 5}
    assert sig(ret_dataclass).to_json(Pair(1, "r")) == {"left": 1, "right": "r"}
    assert sig(ret_dict).to_json({"k": 1}) == {"k": 1}


def test_to_json_without_output_schema_passes_value_through() -> None:
    marker = object()
    assert sig(ret_any).to_json(marker) is marker
    assert sig(ret_none).to_json(marker) is marker


def test_to_json_refuses_output_that_breaks_the_annotation() -> None:
    with pytest.raises(ToolError) as info:
        sig(ret_int).to_json("three")
    assert str(info.value) == (
        "ret_int returned output that does not match its outputSchema: '(root)': Input should"
        " be a valid integer, unable to parse string as an integer"
    )
    with pytest.raises(ToolError, match=r"^ret_model returned output .*'x': Field required$"):
        sig(ret_model).to_json({"y": 1})
    with pytest.raises(ToolError, match="'1': Input should be a valid integer"):
        sig(ret_list).to_json([1, "two"])
    with pytest.raises(ToolError, match="ret_dataclass returned output"):
        sig(ret_dataclass).to_json({"left": "no", "right": "r"})


# -- call ---------------------------------------------------------------------------------------


async def test_async_function_is_awaited_in_the_loop_thread() -> None:
    seen: list[int] = []

    async def f(n: int) -> int:
        seen.append(threading.get_ident())
        return n * 2

    s = sig(f)
    assert s.is_async is True
    assert await s.call({"n": 21}) == 42
    assert seen == [threading.get_ident()]


async def test_sync_function_runs_in_a_worker_thread() -> None:
    threads: list[int] = []

    def blocking(n: int) -> int:
        threads.append(threading.get_ident())
        time.sleep(0.2)
        return n * 2

    s = sig(blocking)
    assert s.is_async is False
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await trio.sleep(0.01)
            ticks += 1

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        result = await s.call({"n": 21})
        nursery.cancel_scope.cancel()
    assert result == 42
    assert threads != [threading.get_ident()]
    # Had the sleep blocked the loop, the ticker would not have run once before the cancel.
    assert ticks >= 5


# -- refused at registration --------------------------------------------------------------------


async def star_args(*values: int) -> None:
    return None


async def star_kwargs(**values: int) -> None:
    return None


async def positional_only(a: int, /) -> None:
    return None


async def underscore(_secret: int) -> None:
    return None


async def bad_return() -> trio.Event:
    return trio.Event()


@pytest.mark.parametrize(
    ("fn", "message"),
    [
        (star_args, "star_args: *args and **kwargs cannot become a schema"),
        (star_kwargs, "star_kwargs: *args and **kwargs cannot become a schema"),
        (positional_only, "positional_only: positional-only parameters cannot be named"),
        (underscore, "underscore: parameter '_secret' starts with '_'"),
        (bad_return, "bad_return: its return annotation"),
    ],
    ids=lambda v: getattr(v, "__name__", None),
)
def test_refused_signatures(fn: Any, message: str) -> None:
    with pytest.raises(TypeError) as info:
        sig(fn)
    assert str(info.value).startswith(message)


def test_unresolvable_annotation_is_refused() -> None:
    async def f(a):  # type: ignore[no-untyped-def]
        return a

    f.__annotations__["a"] = "NoSuchType"  # what a typo or a missing import leaves behind
    with pytest.raises(TypeError, match=r"^f: cannot read its type annotations: .*NoSuchType"):
        sig(f)


def test_sync_tool_cannot_take_a_context() -> None:
    def f(a: int, ctx: ToolContext) -> int:
        return a

    with pytest.raises(TypeError) as info:
        make_tool(f)
    assert str(info.value) == (
        "tool 'f': a sync function runs in a worker thread and cannot use a ToolContext;"
        " make it async"
    )

    def g(a: int) -> int:  # without a context a sync function is fine
        return a

    assert make_tool(g).signature is not None


def test_parameters_may_have_the_names_pydantic_models_own() -> None:
    """Arguments live under private field names with the parameter as alias: a tool may take
    ``schema``, ``json`` or ``model_config`` without pydantic warning or failing."""

    def fn(schema: str, json: int, model_config: bool = False) -> None: ...

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        signature = FunctionSignature.of(fn)
    assert list(signature.input_schema["properties"]) == ["schema", "json", "model_config"]
    assert signature.input_schema["required"] == ["schema", "json"]
    bound = signature.bind({"schema": "s", "json": "3"}, "arguments for fn")
    assert bound == {"schema": "s", "json": 3, "model_config": False}
