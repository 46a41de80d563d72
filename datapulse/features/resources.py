"""Resources and resource templates: what ``resources/list``, ``resources/templates/list`` and
``resources/read`` serve.

A resource is a fixed URI read by a function without arguments. A template is a URI with
RFC 6570 level-1 variables (``notes://{name}``), read by a function whose parameters are those
variables; ``read`` tries the fixed URIs first, then the templates in registration order.

What a reader returns becomes the ``contents`` of the result: ``str`` is text, ``bytes`` is a
base64 blob, anything else is JSON text (``application/json`` unless a MIME type was given).
``ResourceContents`` gives full control (several items, each its own URI and MIME type).
"""

from __future__ import annotations

import base64
import inspect
import re
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pydantic_core

from datapulse.core import mcp
from datapulse.errors import ResourceNotFound, ToolError
from datapulse.tools.signature import FunctionSignature

# Level 1 of RFC 6570: {name}. The names a function parameter can have.
_VARIABLE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")


@dataclass(frozen=True)
class ResourceContents:
    """One item of a ``resources/read`` result, for a reader that wants to say it all: exactly
    one of ``text`` and ``blob``; ``uri`` defaults to the URI that was read."""

    text: str | None = None
    blob: bytes | None = None
    mime_type: str | None = None
    uri: str | None = None

    def __post_init__(self) -> None:
        if (self.text is None) == (self.blob is None):
            raise ValueError("ResourceContents needs exactly one of text and blob")


@dataclass(frozen=True)
class Resource:
    uri: str
    name: str
    signature: FunctionSignature
    title: str | None = None
    description: str | None = None
    mime_type: str | None = None
    annotations: Mapping[str, Any] | None = None

    def describe(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"uri": self.uri, "name": self.name}
        _describe_common(entry, self.title, self.description, self.mime_type, self.annotations)
        return entry


@dataclass(frozen=True)
class ResourceTemplate:
    uri_template: str
    name: str
    signature: FunctionSignature
    variables: tuple[str, ...]
    pattern: re.Pattern[str] = field(repr=False)
    title: str | None = None
    description: str | None = None
    mime_type: str | None = None
    annotations: Mapping[str, Any] | None = None

    def describe(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"uriTemplate": self.uri_template, "name": self.name}
        _describe_common(entry, self.title, self.description, self.mime_type, self.annotations)
        return entry

    def match(self, uri: str) -> dict[str, str] | None:
        """The variables of ``uri`` if this template produces it, percent-decoded."""
        found = self.pattern.fullmatch(uri)
        if found is None:
            return None
        return {k: urllib.parse.unquote(v) for k, v in found.groupdict().items()}


def _describe_common(
    entry: dict[str, Any],
    title: str | None,
    description: str | None,
    mime_type: str | None,
    annotations: Mapping[str, Any] | None,
) -> None:
    if title is not None:
        entry["title"] = title
    if description:
        entry["description"] = description
    if mime_type is not None:
        entry["mimeType"] = mime_type
    if annotations:
        entry["annotations"] = dict(annotations)


def compile_template(uri_template: str) -> tuple[tuple[str, ...], re.Pattern[str]]:
    """The variables of a level-1 URI template and a pattern matching the URIs it expands to.

    Simple expansion percent-encodes everything but unreserved characters, so a value never
    contains ``/``, ``?`` or ``#``: each variable matches a run of anything else.
    """
    variables = tuple(_VARIABLE.findall(uri_template))
    if not variables:
        raise ValueError(f"{uri_template!r} has no {{variable}}")
    if len(set(variables)) != len(variables):
        raise ValueError(f"{uri_template!r} names a variable twice")
    stripped = _VARIABLE.sub("", uri_template)
    if "{" in stripped or "}" in stripped:
        raise ValueError(f"{uri_template!r}: only simple {{name}} variables are supported")
    parts = _VARIABLE.split(uri_template)
    regex = "".join(
        re.escape(part) if i % 2 == 0 else f"(?P<{part}>[^/?#]+)" for i, part in enumerate(parts)
    )
    return variables, re.compile(regex)


class ResourceRegistry:
    """Fixed resources by URI and templates, each in registration order."""

    def __init__(self) -> None:
        self._resources: dict[str, Resource] = {}
        self._templates: dict[str, ResourceTemplate] = {}
        self.on_change: list[Callable[[], None]] = []

    def _changed(self) -> None:
        for callback in self.on_change:
            callback()

    def __len__(self) -> int:
        return len(self._resources) + len(self._templates)

    def resources(self) -> list[Resource]:
        return list(self._resources.values())

    def templates(self) -> list[ResourceTemplate]:
        return list(self._templates.values())

    def __iter__(self) -> Iterator[Resource]:
        return iter(self.resources())

    def add(
        self,
        uri: str,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        title: str | None = None,
        description: str | None = None,
        mime_type: str | None = None,
        annotations: Mapping[str, Any] | None = None,
    ) -> Resource | ResourceTemplate:
        """Register ``fn`` as the reader of ``uri`` (a template if it has ``{variables}``)."""
        if not _SCHEME.match(uri):
            raise ValueError(f"resource URI {uri!r} needs a scheme (e.g. 'pulse://clock')")
        signature = FunctionSignature.of(fn)
        name = name or signature.name
        description = description or inspect.cleandoc(fn.__doc__ or "")
        entry: Resource | ResourceTemplate
        if "{" not in uri:
            if signature.parameters:
                raise TypeError(f"resource {uri!r}: its reader must take no arguments")
            if uri in self._resources:
                raise ValueError(f"resource {uri!r} is already registered")
            entry = Resource(uri, name, signature, title, description, mime_type, annotations)
            self._resources[uri] = entry
        else:
            variables, pattern = compile_template(uri)
            if set(variables) != set(signature.parameters):
                raise TypeError(
                    f"resource template {uri!r}: its reader's parameters"
                    f" {list(signature.parameters)} must be its variables {list(variables)}"
                )
            if uri in self._templates:
                raise ValueError(f"resource template {uri!r} is already registered")
            entry = ResourceTemplate(
                uri, name, signature, variables, pattern, title, description, mime_type, annotations
            )
            self._templates[uri] = entry
        self._changed()
        return entry

    def remove(self, uri: str) -> None:
        """Unregister a resource or template by its URI (template); ResourceNotFound if none."""
        if self._resources.pop(uri, None) is None and self._templates.pop(uri, None) is None:
            raise ResourceNotFound(uri)
        self._changed()

    def template(self, uri_template: str) -> ResourceTemplate | None:
        return self._templates.get(uri_template)

    def find(self, uri: str) -> tuple[Resource | ResourceTemplate, dict[str, str]] | None:
        """What serves ``uri``, and the template variables it binds (empty for a resource)."""
        resource = self._resources.get(uri)
        if resource is not None:
            return resource, {}
        for template in self._templates.values():
            variables = template.match(uri)
            if variables is not None:
                return template, variables
        return None

    def exists(self, uri: str) -> bool:
        return self.find(uri) is not None

    async def read(self, uri: str) -> list[dict[str, Any]]:
        """The ``contents`` of ``resources/read`` for ``uri``; ResourceNotFound if nothing serves
        it, InvalidParams if a template's variables do not fit its reader's types."""
        found = self.find(uri)
        if found is None:
            raise ResourceNotFound(uri)
        entry, variables = found
        kwargs = entry.signature.bind(variables, f"variables of {uri}") if variables else {}
        value = await entry.signature.call(kwargs)
        return contents_of(uri, value, entry.mime_type)


def contents_of(uri: str, value: Any, mime_type: str | None) -> list[dict[str, Any]]:
    """A reader's return value as ``resources/read`` contents (see the module docstring)."""
    items: Sequence[Any] = value if _is_contents_list(value) else [value]
    contents = []
    for item in items:
        if isinstance(item, ResourceContents):
            entry: dict[str, Any] = {"uri": item.uri or uri}
            if item.mime_type or mime_type:
                entry["mimeType"] = item.mime_type or mime_type
            if item.text is not None:
                entry["text"] = item.text
            else:
                assert item.blob is not None
                entry["blob"] = base64.b64encode(item.blob).decode("ascii")
        elif isinstance(item, bytes | bytearray | memoryview):
            entry = {"uri": uri, "mimeType": mime_type or "application/octet-stream"}
            entry["blob"] = base64.b64encode(bytes(item)).decode("ascii")
        elif isinstance(item, str):
            entry = {"uri": uri, "mimeType": mime_type or "text/plain", "text": item}
        elif item is None:
            # MUST NOT answer an existing resource with empty contents, nor say ``null``.
            raise ToolError(f"the reader of {uri} returned None; raise ResourceNotFound instead")
        else:
            try:
                (block,) = mcp.text_content(pydantic_core.to_jsonable_python(item))
            except (TypeError, ValueError, pydantic_core.PydanticSerializationError):
                raise ToolError(f"the reader of {uri} returned a value that is not JSON") from None
            entry = {"uri": uri, "mimeType": mime_type or "application/json", "text": block["text"]}
        contents.append(entry)
    return contents


def _is_contents_list(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(item, ResourceContents) for item in value)
    )
