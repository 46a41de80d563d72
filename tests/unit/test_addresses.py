"""The pure half of the SSRF guard: URL parsing and the address rule. No sockets here."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from datapulse.errors import ToolError
from datapulse.tools.addresses import (
    Target,
    check_address,
    parse_ip_literal,
    parse_ipv4_aton,
    parse_target,
    refusal_reason,
    resolve_redirect,
)

REFUSED = [
    # loopback, in every spelling a resolver accepts
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("::1", "loopback"),
    # RFC 1918
    ("10.0.0.1", "private"),
    ("172.16.0.1", "private"),
    ("172.31.255.255", "private"),
    ("192.168.1.1", "private"),
    # link-local and cloud metadata
    ("169.254.169.254", "cloud metadata"),
    ("169.254.0.1", "link-local"),
    ("fe80::1", "link-local"),
    ("fe80::1%eth0", "link-local"),
    ("febf::1", "link-local"),
    # unique-local, site-local
    ("fc00::1", "unique-local"),
    ("fd12:3456::1", "unique-local"),
    ("fec0::1", "site-local"),
    # multicast, broadcast, reserved, unspecified, "this network"
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("ff02::1", "multicast"),
    ("255.255.255.255", "reserved"),
    ("240.0.0.1", "reserved"),
    ("0.0.0.0", "unspecified"),
    ("::", "unspecified"),
    ("0.1.2.3", "this network"),
    # carrier-grade NAT, benchmarking, documentation, other special-purpose
    ("100.64.0.1", "carrier-grade NAT"),
    ("100.127.255.255", "carrier-grade NAT"),
    ("198.18.0.1", "non-global"),
    ("192.0.2.1", "non-global"),
    ("198.51.100.7", "non-global"),
    ("203.0.113.9", "non-global"),
    ("2001:db8::1", "non-global"),
    ("100::1", "reserved"),
    # IPv4 inside IPv6
    ("::ffff:127.0.0.1", "IPv4-mapped form of 127.0.0.1"),
    ("::ffff:169.254.169.254", "IPv4-mapped form of 169.254.169.254"),
    ("::ffff:10.0.0.1", "IPv4-mapped form of 10.0.0.1"),
    ("::ffff:0.0.0.0", "IPv4-mapped form of 0.0.0.0"),
    ("::127.0.0.1", "IPv4-compatible"),
    ("64:ff9b::7f00:1", "NAT64 form of 127.0.0.1"),
    ("64:ff9b::a9fe:a9fe", "NAT64 form of 169.254.169.254"),
    ("64:ff9b:1::a00:1", "local-use NAT64"),
    ("2002:7f00:1::", "6to4 form of 127.0.0.1"),
    ("2002:a00:1::1", "6to4 form of 10.0.0.1"),
    ("2002:a9fe:a9fe::", "6to4 form of 169.254.169.254"),
    # Teredo: server 65.54.227.120, client 192.168.1.1 (stored inverted as 3f57:fefe)
    ("2001:0:4136:e378:8000:63bf:3f57:fefe", "Teredo form of 192.168.1.1"),
    ("2001:0:4136:e378:8000:63bf:f7f7:f7f7", "non-global"),  # Teredo client 8.8.8.8
]

ALLOWED = [
    "8.8.8.8",
    "1.1.1.1",
    "93.184.216.34",
    "172.32.0.1",  # just past 172.16.0.0/12
    "100.128.0.1",  # just past 100.64.0.0/10
    "169.255.0.1",
    "2606:4700:4700::1111",
    "2a00:1450:4001:80b::200e",
    "::ffff:8.8.8.8",  # mapped public: the packets go to 8.8.8.8
    "64:ff9b::808:808",  # NAT64 of 8.8.8.8: how IPv6-only networks reach IPv4 sites
    "2002:808:808::1",  # 6to4 of 8.8.8.8
]


@pytest.mark.parametrize(("address", "why"), REFUSED)
def test_refused_addresses(address: str, why: str) -> None:
    with pytest.raises(ToolError, match=rf"^refused: .* is .*{why}") as info:
        check_address(address)
    assert info.value.detail.startswith("refused:")


@pytest.mark.parametrize("address", ALLOWED)
def test_allowed_addresses(address: str) -> None:
    assert str(check_address(address)) == str(ipaddress.ip_address(address))


# Spellings glibc's inet_aton (and so getaddrinfo, curl, ping...) reads as an IPv4 address.
SPELLINGS = [
    ("2130706433", "127.0.0.1"),
    ("0177.0.0.1", "127.0.0.1"),
    ("0177.0000.0000.0001", "127.0.0.1"),
    ("0x7f.1", "127.0.0.1"),
    ("0x7F.0.0.1", "127.0.0.1"),
    ("0x7f000001", "127.0.0.1"),
    ("017700000001", "127.0.0.1"),
    ("127.1", "127.0.0.1"),
    ("127.0.1", "127.0.0.1"),
    ("0", "0.0.0.0"),
    ("0x", "0.0.0.0"),
    ("10.1", "10.0.0.1"),
    ("0xa9.0xfe.0xa9.0xfe", "169.254.169.254"),
    ("2852039166", "169.254.169.254"),
    ("0251.0376.0251.0376", "169.254.169.254"),
    ("169.254.43518", "169.254.169.254"),
    ("192.168.0x1.1", "192.168.1.1"),
    ("3232235777", "192.168.1.1"),
]


@pytest.mark.parametrize(("spelling", "dotted"), SPELLINGS)
def test_inet_aton_spellings(spelling: str, dotted: str) -> None:
    assert parse_ipv4_aton(spelling) == ipaddress.IPv4Address(dotted)


@pytest.mark.parametrize(("spelling", "dotted"), SPELLINGS)
def test_tricky_hosts_in_urls_become_the_address_they_spell(spelling: str, dotted: str) -> None:
    target = parse_target(f"http://{spelling}:8080/x")
    assert target.ip == ipaddress.IPv4Address(dotted)
    assert target.host == dotted  # what we connect to and send as Host is the checked form
    with pytest.raises(ToolError, match=r"^refused"):
        check_address(target.ip)


@pytest.mark.parametrize(
    "host", ["08", "1.2.3.256", "1.2.3.4.5", "4294967296", "0x1g", "1..2", "", "1.2.3.-1", "٣"]
)
def test_not_an_inet_aton_address(host: str) -> None:
    assert parse_ipv4_aton(host) is None


@pytest.mark.parametrize(
    ("url", "host", "ip"),
    [
        ("http://[::ffff:127.0.0.1]/", "::ffff:7f00:1", "::ffff:127.0.0.1"),
        ("http://[::1]:81/", "::1", "::1"),
        ("http://[fe80::1%25eth0]/", "fe80::1%eth0", "fe80::1%eth0"),
        ("http://127.0.0.1./", "127.0.0.1", "127.0.0.1"),  # trailing root dot
        ("http://\uff11\uff12\uff17.\uff10.\uff10.\uff11/", "127.0.0.1", "127.0.0.1"),  # full-width
        ("http://LOCALHOST/", "localhost", None),  # a name: checked after resolution
    ],
)
def test_url_hosts(url: str, host: str, ip: str | None) -> None:
    target = parse_target(url)
    assert target.host == host
    assert target.ip == (None if ip is None else ipaddress.ip_address(ip))


def test_parse_target_splits_what_goes_on_the_wire() -> None:
    t = parse_target("HTTPS://Example.COM/a b/ä?q=1 2#frag")
    assert t == Target("https", "example.com", 443, "/a%20b/%C3%A4?q=1%202")
    assert t.authority == "example.com"
    assert parse_target("http://[2606:4700::1]:8080").authority == "[2606:4700::1]:8080"
    assert parse_target("http://b\u00fccher.example/").host == "xn--bcher-kva.example"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://example.com/", "'ftp' scheme"),
        ("file:///etc/passwd", "'file' scheme"),
        ("gopher://127.0.0.1:6379/_INFO", "'gopher' scheme"),
        ("//example.com/", "missing scheme"),
        ("example.com", "missing scheme"),
        ("http://user:pw@example.com/", "credentials"),
        ("http://example.com@127.0.0.1/", "credentials"),
        ("http://example.com\\@127.0.0.1/", "credentials"),
        ("http://:80/", "no host"),
        ("http:///path", "no host"),
        ("http://example.com:99999/", "invalid URL"),
        ("http://example.com:0/", "port 0"),
        ("http://%31%32%37.0.0.1/", "bad host name"),
        ("http://127.0.0.1\\.example.com/", "bad host name"),
        ("http://exa mple.com/", "bad host name"),
        ("http://[::1/", "invalid URL"),
    ],
)
def test_refused_urls(url: str, message: str) -> None:
    with pytest.raises(ToolError, match=message):
        parse_target(url)


def test_redirects_resolve_relative_to_the_current_target() -> None:
    base = parse_target("http://example.com:8080/a/b?x=1")
    assert resolve_redirect(base, "c").url == "http://example.com:8080/a/c"
    assert resolve_redirect(base, "/d").url == "http://example.com:8080/d"
    assert resolve_redirect(base, "//10.0.0.1/").ip == ipaddress.IPv4Address("10.0.0.1")
    assert resolve_redirect(base, "https://0x7f.1/").ip == ipaddress.IPv4Address("127.0.0.1")
    with pytest.raises(ToolError, match=r"'file' scheme"):
        resolve_redirect(base, "file:///etc/passwd")


def test_resolver_output_is_read_like_a_literal() -> None:
    assert parse_ip_literal("[::1]") == ipaddress.IPv6Address("::1")
    assert parse_ip_literal("example.com") is None
    with pytest.raises(ToolError, match=r"not an IP address"):
        check_address("example.com")


# --- properties -------------------------------------------------------------------------------

ipv4_ints = st.integers(min_value=0, max_value=2**32 - 1)


def _spell(number: int, parts: int, style: str) -> str:
    """``number`` as an inet_aton string of ``parts`` parts, each in ``style``."""
    sizes = [1] * (parts - 1) + [5 - parts]  # bytes per part: the last one takes the rest
    fields, shift = [], 32
    for size in sizes:
        shift -= 8 * size
        fields.append((number >> shift) & ((1 << (8 * size)) - 1))
    fmt = {"dec": str, "oct": lambda v: "0" + format(v, "o"), "hex": hex}[style]
    return ".".join(fmt(v) for v in fields)


@given(
    number=ipv4_ints,
    parts=st.integers(1, 4),
    style=st.sampled_from(["dec", "oct", "hex"]),
)
def test_every_spelling_classifies_like_dotted_form(number: int, parts: int, style: str) -> None:
    dotted = ipaddress.IPv4Address(number)
    spelled = _spell(number, parts, style)
    assert parse_ipv4_aton(spelled) == dotted
    target = parse_target(f"http://{spelled}/")
    assert target.ip == dotted
    assert refusal_reason(target.ip) == refusal_reason(dotted)


@given(number=ipv4_ints)
def test_ipv4_inside_ipv6_is_judged_by_the_ipv4(number: int) -> None:
    v4 = ipaddress.IPv4Address(number)
    v4_refused = refusal_reason(v4) is not None
    mapped = ipaddress.IPv6Address(f"::ffff:{v4}")
    nat64 = ipaddress.IPv6Address((0x64FF9B << 96) | number)
    assert (refusal_reason(mapped) is not None) == v4_refused
    assert (refusal_reason(nat64) is not None) == v4_refused
    sixtofour = ipaddress.IPv6Address((0x2002 << 112) | (number << 80) | 1)
    if v4_refused:  # a 6to4 address is refused if its IPv4 is (it may be refused for more)
        assert refusal_reason(sixtofour) is not None


@given(number=ipv4_ints)
def test_refused_exactly_when_ipaddress_says_non_global(number: int) -> None:
    # ipaddress is the reference for special-purpose ranges; multicast is the one thing it
    # calls global that we still refuse (nobody serves a web page from a multicast group).
    ip = ipaddress.IPv4Address(number)
    assert (refusal_reason(ip) is not None) == (not ip.is_global or ip.is_multicast)
