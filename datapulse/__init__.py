"""datapulse: an MCP server over Server-Sent Events, on Trio and h11.

Public surface: ``Server`` (embed it, register tools, publish events), ``serve`` (run one with the
built-in tools), ``Config``, ``ToolRegistry``/``ToolContext``, and the error tree.
"""

from datapulse.config import Config, config_from_env
from datapulse.errors import DatapulseError, SessionNotFound, ToolError
from datapulse.server import Server, ServerInfo, serve
from datapulse.tools.registry import Tool, ToolContext, ToolRegistry
from datapulse.version import __version__

__all__ = [
    "Config",
    "DatapulseError",
    "Server",
    "ServerInfo",
    "SessionNotFound",
    "Tool",
    "ToolContext",
    "ToolError",
    "ToolRegistry",
    "__version__",
    "config_from_env",
    "serve",
]
