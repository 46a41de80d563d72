"""Notices: resources/updated and list_changed to handshake sessions and 2026 listen streams."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
import trio
import trio.testing

from datapulse.core import mcp
from datapulse.core.jsonrpc import Request
from datapulse.errors import InvalidParams
from datapulse.features.catalog import Catalog
from datapulse.protocol.dispatch import Dispatcher
from datapulse.protocol.notices import ListenStream, Notices
from datapulse.protocol.session import McpSession, Outcome
from datapulse.protocol.state import ProtocolState
from tests.unit.test_dispatch import Sink, modern_params

SUB = mcp.META_SUBSCRIPTION_ID


@dataclass(eq=False)
class FakeSession:
    state: ProtocolState = field(default_factory=ProtocolState)


def session(*subscriptions: str, initialized: bool = True) -> FakeSession:
    return FakeSession(ProtocolState(initialized=initialized, subscriptions=list(subscriptions)))


def stream(sid: str | int, sink: Sink, **wanted: Any) -> ListenStream:
    return ListenStream(sid, mcp.parse_listen_filter({"notifications": wanted}), sink)


def updated(uri: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "method": "notifications/resources/updated", "params": {"uri": uri}}


def tagged(method: str, sid: str | int, **params: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "method": method, "params": {**params, "_meta": {SUB: sid}}}


def changed(kind: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "method": f"notifications/{kind}/list_changed"}


class Broken:
    """A sink whose client has gone: every delivery fails."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, data: bytes) -> None:
        self.calls += 1
        raise trio.BrokenResourceError("gone")


# -- listeners ----------------------------------------------------------------------------------


async def test_attach_detach() -> None:
    notices = Notices()
    a, b = session("x://1"), session("x://1")
    first, second, other = Sink(), Sink(), Sink()
    notices.attach(a, first)
    notices.attach(b, other)
    notices.attach(a, second)  # again: replaces a's sink
    assert notices.listeners == 2
    assert await notices.resource_updated("x://1") == 2
    assert first.messages == []
    assert second.messages == [updated("x://1")] and other.messages == [updated("x://1")]

    notices.detach(FakeSession())  # never attached: nothing happens
    assert notices.listeners == 2
    notices.detach(a)
    notices.detach(a)
    assert notices.listeners == 1
    assert await notices.resource_updated("x://1") == 1
    assert second.messages == [updated("x://1")]


async def test_listen_context_registers_for_its_block() -> None:
    notices = Notices()
    sink = Sink()
    with notices.listen(stream(1, sink, resourceSubscriptions=["x://1"])) as s:
        assert notices.listeners == 1 and not s.ended.is_set()
        assert await notices.resource_updated("x://1") == 1
    assert notices.listeners == 0
    assert await notices.resource_updated("x://1") == 0
    assert sink.messages == [tagged("notifications/resources/updated", 1, uri="x://1")]


# -- resources/updated --------------------------------------------------------------------------


async def test_resource_updated_reaches_only_subscribers() -> None:
    notices = Notices()
    subscribed, elsewhere, none = Sink(), Sink(), Sink()
    notices.attach(session("x://1", "x://2"), subscribed)
    notices.attach(session("x://2"), elsewhere)
    notices.attach(session(), none)
    watching, blind = Sink(), Sink()
    with (
        notices.listen(stream("sub-a", watching, resourceSubscriptions=["x://1"])),
        notices.listen(
            stream("sub-b", blind, resourceSubscriptions=["x://2"], toolsListChanged=True)
        ),
    ):
        assert await notices.resource_updated("x://1") == 2
        assert await notices.resource_updated("x://3") == 0
    assert subscribed.messages == [updated("x://1")]
    assert elsewhere.messages == [] and none.messages == [] and blind.messages == []
    assert watching.messages == [tagged("notifications/resources/updated", "sub-a", uri="x://1")]


async def test_resource_updated_follows_subscription_changes() -> None:
    notices = Notices()
    s, sink = session(), Sink()
    notices.attach(s, sink)
    assert await notices.resource_updated("x://1") == 0
    s.state.subscriptions.append("x://1")
    assert await notices.resource_updated("x://1") == 1
    s.state.subscriptions.remove("x://1")
    assert await notices.resource_updated("x://1") == 0
    assert sink.messages == [updated("x://1")]


async def test_failing_sink_does_not_stop_the_others() -> None:
    notices = Notices()
    broken, after, listening = Broken(), Sink(), Sink()
    notices.attach(session("x://1"), broken)
    notices.attach(session("x://1"), after)
    with notices.listen(stream(9, Broken(), resourceSubscriptions=["x://1"])):
        with notices.listen(stream(10, listening, resourceSubscriptions=["x://1"])):
            assert await notices.resource_updated("x://1") == 2
    assert broken.calls == 1
    assert after.messages == [updated("x://1")]
    assert listening.messages == [tagged("notifications/resources/updated", 10, uri="x://1")]


# -- list_changed -------------------------------------------------------------------------------


async def test_list_changed_to_initialized_sessions_and_wanting_streams() -> None:
    notices = Notices()
    ready, early = Sink(), Sink()
    notices.attach(session(), ready)
    notices.attach(session(initialized=False), early)
    tools_only, everything, uris_only = Sink(), Sink(), Sink()
    with (
        notices.listen(stream("t", tools_only, toolsListChanged=True)),
        notices.listen(
            stream(
                "e",
                everything,
                toolsListChanged=True,
                promptsListChanged=True,
                resourcesListChanged=True,
            )
        ),
        notices.listen(stream("u", uris_only, resourceSubscriptions=["x://1"])),
    ):
        async with trio.open_nursery() as nursery:
            await nursery.start(notices.run)
            for kind in ("tools", "resources", "prompts"):
                notices.list_changed(kind)
                await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    assert ready.messages == [changed("tools"), changed("resources"), changed("prompts")]
    assert early.messages == []
    assert tools_only.messages == [tagged("notifications/tools/list_changed", "t")]
    assert everything.messages == [
        tagged("notifications/tools/list_changed", "e"),
        tagged("notifications/resources/list_changed", "e"),
        tagged("notifications/prompts/list_changed", "e"),
    ]
    assert uris_only.messages == []


async def test_list_changed_is_coalesced_per_wake_up() -> None:
    notices = Notices()
    sink, listening, broken = Sink(), Sink(), Broken()
    notices.attach(session(), broken)
    notices.attach(session(), sink)
    with notices.listen(stream(1, listening, toolsListChanged=True, promptsListChanged=True)):
        async with trio.open_nursery() as nursery:
            await nursery.start(notices.run)
            for kind in ("tools", "prompts", "tools", "tools", "prompts"):
                notices.list_changed(kind)  # a burst: run() has not woken up yet
            await trio.testing.wait_all_tasks_blocked()
            assert sink.messages == [changed("tools"), changed("prompts")]
            assert listening.messages == [
                tagged("notifications/tools/list_changed", 1),
                tagged("notifications/prompts/list_changed", 1),
            ]
            # The next change is sent again, and only that one.
            notices.list_changed("prompts")
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    assert sink.messages == [changed("tools"), changed("prompts"), changed("prompts")]
    assert len(listening.messages) == 3
    assert broken.calls == 3  # tried every time, never in the way


async def test_catalog_changes_reach_clients_through_notices() -> None:
    cat = Catalog()
    notices = Notices()
    cat.on_change.append(notices.list_changed)
    sink = Sink()
    notices.attach(session(), sink)

    async def read() -> str:
        return "r"

    async with trio.open_nursery() as nursery:
        await nursery.start(notices.run)
        cat.resources.add("x://1", read)
        cat.resources.add("x://2", read)
        cat.prompts.add(read, name="p")
        cat.resources.remove("x://1")
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert sink.messages == [changed("resources"), changed("prompts")]


# -- close --------------------------------------------------------------------------------------


async def test_close_ends_listen_streams() -> None:
    notices = Notices()
    a, b = stream(1, Sink()), stream(2, Sink())
    with notices.listen(a), notices.listen(b):
        assert not a.ended.is_set() and not b.ended.is_set()
        notices.close()
        assert a.ended.is_set() and b.ended.is_set()
        assert notices.closing is True
    late = stream(3, Sink())
    with notices.listen(late):
        assert late.ended.is_set()  # a stream that starts during shutdown ends at once


# -- subscriptions/listen through a 2026 session ------------------------------------------------


async def read_clock() -> dict[str, int]:
    return {"t": 1}


async def read_other() -> str:
    return "other"


async def note(name: str) -> str:
    return name


def listen_dispatcher() -> Dispatcher:
    cat = Catalog()
    cat.resources.add("pulse://clock", read_clock)
    cat.resources.add("pulse://other", read_other)
    cat.resources.add("notes://{name}", note)
    return Dispatcher(cat, server_name="test-server", server_version="9.9")


async def test_listen_acknowledges_relays_and_answers_at_shutdown() -> None:
    d = listen_dispatcher()
    sink = Sink()
    outcomes: list[Outcome] = []
    notifications = {
        "toolsListChanged": True,
        "resourceSubscriptions": ["pulse://clock", "notes://a", "pulse://clock"],
        "elicitationsListChanged": True,  # not something we serve: left out of the echo
    }

    async def listen() -> None:
        params = modern_params(notifications=notifications)
        outcomes.append(
            await McpSession(d, modern=True).handle(
                Request(7, "subscriptions/listen", params), sink
            )
        )

    async with trio.open_nursery() as nursery:
        await nursery.start(d.notices.run)
        nursery.start_soon(listen)
        await trio.testing.wait_all_tasks_blocked()
        assert sink.messages == [
            tagged(
                "notifications/subscriptions/acknowledged",
                7,
                notifications={
                    "toolsListChanged": True,
                    "resourceSubscriptions": ["pulse://clock", "notes://a"],
                },
            )
        ]
        assert d.notices.listeners == 1
        assert await d.notices.resource_updated("pulse://other") == 0
        assert await d.notices.resource_updated("notes://a") == 1
        assert await d.notices.resource_updated("pulse://clock") == 1
        d.notices.list_changed("prompts")  # not asked for
        d.notices.list_changed("tools")
        await trio.testing.wait_all_tasks_blocked()
        assert outcomes == []  # still open
        d.notices.close()
        await trio.testing.wait_all_tasks_blocked()
        assert outcomes == [Outcome(responded=True)]
        nursery.cancel_scope.cancel()
    assert sink.messages[1:] == [
        tagged("notifications/resources/updated", 7, uri="notes://a"),
        tagged("notifications/resources/updated", 7, uri="pulse://clock"),
        tagged("notifications/tools/list_changed", 7),
        {
            "jsonrpc": "2.0",
            "id": 7,
            "result": {
                "_meta": {SUB: 7, mcp.META_SERVER_INFO: {"name": "test-server", "version": "9.9"}},
                "resultType": "complete",
            },
        },
    ]
    assert d.notices.listeners == 0


async def test_listen_stream_closed_by_the_client() -> None:
    d = listen_dispatcher()
    sink = Sink()
    params = modern_params(notifications={"resourceSubscriptions": ["pulse://clock"]})
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            McpSession(d, modern=True).handle, Request("L", "subscriptions/listen", params), sink
        )
        await trio.testing.wait_all_tasks_blocked()
        assert d.notices.listeners == 1
        nursery.cancel_scope.cancel()  # the client went away: the request is cancelled
    assert d.notices.listeners == 0
    assert [m["method"] for m in sink.messages] == ["notifications/subscriptions/acknowledged"]
    assert sink.messages[0]["params"]["_meta"] == {SUB: "L"}
    assert await d.notices.resource_updated("pulse://clock") == 0


async def test_listen_after_close_answers_at_once() -> None:
    d = listen_dispatcher()
    d.notices.close()
    sink = Sink()
    params = modern_params(notifications={"promptsListChanged": True})
    with trio.fail_after(1):
        outcome = await McpSession(d, modern=True).handle(
            Request(3, "subscriptions/listen", params), sink
        )
    assert outcome == Outcome(responded=True)
    assert [m.get("method") for m in sink.messages] == [
        "notifications/subscriptions/acknowledged",
        None,
    ]
    assert sink.messages[0]["params"]["notifications"] == {"promptsListChanged": True}
    assert sink.last["result"]["_meta"][SUB] == 3


@pytest.mark.parametrize(
    ("notifications", "message", "data"),
    [
        (
            {"resourceSubscriptions": ["pulse://nope"]},
            "resource not found: 'pulse://nope'",
            {"uri": "pulse://nope"},
        ),
        (
            {"resourceSubscriptions": ["pulse://clock", "notes://a/b"]},
            "resource not found: 'notes://a/b'",
            {"uri": "notes://a/b"},
        ),
        ({"toolsListChanged": "yes"}, "notifications.toolsListChanged must be a boolean", None),
        ("all", "notifications must be an object", None),
    ],
)
async def test_listen_refuses_a_bad_filter(notifications: Any, message: str, data: Any) -> None:
    d = listen_dispatcher()
    sink = Sink()
    params = modern_params(notifications=notifications)
    outcome = await McpSession(d, modern=True).handle(
        Request(4, "subscriptions/listen", params), sink
    )
    error: dict[str, Any] = {"code": -32602, "message": message}
    if data is not None:
        error["data"] = data
    assert sink.messages == [{"jsonrpc": "2.0", "id": 4, "error": error}]
    assert outcome == Outcome(responded=True, error_code=-32602)
    assert d.notices.listeners == 0


async def test_listen_is_not_a_handshake_method() -> None:
    d = listen_dispatcher()
    s = McpSession(d)
    sink = Sink()
    await s.handle(Request(0, "initialize", {"protocolVersion": "2025-11-25"}), sink)
    await s.handle(Request(1, "subscriptions/listen", {"notifications": {}}), sink)
    assert sink.last["error"]["code"] == -32601


# -- parse_listen_filter ------------------------------------------------------------------------


def test_parse_listen_filter() -> None:
    empty = mcp.parse_listen_filter({})
    assert empty == mcp.ListenFilter()
    assert empty.to_wire() == {}
    assert not any(empty.wants_list(k) for k in ("tools", "prompts", "resources"))

    wanted = mcp.parse_listen_filter(
        {
            "notifications": {
                "promptsListChanged": True,
                "toolsListChanged": False,
                "resourceSubscriptions": ["b://", "a://", "b://"],
                "somethingNew": {"x": 1},
            }
        }
    )
    assert wanted.prompts_list_changed and not wanted.tools_list_changed
    assert wanted.wants_list("prompts") and not wanted.wants_list("tools")
    assert not wanted.wants_list("resources") and not wanted.wants_list("roots")
    assert wanted.resource_subscriptions == frozenset({"a://", "b://"})
    assert wanted.to_wire() == {
        "promptsListChanged": True,
        "resourceSubscriptions": ["b://", "a://"],
    }


def test_parse_listen_filter_at_the_uri_bound() -> None:
    uris = [f"x://{i}" for i in range(mcp.MAX_LISTEN_URIS)]
    parsed = mcp.parse_listen_filter({"notifications": {"resourceSubscriptions": uris}})
    assert parsed.to_wire() == {"resourceSubscriptions": uris}
    with pytest.raises(InvalidParams) as info:
        mcp.parse_listen_filter({"notifications": {"resourceSubscriptions": [*uris, "x://last"]}})
    assert str(info.value) == "at most 256 resourceSubscriptions per listen request"


@pytest.mark.parametrize(
    ("notifications", "message"),
    [
        (None, "notifications must be an object"),
        ([], "notifications must be an object"),
        ({"toolsListChanged": 1}, "notifications.toolsListChanged must be a boolean"),
        ({"promptsListChanged": None}, "notifications.promptsListChanged must be a boolean"),
        ({"resourcesListChanged": "true"}, "notifications.resourcesListChanged must be a boolean"),
        (
            {"resourceSubscriptions": "x://1"},
            "notifications.resourceSubscriptions must be a list of strings",
        ),
        (
            {"resourceSubscriptions": ["x://1", 2]},
            "notifications.resourceSubscriptions must be a list of strings",
        ),
    ],
)
def test_parse_listen_filter_rejects(notifications: Any, message: str) -> None:
    with pytest.raises(InvalidParams) as info:
        mcp.parse_listen_filter({"notifications": notifications})
    assert str(info.value) == message
    assert info.value.jsonrpc_code == -32602


def test_listen_notification_carries_the_subscription_id() -> None:
    raw = mcp.listen_notification("notifications/x", {"a": 1}, "s-1")
    assert orjson.loads(raw) == {
        "jsonrpc": "2.0",
        "method": "notifications/x",
        "params": {"a": 1, "_meta": {SUB: "s-1"}},
    }
