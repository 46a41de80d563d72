"""A running tool asks the client mid-call (``ToolContext.elicit``, ``elicit_url``, ``sample``,
``list_roots``), checked byte by byte on the wire with raw httpx and a raw WebSocket.

The app (``build_app``, also served by test_interop_asking.py and test_interop_ts_asking.py):

* ``deploy(service)`` elicits a confirmation (``CONFIRM``) and answers ``"deployed"``,
  ``"declined"`` (a decline, or ``confirm`` false) or ``"cancelled"``;
* ``summarize(text)`` asks the client's model (``sampling/createMessage``);
* ``roots()`` lists the client's roots (``roots/list``);
* ``register()`` asks two questions in sequence (a name, then the age of that name);
* ``portal()`` sends the user to a URL (URL-mode elicitation).

Handshake era (2025-11-25): the question is a JSON-RPC request of ours on the call's stream (the
POST's SSE stream on ``/mcp``, the session stream on ``/sse``, the socket on ``/ws``), answered by
the client's response; an error answer, no answer within ``--input-timeout`` (the client is sent
``notifications/cancelled``), the client cancelling the call, a client without the capability
(-32021), and transports that cannot carry a request (``--json-response``, ``/message``).

2026-07-28 (multi round-trip requests): the call answers ``resultType: "input_required"`` with
``inputRequests`` and a sealed ``requestState``; the retry carries ``inputResponses`` and the
state. A state that is altered, replayed, presented by someone else, for another request, or
expired is -32602 (HTTP 400); a missing capability is -32021 (HTTP 400).
"""

from __future__ import annotations

import base64
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pytest
import trio

from datapulse import Server, ToolContext
from datapulse.auth.verifier import Verifier
from datapulse.core import mcp
from tests.helpers import (
    AUTH,
    BOTH,
    TOKEN,
    RawClient,
    RawWebSocket,
    SSEReader,
    TwoUsers,
    bound_tests,
    client_of,
    make_config,
    mcp_session,
    next_message,
    note,
    rpc,
    serve_app,
    wire,
)

TEST_TIMEOUT_S = 10
HANDSHAKE = "2025-11-25"
MODERN = mcp.MODERN_VERSION

CONFIRM = {
    "type": "object",
    "properties": {"confirm": {"type": "boolean"}},
    "required": ["confirm"],
}
NAME = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
AGE = {"type": "object", "properties": {"age": {"type": "integer"}}, "required": ["age"]}
PORTAL_URL = "https://portal.example.test/sign-in?flow=42"
PORTAL_ID = "portal-42"
SUMMARY_SYSTEM_PROMPT = "Answer in one line."
EVERYTHING: dict[str, Any] = {"elicitation": {"form": {}, "url": {}}, "sampling": {}, "roots": {}}
"""Client capabilities that let every tool of the app ask what it asks."""


# -- the app ------------------------------------------------------------------------------------


@dataclass
class AskingApp:
    server: Server
    url: str = ""
    port: int = 0
    runs: Counter[str] = field(default_factory=Counter)
    """How often each tool started (on 2026-07-28 a tool runs again on every retry)."""
    interrupted: list[str] = field(default_factory=list)
    """``tool:ExceptionType`` for every question that did not return an answer to the tool."""
    deployed: list[str] = field(default_factory=list)


def build_app(*, verifier: Verifier | None = None, **overrides: Any) -> AskingApp:
    server = Server(make_config(**overrides), builtin_tools=False, verifier=verifier)
    app = AskingApp(server)

    def interrupted(tool: str, exc: BaseException) -> None:
        app.interrupted.append(f"{tool}:{type(exc).__name__}")

    @server.tool()
    async def deploy(service: str, context: ToolContext) -> str:
        """Deploy a service once the user confirms."""
        app.runs["deploy"] += 1
        try:
            answer = await context.elicit(f"Deploy {service}?", CONFIRM)
        except BaseException as exc:
            interrupted("deploy", exc)
            raise
        if answer.action == "cancel":
            return "cancelled"
        if answer.action == "decline" or answer.content.get("confirm") is not True:
            return "declined"
        app.deployed.append(service)
        return "deployed"

    @server.tool()
    async def summarize(text: str, context: ToolContext) -> str:
        """Summarize a text with the client's model."""
        app.runs["summarize"] += 1
        try:
            result = await context.sample(
                f"Summarize: {text}", max_tokens=64, system_prompt=SUMMARY_SYSTEM_PROMPT
            )
        except BaseException as exc:
            interrupted("summarize", exc)
            raise
        return f"{result['model']}: {result['content']['text']}"

    @server.tool()
    async def roots(context: ToolContext) -> list[str]:
        """The URIs of the client's roots."""
        app.runs["roots"] += 1
        return [root["uri"] for root in await context.list_roots()]

    @server.tool()
    async def register(context: ToolContext) -> str:
        """Two questions in sequence: a name, then the age of that name."""
        app.runs["register"] += 1
        name = await context.elicit("Your name?", NAME)
        if name.action != "accept":
            return "no name"
        age = await context.elicit(f"How old is {name.content['name']}?", AGE)
        if age.action != "accept":
            return f"{name.content['name']} (age unknown)"
        return f"{name.content['name']} ({age.content['age']})"

    @server.tool()
    async def portal(context: ToolContext) -> str:
        """Send the user to a sign-in page (URL-mode elicitation)."""
        app.runs["portal"] += 1
        answer = await context.elicit_url(
            "Sign in to the portal", PORTAL_URL, elicitation_id=PORTAL_ID
        )
        return answer.action

    return app


async def start_app(
    nursery: trio.Nursery, *, verifier: Verifier | None = None, **overrides: Any
) -> AskingApp:
    return await serve_app(nursery, build_app(verifier=verifier, **overrides))


@pytest.fixture
async def app(nursery: trio.Nursery) -> AskingApp:
    return await start_app(nursery)


def elicitation(message: str, schema: dict[str, Any]) -> dict[str, Any]:
    """An ``elicitation/create`` request's params (form mode) as the app sends them."""
    return {"mode": "form", "message": message, "requestedSchema": schema}


def text_result(text: str, *, structured: bool = True) -> dict[str, Any]:
    result: dict[str, Any] = {"content": [{"type": "text", "text": text}]}
    if structured:
        result["structuredContent"] = {"result": text}
    result["isError"] = False
    return result


def error_result(text: str) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": text}], "isError": True}


def answer(request_id: Any, result: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "result": result}


ACCEPT = {"action": "accept", "content": {"confirm": True}}
OUTCOMES = [
    pytest.param(ACCEPT, "deployed", id="accept"),
    pytest.param({"action": "accept", "content": {"confirm": False}}, "declined", id="unconfirmed"),
    pytest.param({"action": "decline"}, "declined", id="decline"),
    pytest.param({"action": "cancel"}, "cancelled", id="cancel"),
]


# == handshake era ================================================================================


async def open_session(
    http: httpx.AsyncClient, capabilities: dict[str, Any], version: str = HANDSHAKE
) -> dict[str, str]:
    """An initialized /mcp session whose client declared ``capabilities``; its headers."""
    return await mcp_session(http, version, capabilities=capabilities)


async def remaining_messages(reader: SSEReader, timeout: float = 5.0) -> list[dict[str, Any]]:
    """Every message until the server ends the stream."""
    found: list[dict[str, Any]] = []
    with trio.fail_after(timeout):
        while True:
            try:
                event = await reader.next(timeout)
            except StopAsyncIteration:
                return found
            if event.data:
                found.append(orjson.loads(event.data))


@asynccontextmanager
async def call_stream(
    http: httpx.AsyncClient, headers: dict[str, str], name: str, arguments: dict[str, Any], id: int
) -> AsyncIterator[SSEReader]:
    """A handshake-era tools/call POST whose answer is an SSE stream."""
    body = rpc("tools/call", {"name": name, "arguments": arguments}, id=id)
    async with http.stream("POST", "/mcp", headers=headers, json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream"
        yield SSEReader(response)


async def respond(http: httpx.AsyncClient, headers: dict[str, str], message: Any) -> None:
    """The client's response to a request of ours, POSTed to /mcp: accepted, no body."""
    response = await http.post("/mcp", headers=headers, json=message)
    assert response.status_code == 202, response.text
    assert response.content == b""


@pytest.mark.parametrize(("reply", "outcome"), OUTCOMES)
async def test_mcp_post_stream_carries_the_elicitation_and_then_the_result(
    app: AskingApp, reply: dict[str, Any], outcome: str
) -> None:
    async with client_of(app, headers=AUTH) as http:
        headers = await open_session(http, {"elicitation": {}})
        async with call_stream(http, headers, "deploy", {"service": "api"}, id=7) as reader:
            asked = await next_message(reader)
            assert set(asked) == {"jsonrpc", "id", "method", "params"}
            assert asked["jsonrpc"] == "2.0"
            assert isinstance(asked["id"], str) and asked["id"]
            assert asked["method"] == "elicitation/create"
            assert asked["params"] == elicitation("Deploy api?", CONFIRM)
            assert app.runs["deploy"] == 1 and app.interrupted == []  # it waits for the answer
            await respond(http, headers, answer(asked["id"], reply))
            done = await next_message(reader)
            assert done == {"jsonrpc": "2.0", "id": 7, "result": text_result(outcome)}
            assert await remaining_messages(reader) == []  # the stream ends with the result
    assert app.runs["deploy"] == 1
    assert app.deployed == (["api"] if outcome == "deployed" else [])


async def test_two_questions_in_sequence_on_one_stream(app: AskingApp) -> None:
    async with client_of(app, headers=AUTH) as http:
        headers = await open_session(http, {"elicitation": {}})
        async with call_stream(http, headers, "register", {}, id=3) as reader:
            first = await next_message(reader)
            assert first["method"] == "elicitation/create"
            assert first["params"] == elicitation("Your name?", NAME)
            await respond(
                http, headers, answer(first["id"], {"action": "accept", "content": {"name": "Ann"}})
            )
            second = await next_message(reader)
            assert second["method"] == "elicitation/create"
            assert second["params"] == elicitation("How old is Ann?", AGE)
            assert second["id"] != first["id"]
            # The first id is settled: answering it again changes nothing.
            await respond(
                http, headers, answer(first["id"], {"action": "accept", "content": {"name": "X"}})
            )
            await respond(
                http, headers, answer(second["id"], {"action": "accept", "content": {"age": 36}})
            )
            done = await next_message(reader)
            assert done == {"jsonrpc": "2.0", "id": 3, "result": text_result("Ann (36)")}
    assert app.runs["register"] == 1


async def test_sampling_and_roots_over_the_post_stream(app: AskingApp) -> None:
    async with client_of(app, headers=AUTH) as http:
        headers = await open_session(http, {"sampling": {}, "roots": {"listChanged": True}})
        async with call_stream(http, headers, "summarize", {"text": "a long text"}, id=1) as reader:
            asked = await next_message(reader)
            assert asked["method"] == "sampling/createMessage"
            assert asked["params"] == {
                "messages": [
                    {"role": "user", "content": {"type": "text", "text": "Summarize: a long text"}}
                ],
                "maxTokens": 64,
                "systemPrompt": SUMMARY_SYSTEM_PROMPT,
            }
            sampled = {
                "role": "assistant",
                "content": {"type": "text", "text": "short"},
                "model": "test-model",
                "stopReason": "endTurn",
            }
            await respond(http, headers, answer(asked["id"], sampled))
            done = await next_message(reader)
            assert done == {"jsonrpc": "2.0", "id": 1, "result": text_result("test-model: short")}
        async with call_stream(http, headers, "roots", {}, id=2) as reader:
            asked = await next_message(reader)
            assert asked["method"] == "roots/list"
            assert asked.get("params", {}) == {}
            listed = {"roots": [{"uri": "file:///work", "name": "work"}, {"uri": "file:///tmp"}]}
            await respond(http, headers, answer(asked["id"], listed))
            done = await next_message(reader)
            expected = ["file:///work", "file:///tmp"]
            assert done["result"]["structuredContent"] == {"result": expected}
            assert done["result"]["isError"] is False


async def test_url_mode_elicitation_needs_the_url_capability(app: AskingApp) -> None:
    async with client_of(app, headers=AUTH) as http:
        form_only = await open_session(http, {"elicitation": {}})
        refused = await http.post(
            "/mcp", headers=form_only, json=rpc("tools/call", {"name": "portal"}, id=1)
        )
        assert refused.status_code == 200
        assert refused.json()["error"] == {
            "code": -32021,
            "message": "this request needs the client capability 'elicitation'",
            "data": {"requiredCapabilities": {"elicitation": {}}},
        }
        headers = await open_session(http, {"elicitation": {"form": {}, "url": {}}})
        async with call_stream(http, headers, "portal", {}, id=2) as reader:
            asked = await next_message(reader)
            assert asked["method"] == "elicitation/create"
            assert asked["params"] == {
                "mode": "url",
                "message": "Sign in to the portal",
                "url": PORTAL_URL,
                "elicitationId": PORTAL_ID,
            }
            await respond(http, headers, answer(asked["id"], {"action": "accept"}))
            assert (await next_message(reader))["result"] == text_result("accept")


async def test_an_error_answer_is_an_is_error_result(app: AskingApp) -> None:
    async with client_of(app, headers=AUTH) as http:
        headers = await open_session(http, {"elicitation": {}})
        async with call_stream(http, headers, "deploy", {"service": "api"}, id=9) as reader:
            asked = await next_message(reader)
            refusal = {"code": -1, "message": "user closed the dialog"}
            await respond(http, headers, {"jsonrpc": "2.0", "id": asked["id"], "error": refusal})
            done = await next_message(reader)
            text = "the client answered elicitation/create with: user closed the dialog"
            assert done == {"jsonrpc": "2.0", "id": 9, "result": error_result(text)}
    assert app.interrupted == ["deploy:ClientDeclined"]
    assert app.deployed == []


async def test_no_answer_in_time_is_an_is_error_result_and_the_question_is_cancelled(
    nursery: trio.Nursery,
) -> None:
    app = await start_app(nursery, input_timeout_s=0.3)
    async with client_of(app, headers=AUTH) as http:
        headers = await open_session(http, {"elicitation": {}})
        async with call_stream(http, headers, "deploy", {"service": "api"}, id=4) as reader:
            asked = await next_message(reader)
            started = trio.current_time()
            cancelled = await next_message(reader)
            waited = trio.current_time() - started
            assert cancelled == {
                "jsonrpc": "2.0",
                "method": "notifications/cancelled",
                "params": {"requestId": asked["id"]},
            }
            done = await next_message(reader)
            text = "the client did not answer elicitation/create within 0.3 s"
            assert done == {"jsonrpc": "2.0", "id": 4, "result": error_result(text)}
            assert await remaining_messages(reader) == []
        assert 0.25 <= waited < 3, waited
        # A late answer is no one's: accepted, ignored.
        await respond(http, headers, answer(asked["id"], ACCEPT))
    assert app.interrupted == ["deploy:ToolError"]
    assert app.deployed == []


async def test_the_client_cancelling_the_call_cancels_the_open_question(app: AskingApp) -> None:
    async with client_of(app, headers=AUTH) as http:
        headers = await open_session(http, {"elicitation": {}})
        client = await RawClient.connect(app.port)
        try:
            body = wire(rpc("tools/call", {"name": "deploy", "arguments": {"service": "db"}}, id=8))
            await client.send("POST", "/mcp", list(headers.items()), body)
            await client.read_until(lambda c: any(e.data for e in c.events))
            (asked,) = [orjson.loads(e.data) for e in client.events if e.data]
            assert asked["method"] == "elicitation/create"
            cancel = note("notifications/cancelled", {"requestId": 8, "reason": "user"})
            assert (await http.post("/mcp", headers=headers, json=cancel)).status_code == 202
            await client.read_to_end()
            assert client.complete
        finally:
            await client.aclose()
        sent = [orjson.loads(e.data) for e in client.events if e.data]
        # Our question is withdrawn on the same stream, and the call has no result.
        assert sent[1] == {
            "jsonrpc": "2.0",
            "method": "notifications/cancelled",
            "params": {"requestId": asked["id"]},
        }
        assert not [m for m in sent if m.get("id") == 8 and "result" in m]
        assert app.interrupted == ["deploy:Cancelled"]
        # The session is still good, and a late answer to the withdrawn question is ignored.
        await respond(http, headers, answer(asked["id"], ACCEPT))
        async with call_stream(http, headers, "deploy", {"service": "web"}, id=9) as reader:
            again = await next_message(reader)
            assert again["id"] != asked["id"]
            await respond(http, headers, answer(again["id"], ACCEPT))
            assert (await next_message(reader))["result"] == text_result("deployed")
    assert app.deployed == ["web"]


@pytest.mark.parametrize(
    "capabilities",
    [{}, {"sampling": {}, "roots": {}}],
    ids=["none", "sampling-and-roots-only"],
)
async def test_a_client_without_the_elicitation_capability_gets_32021(
    app: AskingApp, capabilities: dict[str, Any]
) -> None:
    async with client_of(app, headers=AUTH) as http:
        headers = await open_session(http, capabilities)
        response = await http.post(
            "/mcp",
            headers=headers,
            json=rpc("tools/call", {"name": "deploy", "arguments": {"service": "api"}}, id=5),
        )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "jsonrpc": "2.0",
        "id": 5,
        "error": {
            "code": -32021,
            "message": "this request needs the client capability 'elicitation'",
            "data": {"requiredCapabilities": {"elicitation": {}}},
        },
    }
    assert app.deployed == []


async def test_json_response_mode_fails_the_question_at_once(nursery: trio.Nursery) -> None:
    app = await start_app(nursery, json_response=True, input_timeout_s=30)
    async with client_of(app, headers=AUTH) as http:
        headers = await open_session(http, EVERYTHING)
        with trio.fail_after(2):  # not the 30 s input timeout
            response = await http.post(
                "/mcp",
                headers=headers,
                json=rpc("tools/call", {"name": "deploy", "arguments": {"service": "api"}}, id=6),
            )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    text = "elicitation/create cannot reach the client over this transport"
    assert response.json() == {"jsonrpc": "2.0", "id": 6, "result": error_result(text)}
    assert app.interrupted == ["deploy:ToolError"]


async def test_the_original_message_api_fails_the_question_at_once(nursery: trio.Nursery) -> None:
    app = await start_app(nursery, input_timeout_s=30)
    async with client_of(app, headers=AUTH) as http:
        async with http.stream("GET", "/events?session_id=old") as events:
            reader = SSEReader(events)
            message = {
                "type": "call_tool",
                "request_id": "r1",
                "data": {"name": "deploy", "arguments": {"service": "api"}},
            }
            with trio.fail_after(2):
                queued = await http.post("/message?session_id=old", json=message)
                assert queued.status_code == 202
                reply = await next_message(reader)
    # The original API has no way to declare (or answer) a question: refused, not left waiting.
    assert reply == {
        "type": "error",
        "request_id": "r1",
        "error": "this request needs the client capability 'elicitation'",
    }
    assert app.deployed == []


async def test_sse_transport_carries_the_question_and_takes_the_answer(app: AskingApp) -> None:
    post_headers = {**AUTH, "Content-Type": "application/json"}
    async with client_of(app, headers=AUTH) as http:
        sse_headers = {"Accept": "text/event-stream"}
        async with http.stream("GET", "/sse", headers=sse_headers) as stream:
            reader = SSEReader(stream)
            endpoint = (await reader.next_data()).data
            assert endpoint is not None and endpoint.startswith("/messages?session_id=")
            params = {
                "protocolVersion": HANDSHAKE,
                "capabilities": {"elicitation": {}},
                "clientInfo": {"name": "t"},
            }
            init = await http.post(endpoint, headers=post_headers, json=rpc("initialize", params))
            assert init.status_code == 202
            assert (await next_message(reader))["result"]["protocolVersion"] == HANDSHAKE
            initialized = note("notifications/initialized")
            assert (await http.post(endpoint, headers=post_headers, json=initialized)).is_success
            call = rpc("tools/call", {"name": "deploy", "arguments": {"service": "sse"}}, id=2)
            assert (await http.post(endpoint, headers=post_headers, json=call)).status_code == 202
            event = await reader.next_data()
            assert event.event == "message"
            asked = orjson.loads(event.data or "")
            assert asked["method"] == "elicitation/create"
            assert asked["params"] == elicitation("Deploy sse?", CONFIRM)
            reply = answer(asked["id"], ACCEPT)
            posted = await http.post(endpoint, headers=post_headers, json=reply)
            assert posted.status_code == 202
            done = await next_message(reader)
            assert done == {"jsonrpc": "2.0", "id": 2, "result": text_result("deployed")}
    assert app.deployed == ["sse"]


async def test_websocket_carries_the_question_and_takes_the_answer(app: AskingApp) -> None:
    ws = await RawWebSocket.connect(app.port)
    try:
        params = {"protocolVersion": HANDSHAKE, "capabilities": {"elicitation": {}}}
        await ws.send(wire(rpc("initialize", params, id=0)))
        assert (await ws.next_message())["result"]["protocolVersion"] == HANDSHAKE
        await ws.send(wire(note("notifications/initialized")))
        await ws.send(
            wire(rpc("tools/call", {"name": "deploy", "arguments": {"service": "ws"}}, id=1))
        )
        asked = await ws.next_message()
        assert set(asked) == {"jsonrpc", "id", "method", "params"}
        assert asked["method"] == "elicitation/create"
        assert asked["params"] == elicitation("Deploy ws?", CONFIRM)
        await ws.send(wire(answer(asked["id"], {"action": "decline"})))
        done = await ws.next_message()
        assert done == {"jsonrpc": "2.0", "id": 1, "result": text_result("declined")}
    finally:
        await ws.client.aclose()
    assert app.runs["deploy"] == 1


# == 2026-07-28: multi round-trip requests =========================================================


def modern_headers(name: str, token: str = TOKEN) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {token}",
        "Content-Type": "application/json",
        "Accept": BOTH,
        "MCP-Protocol-Version": MODERN,
        "Mcp-Method": "tools/call",
        "Mcp-Name": name,
    }


async def modern_call(
    http: httpx.AsyncClient,
    name: str,
    arguments: dict[str, Any] | None = None,
    *,
    capabilities: dict[str, Any] = EVERYTHING,
    state: str | None = None,
    responses: dict[str, Any] | None = None,
    token: str = TOKEN,
    id: int = 1,
) -> httpx.Response:
    params: dict[str, Any] = {
        "name": name,
        "arguments": arguments or {},
        "_meta": {
            mcp.META_PROTOCOL_VERSION: MODERN,
            mcp.META_CLIENT_CAPABILITIES: capabilities,
        },
    }
    if responses is not None:
        params["inputResponses"] = responses
    if state is not None:
        params["requestState"] = state
    return await http.post(
        "/mcp", headers=modern_headers(name, token), json=rpc("tools/call", params, id)
    )


def result_of(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"jsonrpc", "id", "result"}, body
    result: dict[str, Any] = body["result"]
    return result


def input_required(response: httpx.Response) -> tuple[dict[str, Any], str]:
    """The ``inputRequests`` and ``requestState`` of an ``input_required`` answer."""
    result = result_of(response)
    assert set(result) == {"resultType", "inputRequests", "requestState", "_meta"}, result
    assert result["resultType"] == "input_required"
    state = result["requestState"]
    assert isinstance(state, str) and state.startswith("v1.")
    return result["inputRequests"], state


def complete(response: httpx.Response) -> dict[str, Any]:
    result = result_of(response)
    assert result["resultType"] == "complete"
    assert result["_meta"][mcp.META_SERVER_INFO]["name"] == "datapulse"
    return {k: v for k, v in result.items() if k not in ("resultType", "_meta")}


def refused(response: httpx.Response, code: int, message: str) -> None:
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error"]["code"] == code, body
    assert body["error"]["message"] == message
    assert "result" not in body


def deploy_question(service: str) -> dict[str, Any]:
    return {"method": "elicitation/create", "params": elicitation(f"Deploy {service}?", CONFIRM)}


@pytest.mark.parametrize(("reply", "outcome"), OUTCOMES)
async def test_modern_round_one_asks_and_round_two_completes(
    app: AskingApp, reply: dict[str, Any], outcome: str
) -> None:
    async with client_of(app) as http:
        requests, state = input_required(await modern_call(http, "deploy", {"service": "api"}))
        assert requests == {"elicit-1": deploy_question("api")}
        assert app.runs["deploy"] == 1 and app.interrupted == ["deploy:InputRequired"]
        assert app.deployed == []
        retry = await modern_call(
            http, "deploy", {"service": "api"}, state=state, responses={"elicit-1": reply}, id=2
        )
        assert complete(retry) == text_result(outcome)
    assert app.runs["deploy"] == 2  # it ran again, from the start, with the answer
    assert app.interrupted == ["deploy:InputRequired"]
    assert app.deployed == (["api"] if outcome == "deployed" else [])


async def test_modern_two_questions_take_three_rounds_with_a_new_state_each(
    app: AskingApp,
) -> None:
    async with client_of(app) as http:
        first, state1 = input_required(await modern_call(http, "register"))
        assert first == {
            "elicit-1": {"method": "elicitation/create", "params": elicitation("Your name?", NAME)}
        }
        name = {"action": "accept", "content": {"name": "Bo"}}
        second, state2 = input_required(
            await modern_call(http, "register", state=state1, responses={"elicit-1": name}, id=2)
        )
        assert second == {
            "elicit-2": {
                "method": "elicitation/create",
                "params": elicitation("How old is Bo?", AGE),
            }
        }
        assert state2 != state1
        # Round 3 answers only the new question: the first answer waits in the state.
        age = {"action": "accept", "content": {"age": 7}}
        done = await modern_call(http, "register", state=state2, responses={"elicit-2": age}, id=3)
        assert complete(done) == text_result("Bo (7)")
    assert app.runs["register"] == 3


async def test_modern_sampling_and_roots_requests(app: AskingApp) -> None:
    async with client_of(app) as http:
        requests, state = input_required(await modern_call(http, "summarize", {"text": "x y z"}))
        assert requests == {
            "sample-1": {
                "method": "sampling/createMessage",
                "params": {
                    "messages": [
                        {"role": "user", "content": {"type": "text", "text": "Summarize: x y z"}}
                    ],
                    "maxTokens": 64,
                    "systemPrompt": SUMMARY_SYSTEM_PROMPT,
                },
            }
        }
        sampled = {"role": "assistant", "content": {"type": "text", "text": "xyz"}, "model": "m1"}
        done = await modern_call(
            http, "summarize", {"text": "x y z"}, state=state, responses={"sample-1": sampled}
        )
        assert complete(done) == text_result("m1: xyz")

        requests, state = input_required(await modern_call(http, "roots"))
        assert requests == {"roots-1": {"method": "roots/list", "params": {}}}
        listed = {"roots": [{"uri": "file:///srv", "name": "srv"}]}
        done = await modern_call(http, "roots", state=state, responses={"roots-1": listed})
        assert complete(done)["structuredContent"] == {"result": ["file:///srv"]}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _with_payload(state: str, **changes: Any) -> str:
    """The state with its payload changed (and its MAC kept)."""
    version, payload, mac = state.split(".")
    decoded = orjson.loads(_unb64(payload))
    decoded.update(changes)
    return f"{version}.{_b64(orjson.dumps(decoded))}.{mac}"


def _flip_first(text: str) -> str:
    # The first character: all six of its bits count (the last one's low bits are padding).
    return ("A" if text[0] != "A" else "B") + text[1:]


TAMPERINGS: dict[str, Callable[[str], str]] = {
    "payload-extends-expiry": lambda s: _with_payload(s, exp=int(time.time()) + 10**6),
    "payload-other-principal": lambda s: _with_payload(s, p="someone-else"),
    "mac-altered": lambda s: s.rsplit(".", 1)[0] + "." + _flip_first(s.rsplit(".", 1)[1]),
    "mac-dropped": lambda s: s.rsplit(".", 1)[0],
    "other-version": lambda s: "v2." + s.split(".", 1)[1],
    "not-ours": lambda s: "hello",
}
INTEGRITY = "requestState failed its integrity check"
NOT_OURS = "requestState is not one of ours"
TAMPER_MESSAGES = {
    "payload-extends-expiry": INTEGRITY,
    "payload-other-principal": INTEGRITY,
    "mac-altered": INTEGRITY,
    "mac-dropped": NOT_OURS,  # no third part: not even shaped like one of ours
    "other-version": NOT_OURS,
    "not-ours": NOT_OURS,
}


@pytest.mark.parametrize("how", list(TAMPERINGS))
async def test_modern_a_tampered_state_is_32602(app: AskingApp, how: str) -> None:
    async with client_of(app) as http:
        _, state = input_required(await modern_call(http, "deploy", {"service": "api"}))
        tampered = TAMPERINGS[how](state)
        assert tampered != state
        response = await modern_call(
            http, "deploy", {"service": "api"}, state=tampered, responses={"elicit-1": ACCEPT}
        )
        refused(response, -32602, TAMPER_MESSAGES[how])
        # The genuine state still works (a refused attempt did not use it up).
        done = await modern_call(
            http, "deploy", {"service": "api"}, state=state, responses={"elicit-1": ACCEPT}
        )
        assert complete(done) == text_result("deployed")
    assert app.runs["deploy"] == 2  # the tampered round never reached the tool
    assert app.deployed == ["api"]


async def test_modern_a_state_is_redeemed_once(app: AskingApp) -> None:
    async with client_of(app) as http:
        _, state = input_required(await modern_call(http, "deploy", {"service": "api"}))
        first = await modern_call(
            http, "deploy", {"service": "api"}, state=state, responses={"elicit-1": ACCEPT}
        )
        assert complete(first) == text_result("deployed")
        replayed = await modern_call(
            http, "deploy", {"service": "api"}, state=state, responses={"elicit-1": ACCEPT}, id=2
        )
        refused(
            replayed,
            -32602,
            "requestState was already used or has expired; start the request again",
        )
    assert app.deployed == ["api"]  # deployed once, not twice
    assert app.runs["deploy"] == 2


async def test_modern_an_intermediate_state_is_redeemed_once_too(app: AskingApp) -> None:
    """Replaying round 2 of three: the stored first answer went with its first use."""
    async with client_of(app) as http:
        _, state1 = input_required(await modern_call(http, "register"))
        name = {"action": "accept", "content": {"name": "Cy"}}
        input_required(
            await modern_call(http, "register", state=state1, responses={"elicit-1": name})
        )
        replayed = await modern_call(http, "register", state=state1, responses={"elicit-1": name})
        refused(
            replayed,
            -32602,
            "requestState was already used or has expired; start the request again",
        )


async def test_modern_a_state_presented_by_another_principal_is_32602(
    nursery: trio.Nursery,
) -> None:
    app = await start_app(nursery, verifier=TwoUsers())
    async with client_of(app) as http:
        _, state = input_required(
            await modern_call(http, "deploy", {"service": "api"}, token="alice")
        )
        stolen = await modern_call(
            http,
            "deploy",
            {"service": "api"},
            state=state,
            responses={"elicit-1": ACCEPT},
            token="bob",
        )
        refused(stolen, -32602, "requestState belongs to another principal")
        # Bob's own call is his: asked, answered, done.
        _, bobs = input_required(await modern_call(http, "deploy", {"service": "db"}, token="bob"))
        done = await modern_call(
            http,
            "deploy",
            {"service": "db"},
            state=bobs,
            responses={"elicit-1": ACCEPT},
            token="bob",
        )
        assert complete(done) == text_result("deployed")
    assert app.deployed == ["db"]


@pytest.mark.parametrize(
    ("name", "arguments"),
    [
        pytest.param("deploy", {"service": "db"}, id="other-arguments"),
        pytest.param("deploy", {"service": "API"}, id="arguments-differ-in-case"),
        pytest.param("register", {}, id="other-tool"),
        pytest.param("summarize", {"text": "api"}, id="other-tool-same-values"),
    ],
)
async def test_modern_a_state_for_another_request_is_32602(
    app: AskingApp, name: str, arguments: dict[str, Any]
) -> None:
    async with client_of(app) as http:
        _, state = input_required(await modern_call(http, "deploy", {"service": "api"}))
        response = await modern_call(
            http, name, arguments, state=state, responses={"elicit-1": ACCEPT}
        )
        refused(response, -32602, "requestState belongs to another request")
    assert app.deployed == []
    assert app.runs[name] == (1 if name == "deploy" else 0)


async def test_modern_an_expired_state_is_32602(nursery: trio.Nursery) -> None:
    app = await start_app(nursery, input_timeout_s=1.0)
    async with client_of(app) as http:
        # Fresh, it works...
        _, state = input_required(await modern_call(http, "deploy", {"service": "a"}))
        done = await modern_call(
            http, "deploy", {"service": "a"}, state=state, responses={"elicit-1": ACCEPT}
        )
        assert complete(done) == text_result("deployed")
        # ...past --input-timeout it does not.
        _, state = input_required(await modern_call(http, "deploy", {"service": "b"}))
        await trio.sleep(1.6)
        late = await modern_call(
            http, "deploy", {"service": "b"}, state=state, responses={"elicit-1": ACCEPT}
        )
        refused(late, -32602, "requestState has expired; start the request again")
    assert app.deployed == ["a"]


async def test_modern_a_state_stays_valid_for_the_whole_input_timeout(
    nursery: trio.Nursery,
) -> None:
    """--input-timeout is "how long a 2026-07-28 requestState stays valid": a retry well within
    it must be taken, whatever the wall clock's fraction of a second when the state was sealed.
    (Sealed at x.0-x.1 s with a 0.3 s timeout is the case a whole-second expiry gets wrong.)"""
    app = await start_app(nursery, input_timeout_s=0.3)
    async with client_of(app) as http:
        for attempt in range(3):
            with trio.fail_after(2):
                while time.time() % 1 > 0.1:
                    await trio.sleep(0.005)
            _, state = input_required(await modern_call(http, "deploy", {"service": "s"}))
            retry = await modern_call(
                http, "deploy", {"service": "s"}, state=state, responses={"elicit-1": ACCEPT}
            )
            assert retry.status_code == 200, (attempt, retry.text)
            assert complete(retry) == text_result("deployed")


@pytest.mark.parametrize(
    ("tool", "arguments", "capability"),
    [
        ("deploy", {"service": "api"}, "elicitation"),
        ("summarize", {"text": "x"}, "sampling"),
        ("roots", {}, "roots"),
    ],
)
async def test_modern_a_missing_capability_is_http_400_32021(
    app: AskingApp, tool: str, arguments: dict[str, Any], capability: str
) -> None:
    others = {k: v for k, v in EVERYTHING.items() if k != capability}
    async with client_of(app) as http:
        response = await modern_call(http, tool, arguments, capabilities=others)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "jsonrpc": "2.0",
        "id": 1,
        "error": {
            "code": -32021,
            "message": f"this request needs the client capability {capability!r}",
            "data": {"requiredCapabilities": {capability: {}}},
        },
    }
    assert app.runs[tool] == 1


bound_tests(globals(), TEST_TIMEOUT_S)
