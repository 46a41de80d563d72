"""Scenario 3b, steady-state fan-out (issue 14): 1,000 streams x 5 results, 32 senders.

The ``fanout`` trial at the issue's size in both modes -- ``events`` (``POST /message`` ->
``/events``) and ``sse`` (legacy ``tools/call`` -> ``/sse``) -- with the same sizes in ``--quick``
and full runs, so ``python -m benchmarks.run --quick --scenarios fanout_steady`` reproduces the
issue's figure in a few minutes. Every stream gets one unmeasured result first, so all sessions
are started and warm when the measured 5,000 results go out. Figures as in ``fanout``: delivered
events/s, latency p50/p90/p99/max (POST written -> event read). Not in the default scenario list
(``fanout`` covers that ground); name it with ``--scenarios``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from benchmarks.scenarios import fanout
from benchmarks.scenarios.base import Context
from benchmarks.servers import ServerSpec

NAME = "fanout_steady"


@dataclass(frozen=True)
class Params(fanout.Params):
    @classmethod
    def quick(cls) -> Params:
        return cls(streams=1000, events_per_stream=5, senders=32, open_budget_s=60, timeout_s=60)

    @classmethod
    def full(cls) -> Params:
        return cls(streams=1000, events_per_stream=5, senders=32)


async def run_trial(
    ctx: Context, p: Params, spec: ServerSpec, kind: str, round_index: int
) -> dict[str, Any]:
    return await fanout.run_trial(ctx, p, spec, kind, round_index, name=NAME)


describe = fanout.describe
