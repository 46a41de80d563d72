"""The fixtures of the official MCP conformance suite, registered with datapulse's public API.

``@modelcontextprotocol/conformance`` (npm, pinned in tests/conformance/package-lock.json) runs in
server mode against this app: tests/e2e/test_conformance_suite.py. Run it by hand:

    python -m datapulse --app examples/conformance_server.py:server --port 8000 --token t
    python examples/conformance_server.py --port 8000 --token t      # the same

The suite's own reference server (``examples/servers/typescript/everything-server.ts`` in its
repository) defines each fixture; the names, URIs and texts below match it, because the scenarios
look for them.

The fixtures that ask the client for input mid-call (``ToolContext.elicit``, ``sample``,
``list_roots``, ``request_input``) serve both eras with the same code: in the handshake era
(tools-call-sampling, tools-call-elicitation, elicitation-sep1034-defaults,
elicitation-sep1330-enums) the question is a request over the call's stream; on 2026-07-28
(input-required-result-*) the call answers ``input_required`` and the tool runs again when the
client retries with ``inputResponses``, so a fixture's keys are the ones the scenarios name.

What the suite needs and this file leaves out, for a later issue:

* ``test_reconnection`` (server-sse-polling): a tool that closes its SSE stream mid-call so
  the client resumes with ``Last-Event-ID``;
* tasks (tasks-* scenarios, an extension) and skills (sep-2640-*, an extension).
"""

from __future__ import annotations

import base64
import json
import sys
from typing import Any

import trio

from datapulse import Server, ToolContext, ToolError, ToolOutput
from datapulse.core.inputs import Elicitation, ElicitResult, InputRequest, ListRoots, Sampling

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


# -- asking the client mid-call: handshake era (a request over the call's stream) -------------


def sampled_text(result: dict[str, Any]) -> str:
    """The text of a sampling answer (``content`` is one block, or a list of them)."""
    content = result.get("content")
    blocks = content if isinstance(content, list) else [content]
    texts = [b["text"] for b in blocks if isinstance(b, dict) and b.get("type") == "text"]
    return " ".join(texts) or "No response"


def answered(result: ElicitResult) -> str:
    return f"action={result.action}, content={json.dumps(result.content)}"


@server.tool()
async def test_sampling(prompt: str, context: ToolContext) -> str:
    """Tests server-initiated sampling (LLM completion request)"""
    result = await context.sample(prompt, max_tokens=100)
    return f"LLM response: {sampled_text(result)}"


@server.tool()
async def test_elicitation(message: str, context: ToolContext) -> str:
    """Tests server-initiated elicitation (user input request)"""
    schema = {
        "type": "object",
        "properties": {
            "username": {"type": "string", "description": "User's response"},
            "email": {"type": "string", "description": "User's email address"},
        },
        "required": ["username", "email"],
    }
    result = await context.elicit(message, schema)
    return f"User response: {answered(result)}"


# SEP-1034: a default for every primitive type.
SEP1034_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "description": "User name", "default": "John Doe"},
        "age": {"type": "integer", "description": "User age", "default": 30},
        "score": {"type": "number", "description": "User score", "default": 95.5},
        "status": {
            "type": "string",
            "description": "User status",
            "enum": ["active", "inactive", "pending"],
            "default": "active",
        },
        "verified": {"type": "boolean", "description": "Verification status", "default": True},
    },
    "required": [],
}


@server.tool()
async def test_elicitation_sep1034_defaults(context: ToolContext) -> str:
    """Tests elicitation with default values per SEP-1034"""
    message = "Please review and update the form fields with defaults"
    result = await context.elicit(message, SEP1034_SCHEMA)
    return f"Elicitation completed: {answered(result)}"


# SEP-1330: the five enum variants (untitled, titled, legacy enumNames; single and multi).
OPTIONS = ["option1", "option2", "option3"]
SEP1330_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "untitledSingle": {"type": "string", "description": "Select one option", "enum": OPTIONS},
        "titledSingle": {
            "type": "string",
            "description": "Select one option with titles",
            "oneOf": [
                {"const": "value1", "title": "First Option"},
                {"const": "value2", "title": "Second Option"},
                {"const": "value3", "title": "Third Option"},
            ],
        },
        "legacyEnum": {
            "type": "string",
            "description": "Select one option (legacy)",
            "enum": ["opt1", "opt2", "opt3"],
            "enumNames": ["Option One", "Option Two", "Option Three"],
        },
        "untitledMulti": {
            "type": "array",
            "description": "Select multiple options",
            "minItems": 1,
            "maxItems": 3,
            "items": {"type": "string", "enum": OPTIONS},
        },
        "titledMulti": {
            "type": "array",
            "description": "Select multiple options with titles",
            "minItems": 1,
            "maxItems": 3,
            "items": {
                "anyOf": [
                    {"const": "value1", "title": "First Choice"},
                    {"const": "value2", "title": "Second Choice"},
                    {"const": "value3", "title": "Third Choice"},
                ]
            },
        },
    },
    "required": [],
}


@server.tool()
async def test_elicitation_sep1330_enums(context: ToolContext) -> str:
    """Tests elicitation with enum schema improvements per SEP-1330"""
    message = "Please select options from the enum fields"
    result = await context.elicit(message, SEP1330_SCHEMA)
    return f"Elicitation completed: {answered(result)}"


# -- asking the client mid-call: 2026-07-28 InputRequiredResult (SEP-2322) ---------------------
# The same calls; each key is the inputRequests key the scenario looks for.


def one_string(name: str) -> dict[str, Any]:
    """A form of one required string field."""
    return {"type": "object", "properties": {name: {"type": "string"}}, "required": [name]}


CONFIRM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}},
    "required": ["ok"],
}


def roots_text(roots: list[dict[str, Any]]) -> str:
    return ", ".join(str(r.get("uri")) for r in roots) or "none"


@server.tool()
async def test_input_required_result_elicitation(context: ToolContext) -> str:
    """Asks the user's name (input-required-result-basic-elicitation)"""
    result = await context.elicit("What is your name?", one_string("name"), key="user_name")
    if result.action != "accept":
        return f"No name given: {answered(result)}"
    return f"Hello, {result.content.get('name')}!"


@server.tool()
async def test_input_required_result_sampling(context: ToolContext) -> str:
    """Asks the client's model a question (input-required-result-basic-sampling)"""
    question = "What is the capital of France?"
    result = await context.sample(question, max_tokens=100, key="capital_question")
    return f"LLM response: {sampled_text(result)}"


@server.tool()
async def test_input_required_result_list_roots(context: ToolContext) -> str:
    """Asks for the client's roots (input-required-result-basic-list-roots)"""
    roots = await context.list_roots(key="client_roots")
    return f"Client roots: {roots_text(roots)}"


@server.tool()
async def test_input_required_result_request_state(context: ToolContext) -> str:
    """Asks for a confirmation; the retry's requestState is checked before this runs again
    (a bad one is refused with -32602), so an answer here means the state was valid
    (input-required-result-request-state)"""
    result = await context.elicit("Please confirm", CONFIRM_SCHEMA, key="confirm")
    return f"state-ok: {answered(result)}"


@server.tool()
async def test_input_required_result_tampered_state(context: ToolContext) -> str:
    """Asks for a confirmation; an altered requestState on the retry is refused with -32602
    (input-required-result-tampered-state)"""
    result = await context.elicit("Please confirm", CONFIRM_SCHEMA, key="confirm")
    return f"state-ok: {answered(result)}"


@server.tool()
async def test_input_required_result_multiple_inputs(context: ToolContext) -> str:
    """Asks for an elicitation, a sampling and the roots at once
    (input-required-result-multiple-input-requests)"""
    answers = await context.request_input(
        {
            "user_name": Elicitation("What is your name?", one_string("name")),
            "greeting": Sampling(["Generate a greeting"], max_tokens=50),
            "client_roots": ListRoots(),
        }
    )
    name: ElicitResult = answers["user_name"]
    return (
        f"name: {name.content.get('name')}; greeting: {sampled_text(answers['greeting'])};"
        f" roots: {roots_text(answers['client_roots'])}"
    )


@server.tool()
async def test_input_required_result_multi_round(context: ToolContext) -> str:
    """Asks two questions, one round each (input-required-result-multi-round)"""
    step1 = await context.elicit("Step 1: What is your name?", one_string("name"), key="step1")
    color_schema = one_string("color")
    step2 = await context.elicit("Step 2: What is your favorite color?", color_schema, key="step2")
    return f"{step1.content.get('name')} likes {step2.content.get('color')}"


@server.tool()
async def test_input_required_result_capabilities(context: ToolContext) -> str:
    """Asks only what the request's declared client capabilities allow
    (input-required-result-capability-check)"""
    wanted: dict[str, InputRequest] = {
        "user_name": Elicitation("What is your name?", one_string("name")),
        "greeting": Sampling(["Generate a greeting"], max_tokens=50),
        "client_roots": ListRoots(),
    }
    allowed = {k: r for k, r in wanted.items() if r.supported_by(context.client_capabilities)}
    if not allowed:
        return "The client declared no capability to ask it anything"
    answers = await context.request_input(allowed)
    return f"Answered: {', '.join(sorted(answers))}"


# -- 2026-07-28 diagnostic tools (server-stateless) ------------------------------------------------


@server.tool()
async def test_streaming_elicitation(context: ToolContext) -> str:
    """Diagnostic tool validating response progress streams"""
    await context.report_progress(50, 100)
    return "Streaming complete"


@server.tool()
async def test_missing_capability(context: ToolContext) -> str:
    """Samples the client's model (server-stateless): a request that does not declare the
    sampling capability is refused with -32021 before anything is asked."""
    result = await context.sample("Say hello", max_tokens=20, key="hello")
    return f"LLM response: {sampled_text(result)}"


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


# input-required-result-non-tool-request: a prompt that asks the user first (prompts/get).
@server.prompt(title="Prompt Asking For Input")
async def test_input_required_result_prompt(context: ToolContext) -> str:
    """A prompt that asks the user for its context before it renders"""
    schema = one_string("context")
    question = "What context should the prompt use?"
    result = await context.elicit(question, schema, key="user_context")
    if result.action != "accept":
        return "Please answer without any particular context."
    return f"Please answer with this context in mind: {result.content.get('context')}"


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


# -- tasks (2025-11-25 tasks, and the io.modelcontextprotocol/tasks extension) ------------------


@server.tool()
async def greet(name: str) -> str:
    """Sync-only: returns a greeting"""
    return f"Hello, {name}!"


@server.tool(task=True)
async def slow_compute(seconds: float = 0, label: str = "") -> str:
    """Sleeps `seconds` seconds, then answers (may run as a task)"""
    await trio.sleep(seconds)
    return f"computed {label} after {seconds:g} s"


@server.tool(task="required")
async def failing_job() -> str:
    """Fails with a tool execution error after about a second (runs only as a task)"""
    await trio.sleep(1)
    raise ToolError("failing_job failed, as it always does")


@server.tool(task=True)
async def protocol_error_job(context: ToolContext) -> str:
    """Fails with a protocol-level error: it needs roots, which the suite's client lacks"""
    context.require_client_capability("roots")
    return "unreachable"


@server.tool(task=True)
async def confirm_delete(filename: str, context: ToolContext) -> str:
    """Asks the user to confirm, then 'deletes' the file"""
    schema = {"type": "object", "properties": {"confirm": {"type": "boolean"}}}
    answer = await context.elicit(f"Delete {filename}?", schema)
    return f"{answer.action}: deleted={bool(answer.content.get('confirm'))} {filename}"


@server.tool(task=True)
async def multi_input(context: ToolContext) -> str:
    """Asks two questions at once"""
    schema = {"type": "object", "properties": {"name": {"type": "string"}}}
    answers = await context.request_input(
        {"first": Elicitation("First?", schema), "second": Elicitation("Second?", schema)}
    )
    return json.dumps({key: answer.content for key, answer in answers.items()})


@server.tool(task="required", task_detach=True)
async def test_tool_with_task(context: ToolContext) -> str:
    """Asks for a name over the round trip, then goes on as a task"""
    schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    answer = await context.elicit("What is your name?", schema, key="user_name")
    await context.detach()
    await trio.sleep(0.2)
    return f"Hello, {answer.content.get('name')}!"
