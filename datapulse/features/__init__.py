"""What a server offers besides tools: resources and resource templates, prompts, completions,
and the ``Catalog`` that holds them all with the tools and says when any list changes.

Like ``datapulse.tools`` this layer knows nothing of sessions or transports: the protocol layer
(``datapulse.protocol.methods``) answers MCP requests from it, and ``datapulse.server`` exposes
its decorators.
"""
