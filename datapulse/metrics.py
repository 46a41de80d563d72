"""Metrics: what the server counts, as Prometheus metrics (prometheus-client), one set per Server.

Every ``Metrics`` owns its own ``CollectorRegistry``, never the client's global one: several
servers in one process (tests, an embedder) must not add to each other's counters. ``Server``
makes one and hands it down by constructor argument; a part built on its own (a test's
``SessionManager``, a ``Dispatcher``) makes its own by default, which nobody exposes: the no-op.

Hot paths (an event, a ping) cost one ``inc()`` on a child whose labels were resolved once (at
stream attach, at construction); ``labels()`` is called only on the colder paths (a tool call, a
refusal). Gauges that mirror a count someone already keeps (open connections, sessions) are read
at scrape time (``set_function``), so they cost nothing between scrapes.

Imports only prometheus_client and the standard library (rank 0, like errors and config).
docs/metrics.md lists every metric.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "Metrics", "StreamMetrics"]

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BACKLOG_BUCKETS = (0, 1, 4, 16, 64, 256, 1024, 4096)


class _Discard:
    """Stands in for a metric child where nothing is exposed (a stream built on its own)."""

    def inc(self, amount: float = 1) -> None:
        pass

    def dec(self, amount: float = 1) -> None:
        pass

    def observe(self, amount: float) -> None:
        pass


class StreamMetrics:
    """The children one attached stream touches, bound once when it attaches (no ``labels()``
    per event). ``StreamMetrics()`` with no ``Metrics`` discards everything."""

    __slots__ = ("backlog", "bytes", "events", "gone", "hit", "miss", "open")

    events: Counter | _Discard
    bytes: Counter | _Discard
    open: Gauge | _Discard
    backlog: Histogram | _Discard
    hit: Counter | _Discard
    miss: Counter | _Discard
    gone: Counter | _Discard

    def __init__(self, metrics: Metrics | None = None, transport: str = "") -> None:
        if metrics is None:
            self.events = self.bytes = self.open = self.backlog = _Discard()
            self.hit = self.miss = self.gone = _Discard()
            return
        self.events = metrics.events_sent.labels(transport)
        self.bytes = metrics.bytes_sent.labels(transport)
        self.open = metrics.open_streams.labels(transport)
        self.backlog = metrics.stream_backlog
        self.hit = metrics.replay_hit
        self.miss = metrics.replay_miss
        self.gone = metrics.replay_gone


class Metrics:
    """The server's metrics (see docs/metrics.md), registered in ``self.registry``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = r = registry if registry is not None else CollectorRegistry()
        self.open_connections = Gauge(
            "datapulse_open_connections", "HTTP connections open now", registry=r
        )
        self.open_streams = Gauge(
            "datapulse_open_streams", "SSE streams attached now", ["transport"], registry=r
        )
        self.sessions = Gauge("datapulse_sessions", "live sessions in this process", registry=r)
        self.events_sent = Counter(
            "datapulse_events_sent", "SSE events written to streams", ["transport"], registry=r
        )
        self.bytes_sent = Counter(
            "datapulse_event_bytes_sent",
            "bytes of SSE events written to streams (framing included)",
            ["transport"],
            registry=r,
        )
        self.pings = Counter("datapulse_pings", "keep-alive pings due on streams", registry=r)
        self.replay = Counter(
            "datapulse_replay",
            "Last-Event-ID resumptions: hit (all there), miss (unknown id), gone (evicted)",
            ["result"],
            registry=r,
        )
        self.replay_hit = self.replay.labels("hit")
        self.replay_miss = self.replay.labels("miss")
        self.replay_gone = self.replay.labels("gone")
        self.stream_backlog = Histogram(
            "datapulse_stream_backlog_events",
            "events a stream wrote from the log in one catch-up (it had fallen behind)",
            buckets=BACKLOG_BUCKETS,
            registry=r,
        )
        self.tool_calls = Counter(
            "datapulse_tool_calls",
            "tools/call requests by tool and outcome",
            ["tool", "outcome"],
            registry=r,
        )
        self.tool_seconds = Histogram(
            "datapulse_tool_call_duration_seconds",
            "time a tool ran (validated calls only)",
            ["tool"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.auth_failures = Counter(
            "datapulse_auth_failures", "requests answered 401, by reason", ["reason"], registry=r
        )
        self.limit_rejections = Counter(
            "datapulse_limit_rejections", "requests refused by a limit", ["limit"], registry=r
        )
        self._tool_children: dict[tuple[str, str], tuple[Counter, Histogram]] = {}
        self.jwks_fetches = Counter(
            "datapulse_jwks_fetches", "JWKS key set fetches, by result", ["result"], registry=r
        )

    def stream(self, transport: str) -> StreamMetrics:
        return StreamMetrics(self, transport)

    def count_sessions(self, count: Callable[[], float]) -> None:
        """The sessions gauge reads ``count`` at scrape time."""
        self.sessions.set_function(count)

    def count_connections(self, count: Callable[[], float]) -> None:
        self.open_connections.set_function(count)

    def tool_call(self, tool: str, outcome: str, seconds: float | None = None) -> None:
        """One ``tools/call`` ended (``seconds``: how long the tool ran, if it ran)."""
        bound = self._tool_children.get((tool, outcome))
        if bound is None:
            # Resolved once per (tool, outcome); names come from the registry, so it is bounded.
            bound = (self.tool_calls.labels(tool, outcome), self.tool_seconds.labels(tool))
            self._tool_children[(tool, outcome)] = bound
        bound[0].inc()
        if seconds is not None:
            bound[1].observe(seconds)

    def rejected(self, limit: str) -> None:
        self.limit_rejections.labels(limit).inc()

    def exposition(self) -> bytes:
        """The text format of everything registered (``CONTENT_TYPE_LATEST``)."""
        return generate_latest(self.registry)
