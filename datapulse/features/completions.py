"""Completions: suggestions for a prompt argument or a resource template variable
(``completion/complete``).

A completer is registered for one argument of one prompt or template::

    @server.completion(prompt="review", argument="language")
    async def languages(value: str) -> list[str]: ...

and may also take ``arguments`` (the values the client already chose for the others, MCP's
``context.arguments``). Without a completer, an argument whose type has a fixed set of values
(``Literal[...]``, an ``Enum``) is completed from it by prefix; any other gets no suggestions.
At most 100 values go back (the spec's bound), with ``total`` and ``hasMore`` saying what was
cut.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import trio

from datapulse.errors import InvalidParams, ToolError, quote
from datapulse.features.prompts import PromptRegistry
from datapulse.features.resources import ResourceRegistry

MAX_VALUES = 100

RefKind = Literal["prompt", "resource"]


@dataclass(frozen=True)
class Completer:
    fn: Callable[..., Any]
    wants_arguments: bool
    is_async: bool

    async def __call__(self, value: str, arguments: Mapping[str, str]) -> Any:
        kwargs: dict[str, Any] = {"arguments": dict(arguments)} if self.wants_arguments else {}
        if self.is_async:
            result: Awaitable[Any] = self.fn(value, **kwargs)
            return await result
        return await trio.to_thread.run_sync(
            lambda: self.fn(value, **kwargs), abandon_on_cancel=True
        )


class Completions:
    """Completers by (kind, prompt name or URI template, argument)."""

    def __init__(self, prompts: PromptRegistry, resources: ResourceRegistry) -> None:
        self.prompts = prompts
        self.resources = resources
        self._completers: dict[tuple[RefKind, str, str], Completer] = {}

    def __len__(self) -> int:
        return len(self._completers)

    def add(self, kind: RefKind, ref: str, argument: str, fn: Callable[..., Any]) -> None:
        key = (kind, ref, argument)
        if key in self._completers:
            raise ValueError(f"a completer for {kind} {ref!r} argument {argument!r} exists")
        params = inspect.signature(fn).parameters
        self._completers[key] = Completer(
            fn, "arguments" in params, inspect.iscoroutinefunction(inspect.unwrap(fn))
        )

    async def complete(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The ``completion/complete`` result for these params (InvalidParams for a bad ref)."""
        ref, argument = params.get("ref"), params.get("argument")
        if not isinstance(ref, dict) or not isinstance(argument, dict):
            raise InvalidParams("completion/complete needs ref and argument objects")
        name, value = argument.get("name"), argument.get("value")
        if not isinstance(name, str) or not isinstance(value, str):
            raise InvalidParams("argument needs a string name and a string value")
        context = params.get("context")
        chosen = context.get("arguments") if isinstance(context, dict) else None
        others = (
            {k: v for k, v in chosen.items() if isinstance(v, str)}
            if isinstance(chosen, dict)
            else {}
        )
        kind, target, schema = self._target(ref)
        if name not in schema.get("properties", {}):
            raise InvalidParams(f"{kind} {quote(target)} has no argument {quote(name)}")
        completer = self._completers.get((kind, target, name))
        if completer is not None:
            values = await completer(value, others)
        else:
            values = _choices(schema["properties"][name], schema.get("$defs", {}), value)
        return {"completion": _bounded(values)}

    def _target(self, ref: Mapping[str, Any]) -> tuple[RefKind, str, dict[str, Any]]:
        kind = ref.get("type")
        if kind == "ref/prompt":
            prompt = self.prompts.get(ref.get("name"))
            return "prompt", prompt.name, prompt.signature.input_schema
        if kind == "ref/resource":
            uri = ref.get("uri")
            template = self.resources.template(uri) if isinstance(uri, str) else None
            if template is None:
                raise InvalidParams(f"no resource template {quote(uri)}")
            return "resource", template.uri_template, template.signature.input_schema
        raise InvalidParams("ref.type must be 'ref/prompt' or 'ref/resource'")


def _choices(prop: Any, defs: Mapping[str, Any], prefix: str) -> list[str]:
    """The values of an enumerated argument (Literal, Enum, either of them optional) that
    start with ``prefix``."""
    options: list[Any] = []
    pending = [prop]
    while pending:
        schema = pending.pop(0)
        if not isinstance(schema, dict):
            continue
        if "$ref" in schema:
            schema = defs.get(str(schema["$ref"]).rsplit("/", 1)[-1], {})
        if isinstance(schema.get("enum"), list):
            options.extend(schema["enum"])
        elif "const" in schema:
            options.append(schema["const"])
        for key in ("anyOf", "oneOf"):
            if isinstance(schema.get(key), list):
                pending.extend(schema[key])
    values = dict.fromkeys(str(o) for o in options if o is not None)
    return [v for v in values if v.startswith(prefix)]


def _bounded(values: Any) -> dict[str, Any]:
    if not isinstance(values, list | tuple) or not all(isinstance(v, str) for v in values):
        raise ToolError("a completer must return a list of strings")
    completion: dict[str, Any] = {"values": list(values[:MAX_VALUES])}
    completion["total"] = len(values)
    completion["hasMore"] = len(values) > MAX_VALUES
    return completion
