"""The pure parts and small seams of the /mcp transport: telling a reply from a notification,
what a POST waits for (``RequestRun``, on the autojump clock), the routing headers."""

from __future__ import annotations

import orjson
import pytest
import trio
import trio.testing

from datapulse.core.mcp_http import HeaderMismatch
from datapulse.net.http import Request
from datapulse.transports.request_run import JSON_WAIT_S, RequestRun, is_response, json_reply
from datapulse.transports.streamable import StreamableTransport
from datapulse.transports.streamable_modern import _routing_headers

REPLY = b'{"jsonrpc":"2.0","id":1,"result":{}}'
ERROR = b'{"jsonrpc":"2.0","id":1,"error":{"code":-32601,"message":"no"}}'
PROGRESS = b'{"jsonrpc":"2.0","method":"notifications/progress","params":{}}'
SERVER_REQUEST = b'{"jsonrpc":"2.0","id":"s1","method":"sampling/createMessage"}'


def http_request(*headers: tuple[str, str]) -> Request:
    """Header names lowercased, as h11 hands them to us."""
    pairs = [("host", "test"), *headers]
    return Request.from_target("POST", "/mcp", [(k.lower().encode(), v.encode()) for k, v in pairs])


@pytest.mark.parametrize(
    ("message", "expected"),
    [(REPLY, True), (ERROR, True), (PROGRESS, False), (SERVER_REQUEST, False)],
)
def test_is_response_tells_replies_from_messages_sent_before_them(
    message: bytes, expected: bool
) -> None:
    assert is_response(message) is expected


# -- RequestRun: what the POST waits for -------------------------------------------------------


async def test_a_first_message_wait_ends_at_the_first_message(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    run = RequestRun()
    woke_at: list[float] = []

    async def waiter() -> None:
        await run.wait(first_message=True)
        woke_at.append(trio.current_time())

    nursery.start_soon(waiter)
    await trio.sleep(0.2)
    run.note(PROGRESS)
    await trio.testing.wait_all_tasks_blocked()
    assert woke_at == [pytest.approx(0.2)]
    assert (run.messages, run.reply, run.done) == (1, None, False)


async def test_a_full_wait_ignores_messages_and_ends_when_the_run_finishes(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    run = RequestRun()
    finished = trio.Event()

    async def waiter() -> None:
        await run.wait(first_message=False)
        finished.set()

    nursery.start_soon(waiter)
    run.note(PROGRESS)
    run.note(REPLY)
    await trio.testing.wait_all_tasks_blocked()
    assert not finished.is_set()
    assert run.messages == 2
    run.finish(replied=True)
    with trio.fail_after(1):
        await finished.wait()
    assert run.reply == REPLY  # the last message, once the session says it was the reply


async def test_every_waiter_is_woken(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    run = RequestRun()
    woken: list[int] = []

    async def waiter(n: int) -> None:
        await run.wait(first_message=True)
        woken.append(n)

    for n in range(3):
        nursery.start_soon(waiter, n)
    await trio.testing.wait_all_tasks_blocked()
    run.note(REPLY)
    await trio.testing.wait_all_tasks_blocked()
    assert sorted(woken) == [0, 1, 2]


async def test_a_silent_run_leaves_the_post_waiting_only_json_wait_s(
    autojump_clock: trio.testing.MockClock,
) -> None:
    run = RequestRun()
    start = trio.current_time()
    with trio.move_on_after(JSON_WAIT_S) as scope:
        await run.wait(first_message=True)
    assert scope.cancelled_caught
    assert trio.current_time() - start == pytest.approx(JSON_WAIT_S)


async def test_waiting_on_a_finished_or_answered_run_returns_at_once() -> None:
    done = RequestRun()
    done.finish(replied=False)
    answered = RequestRun()
    answered.note(REPLY)
    with trio.fail_after(1):
        await done.wait(first_message=False)
        await answered.wait(first_message=True)


def test_the_json_reply_is_the_reply() -> None:
    run = RequestRun()
    run.note(PROGRESS)
    run.note(ERROR)
    run.finish(replied=True)
    reply = json_reply(run)
    assert reply.status == 200
    assert orjson.loads(reply.body)["error"]["code"] == -32601


def test_a_run_that_sent_no_reply_is_answered_204() -> None:
    run = RequestRun()
    run.note(PROGRESS)
    run.finish(replied=False)  # cancelled: the client asked for no reply
    assert json_reply(run).status == 204


# -- routing headers (2026-07-28) ---------------------------------------------------------------


def test_routing_headers_are_collected_stripped_and_lowercased() -> None:
    request = http_request(("MCP-Protocol-Version", " 2026-07-28 "), ("Mcp-Method", "tools/call"))
    assert _routing_headers(request) == {
        "mcp-protocol-version": "2026-07-28",
        "mcp-method": "tools/call",
    }


@pytest.mark.parametrize("name", ["MCP-Protocol-Version", "Mcp-Method", "Mcp-Name"])
def test_a_routing_header_sent_twice_is_a_header_mismatch(name: str) -> None:
    request = http_request((name, "a"), (name.lower(), "b"))
    with pytest.raises(HeaderMismatch) as caught:
        _routing_headers(request)
    assert caught.value.http_status == 400
    assert caught.value.jsonrpc_code == -32020


@pytest.mark.parametrize(
    ("version", "modern"),
    [(None, False), ("2025-06-18", False), ("2025-11-25", False), ("2026-07-28", True)],
)
def test_the_protocol_version_header_picks_the_era(version: str | None, modern: bool) -> None:
    headers = [("MCP-Protocol-Version", version)] if version else []
    assert StreamableTransport._is_modern(http_request(*headers)) is modern
