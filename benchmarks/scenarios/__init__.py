"""The five scenarios, in the order the issue lists them, and the extra ones run only by name."""

from __future__ import annotations

from types import ModuleType

from benchmarks.scenarios import fanout, fanout_steady, idle, ping, rpc, slow

SCENARIOS: dict[str, ModuleType] = {
    idle.NAME: idle,
    ping.NAME: ping,
    fanout.NAME: fanout,
    fanout_steady.NAME: fanout_steady,
    rpc.NAME: rpc,
    slow.NAME: slow,
}
# What `python -m benchmarks.run` runs without --scenarios; the others only when named.
DEFAULT_SCENARIOS: tuple[str, ...] = (idle.NAME, ping.NAME, fanout.NAME, rpc.NAME, slow.NAME)
