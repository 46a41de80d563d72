"""core.loopback: the one "is this host this machine?" predicate, and core.origins built on it."""

from __future__ import annotations

import pytest

from datapulse.core.loopback import is_loopback_host
from datapulse.core.origins import host_allowed, is_loopback_name, origin_allowed


@pytest.mark.parametrize(
    "name",
    [
        "localhost",
        "LocalHost",
        "127.0.0.1",
        "127.1.2.3",
        "127.255.255.254",
        "::1",
        "[::1]",
        "0:0:0:0:0:0:0:1",
        "::ffff:127.0.0.1",  # IPv4-mapped: packets still go to the loopback interface
    ],
)
def test_loopback_hosts(name: str) -> None:
    assert is_loopback_host(name)


@pytest.mark.parametrize(
    "name",
    [
        "127.evil.example",  # looks local, resolves anywhere
        "127.0.0.1.nip.io",
        "localhost.evil.example",
        "app.localhost",  # RFC 6761 names: not accepted, no caller needs them
        "127.0.0.1:8000",  # a port is the caller's to strip
        "128.0.0.1",
        "0.0.0.0",
        "::",
        "[::2]",
        "10.0.0.1",
        "",
        "[]",
    ],
)
def test_not_loopback_hosts(name: str) -> None:
    assert not is_loopback_host(name)


def test_origins_refuse_a_name_that_only_starts_with_127() -> None:
    # The old check was host.startswith("127."); a rebinding attacker controls such names.
    assert not is_loopback_name("127.evil.example")
    assert not is_loopback_name("127.evil.example:8000")
    assert not origin_allowed("http://127.evil.example", frozenset())
    assert not host_allowed("127.evil.example:8000", bound_to_loopback=True)


@pytest.mark.parametrize("host", ["localhost:8000", "127.0.0.1:1", "[::1]:80", "[::1]", "::1"])
def test_origins_strip_ports(host: str) -> None:
    assert is_loopback_name(host)
    assert host_allowed(host, bound_to_loopback=True)
    assert origin_allowed(f"http://{host}", frozenset())
