"""The fixtures of the official MCP conformance suite, registered with datapulse's public API.

``@modelcontextprotocol/conformance`` (npm, pinned in tests/conformance/package-lock.json) runs in
server mode against this app: tests/e2e/test_conformance_suite.py. Run it by hand:

    python -m datapulse --app examples/conformance_server.py:server --port 8000 --token t
    python examples/conformance_server.py --port 8000 --token t      # the same

The suite's own reference server (``examples/servers/typescript/everything-server.ts`` in its
repository) defines each fixture; the names, URIs and texts below match it, because the scenarios
look for them. What the suite needs and this file leaves out, for a later issue:

* server-to-client requests, i.e. sampling and elicitation: ``test_sampling``,
  ``test_elicitation``, ``test_elicitation_sep1034_defaults``, ``test_elicitation_sep1330_enums``
  (scenarios tools-call-sampling, tools-call-elicitation, elicitation-sep1034-defaults,
  elicitation-sep1330-enums), and the 2026-07-28 ``InputRequiredResult`` tools
  ``test_input_required_result_*`` and prompt ``test_input_required_result_prompt``
  (input-required-result-*);
* ``test_reconnection`` (server-sse-polling): a tool that closes its SSE stream mid-call so
  the client resumes with ``Last-Event-ID``;
* tasks (tasks-* scenarios, an extension) and skills (sep-2640-*, an extension).
"""

from __future__ import annotations

import base64
import sys
from typing import Any

import trio

from datapulse import Server, ToolContext, ToolError, ToolOutput

# A 1x1 red PNG and a minimal WAV, as in the suite's reference server.
PNG_BASE64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
WAV_BASE64 = "UklGRiYAAABXQVZFZm10IBAAAAABAAEAQB8AAAB9AAACABAAZGF0YQIAAAA="

# SEP-1613 / SEP-2106: the schema the json-schema-2020-12 scenario expects back verbatim.
JSON_SCHEMA_2020_12: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "$defs": {
        "address": {
            "$anchor": "addressDef",
            "type": "object",
            "properties": {"street": {"type": "string"}, "city": {"type": "string"}},
        }
    },
    "properties": {
        "name": {"type": "string"},
        "address": {"$ref": "#/$defs/address"},
        "contactMethod": {"type": "string", "enum": ["phone", "email"]},
        "phone": {"type": "string"},
        "email": {"type": "string"},
    },
    "allOf": [{"anyOf": [{"required": ["phone"]}, {"required": ["email"]}]}],
    "if": {"properties": {"contactMethod": {"const": "phone"}}, "required": ["contactMethod"]},
    "then": {"required": ["phone"]},
    "else": {"required": ["email"]},
    "additionalProperties": False,
}

# The settings (port, token, ...) come from the command line: every CLI setting applies.
server = Server(builtin_tools=False)


# -- tools ---------------------------------------------------------------------------------------


@server.tool()
async def test_simple_text() -> str:
    """Tests simple text content response"""
    return "This is a simple text response for testing."


@server.tool()
async def test_image_content() -> ToolOutput:
    """Tests image content response"""
    return ToolOutput(content=[{"type": "image", "data": PNG_BASE64, "mimeType": "image/png"}])


@server.tool()
async def test_audio_content() -> ToolOutput:
    """Tests audio content response"""
    return ToolOutput(content=[{"type": "audio", "data": WAV_BASE64, "mimeType": "audio/wav"}])


@server.tool()
async def test_embedded_resource() -> ToolOutput:
    """Tests embedded resource content response"""
    resource = {
        "uri": "test://embedded-resource",
        "mimeType": "text/plain",
        "text": "This is an embedded resource content.",
    }
    return ToolOutput(content=[{"type": "resource", "resource": resource}])


@server.tool()
async def test_multiple_content_types() -> ToolOutput:
    """Tests response with multiple content types (text, image, resource)"""
    resource = {
        "uri": "test://mixed-content-resource",
        "mimeType": "application/json",
        "text": '{"test":"data","value":123}',
    }
    return ToolOutput(
        content=[
            {"type": "text", "text": "Multiple content types test:"},
            {"type": "image", "data": PNG_BASE64, "mimeType": "image/png"},
            {"type": "resource", "resource": resource},
        ]
    )


@server.tool()
async def test_tool_with_logging(context: ToolContext) -> str:
    """Tests tool that emits log messages during execution"""
    await context.log("info", "Tool execution started")
    await trio.sleep(0.05)
    await context.log("info", "Tool processing data")
    await trio.sleep(0.05)
    await context.log("info", "Tool execution completed")
    return "Tool with logging executed successfully"


@server.tool()
async def test_tool_with_progress(context: ToolContext) -> str:
    """Tests tool that reports progress notifications"""
    for step in (0, 50, 100):
        if step:
            await trio.sleep(0.05)
        await context.report_progress(step, 100, f"Completed step {step} of 100")
    return "Tool with progress executed successfully"


@server.tool()
async def test_error_handling() -> str:
    """Tests error response handling"""
    raise ToolError("This tool intentionally returns an error for testing")


@server.tool(
    "json_schema_2020_12_tool",
    description="Tool with JSON Schema 2020-12 features for conformance testing (SEP-1613)",
    input_schema=JSON_SCHEMA_2020_12,
)
async def json_schema_2020_12_tool(arguments: dict[str, Any], context: ToolContext) -> str:
    return f"JSON Schema 2020-12 tool called with: {arguments}"


# SEP-2243 (http-custom-header-server-validation): an argument mirrored in an Mcp-Param header.
@server.tool(
    "test_custom_header",
    description="Echoes its region argument, which travels in the Mcp-Param-Region header too",
    input_schema={
        "type": "object",
        "properties": {"region": {"type": "string", "x-mcp-header": "Region"}},
        "required": ["region"],
    },
)
async def test_custom_header(arguments: dict[str, Any], context: ToolContext) -> str:
    return f"region: {arguments['region']}"


# -- 2026-07-28 diagnostic tools (server-stateless) ------------------------------------------------


@server.tool()
async def test_streaming_elicitation(context: ToolContext) -> str:
    """Diagnostic tool validating response progress streams"""
    await context.report_progress(50, 100)
    return "Streaming complete"


@server.tool()
async def test_missing_capability(context: ToolContext) -> str:
    """Needs the client's sampling capability (server-stateless): refused with -32021 when the
    request does not declare it. datapulse cannot sample yet, so with it, it only says so."""
    context.require_client_capability("sampling")
    return "the client can sample"


@server.tool()
async def test_logging_tool(context: ToolContext) -> str:
    """Diagnostic logging validator tool (logs only reach a request that set a log level)"""
    await context.log("info", "Diagnostic trace logging activated")
    return "Logging evaluated"


# The suite calls these two to make the tool or prompt list change while it listens
# (subscriptions/listen): each adds its toggled entry if absent, else removes it.
toggled = {"tool": False, "prompt": False}


async def test_toggled_tool() -> str:
    """Comes and goes with each test_trigger_tool_change call"""
    return "toggled"


async def test_toggled_prompt() -> str:
    """Comes and goes with each test_trigger_prompt_change call"""
    return "toggled"


@server.tool()
async def test_trigger_tool_change() -> str:
    """Adds or removes the tool test_toggled_tool (notifications/tools/list_changed)"""
    if toggled["tool"]:
        server.remove_tool("test_toggled_tool")
    else:
        server.tool()(test_toggled_tool)
    toggled["tool"] = not toggled["tool"]
    return "Mutation triggered"


@server.tool()
async def test_trigger_prompt_change() -> str:
    """Adds or removes the prompt test_toggled_prompt (notifications/prompts/list_changed)"""
    if toggled["prompt"]:
        server.remove_prompt("test_toggled_prompt")
    else:
        server.prompt()(test_toggled_prompt)
    toggled["prompt"] = not toggled["prompt"]
    return "Mutation triggered"


# -- resources -----------------------------------------------------------------------------------


@server.resource(
    "test://static-text",
    mime_type="text/plain",
    name="static-text",
    title="Static Text Resource",
    description="A static text resource for testing",
)
async def static_text() -> str:
    return "This is the content of the static text resource."


@server.resource(
    "test://static-binary",
    mime_type="image/png",
    name="static-binary",
    title="Static Binary Resource",
    description="A static binary resource (image) for testing",
)
async def static_binary() -> bytes:
    return base64.b64decode(PNG_BASE64)


@server.resource(
    "test://template/{id}/data",
    mime_type="application/json",
    name="template",
    title="Resource Template",
    description="A resource template with parameter substitution",
)
async def template_data(id: str) -> dict[str, Any]:
    return {"id": id, "templateTest": True, "data": f"Data for ID: {id}"}


@server.resource(
    "test://watched-resource",
    mime_type="text/plain",
    name="watched-resource",
    title="Watched Resource",
    description="A resource clients may subscribe to",
)
async def watched_resource() -> str:
    return "Watched resource content"


# -- prompts -------------------------------------------------------------------------------------


@server.prompt(title="Simple Test Prompt")
async def test_simple_prompt() -> str:
    """A simple prompt without arguments"""
    return "This is a simple prompt for testing."


@server.prompt(title="Prompt With Arguments")
async def test_prompt_with_arguments(arg1: str, arg2: str) -> str:
    """A prompt with required arguments"""
    return f"Prompt with arguments: arg1='{arg1}', arg2='{arg2}'"


# resourceUri: the argument name the suite sends.
@server.prompt(title="Prompt With Embedded Resource")
async def test_prompt_with_embedded_resource(resourceUri: str) -> list[dict[str, Any]]:
    """A prompt that includes an embedded resource"""
    resource = {
        "uri": resourceUri,
        "mimeType": "text/plain",
        "text": "Embedded resource content for testing.",
    }
    return [
        {"role": "user", "content": {"type": "resource", "resource": resource}},
        {
            "role": "user",
            "content": {"type": "text", "text": "Please process the embedded resource above."},
        },
    ]


@server.prompt(title="Prompt With Image")
async def test_prompt_with_image() -> list[dict[str, Any]]:
    """A prompt that includes image content"""
    return [
        {"role": "user", "content": {"type": "image", "data": PNG_BASE64, "mimeType": "image/png"}},
        {"role": "user", "content": {"type": "text", "text": "Please analyze the image above."}},
    ]


# -- completions ---------------------------------------------------------------------------------

SUGGESTIONS = ("paris", "park", "party", "test", "testValue1", "testValue2")


@server.completion(prompt="test_prompt_with_arguments", argument="arg1")
async def complete_arg1(value: str) -> list[str]:
    return [s for s in SUGGESTIONS if s.startswith(value)]


@server.completion(prompt="test_prompt_with_arguments", argument="arg2")
async def complete_arg2(value: str) -> list[str]:
    return [s for s in SUGGESTIONS if s.startswith(value)]


@server.completion(resource="test://template/{id}/data", argument="id")
async def complete_id(value: str) -> list[str]:
    return [i for i in ("1", "123", "42") if i.startswith(value)]


if __name__ == "__main__":
    from datapulse.__main__ import main

    # The same as `python -m datapulse --app examples/conformance_server.py:server ...`.
    sys.exit(main(["--app", f"{__file__}:server", *sys.argv[1:]]))
