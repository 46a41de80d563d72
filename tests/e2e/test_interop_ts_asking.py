"""A tool asking the client mid-call, answered by the official MCP TypeScript SDK v2 client
(``@modelcontextprotocol/client``, pinned in tests/interop_ts/package.json) over ``/mcp``.

tests/interop_ts/asking.mjs declares the elicitation (form), sampling and roots capabilities,
registers a handler for each (``setRequestHandler('elicitation/create' | 'sampling/createMessage'
| 'roots/list')``) and calls the tools of the app in test_asking_wire.py, once per revision:

* ``2025-11-25``: our requests arrive on each call's POST SSE stream; the SDK POSTs the handler's
  result (or, when the handler throws, a JSON-RPC error) back;
* ``2026-07-28`` (``versionNegotiation`` pinned): the call answers ``input_required``; the SDK's
  auto-fulfilment driver runs the same handlers and retries with ``inputResponses`` and a
  byte-exact ``requestState``. The script records the tools/call bodies it POSTed, so each round
  is checked on the wire.

Its one result line holds what every step saw; each test asserts on one part. Each revision runs
once (a module-scoped fixture with its own ``trio.run``: the server in process, Node a subprocess
on loopback, both under one deadline: tests/interop_ts_harness.py). A missing Node or npm fails
the tests, it does not skip.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from tests.e2e.test_asking_wire import (
    AGE,
    CONFIRM,
    NAME,
    SUMMARY_SYSTEM_PROMPT,
    AskingApp,
    build_app,
)
from tests.interop_ts_harness import REVISIONS, ScriptRun, run_script

RUN_TIMEOUT_S = 20  # the whole exchange (about a second when all is well)
STEP_TIMEOUT_MS = 3000  # one call in the script, all its rounds included


@dataclass(repr=False)
class Run(ScriptRun):
    app: AskingApp


@pytest.fixture(scope="module", params=REVISIONS)
def run(request: pytest.FixtureRequest) -> Run:
    revision = request.param
    return run_script(
        lambda: Run(revision, build_app()),
        "asking.mjs",
        run_timeout_s=RUN_TIMEOUT_S,
        step_timeout_ms=STEP_TIMEOUT_MS,
    )


def text_of(result: dict[str, Any]) -> str:
    (block,) = result["content"]
    assert block["type"] == "text"
    text: str = block["text"]
    return text


def form(message: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"mode": "form", "message": message, "requestedSchema": schema}


# -- connection ---------------------------------------------------------------------------------


def test_connects_at_the_revision(run: Run) -> None:
    connect = run.step("connect")
    assert connect == {
        "protocolVersion": run.revision,
        "era": "modern" if run.modern else "legacy",
    }
    assert run.step("close") is True
    assert run.returncode == 0, run.stderr


# -- elicitation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("step", "service", "answer", "outcome"),
    [
        (
            "deploy_accept",
            "accepted",
            {"action": "accept", "content": {"confirm": True}},
            "deployed",
        ),
        ("deploy_decline", "declined", {"action": "decline"}, "declined"),
        ("deploy_cancel", "cancelled", {"action": "cancel"}, "cancelled"),
    ],
)
def test_deploy_acts_on_the_users_answer(
    run: Run, step: str, service: str, answer: dict[str, Any], outcome: str
) -> None:
    seen = run.step(step)
    result = seen["result"]
    assert result["isError"] is False
    assert text_of(result) == outcome
    assert result["structuredContent"] == {"result": outcome}
    (params,) = seen["elicited"]
    assert {k: v for k, v in params.items() if k != "_meta"} == form(f"Deploy {service}?", CONFIRM)
    if run.modern:
        first, retry = seen["calls"]
        assert "requestState" not in first and "inputResponses" not in first
        assert retry["inputResponses"] == {"elicit-1": answer}
        assert retry["requestState"] == first["issuedState"]  # echoed byte for byte
        assert "issuedState" not in retry  # the retry completed the call
        assert retry["id"] != first["id"]  # a fresh request id per round
    else:
        (call,) = seen["calls"]
        assert "requestState" not in call
    assert run.app.deployed.count(service) == (1 if outcome == "deployed" else 0)


def test_deploy_ran_once_per_round(run: Run) -> None:
    # Four deploy calls (accept, decline, cancel, error): once each on the stream; on 2026-07-28
    # once more for each retry (the error ends the call before any retry).
    assert run.app.runs["deploy"] == (3 * 2 + 1 if run.modern else 4)
    assert run.app.deployed == ["accepted"]


def test_a_throwing_elicitation_handler(run: Run) -> None:
    if run.modern:
        # The SDK's driver fails the call itself; nothing is retried.
        error = run.error("deploy_error")
        assert error["message"] == "the dialog was closed", error
        assert run.app.runs["deploy"] == 7
    else:
        # The SDK answers our request with a JSON-RPC error: the tool's result says so.
        seen = run.step("deploy_error")
        assert seen["result"]["isError"] is True
        assert text_of(seen["result"]) == (
            "the client answered elicitation/create with: the dialog was closed"
        )
        assert run.app.interrupted.count("deploy:ClientDeclined") == 1


def test_two_questions_in_sequence(run: Run) -> None:
    seen = run.step("register")
    assert text_of(seen["result"]) == "Tess (29)"
    assert [{k: v for k, v in p.items() if k != "_meta"} for p in seen["elicited"]] == [
        form("Your name?", NAME),
        form("How old is Tess?", AGE),
    ]
    if run.modern:
        calls = seen["calls"]
        assert [c.get("inputResponses") for c in calls] == [
            None,
            {"elicit-1": {"action": "accept", "content": {"name": "Tess"}}},
            {"elicit-2": {"action": "accept", "content": {"age": 29}}},
        ]
        states = [c.get("requestState") for c in calls]
        issued = [c.get("issuedState") for c in calls]
        assert states == [None, *issued[:2]] and issued[2] is None
        assert states[1] != states[2]  # a new state each round
        assert run.app.runs["register"] == 3
    else:
        assert len(seen["calls"]) == 1
        assert run.app.runs["register"] == 1
    assert run.result["unusedAnswers"] == []


# -- sampling and roots -------------------------------------------------------------------------


def test_sampling_goes_to_the_sampling_handler(run: Run) -> None:
    seen = run.step("summarize")
    assert seen["result"]["isError"] is False
    assert text_of(seen["result"]) == "ts-model: ts summary"
    (params,) = run.result["sampled"]
    assert {k: v for k, v in params.items() if k != "_meta"} == {
        "messages": [
            {"role": "user", "content": {"type": "text", "text": "Summarize: a ts story"}}
        ],
        "maxTokens": 64,
        "systemPrompt": SUMMARY_SYSTEM_PROMPT,
    }
    if run.modern:
        first, retry = seen["calls"]
        assert retry["requestState"] == first["issuedState"]
        assert retry["inputResponses"] == {
            "sample-1": {
                "model": "ts-model",
                "role": "assistant",
                "content": {"type": "text", "text": "ts summary"},
                "stopReason": "endTurn",
            }
        }
    assert run.app.runs["summarize"] == (2 if run.modern else 1)


def test_roots_go_to_the_roots_handler(run: Run) -> None:
    seen = run.step("roots")
    assert seen["result"]["structuredContent"] == {"result": ["file:///ts-project"]}
    assert run.result["rootsAsked"] == 1
    assert run.app.runs["roots"] == (2 if run.modern else 1)


# -- health -------------------------------------------------------------------------------------


def test_the_sdk_reports_no_error(run: Run) -> None:
    assert run.result["clientErrors"] == []


def test_the_server_logs_no_error(run: Run) -> None:
    assert run.server_errors == []
