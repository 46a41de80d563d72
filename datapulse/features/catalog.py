"""Catalog: everything one server offers (tools, resources, templates, prompts, completers),
and the one place that hears when any of its lists changes.

Each registry calls back on a change; the catalog turns that into ``on_change(kind)`` with the
kind of list (``"tools"``, ``"resources"``, ``"prompts"``), which the server relays to the
connected clients as ``notifications/<kind>/list_changed``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, Literal

from datapulse.features.completions import Completions
from datapulse.features.prompts import PromptRegistry
from datapulse.features.resources import ResourceRegistry
from datapulse.tools.registry import ToolRegistry

ListKind = Literal["tools", "resources", "prompts"]
LIST_KINDS: Final[tuple[ListKind, ...]] = ("tools", "resources", "prompts")


class Catalog:
    def __init__(self, tools: ToolRegistry | None = None) -> None:
        self.tools = tools if tools is not None else ToolRegistry()
        self.resources = ResourceRegistry()
        self.prompts = PromptRegistry()
        self.completions = Completions(self.prompts, self.resources)
        self.on_change: list[Callable[[ListKind], None]] = []
        self.tools.on_change.append(lambda: self._changed("tools"))
        self.resources.on_change.append(lambda: self._changed("resources"))
        self.prompts.on_change.append(lambda: self._changed("prompts"))

    def _changed(self, kind: ListKind) -> None:
        for callback in self.on_change:
            callback(kind)
