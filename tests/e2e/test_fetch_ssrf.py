"""fetch_url against real sockets on 127.0.0.1: the SSRF guard, redirects, limits, timeouts.

Network rules for this file (they hold even if the guard under test is broken):

* The only server is ``CannedServer`` on 127.0.0.1. Names are resolved by an injected resolver
  (``FakeDNS``); the ``no_real_network`` fixture makes the system resolver fail the test and
  lets ``trio.open_tcp_stream`` (which httpcore's Trio backend uses) dial loopback only.
* ``PUBLIC_IP`` stands in for "some public web server": the address rule sees a global address,
  and ``no_real_network`` quietly dials 127.0.0.1 instead. Every other non-loopback connect fails
  the test before any packet is sent.
* Tests about refused addresses also pass a connect hook that fails the test if it is reached.
* Every test runs under ``trio.fail_after``.
"""

from __future__ import annotations

import gzip
import ipaddress
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import pytest
import trio

from datapulse.errors import ToolError
from datapulse.tools.fetch import FetchPolicy, fetch_url, system_resolve
from tests.helpers import Canned, CannedServer, RawRecorder

PUBLIC_IP = "93.184.216.34"
BODY = "".join(f"{i:04d}|" for i in range(200))  # 1000 ASCII chars, each prefix distinct
DEADLINE_S = 5


@pytest.fixture(autouse=True)
def no_real_network(monkeypatch: pytest.MonkeyPatch) -> None:
    real_open = trio.open_tcp_stream
    real_getaddrinfo = trio.socket.getaddrinfo

    async def open_loopback_only(host: Any, port: int, **kwargs: Any) -> trio.SocketStream:
        if host == PUBLIC_IP:
            host = "127.0.0.1"
        elif not _is_loopback(host):
            raise AssertionError(f"test tried to connect to {host}:{port}")
        return await real_open(host, port, **kwargs)

    async def no_dns(host: Any, *args: Any, **kwargs: Any) -> Any:
        if not _is_loopback(host):
            raise AssertionError(f"test tried a real DNS lookup of {host!r}")
        return await real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(trio, "open_tcp_stream", open_loopback_only)
    monkeypatch.setattr(trio.socket, "getaddrinfo", no_dns)


def _is_loopback(host: Any) -> bool:
    """True only for a loopback IP literal: names never count, whatever they resolve to."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class FakeDNS:
    """An injected resolver: name -> addresses; records every lookup."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.lookups: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.lookups.append(host)
        await trio.lowlevel.checkpoint()
        if host not in self.table:
            raise ToolError(f"could not resolve {host}")
        return self.table[host]


class ConnectLog:
    """A connect hook that records (ip, port) and fails the test for anything not allowed."""

    def __init__(self, *allowed: str) -> None:
        self.allowed = set(allowed)
        self.calls: list[tuple[str, int]] = []

    async def __call__(self, ip: str, port: int) -> None:
        self.calls.append((ip, port))
        if ip not in self.allowed:
            pytest.fail(f"connect hook reached for refused address {ip}:{port}")


@pytest.fixture
async def site(nursery: trio.Nursery) -> CannedServer:
    srv = CannedServer(routes={"/": Canned(body=BODY.encode())})
    await nursery.start(srv.run)
    return srv


@pytest.fixture
def dns() -> FakeDNS:
    return FakeDNS({"public.test": [PUBLIC_IP]})


def redirect_to(location: str | Callable[[int], str], status: int = 302) -> Callable[[int], Canned]:
    def route(port: int) -> Canned:
        where = location(port) if callable(location) else location
        return Canned(status=status, headers=(("Location", where),))

    return route


async def run(coro: Awaitable[dict[str, Any]]) -> dict[str, Any]:
    with trio.fail_after(DEADLINE_S):
        return await coro


STRICT = FetchPolicy()
LOCAL = FetchPolicy(allow_private=True)


# (1) and (2): the loopback server itself


async def test_loopback_is_refused_and_nothing_is_sent(site: CannedServer) -> None:
    hook = ConnectLog()
    with pytest.raises(ToolError, match=r"^refused: 127\.0\.0\.1 is a loopback address"):
        await run(fetch_url(site.url + "/", STRICT, connect=hook))
    assert hook.calls == []
    assert site.requests == []


async def test_allow_private_reaches_loopback(site: CannedServer) -> None:
    result = await run(fetch_url(site.url + "/", LOCAL))
    assert result == {"status": 200, "content": BODY[:200]}
    assert [r.target for r in site.requests] == ["/"]


async def test_public_name_is_pinned_and_host_header_keeps_the_name(
    site: CannedServer, dns: FakeDNS
) -> None:
    hook = ConnectLog(PUBLIC_IP)
    result = await run(
        fetch_url(f"http://public.test:{site.port}/", STRICT, resolver=dns, connect=hook)
    )
    assert result == {"status": 200, "content": BODY[:200]}
    assert dns.lookups == ["public.test"]  # resolved once
    assert hook.calls == [(PUBLIC_IP, site.port)]  # dialled the checked address
    assert site.requests[0].headers["host"] == f"public.test:{site.port}"


async def test_status_passes_through_and_charset_is_honoured(
    site: CannedServer, dns: FakeDNS
) -> None:
    site.routes["/latin"] = Canned(
        status=404,
        headers=(("Content-Type", "text/plain; charset=ISO-8859-1"),),
        body="caf\xe9".encode("latin-1"),
    )
    url = f"http://public.test:{site.port}/latin"
    assert await run(fetch_url(url, STRICT, resolver=dns)) == {"status": 404, "content": "caf\xe9"}


# (3) and (4): redirects


@pytest.mark.parametrize(
    "location",
    [
        "http://10.0.0.1/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:127.0.0.1]/",
        "http://0x7f.1/",
        "http://2130706433/",
        "http://[fd00::1]/",
        "http://internal.test/",  # resolves to 10.1.2.3
        "//192.168.0.1/admin",
        "file:///etc/passwd",
        "http://user@public.test/",
    ],
)
async def test_redirect_to_refused_target_is_refused(
    site: CannedServer, dns: FakeDNS, location: str
) -> None:
    dns.table["internal.test"] = ["10.1.2.3"]
    site.routes["/go"] = redirect_to(location)
    hook = ConnectLog(PUBLIC_IP)
    with pytest.raises(ToolError, match=r"^refused"):
        await run(
            fetch_url(f"http://public.test:{site.port}/go", STRICT, resolver=dns, connect=hook)
        )
    assert hook.calls == [(PUBLIC_IP, site.port)]
    assert len(site.requests) == 1


async def test_redirect_back_to_the_loopback_server_is_refused(site: CannedServer) -> None:
    # The classic: a public page redirects to http://127.0.0.1:<port>/ (here, our own server).
    site.routes["/go"] = redirect_to(lambda port: f"http://127.0.0.1:{port}/")
    dns = FakeDNS({"public.test": [PUBLIC_IP]})
    with pytest.raises(ToolError, match=r"^refused: 127\.0\.0\.1 is a loopback"):
        await run(fetch_url(f"http://public.test:{site.port}/go", STRICT, resolver=dns))
    assert [r.target for r in site.requests] == ["/go"]


def chain(site: CannedServer, hops: int) -> None:
    """/r0 -> /r1 -> ... -> /r<hops> (which answers 200), relative and absolute mixed."""
    for i in range(hops):
        nxt = f"/r{i + 1}" if i % 2 else f"http://public.test:{site.port}/r{i + 1}"
        site.routes[f"/r{i}"] = redirect_to(nxt, status=(301, 302, 307, 308)[i % 4])
    site.routes[f"/r{hops}"] = Canned(body=b"arrived")


async def test_three_redirects_are_followed(site: CannedServer, dns: FakeDNS) -> None:
    chain(site, 3)
    result = await run(fetch_url(f"http://public.test:{site.port}/r0", STRICT, resolver=dns))
    assert result == {"status": 200, "content": "arrived"}
    assert [r.target for r in site.requests] == ["/r0", "/r1", "/r2", "/r3"]
    assert {r.headers["host"] for r in site.requests} == {f"public.test:{site.port}"}


async def test_a_fourth_redirect_is_refused(site: CannedServer, dns: FakeDNS) -> None:
    chain(site, 4)
    with pytest.raises(ToolError, match=r"^refused: more than 3 redirects"):
        await run(fetch_url(f"http://public.test:{site.port}/r0", STRICT, resolver=dns))
    assert [r.target for r in site.requests] == ["/r0", "/r1", "/r2", "/r3"]


async def test_redirect_loop_is_refused(site: CannedServer, dns: FakeDNS) -> None:
    site.routes["/loop"] = redirect_to("/loop")
    with pytest.raises(ToolError, match=r"more than 3 redirects"):
        await run(fetch_url(f"http://public.test:{site.port}/loop", STRICT, resolver=dns))


# (5): body limits


async def test_endless_body_stops_at_the_preview(site: CannedServer, dns: FakeDNS) -> None:
    site.routes["/endless"] = Canned(endless_chunk=b"x" * 65536)
    result = await run(fetch_url(f"http://public.test:{site.port}/endless", STRICT, resolver=dns))
    assert result == {"status": 200, "content": "x" * 200}


async def test_body_is_truncated_at_max_bytes(site: CannedServer, dns: FakeDNS) -> None:
    # A preview longer than the byte limit shows that max_bytes, not the preview, stopped us.
    site.routes["/endless"] = Canned(endless_chunk=b"0123456789" * 1000)
    policy = FetchPolicy(max_bytes=12_345, preview_chars=10**9)
    result = await run(fetch_url(f"http://public.test:{site.port}/endless", policy, resolver=dns))
    assert result["content"] == ("0123456789" * 2000)[:12_345]


async def test_gzip_bomb_is_inflated_only_to_max_bytes(site: CannedServer, dns: FakeDNS) -> None:
    bomb = gzip.compress(b"A" * (64 * 1024 * 1024), compresslevel=9)  # ~64 KiB on the wire
    site.routes["/bomb"] = Canned(headers=(("Content-Encoding", "gzip"),), body=bomb)
    policy = FetchPolicy(max_bytes=100_000, preview_chars=10**9)
    result = await run(fetch_url(f"http://public.test:{site.port}/bomb", policy, resolver=dns))
    assert result == {"status": 200, "content": "A" * 100_000}


async def test_unknown_content_encoding_is_an_error(site: CannedServer, dns: FakeDNS) -> None:
    site.routes["/br"] = Canned(headers=(("Content-Encoding", "br"),), body=b"\x00\x01")
    with pytest.raises(ToolError, match=r"unsupported Content-Encoding 'br'"):
        await run(fetch_url(f"http://public.test:{site.port}/br", STRICT, resolver=dns))


# (6): timeouts


async def test_slow_server_times_out_within_the_bound(site: CannedServer, dns: FakeDNS) -> None:
    site.routes["/slow"] = Canned(delay_s=30)
    start = trio.current_time()
    with pytest.raises(ToolError, match=r"timed out"):
        await run(
            fetch_url(
                f"http://public.test:{site.port}/slow", FetchPolicy(timeout_s=0.3), resolver=dns
            )
        )
    assert trio.current_time() - start < 1.5


async def test_dripping_body_hits_the_total_timeout(site: CannedServer, dns: FakeDNS) -> None:
    # Each byte arrives in time for a per-read timeout; only a total deadline stops this.
    site.routes["/drip"] = Canned(endless_chunk=b"", drip_s=0.05)
    start = trio.current_time()
    with pytest.raises(ToolError, match=r"timed out"):
        await run(
            fetch_url(
                f"http://public.test:{site.port}/drip", FetchPolicy(timeout_s=0.3), resolver=dns
            )
        )
    assert trio.current_time() - start < 1.5


async def test_connect_timeout_covers_resolving_and_dialling() -> None:
    async def hang(*args: Any) -> Any:
        await trio.sleep_forever()

    policy = FetchPolicy(connect_timeout_s=0.2)
    with pytest.raises(ToolError, match=r"timed out connecting to public.test:80"):
        await run(fetch_url("http://public.test/", policy, resolver=hang))
    dns = FakeDNS({"public.test": [PUBLIC_IP]})
    with pytest.raises(ToolError, match=r"timed out connecting"):
        await run(fetch_url("http://public.test/", policy, resolver=dns, connect=hang))


async def test_cancellation_propagates_untouched(site: CannedServer, dns: FakeDNS) -> None:
    site.routes["/slow"] = Canned(delay_s=30)
    with trio.fail_after(DEADLINE_S), trio.move_on_after(0.2) as scope:
        await fetch_url(f"http://public.test:{site.port}/slow", STRICT, resolver=dns)
    assert scope.cancelled_caught


# (7) and (8): names that resolve to forbidden addresses


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.251",
        "::1",
        "fe80::1",
        "fd00:ec2::254",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "64:ff9b::a00:1",
        "2002:a9fe:a9fe::",
    ],
)
async def test_name_resolving_to_forbidden_address_is_refused(address: str) -> None:
    dns = FakeDNS({"sneaky.test": [address]})
    with pytest.raises(ToolError, match=r"^refused: .* is "):
        await run(fetch_url("http://sneaky.test/", STRICT, resolver=dns, connect=ConnectLog()))
    assert dns.lookups == ["sneaky.test"]


@pytest.mark.parametrize(
    "answers", [[PUBLIC_IP, "10.0.0.1"], ["10.0.0.1", PUBLIC_IP], [PUBLIC_IP, "::ffff:127.0.0.1"]]
)
async def test_name_with_public_and_private_answers_is_refused(answers: list[str]) -> None:
    dns = FakeDNS({"mixed.test": answers})
    with pytest.raises(ToolError, match=r"^refused"):
        await run(fetch_url("http://mixed.test/", STRICT, resolver=dns, connect=ConnectLog()))


# Odds and ends: TLS keeps the name, errors stay ToolErrors, the safety net works


async def test_tls_sni_uses_the_hostname_not_the_pinned_ip(nursery: trio.Nursery) -> None:
    recorder = RawRecorder()
    await nursery.start(recorder.run)
    dns = FakeDNS({"public.test": [PUBLIC_IP]})
    with pytest.raises(ToolError, match=r"public.test"):  # the handshake fails: it is no TLS site
        await run(fetch_url(f"https://public.test:{recorder.port}/", STRICT, resolver=dns))
    [hello] = recorder.received
    assert hello[:1] == b"\x16"  # a TLS handshake record
    assert b"public.test" in hello  # server_name extension carries the name, not the IP


async def test_closed_port_is_a_tool_error() -> None:
    # Find a free port and leave it closed.
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()
    with pytest.raises(ToolError, match=r"could not connect"):
        await run(fetch_url(f"http://127.0.0.1:{port}/", LOCAL))


async def test_garbage_response_is_a_tool_error(nursery: trio.Nursery) -> None:
    async def garbage(stream: trio.SocketStream) -> None:
        await stream.send_all(b"SSH-2.0-OpenSSH\r\n\r\n")
        await stream.aclose()

    listeners = await nursery.start(partial(trio.serve_tcp, garbage, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    with pytest.raises(ToolError, match=r"bad HTTP response|connection to"):
        await run(fetch_url(f"http://127.0.0.1:{port}/", LOCAL))


async def test_bad_urls_are_refused_before_any_lookup() -> None:
    dns = FakeDNS({})
    for url in ["ftp://public.test/", "http://u:p@public.test/", "not a url", "http:///x"]:
        with pytest.raises(ToolError):
            await run(fetch_url(url, STRICT, resolver=dns, connect=ConnectLog()))
    assert dns.lookups == []


async def test_the_safety_net_itself_blocks_non_loopback() -> None:
    with trio.fail_after(DEADLINE_S):
        with pytest.raises(AssertionError, match=r"10.0.0.1"):
            await trio.open_tcp_stream("10.0.0.1", 80)
        with pytest.raises(AssertionError, match=r"real DNS lookup"):
            await trio.socket.getaddrinfo("example.com", 80)


async def test_system_resolver_returns_unique_addresses() -> None:
    with trio.fail_after(DEADLINE_S):
        assert await system_resolve("127.0.0.1", 80) == ["127.0.0.1"]
