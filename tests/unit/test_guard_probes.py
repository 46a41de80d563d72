"""Health probes and the Host check: orchestrators send the pod's IP as Host."""

from __future__ import annotations

import pytest

from datapulse import Config
from datapulse.errors import MisdirectedRequest
from datapulse.net.http import Request
from datapulse.transports.guard import OriginGuard

PROBES = frozenset({"/healthz", "/readyz"})


def get(path: str, host: str) -> Request:
    return Request.from_target("GET", path, [(b"host", host.encode())])


async def test_a_probe_with_the_pods_ip_as_host_passes_on_a_public_bind() -> None:
    guard = OriginGuard(
        Config(host="0.0.0.0", allowed_hosts="mcp.example.com", token="t"), probe_paths=PROBES
    )
    for path in sorted(PROBES):
        assert await guard(get(path, "10.1.2.3:8000")) is None
    with pytest.raises(MisdirectedRequest):  # every other path still checks Host
        await guard(get("/events", "10.1.2.3:8000"))


async def test_a_loopback_bind_checks_host_on_probes_too() -> None:
    guard = OriginGuard(Config(host="127.0.0.1", token="t"), probe_paths=PROBES)
    with pytest.raises(MisdirectedRequest):  # DNS rebinding of a loopback server
        await guard(get("/healthz", "rebind.evil.example"))
    assert await guard(get("/healthz", "127.0.0.1:8000")) is None
