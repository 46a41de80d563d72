"""datapulse: an MCP server over Server-Sent Events, on Trio and h11.

Public surface: ``Server`` (embed it; register tools, resources, prompts and completions with
its decorators; publish events and resource updates), ``serve`` (run one with the built-in
tools), ``Config``, ``ToolContext``/``ToolOutput`` for tools, ``ResourceContents`` and
``PromptMessage`` for readers and prompts, ``ToolRegistry``, and the error tree.
"""

from datapulse.config import Config, config_from_env
from datapulse.core.inputs import Elicitation, ElicitResult, InputRequest, ListRoots, Sampling
from datapulse.core.mcp import ToolOutput
from datapulse.errors import DatapulseError, ResourceNotFound, SessionNotFound, ToolError
from datapulse.features.prompts import PromptMessage
from datapulse.features.resources import ResourceContents
from datapulse.server import Server, ServerInfo, serve
from datapulse.tools.registry import Tool, ToolContext, ToolRegistry
from datapulse.version import __version__

__all__ = [
    "Config",
    "DatapulseError",
    "ElicitResult",
    "Elicitation",
    "InputRequest",
    "ListRoots",
    "PromptMessage",
    "ResourceContents",
    "ResourceNotFound",
    "Sampling",
    "Server",
    "ServerInfo",
    "SessionNotFound",
    "Tool",
    "ToolContext",
    "ToolError",
    "ToolOutput",
    "ToolRegistry",
    "__version__",
    "config_from_env",
    "serve",
]
