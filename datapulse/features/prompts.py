"""Prompts: what ``prompts/list`` and ``prompts/get`` serve.

A prompt is a function whose parameters are its arguments (MCP prompt arguments are strings on
the wire; an annotation such as ``int`` converts them, and a default makes one optional). What
it returns becomes the ``messages``: a ``str`` is one user message; a list may hold strings
(user messages), ``PromptMessage``s or ready-made MCP message dicts.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from datapulse.errors import InvalidParams, ToolError, UnknownPrompt, quote
from datapulse.tools.registry import ToolContext
from datapulse.tools.signature import FunctionSignature

Role = Literal["user", "assistant"]


@dataclass(frozen=True)
class PromptMessage:
    """One message of a prompt; ``content`` is text, or an MCP content block as a dict."""

    role: Role
    content: str | dict[str, Any]

    def to_wire(self) -> dict[str, Any]:
        content = (
            {"type": "text", "text": self.content}
            if isinstance(self.content, str)
            else dict(self.content)
        )
        return {"role": self.role, "content": content}


@dataclass(frozen=True)
class Prompt:
    name: str
    signature: FunctionSignature
    title: str | None = None
    description: str | None = None

    def arguments(self) -> list[dict[str, Any]]:
        """The ``arguments`` of its ``prompts/list`` entry, from the signature's schema."""
        schema = self.signature.input_schema
        required = set(schema.get("required", ()))
        out = []
        for name, prop in schema.get("properties", {}).items():
            argument: dict[str, Any] = {"name": name}
            if isinstance(prop, dict) and prop.get("description"):
                argument["description"] = prop["description"]
            argument["required"] = name in required
            out.append(argument)
        return out

    def describe(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"name": self.name}
        if self.title is not None:
            entry["title"] = self.title
        if self.description:
            entry["description"] = self.description
        entry["arguments"] = self.arguments()
        return entry

    async def render(self, arguments: object, context: object = None) -> dict[str, Any]:
        """The ``prompts/get`` result for these arguments (InvalidParams naming a bad one);
        ``context`` (a ``ToolContext``) goes to a parameter that asks for one."""
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, dict) or not all(
            isinstance(v, str) for v in arguments.values()
        ):
            raise InvalidParams(f"arguments for prompt {self.name} must map names to strings")
        kwargs = self.signature.bind(arguments, f"arguments for prompt {self.name}")
        for name in self.signature.injected:
            kwargs[name] = context
        value = await self.signature.call(kwargs)
        result: dict[str, Any] = {}
        if self.description:
            result["description"] = self.description
        result["messages"] = messages_of(self.name, value)
        return result


def messages_of(name: str, value: Any) -> list[dict[str, Any]]:
    items = value if isinstance(value, list | tuple) else [value]
    messages = []
    for item in items:
        if isinstance(item, str):
            messages.append({"role": "user", "content": {"type": "text", "text": item}})
        elif isinstance(item, PromptMessage):
            messages.append(item.to_wire())
        elif (
            isinstance(item, dict)
            and item.get("role") in ("user", "assistant")
            and isinstance(item.get("content"), dict)
        ):
            messages.append(item)
        else:
            raise ToolError(f"prompt {name} returned {type(item).__name__}, not a message")
    return messages


class PromptRegistry:
    def __init__(self) -> None:
        self._prompts: dict[str, Prompt] = {}
        self.on_change: list[Callable[[], None]] = []

    def __len__(self) -> int:
        return len(self._prompts)

    def __iter__(self) -> Iterator[Prompt]:
        return iter(list(self._prompts.values()))

    def __contains__(self, name: object) -> bool:
        return name in self._prompts

    def add(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        title: str | None = None,
        description: str | None = None,
    ) -> Prompt:
        signature = FunctionSignature.of(fn, inject=(ToolContext,))
        prompt = Prompt(
            name or signature.name,
            signature,
            title,
            description or inspect.cleandoc(fn.__doc__ or ""),
        )
        if prompt.name in self._prompts:
            raise ValueError(f"prompt {prompt.name!r} is already registered")
        self._prompts[prompt.name] = prompt
        for callback in self.on_change:
            callback()
        return prompt

    def get(self, name: object) -> Prompt:
        prompt = self._prompts.get(name) if isinstance(name, str) else None
        if prompt is None:
            raise UnknownPrompt(f"unknown prompt: {quote(name)}")
        return prompt

    def remove(self, name: str) -> Prompt:
        prompt = self.get(name)
        del self._prompts[name]
        for callback in self.on_change:
            callback()
        return prompt
