"""Metrics without sockets: per-instance registries, the stream's pre-bound children, the backlog
histogram, the pinger's counter, tool outcomes and the exposition read back by prometheus-client."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing
from prometheus_client.parser import text_string_to_metric_families

from datapulse.core.jsonrpc import Notification, Request
from datapulse.live.pinger import Pinger
from datapulse.live.stream import LogStream, StoreLog
from datapulse.metrics import Metrics, StreamMetrics
from datapulse.protocol.dispatch import Dispatcher
from datapulse.protocol.session import McpSession
from datapulse.store import LogKey, MemorySessionStore
from datapulse.tools.registry import ToolRegistry
from tests.fakes import FakeBody
from tests.unit.store_helpers import new_record
from tests.unit.test_dispatch import Sink


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_each_metrics_has_its_own_registry() -> None:
    one, two = Metrics(), Metrics()
    one.pings.inc()
    one.rejected("sessions")
    assert sample(one, "datapulse_pings_total") == 1
    assert sample(two, "datapulse_pings_total") == 0
    assert sample(two, "datapulse_limit_rejections_total", limit="sessions") is None


def test_the_exposition_parses_and_reads_the_gauges_at_scrape_time() -> None:
    metrics = Metrics()
    open_now = [3]
    metrics.count_connections(lambda: open_now[0])
    metrics.count_sessions(lambda: 2)
    metrics.tool_call("get_time", "ok", 0.003)
    open_now[0] = 5
    families = {f.name: f for f in text_string_to_metric_families(metrics.exposition().decode())}
    assert families["datapulse_open_connections"].samples[0].value == 5
    assert families["datapulse_sessions"].samples[0].value == 2
    assert families["datapulse_tool_calls"].type == "counter"
    assert families["datapulse_tool_call_duration_seconds"].type == "histogram"


def test_stream_metrics_without_metrics_discard() -> None:
    discard = StreamMetrics()
    discard.events.inc()
    discard.open.dec()
    discard.backlog.observe(3)


async def test_a_stream_counts_its_events_bytes_and_backlog(nursery: trio.Nursery) -> None:
    store = MemorySessionStore(max_events=100, max_bytes=1 << 20)
    await store.create(new_record("s"))
    metrics = Metrics()
    body = FakeBody()
    stream = LogStream(
        StoreLog(store, LogKey("s")), body, Pinger(60), metrics=metrics.stream("events")
    )
    nursery.start_soon(stream.run, 0)
    await trio.testing.wait_all_tasks_blocked()
    assert sample(metrics, "datapulse_open_streams", transport="events") == 1
    stream.offer(await store.append(LogKey("s"), "one"))  # the fast path
    body.accept_now = False
    for text in ("two", "three"):
        stream.offer(await store.append(LogKey("s"), text))  # behind: a catch-up of two
    await trio.testing.wait_all_tasks_blocked()
    assert sample(metrics, "datapulse_events_sent_total", transport="events") == 3
    sent = sample(metrics, "datapulse_event_bytes_sent_total", transport="events")
    assert sent == len(body.written)
    assert sample(metrics, "datapulse_stream_backlog_events_count") == 1
    assert sample(metrics, "datapulse_stream_backlog_events_sum") == 2
    body.leave()
    await trio.testing.wait_all_tasks_blocked()
    assert sample(metrics, "datapulse_open_streams", transport="events") == 0


async def test_the_pinger_counts_pings(autojump_clock: trio.testing.MockClock) -> None:
    metrics = Metrics()
    pinger = Pinger(1.0, metrics.pings)

    class Stream:
        def ping_due(self) -> None:
            pinger.touch(self)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(pinger.run)
        pinger.touch(Stream())
        await trio.sleep(3.5)
        nursery.cancel_scope.cancel()
    assert sample(metrics, "datapulse_pings_total") == 3


async def test_tool_outcomes_are_counted_by_the_dispatcher() -> None:
    metrics = Metrics()
    registry = ToolRegistry()

    @registry.tool("ok")
    async def ok(arguments: dict[str, Any], context: Any) -> dict[str, Any]:
        return {"fine": True}

    @registry.tool("bad")
    async def bad(arguments: dict[str, Any], context: Any) -> None:
        raise RuntimeError("no")

    session = McpSession(Dispatcher(registry, metrics=metrics), session_id="s1")
    sink = Sink()
    params = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t"}}
    await session.handle(Request(0, "initialize", params), sink)
    await session.handle(Notification("notifications/initialized"), sink)
    for number, name in enumerate(("ok", "bad"), 1):
        await session.handle(Request(number, "tools/call", {"name": name}), sink)
    assert sample(metrics, "datapulse_tool_calls_total", tool="ok", outcome="ok") == 1
    assert sample(metrics, "datapulse_tool_calls_total", tool="bad", outcome="error") == 1
    assert sample(metrics, "datapulse_tool_call_duration_seconds_count", tool="ok") == 1
