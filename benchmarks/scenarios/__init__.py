"""The five scenarios, in the order the issue lists them."""

from __future__ import annotations

from types import ModuleType

from benchmarks.scenarios import fanout, idle, ping, rpc, slow

SCENARIOS: dict[str, ModuleType] = {
    idle.NAME: idle,
    ping.NAME: ping,
    fanout.NAME: fanout,
    rpc.NAME: rpc,
    slow.NAME: slow,
}
