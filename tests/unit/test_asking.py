"""Asking the client mid-call, without sockets: the sealed requestState, the 2026-07-28 round
trip through McpSession, and the handshake era's server-to-client request and its answer."""

from __future__ import annotations

import time
from typing import Any

import pytest
import trio

from datapulse.core import mcp, request_state
from datapulse.core.inputs import Elicitation, ElicitResult, ListRoots, Sampling, check_answer
from datapulse.core.jsonrpc import ErrorObject, ErrorResponse, Request, Response
from datapulse.errors import InvalidParams
from datapulse.protocol.dispatch import Dispatcher
from datapulse.protocol.roundtrip import RoundTrips
from datapulse.protocol.session import McpSession
from datapulse.store.memory import MemorySessionStore
from datapulse.tools.registry import ToolContext, ToolRegistry
from tests.unit.test_dispatch import Sink, modern_params

KEY = b"k" * 32

# -- the sealed state ---------------------------------------------------------------------------


def payload(**overrides: Any) -> dict[str, Any]:
    return {"p": "alice", "m": "tools/call", "d": "dd", "exp": time.time() + 60, "n": "nonce"} | (
        overrides
    )


def test_a_sealed_state_opens_with_its_key_and_any_rotated_one() -> None:
    sealed = request_state.seal(payload(), KEY)
    assert sealed.startswith("v1.")
    assert request_state.unseal(sealed, [KEY])["n"] == "nonce"
    assert request_state.unseal(sealed, [b"new" * 11, KEY])["p"] == "alice"  # rotation


@pytest.mark.parametrize(
    "mangle",
    [
        lambda s: s + "-TAMPERED",
        lambda s: s.replace("v1.", "v2.", 1),
        lambda s: s[:-4] + "AAAA",
        lambda s: "v1." + s.split(".")[1][:-2] + "xy." + s.split(".")[2],
        lambda s: "x" * 5000,
        lambda s: 42,
        lambda s: "",
    ],
)
def test_an_altered_or_foreign_state_is_refused(mangle: Any) -> None:
    sealed = request_state.seal(payload(), KEY)
    with pytest.raises(request_state.BadRequestState) as refused:
        request_state.unseal(mangle(sealed), [KEY])
    assert refused.value.jsonrpc_code == -32602
    with pytest.raises(request_state.BadRequestState, match="integrity"):
        request_state.unseal(sealed, [b"other" * 7])


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"p": "mallory"}, "another principal"),
        ({"m": "prompts/get"}, "another request"),
        ({"d": "other"}, "another request"),
        ({"exp": time.time() - 1}, "expired"),
        ({"n": ""}, "not one of ours"),
    ],
)
def test_a_state_is_bound_to_its_principal_request_and_lifetime(
    changes: dict[str, Any], says: str
) -> None:
    opened = request_state.unseal(request_state.seal(payload(**changes), KEY), [KEY])
    with pytest.raises(request_state.BadRequestState, match=says):
        request_state.check_binding(
            opened, principal="alice", method="tools/call", params_digest="dd", now=time.time()
        )


def test_the_params_digest_ignores_key_order_only() -> None:
    assert request_state.digest({"a": 1, "b": [1, 2]}) == request_state.digest(
        {"b": [1, 2], "a": 1}
    )
    assert request_state.digest({"a": 1}) != request_state.digest({"a": 2})


# -- answers ------------------------------------------------------------------------------------


def test_answers_are_checked_per_kind() -> None:
    assert check_answer(Elicitation("q"), {"action": "accept", "content": {"x": 1}}) == (
        ElicitResult("accept", {"x": 1})
    )
    assert check_answer(Elicitation("q"), {"action": "decline"}) == ElicitResult("decline", {})
    assert check_answer(ListRoots(), {"roots": [{"uri": "file:///a"}]}) == [{"uri": "file:///a"}]
    sampled = {"role": "assistant", "content": {"type": "text", "text": "hi"}, "model": "m"}
    assert check_answer(Sampling(["q"]), sampled) == sampled
    for request, bad in (
        (Elicitation("q"), {"action": "maybe"}),
        (Elicitation("q"), {"action": "accept", "content": [1]}),
        (Sampling(["q"]), {"role": "assistant"}),
        (ListRoots(), {"roots": "x"}),
    ):
        with pytest.raises(InvalidParams):
            check_answer(request, bad)


def test_capabilities_per_kind_and_mode() -> None:
    form, url = Elicitation("q"), Elicitation("q", mode="url", url="https://x", elicitation_id="e")
    assert form.supported_by({"elicitation": {}}) and not url.supported_by({"elicitation": {}})
    assert url.supported_by({"elicitation": {"url": {}}})
    assert not form.supported_by({"elicitation": {"url": {}}})
    assert not form.supported_by({}) and not Sampling(["q"]).supported_by({"elicitation": {}})
    assert url.params() == {
        "mode": "url",
        "message": "q",
        "url": "https://x",
        "elicitationId": "e",
    }


# -- the 2026-07-28 round trip ------------------------------------------------------------------


def asking_registry() -> ToolRegistry:
    registry = ToolRegistry()

    @registry.tool()
    async def two_questions(context: ToolContext) -> str:
        first = await context.elicit("name?", {"type": "object"})
        second = await context.sample("colour?", max_tokens=5)
        return f"{first.content['name']} likes {second['content']['text']}"

    return registry


def modern_dispatcher() -> tuple[Dispatcher, MemorySessionStore]:
    store = MemorySessionStore(1, 1)
    trips = RoundTrips([KEY], store.put_state, store.take_state, 60)
    return Dispatcher(asking_registry(), round_trips=trips), store


CAPABLE = {mcp.META_CLIENT_CAPABILITIES: {"elicitation": {}, "sampling": {}}}


async def modern_call(d: Dispatcher, principal: str = "alice", **params: Any) -> dict[str, Any]:
    session = McpSession(d, modern=True, principal_id=principal)
    sink = Sink()
    await session.handle(Request("r", "tools/call", modern_params(CAPABLE, **params)), sink)
    return sink.last


async def test_a_tool_asking_twice_takes_three_rounds_and_each_state_is_redeemed_once() -> None:
    d, _ = modern_dispatcher()
    first = (await modern_call(d, name="two_questions"))["result"]
    assert first["resultType"] == "input_required"
    assert first["inputRequests"] == {
        "elicit-1": {
            "method": "elicitation/create",
            "params": {"mode": "form", "message": "name?", "requestedSchema": {"type": "object"}},
        }
    }
    answer1 = {"elicit-1": {"action": "accept", "content": {"name": "Ada"}}}
    second = (
        await modern_call(
            d, name="two_questions", inputResponses=answer1, requestState=first["requestState"]
        )
    )["result"]
    assert second["resultType"] == "input_required"
    assert list(second["inputRequests"]) == ["sample-2"]
    assert second["requestState"] != first["requestState"]
    answer2 = {"sample-2": {"role": "assistant", "content": {"type": "text", "text": "teal"}}}
    done = (
        await modern_call(
            d, name="two_questions", inputResponses=answer2, requestState=second["requestState"]
        )
    )["result"]
    assert done["resultType"] == "complete"
    assert done["structuredContent"] == {"result": "Ada likes teal"}
    # Replayed: the answers it named were redeemed by the retry above.
    replayed = await modern_call(
        d, name="two_questions", inputResponses=answer2, requestState=second["requestState"]
    )
    assert replayed["error"]["code"] == -32602
    assert "already used" in replayed["error"]["message"]


async def test_a_state_only_continues_its_own_call() -> None:
    d, _ = modern_dispatcher()
    first = (await modern_call(d, name="two_questions"))["result"]
    answers = {"elicit-1": {"action": "accept", "content": {"name": "Ada"}}}
    state = first["requestState"]
    foreign = await modern_call(
        d, "mallory", name="two_questions", inputResponses=answers, requestState=state
    )
    assert foreign["error"]["code"] == -32602 and "principal" in foreign["error"]["message"]
    other_args = await modern_call(
        d, name="two_questions", arguments={"x": 1}, inputResponses=answers, requestState=state
    )
    assert (
        other_args["error"]["code"] == -32602
        and "another request" in other_args["error"]["message"]
    )
    # Neither attempt redeemed it: the owner's retry still works.
    ok = await modern_call(d, name="two_questions", inputResponses=answers, requestState=state)
    assert ok["result"]["resultType"] == "input_required"


async def test_missing_answers_are_asked_again_and_bad_ones_refused() -> None:
    d, _ = modern_dispatcher()
    first = (await modern_call(d, name="two_questions"))["result"]
    wrong_key = await modern_call(
        d,
        name="two_questions",
        inputResponses={"nope": {"action": "accept"}},
        requestState=first["requestState"],
    )
    assert list(wrong_key["result"]["inputRequests"]) == ["elicit-1"]  # re-requested
    malformed = await modern_call(
        d, name="two_questions", inputResponses={"elicit-1": {"action": "perhaps"}}
    )
    assert malformed["error"]["code"] == -32602


async def test_no_capability_no_question() -> None:
    d, _ = modern_dispatcher()
    session = McpSession(d, modern=True, principal_id="alice")
    sink = Sink()
    await session.handle(Request("r", "tools/call", modern_params(name="two_questions")), sink)
    assert sink.last["error"]["code"] == -32021
    assert sink.last["error"]["data"] == {"requiredCapabilities": {"elicitation": {}}}


# -- the handshake era --------------------------------------------------------------------------


class Client:
    """A session whose client answers our requests as ``answer`` says."""

    def __init__(self, answer: Any) -> None:
        self.session = McpSession(Dispatcher(asking_registry(), input_timeout_s=0.5))
        self.answer = answer
        self.sink = Sink()
        self.asked: list[dict[str, Any]] = []

    async def initialize(self, capabilities: dict[str, Any]) -> None:
        params = {"protocolVersion": "2025-11-25", "capabilities": capabilities, "clientInfo": {}}
        await self.session.handle(Request(0, "initialize", params), Sink())

    async def sink_and_answer(self, data: bytes) -> None:
        await self.sink(data)
        message = self.sink.last
        if "method" in message and "id" in message:  # a request of ours
            self.asked.append(message)
            reply = self.answer(message)
            if reply is not None:
                await self.session.handle(reply, Sink())

    async def call(self) -> dict[str, Any]:
        request = Request("c", "tools/call", {"name": "two_questions"})
        with trio.fail_after(5):
            await self.session.handle(request, self.sink_and_answer)
        return self.sink.last


def answer_all(message: dict[str, Any]) -> Response:
    if message["method"] == "elicitation/create":
        return Response(message["id"], {"action": "accept", "content": {"name": "Bo"}})
    return Response(
        message["id"], {"role": "assistant", "content": {"type": "text", "text": "red"}}
    )


async def test_the_handshake_era_asks_over_the_stream_and_takes_the_answers() -> None:
    client = Client(answer_all)
    await client.initialize({"elicitation": {}, "sampling": {}})
    reply = await client.call()
    assert reply["result"]["structuredContent"] == {"result": "Bo likes red"}
    assert [m["method"] for m in client.asked] == ["elicitation/create", "sampling/createMessage"]
    assert client.asked[1]["params"]["messages"] == [
        {"role": "user", "content": {"type": "text", "text": "colour?"}}
    ]
    assert len({m["id"] for m in client.asked}) == 2


async def test_an_error_answer_or_none_at_all_fails_the_tool_not_the_session() -> None:
    refusing = Client(lambda m: ErrorResponse(m["id"], ErrorObject(-1, "user closed the dialog")))
    await refusing.initialize({"elicitation": {}, "sampling": {}})
    reply = await refusing.call()
    assert reply["result"]["isError"] is True
    assert "user closed the dialog" in reply["result"]["content"][0]["text"]

    silent = Client(lambda m: None)
    await silent.initialize({"elicitation": {}, "sampling": {}})
    reply = await silent.call()
    assert reply["result"]["isError"] is True
    assert "did not answer elicitation/create" in reply["result"]["content"][0]["text"]
    cancelled = silent.sink.notifications("notifications/cancelled")
    assert cancelled == [{"requestId": silent.asked[0]["id"]}]
    assert silent.session._asking == {}  # nothing left waiting


async def test_a_transport_that_cannot_ask_fails_at_once() -> None:
    client = Client(answer_all)
    await client.initialize({"elicitation": {}})
    sink = Sink()
    with trio.fail_after(1):
        await client.session.handle(
            Request("c", "tools/call", {"name": "two_questions"}), sink, can_ask=False
        )
    assert sink.last["result"]["isError"] is True
    assert "cannot reach the client" in sink.last["result"]["content"][0]["text"]


async def test_a_state_keeps_only_the_answers_the_tool_used() -> None:
    """What a client sends unasked (a junk key, an answer to a question not asked yet) is not
    held between rounds: a state holds what the run consumed, up to a bound."""
    d, store = modern_dispatcher()
    first = (await modern_call(d, name="two_questions"))["result"]
    answers = {
        "elicit-1": {"action": "accept", "content": {"name": "Ada"}},
        "junk": {"x": "y" * 1000},
        "sample-9": {"role": "assistant", "content": {"type": "text", "text": "early"}},
    }
    second = await modern_call(
        d, name="two_questions", inputResponses=answers, requestState=first["requestState"]
    )
    assert second["result"]["resultType"] == "input_required"
    (kept,) = [data for _, data in store._states.values()]
    assert kept == {"answers": {"elicit-1": answers["elicit-1"]}}
