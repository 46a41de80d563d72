"""A typed Python function as an MCP tool, prompt or resource template: its schema and its call.

``FunctionSignature.of(fn)`` reads ``fn``'s parameters and return annotation once, at
registration, and builds a pydantic model of the parameters (pydantic is what the official SDK
and FastMCP use to the same end: JSON Schema out of annotations, and validation that converts
JSON into the annotated types, nested models included). At call time ``bind`` validates one
``arguments`` object against that model and returns the keyword arguments to call ``fn`` with;
every problem is reported by argument name, in one ``InvalidParams``.

Parameters annotated with an *injected* type (``ToolContext`` for tools) are not part of the
schema: the caller supplies them. The return annotation decides the output schema: an object
type (a pydantic model, a dataclass, a TypedDict (from ``typing_extensions`` before Python
3.12, as pydantic requires), ``dict[str, ...]``) is the schema itself;
anything else (``int``, ``str``, ``list[...]``) is wrapped as ``{"result": ...}``, because MCP
requires an outputSchema of type object (the official SDK wraps the same way). No annotation,
``None`` and ``Any`` declare no output schema.
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, is_dataclass
from typing import Any, get_type_hints

import pydantic
import trio

from datapulse.core.mcp import ToolOutput
from datapulse.errors import InvalidParams, ToolError

WRAPPED_KEY = "result"
"""The single property a non-object return value is wrapped in (``{"result": 3}``)."""

_FIELD_PREFIX = "arg_"
_MAX_PROBLEMS = 5  # named in one error; a model that sent 50 bad fields gets the first five


class _Arguments(pydantic.BaseModel):
    """Base of every generated argument model: unknown arguments are ignored (as the official
    SDK does: a model adding a stray field should not fail a call that has what it needs)."""

    model_config = pydantic.ConfigDict(extra="ignore", arbitrary_types_allowed=True)


@dataclass(frozen=True)
class FunctionSignature:
    """What registration learned about a function: its schema, its injected parameters, and
    how to turn a JSON ``arguments`` object into the call."""

    name: str
    fn: Callable[..., Any]
    model: type[pydantic.BaseModel]
    input_schema: dict[str, Any]
    injected: Mapping[str, type]
    """Parameter name -> injected type (filled in by the caller, not by the client)."""
    parameters: tuple[str, ...]
    """The schema's parameters in signature order."""
    output_schema: dict[str, Any] | None
    wrap_output: bool
    output_adapter: pydantic.TypeAdapter[Any] | None
    is_async: bool

    @classmethod
    def of(cls, fn: Callable[..., Any], *, inject: tuple[type, ...] = ()) -> FunctionSignature:
        name = getattr(fn, "__name__", type(fn).__name__)
        try:
            hints = get_type_hints(fn, include_extras=True)
        except Exception as exc:  # a forward reference that does not resolve, say
            raise TypeError(f"{name}: cannot read its type annotations: {exc}") from exc
        fields: dict[str, Any] = {}
        injected: dict[str, type] = {}
        for param in inspect.signature(fn).parameters.values():
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                raise TypeError(f"{name}: *args and **kwargs cannot become a schema")
            if param.kind is param.POSITIONAL_ONLY:
                raise TypeError(f"{name}: positional-only parameters cannot be named by a client")
            annotation = hints.get(param.name, Any)
            kind = _injected_kind(annotation, inject)
            if kind is not None:
                injected[param.name] = kind
                continue
            if param.name.startswith("_"):
                raise TypeError(f"{name}: parameter {param.name!r} starts with '_'")
            default = ... if param.default is param.empty else param.default
            # Under a private field name with the parameter's name as its alias: a parameter
            # may be called ``schema``, ``json`` or ``model_config``, which BaseModel owns.
            fields[_FIELD_PREFIX + param.name] = (
                annotation,
                pydantic.Field(default, alias=param.name),
            )
        try:
            model = pydantic.create_model(f"{name}_arguments", __base__=_Arguments, **fields)
            schema = model.model_json_schema()
        except (pydantic.PydanticSchemaGenerationError, pydantic.PydanticUserError) as exc:
            raise TypeError(f"{name}: a parameter's type has no JSON Schema: {exc}") from None
        except pydantic.errors.PydanticInvalidForJsonSchema as exc:
            raise TypeError(f"{name}: a parameter's type has no JSON Schema: {exc}") from None
        schema.pop("title", None)  # the generated model's name, noise to a client
        schema.setdefault("properties", {})
        output_schema, wrap, adapter = _output_of(name, hints.get("return", Any))
        return cls(
            name=name,
            fn=fn,
            model=model,
            input_schema=schema,
            injected=injected,
            parameters=tuple(field[len(_FIELD_PREFIX) :] for field in fields),
            output_schema=output_schema,
            wrap_output=wrap,
            output_adapter=adapter,
            is_async=inspect.iscoroutinefunction(inspect.unwrap(fn)),
        )

    def bind(self, arguments: Mapping[str, Any], what: str) -> dict[str, Any]:
        """Validate ``arguments``; the keyword arguments to call the function with (injected
        ones not included). ``what`` names the thing in the error (``"arguments for add"``)."""
        try:
            parsed = self.model.model_validate(arguments)
        except pydantic.ValidationError as exc:
            raise InvalidParams(f"invalid {what}: {describe_errors(exc)}") from None
        return {name: getattr(parsed, _FIELD_PREFIX + name) for name in self.parameters}

    async def call(self, kwargs: dict[str, Any]) -> Any:
        """Call the function: awaited if it is async, else in a worker thread, because a
        blocking function must not stall every other stream. The thread is abandoned on cancel
        (it cannot be interrupted): the request ends at once and the thread finishes alone."""
        if self.is_async:
            return await self.fn(**kwargs)
        return await trio.to_thread.run_sync(
            functools.partial(self.fn, **kwargs), abandon_on_cancel=True
        )

    def to_json(self, value: Any) -> Any:
        """The function's return value checked against its return annotation and made
        JSON-ready (models and dataclasses dumped), wrapped as ``{"result": ...}`` when the
        declared output is not an object. ToolError when it does not match the annotation:
        the spec's MUST that structured content conforms to the outputSchema."""
        adapter = self.output_adapter
        if adapter is None:
            return value
        try:
            data = adapter.dump_python(adapter.validate_python(value), mode="json")
        except pydantic.ValidationError as exc:
            raise ToolError(
                f"{self.name} returned output that does not match its outputSchema:"
                f" {describe_errors(exc)}"
            ) from None
        return {WRAPPED_KEY: data} if self.wrap_output else data


def describe_errors(exc: pydantic.ValidationError) -> str:
    """A pydantic error as ``'a': Input should be a valid integer; 'b': Field required``."""
    problems = []
    for error in exc.errors(include_url=False)[:_MAX_PROBLEMS]:
        where = ".".join(str(part) for part in error["loc"]) or "(root)"
        problems.append(f"{where!r}: {error['msg']}")
    more = exc.error_count() - _MAX_PROBLEMS
    if more > 0:
        problems.append(f"and {more} more")
    return "; ".join(problems)


def _injected_kind(annotation: Any, inject: tuple[type, ...]) -> type | None:
    # ``ToolContext``, ``ToolContext | None`` and ``Optional[ToolContext]`` all ask for it.
    candidates = [annotation]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        candidates = [a for a in typing.get_args(annotation) if a is not type(None)]
    for candidate in candidates:
        if isinstance(candidate, type):
            for kind in inject:
                if issubclass(candidate, kind):
                    return kind
    return None


def _is_object_type(annotation: Any) -> bool:
    origin = typing.get_origin(annotation) or annotation
    if origin in (dict, Mapping) or (isinstance(origin, type) and issubclass(origin, dict)):
        return True  # dict[str, X], Mapping, and TypedDicts (dict subclasses for issubclass)
    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        return True
    return isinstance(annotation, type) and is_dataclass(annotation)


def _output_of(
    name: str, annotation: Any
) -> tuple[dict[str, Any] | None, bool, pydantic.TypeAdapter[Any] | None]:
    if annotation in (Any, None, type(None), inspect.Signature.empty):
        return None, False, None
    if annotation is ToolOutput:  # a ready-made result declares no schema
        return None, False, None
    try:
        adapter: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(annotation)
        schema = adapter.json_schema(mode="serialization")
    except (pydantic.PydanticSchemaGenerationError, pydantic.PydanticUserError, TypeError) as exc:
        # pydantic says why (e.g. "use typing_extensions.TypedDict" before Python 3.12).
        raise TypeError(
            f"{name}: its return annotation {annotation!r} has no JSON Schema: {exc}"
        ) from None
    schema.pop("title", None)
    if _is_object_type(annotation) and schema.get("type") == "object":
        return schema, False, adapter
    defs = schema.pop("$defs", None)
    wrapped: dict[str, Any] = {
        "type": "object",
        "properties": {WRAPPED_KEY: schema},
        "required": [WRAPPED_KEY],
    }
    if defs is not None:
        wrapped["$defs"] = defs  # $ref paths are from the root, which is now the wrapper
    return wrapped, True, adapter
