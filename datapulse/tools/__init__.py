"""Tools: the registry every transport dispatches into, and the built-in tools."""

from datapulse.tools.registry import Tool, ToolContext, ToolRegistry

__all__ = ["Tool", "ToolContext", "ToolRegistry"]
