"""core.forwarded: which hop is the client, and what a trusted proxy may say (no sockets)."""

from __future__ import annotations

import pytest

from datapulse.config import Config
from datapulse.core.forwarded import (
    FORWARDED,
    X_FORWARDED,
    ForwardedFor,
    parse_forwarded,
    parse_networks,
    parse_node,
    resolve,
)
from datapulse.core.origins import host_allowed, parse_hosts

TRUSTED = parse_networks("127.0.0.1/32, 10.0.0.0/8")


def xff(*values: str, proto: str | None = None, host: str | None = None) -> dict[str, list[str]]:
    headers = {"x-forwarded-for": list(values)}
    if proto is not None:
        headers["x-forwarded-proto"] = [proto]
    if host is not None:
        headers["x-forwarded-host"] = [host]
    return headers


def test_an_untrusted_peer_is_not_believed() -> None:
    assert resolve("192.0.2.9", TRUSTED, X_FORWARDED, xff("198.51.100.1")) is None
    assert resolve("192.0.2.9", (), X_FORWARDED, xff("198.51.100.1")) is None


def test_the_rightmost_untrusted_hop_is_the_client() -> None:
    said = resolve("127.0.0.1", TRUSTED, X_FORWARDED, xff("6.6.6.6, 198.51.100.1", "10.1.2.3"))
    assert said == ForwardedFor("198.51.100.1", 0, None, None)
    # A chain of trusted proxies only: the leftmost.
    assert resolve("127.0.0.1", TRUSTED, X_FORWARDED, xff("10.0.0.2, 10.0.0.3")).client == (
        "10.0.0.2"
    )
    # No header: the proxy itself.
    assert resolve("127.0.0.1", TRUSTED, X_FORWARDED, {}).client == "127.0.0.1"


def test_garbage_in_the_chain_is_not_believed() -> None:
    said = resolve("127.0.0.1", TRUSTED, X_FORWARDED, xff("198.51.100.1, not an address"))
    assert said is not None and said.client == "127.0.0.1"


def test_scheme_and_host_from_x_forwarded() -> None:
    said = resolve(
        "127.0.0.1", TRUSTED, X_FORWARDED, xff("1.2.3.4", proto="HTTPS", host="MCP.example.com")
    )
    assert said == ForwardedFor("1.2.3.4", 0, "https", "mcp.example.com")
    bad = resolve("127.0.0.1", TRUSTED, X_FORWARDED, xff("1.2.3.4", proto="ftp", host="a/b@c"))
    assert bad is not None and bad.scheme is None and bad.host is None


def test_rfc7239_forwarded() -> None:
    headers = {
        "forwarded": [
            'for=6.6.6.6;proto=http, for="[2001:db8:cafe::17]:4711";proto=https;host=mcp.example.com',
            "for=10.0.0.5;proto=http",
        ]
    }
    said = resolve("127.0.0.1", TRUSTED, FORWARDED, headers)
    assert said == ForwardedFor("2001:db8:cafe::17", 4711, "https", "mcp.example.com")
    # Only the configured family is read: the other is the client's to forge.
    assert resolve("127.0.0.1", TRUSTED, X_FORWARDED, headers).client == "127.0.0.1"
    assert resolve("127.0.0.1", TRUSTED, FORWARDED, xff("1.2.3.4")).client == "127.0.0.1"
    assert resolve("127.0.0.1", TRUSTED, FORWARDED, {"forwarded": ["for"]}).client == "127.0.0.1"


@pytest.mark.parametrize(
    ("value", "elements"),
    [
        ("for=1.2.3.4", [{"for": "1.2.3.4"}]),
        ('For="a,b";by=x , for=_y', [{"for": "a,b", "by": "x"}, {"for": "_y"}]),
        ('for="\\"q"', [{"for": '"q'}]),
        ("for=1;for=2", None),
        ('for="open', None),
        ("=x", None),
        ("for=a b", None),
    ],
)
def test_parse_forwarded(value: str, elements: list[dict[str, str]] | None) -> None:
    assert parse_forwarded([value]) == elements


@pytest.mark.parametrize(
    ("text", "node"),
    [
        ("192.0.2.1", ("192.0.2.1", 0)),
        ("192.0.2.1:8080", ("192.0.2.1", 8080)),
        ("2001:db8::1", ("2001:db8::1", 0)),
        ("[2001:db8::1]:80", ("2001:db8::1", 80)),
        ("::ffff:127.0.0.1", ("127.0.0.1", 0)),
        ("unknown", ("unknown", 0)),
        ("_hidden", ("_hidden", 0)),
        ("evil.example", None),
        ("[2001:db8::1", None),
    ],
)
def test_parse_node(text: str, node: tuple[str, int] | None) -> None:
    assert parse_node(text) == node


def test_networks_are_checked() -> None:
    assert parse_networks("127.0.0.1, ::1/128")[0].prefixlen == 32
    with pytest.raises(ValueError, match="nope"):
        parse_networks("nope")
    with pytest.raises(ValueError, match="trusted_proxies"):
        Config(trusted_proxies="10.0.0.0/8, nope")
    with pytest.raises(ValueError, match="proxy_headers"):
        Config(proxy_headers="both")


def test_allowed_hosts() -> None:
    hosts = parse_hosts("MCP.example.com:443, other.example")
    assert host_allowed("mcp.example.com", True, hosts)
    assert host_allowed("mcp.example.com:8443", True, hosts)
    assert host_allowed("localhost:8000", True, hosts)  # loopback names stay on a loopback bind
    assert not host_allowed("evil.example", True, hosts)
    assert not host_allowed("mcp.example.com", True)  # the 421 of issue 13
    # On another bind, a given list is the list; no list: any Host.
    assert not host_allowed("localhost", False, hosts)
    assert host_allowed("anything.example", False)
    assert host_allowed("anything.example", True, frozenset({"*"}))
