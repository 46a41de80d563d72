"""The ``fetch_url`` tool: one GET of a public http(s) URL, without SSRF.

The address rules live in ``addresses.py`` (pure); this module is the I/O around them. The guard
sits in the only place a socket is opened, ``PinnedBackend.connect_tcp``: it resolves the host
once, checks every address it got, and connects to a checked address, so there is no second DNS
lookup an attacker could answer differently (DNS rebinding). The hostname is still what goes into
the ``Host`` header, SNI and certificate verification, because httpcore keeps using the URL's host
for those and only asks the backend for a byte stream.

We drive httpcore directly rather than through ``httpx.AsyncClient``: httpx would apply proxy
settings from the environment on top of any transport (a proxy resolves the name itself, which
undoes the pinning), and a plain connection pool per call means no connection made under one
policy is reused under another.

Failures are ``ToolError`` with a short message; ``trio.Cancelled`` and anything we did not expect
propagate untouched.
"""

from __future__ import annotations

import codecs
import contextlib
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import httpcore
import trio

from datapulse.errors import ToolError
from datapulse.tools import addresses
from datapulse.tools.addresses import Target

# (host, port) -> IP address strings. The default asks the system resolver, once per connection.
Resolver = Callable[[str, int], Awaitable[list[str]]]
# (ip, port), awaited right before each TCP connect; for tests and auditing.
ConnectHook = Callable[[str, int], Awaitable[None]]

MiB = 1024 * 1024
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
USER_AGENT = b"datapulse-fetch/0.1"


@dataclass(frozen=True)
class FetchPolicy:
    """What one ``fetch_url`` call may do. ``allow_private`` lifts the address rule (local tests).

    A body longer than ``max_bytes`` (after decompression) is truncated, not an error: the tool
    returns a preview, so nothing past the limit would ever be shown. Reading also stops as soon
    as ``preview_chars`` characters are decoded.
    """

    allow_private: bool = False
    timeout_s: float = 5.0
    connect_timeout_s: float = 3.0
    max_bytes: int = 1 * MiB
    max_redirects: int = 3
    preview_chars: int = 200

    def __post_init__(self) -> None:
        if not (self.timeout_s > 0 and self.connect_timeout_s > 0 and self.max_bytes > 0):
            raise ValueError("timeouts and max_bytes must be > 0")
        if self.max_redirects < 0 or self.preview_chars < 0:
            raise ValueError("max_redirects and preview_chars must be >= 0")


async def system_resolve(host: str, port: int) -> list[str]:
    """Every address the system resolver gives for ``host``, in its order, without duplicates."""
    try:
        infos = await trio.socket.getaddrinfo(host, port, type=trio.socket.SOCK_STREAM)
    except OSError as exc:  # socket.gaierror and friends
        raise ToolError(f"could not resolve {host}: {exc.strerror or exc}") from None
    except UnicodeError:  # the stdlib IDNA codec refusing the name (e.g. a label > 63 chars)
        raise ToolError(f"could not resolve {host}: not a valid DNS name") from None
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class PinnedBackend(httpcore.AsyncNetworkBackend):
    """An httpcore network backend that connects only to checked addresses.

    httpcore calls ``connect_tcp`` with the host from the URL; we resolve it (IP literals are not
    resolved at all), refuse the whole host if ANY address is forbidden (a name that mixes a
    public and a private address is an attack or a misconfiguration either way), then try the
    addresses in order. The streams themselves come from httpcore's own Trio backend, which we
    hand only IP literals, so it never does a lookup of its own.
    """

    def __init__(
        self, policy: FetchPolicy, resolver: Resolver, connect_hook: ConnectHook | None
    ) -> None:
        self._policy = policy
        self._resolver = resolver
        self._connect_hook = connect_hook
        self._inner = httpcore.TrioBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's signature; unused, see below)
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        # ``timeout`` is httpcore's connect timeout, which we set from the same policy field; one
        # deadline covers resolving and every connect attempt.
        with trio.move_on_after(self._policy.connect_timeout_s):
            ips = await self._checked_addresses(host, port)
            return await self._connect_first(host, ips, port, local_address, socket_options)
        raise ToolError(f"timed out connecting to {host}:{port}")

    async def _checked_addresses(self, host: str, port: int) -> list[str]:
        literal = addresses.parse_ip_literal(host)
        raw = [str(literal)] if literal is not None else await self._resolver(host, port)
        if not raw:
            raise ToolError(f"could not resolve {host}: no addresses")
        checked: list[str] = []
        for text in raw:
            ip = addresses.parse_ip_literal(text)
            if ip is None:
                raise ToolError(f"could not resolve {host}: bad address {text!r}")
            if not self._policy.allow_private:
                addresses.check_address(ip)
            checked.append(str(ip))  # canonical text: what we checked is what we dial
        return checked

    async def _connect_first(
        self,
        host: str,
        ips: list[str],
        port: int,
        local_address: str | None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None,
    ) -> httpcore.AsyncNetworkStream:
        failure: httpcore.ConnectError | None = None
        for ip in ips:
            if self._connect_hook is not None:
                await self._connect_hook(ip, port)
            try:
                return await self._inner.connect_tcp(
                    ip, port, local_address=local_address, socket_options=socket_options
                )
            except httpcore.ConnectError as exc:
                failure = exc
        raise ToolError(f"could not connect to {host}:{port} ({_cause(failure)})")

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's signature)
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise ToolError("refused: unix sockets are not fetched")

    async def sleep(self, seconds: float) -> None:
        await trio.sleep(seconds)


async def fetch_url(
    url: str,
    policy: FetchPolicy,
    *,
    resolver: Resolver | None = None,
    connect: ConnectHook | None = None,
) -> dict[str, Any]:
    """GET ``url`` and return ``{"status": int, "content": first preview_chars characters}``.

    Redirects are followed by hand, at most ``policy.max_redirects``, and each new URL is parsed
    and its addresses checked exactly like the first one. The whole call, redirects and body
    included, runs under one ``policy.timeout_s`` deadline.
    """
    target = addresses.parse_target(url)
    backend = PinnedBackend(policy, resolver or system_resolve, connect)
    with trio.move_on_after(policy.timeout_s):
        # retries=0: a failed connect is reported, not retried against the same checked address.
        async with httpcore.AsyncConnectionPool(network_backend=backend, retries=0) as pool:
            for _ in range(policy.max_redirects + 1):
                status, result = await _fetch_once(pool, target, policy)
                if isinstance(result, str):
                    return {"status": status, "content": result}
                target = result
            raise ToolError(f"refused: more than {policy.max_redirects} redirects")
    raise ToolError(f"timed out after {policy.timeout_s:g}s fetching {url}")


async def _fetch_once(
    pool: httpcore.AsyncConnectionPool, target: Target, policy: FetchPolicy
) -> tuple[int, str | Target]:
    """One GET: the status and either the body preview or, for a redirect, the next target."""
    url = httpcore.URL(
        scheme=target.scheme.encode(),
        host=target.host.encode(),
        port=target.port,
        target=target.target.encode(),
    )
    headers = [
        # Set here, not by httpcore: it would write an IPv6 host without brackets.
        (b"Host", target.authority.encode()),
        (b"User-Agent", USER_AGENT),
        (b"Accept", b"*/*"),
        # We can decode gzip/deflate within max_bytes, but asking for none is cheaper.
        (b"Accept-Encoding", b"identity"),
    ]
    timeouts = {
        "connect": policy.connect_timeout_s,
        "read": policy.timeout_s,
        "write": policy.timeout_s,
        "pool": policy.timeout_s,
    }
    try:
        async with pool.stream(
            "GET", url, headers=headers, extensions={"timeout": timeouts}
        ) as response:
            location = _header(response.headers, b"location")
            if response.status not in REDIRECT_STATUSES or location is None:
                return response.status, await _read_preview(response, policy)
            # A redirect's body is never read; leaving this block closes its connection.
    except httpcore.TimeoutException:
        raise ToolError(f"timed out fetching {target.url}") from None
    except httpcore.NetworkError as exc:
        raise ToolError(f"connection to {target.authority} failed ({_cause(exc)})") from None
    except httpcore.ProtocolError as exc:
        raise ToolError(f"bad HTTP response from {target.authority} ({exc})") from None
    try:
        return response.status, addresses.resolve_redirect(target, location.decode("utf-8"))
    except UnicodeDecodeError:
        raise ToolError("bad redirect: Location is not UTF-8") from None


async def _read_preview(response: httpcore.Response, policy: FetchPolicy) -> str:
    """Decode up to ``preview_chars`` characters from at most ``max_bytes`` of decoded body."""
    inflate = _decompressor(_header(response.headers, b"content-encoding"))
    charset = _charset(response.headers)
    text = codecs.getincrementaldecoder(charset)(errors="replace")
    budget = policy.max_bytes
    pieces: list[str] = []
    chars = 0
    chunks = response.aiter_stream()
    exhausted = False
    try:
        async for chunk in chunks:
            # max_length bounds what one chunk can inflate to (a gzip bomb stops at the budget);
            # zlib treats 0 as "unlimited", but budget > 0 whenever we get here.
            data = inflate.decompress(chunk, budget) if inflate is not None else chunk[:budget]
            budget -= len(data)
            piece = text.decode(data, final=budget <= 0)
            pieces.append(piece)
            chars += len(piece)
            if chars >= policy.preview_chars or budget <= 0:
                break
        else:
            exhausted = True
            pieces.append(text.decode(b"", final=True))
    except zlib.error:
        raise ToolError("bad response body: could not decompress it") from None
    except _DECODE_FAILURES:
        # Even with errors="replace" some codecs refuse input outright (UTF-16 without a BOM).
        raise ToolError(f"bad response body: it is not valid {charset}") from None
    finally:
        if not exhausted:  # an await in a finally: shielded, and bounded
            with trio.move_on_after(1, shield=True):
                await _abandon_body(response, chunks)
    return "".join(pieces)[: policy.preview_chars]


async def _abandon_body(response: httpcore.Response, chunks: AsyncIterator[bytes]) -> None:
    """Stop reading a body half-way without leaving httpcore's iterators to the GC.

    httpcore's body iterator is a chain of async generators. Breaking out of it leaves them
    suspended, and Trio warns (ResourceWarning) when they are collected. Closing the connection
    first makes the very next read fail, which unwinds the whole chain here, in this task.
    """
    await response.aclose()
    with contextlib.suppress(httpcore.NetworkError, httpcore.ProtocolError):
        async for _ in chunks:
            pass  # at most what h11 had already buffered; the socket is closed


class _Inflater(Protocol):
    def decompress(self, data: bytes, max_length: int = ..., /) -> bytes: ...


def _decompressor(encoding: bytes | None) -> _Inflater | None:
    """A zlib decompressor for the body's Content-Encoding, None for identity."""
    name = (encoding or b"identity").strip().lower()
    if name == b"identity":
        return None
    if name in (b"gzip", b"x-gzip", b"deflate"):
        return zlib.decompressobj(32 + zlib.MAX_WBITS)  # 32+: accepts gzip or zlib headers
    raise ToolError(f"bad response body: unsupported Content-Encoding {name.decode('latin-1')!r}")


_DECODE_FAILURES = (UnicodeError, ValueError, TypeError, LookupError)
"""What a codec may raise on input it cannot take, even with errors="replace"."""


def _charset(headers: list[tuple[bytes, bytes]]) -> str:
    """The Content-Type charset if Python can decode a page with it, else UTF-8.

    The charset is the upstream's to choose, so anything it names is checked here: it must be a
    text encoding (not ``rot13`` or ``hex``, bytes-to-bytes or str-to-str codecs) whose
    incremental decoder takes ``errors="replace"`` (``idna`` does not). ``b"".decode(name)``
    proves nothing: CPython returns "" for empty input without looking the codec up.
    """
    content_type = (_header(headers, b"content-type") or b"").decode("latin-1")
    for param in content_type.split(";")[1:]:
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset":
            name = value.strip().strip("\"'")
            try:
                info = codecs.lookup(name)
                if not info._is_text_encoding:
                    break
                codecs.getincrementaldecoder(name)(errors="replace").decode(b"", final=True)
            except _DECODE_FAILURES:
                break
            return info.name
    return "utf-8"


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def _cause(exc: BaseException | None) -> str:
    """The innermost message of an httpcore error (it wraps OSError/SSLError from Trio)."""
    while exc is not None and exc.__cause__ is not None:
        exc = exc.__cause__
    text = str(exc) if exc is not None else ""
    return text or type(exc).__name__
