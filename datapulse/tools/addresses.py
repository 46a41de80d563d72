"""Which URLs and IP addresses ``fetch_url`` may reach: the pure half of the SSRF guard.

Nothing here does I/O. ``fetch.py`` owns the sockets and asks this module two questions:

* ``parse_target(url)``: is this a URL we fetch at all (http/https, no credentials, a well-formed
  host), and what exactly do we connect to? The parsed ``Target`` is the single source of truth
  for the connection, the ``Host`` header and TLS SNI, so no second URL parser can disagree with
  the one that was checked (the ``http://a\\@127.0.0.1/`` family of tricks).
* ``check_address(ip)``: may a socket be opened to this address? Every address a name resolves
  to goes through here, and so does every IP literal, however it was spelled.

Hosts that look numeric are read the way libc's ``inet_aton`` reads them (``2130706433``,
``0177.0.0.1``, ``0x7f.1`` and ``127.1`` all mean 127.0.0.1), because that is what the resolver
would do with them; reading them any other way would let a spelling slip past the check.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import quote, urljoin, urlsplit

from datapulse.errors import ToolError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

DEFAULT_PORTS = {"http": 80, "https": 443}

# One inet_aton part: hex (``0x`` alone is 0, as in glibc), octal (leading 0), or decimal.
_HEX = re.compile(r"0[xX][0-9a-fA-F]*")
_OCTAL = re.compile(r"0[0-7]*")
_DECIMAL = re.compile(r"[1-9][0-9]*")
# A DNS name after IDNA encoding. Anything else (``%``, ``\\``, spaces...) is refused rather than
# guessed at, because other parsers (browsers, libc) might read it differently.
_HOSTNAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?")
# Characters left as they are in a request target; everything else is percent-encoded.
_TARGET_SAFE = "/%:@!$&'()*+,;=-._~?"

_RFC1918 = tuple(
    ipaddress.IPv4Network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")
)
_THIS_NETWORK = ipaddress.IPv4Network("0.0.0.0/8")
_SHARED = ipaddress.IPv4Network("100.64.0.0/10")  # RFC 6598 carrier-grade NAT
_METADATA = ipaddress.IPv4Address("169.254.169.254")
_UNIQUE_LOCAL = ipaddress.IPv6Network("fc00::/7")
_NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052: last 32 bits are IPv4
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")  # RFC 8215: site-chosen embedding
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")  # deprecated ::a.b.c.d


@dataclass(frozen=True)
class Target:
    """A URL we are willing to fetch, split into exactly what goes on the wire.

    ``host`` is a lower-case ASCII (IDNA) name, or the canonical text of ``ip`` when the URL named
    an address. ``target`` is the origin-form request target (path and query, percent-encoded).
    Userinfo and fragments never survive parsing, so they are never forwarded.
    """

    scheme: str
    host: str
    port: int
    target: str
    ip: IPAddress | None = None

    @property
    def authority(self) -> str:
        """``host[:port]`` as it belongs in a ``Host`` header or URL (IPv6 in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.authority}{self.target}"


def parse_target(url: str) -> Target:
    """Parse an absolute http(s) URL, or raise ``ToolError`` saying why it is not fetched.

    URLs with credentials (``user:pass@host``) are refused rather than stripped: ``@`` is the
    classic way to make a URL look like it points somewhere it does not, and a fetch tool has no
    business carrying someone's password to a third party.
    """
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:  # bad port, bad brackets, NFKC tricks in the netloc
        raise ToolError(f"invalid URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        shown = f"{scheme!r}" if scheme else "a missing"
        raise ToolError(f"refused: {shown} scheme (only http and https are fetched)")
    if "@" in parts.netloc:
        raise ToolError("refused: URLs with credentials (user@host) are not fetched")
    host, ip = _parse_host(parts.hostname or "")
    if port == 0:
        raise ToolError("invalid URL: port 0")
    target = quote(parts.path or "/", safe=_TARGET_SAFE)
    if parts.query:
        target += "?" + quote(parts.query, safe=_TARGET_SAFE)
    return Target(scheme, host, port or DEFAULT_PORTS[scheme], target, ip)


def resolve_redirect(base: Target, location: str) -> Target:
    """The target a ``Location`` header points at, relative to ``base``, checked like any URL."""
    return parse_target(urljoin(base.url, location.strip()))


def _parse_host(raw: str) -> tuple[str, IPAddress | None]:
    if not raw:
        raise ToolError("invalid URL: no host")
    if ":" in raw:  # only a bracketed IPv6 literal can contain a colon after urlsplit
        ip = _parse_ipv6(raw.replace("%25", "%"))  # RFC 6874 zone: fe80::1%25eth0
        if ip is None:
            raise ToolError(f"invalid URL: bad IPv6 address {raw!r}")
        return str(ip), ip
    try:
        # IDNA first: it folds full-width digits (U+FF11...), so a full-width "127.0.0.1"
        # becomes the ASCII one here, before the check, not after it.
        host = raw.encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise ToolError(f"invalid URL: bad host name {raw!r}") from None
    ip4 = parse_ipv4_aton(host.removesuffix("."))
    if ip4 is not None:
        return str(ip4), ip4
    if not _HOSTNAME.fullmatch(host):
        raise ToolError(f"invalid URL: bad host name {raw!r}")
    return host, None


def parse_ip_literal(host: str) -> IPAddress | None:
    """The address ``host`` spells (any inet_aton form, or IPv6), or None for a DNS name."""
    host = host.strip("[]")
    if ":" in host:
        return _parse_ipv6(host)
    return parse_ipv4_aton(host.removesuffix("."))


def _parse_ipv6(text: str) -> ipaddress.IPv6Address | None:
    try:
        return ipaddress.IPv6Address(text)
    except ValueError:
        return None


def parse_ipv4_aton(text: str) -> ipaddress.IPv4Address | None:
    """Read ``text`` as glibc's ``inet_aton`` does, or return None if it is not an address.

    One to four parts, each decimal, octal (leading ``0``) or hex (``0x``); the last part fills
    all the remaining bytes, so ``127.1`` is 127.0.0.1 and ``2130706433`` is too. Unlike glibc we
    accept no trailing junk: such a host is refused by ``parse_target`` anyway.
    """
    parts = text.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    values: list[int] = []
    for part in parts:
        value = _aton_number(part)
        if value is None:
            return None
        values.append(value)
    *leading, last = values
    if any(v > 0xFF for v in leading) or last >= 1 << (8 * (5 - len(values))):
        return None
    number = 0
    for v in leading:
        number = (number << 8) | v
    return ipaddress.IPv4Address((number << (8 * (5 - len(values)))) | last)


def _aton_number(part: str) -> int | None:
    if _HEX.fullmatch(part):
        return int(part[2:] or "0", 16)
    if _OCTAL.fullmatch(part):
        return int(part, 8)
    if _DECIMAL.fullmatch(part) and len(part) <= 12:  # longer cannot fit in 32 bits anyway
        return int(part)
    return None


def refusal_reason(ip: IPAddress) -> str | None:
    """Why ``fetch_url`` must not connect to ``ip`` (a phrase like "a private address"), or None.

    IPv6 forms that carry an IPv4 address (mapped ``::ffff:a.b.c.d``, NAT64 ``64:ff9b::a.b.c.d``,
    6to4 ``2002:AABB:CCDD::``, Teredo) are judged by the IPv4 address inside, since that is where
    the packets end up.
    """
    if isinstance(ip, ipaddress.IPv4Address):
        return _ipv4_reason(ip)
    if ip.ipv4_mapped is not None:
        return _embedded_reason("an IPv4-mapped", ip.ipv4_mapped)
    if ip in _NAT64_WELL_KNOWN:
        return _embedded_reason("a NAT64", ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    if ip in _NAT64_LOCAL:
        return "a local-use NAT64 address"
    if ip.sixtofour is not None and (reason := _embedded_reason("a 6to4", ip.sixtofour)):
        return reason
    if ip.teredo is not None:
        for inner in ip.teredo:
            if reason := _embedded_reason("a Teredo", inner):
                return reason
    if ip.is_unspecified:
        return "the unspecified address"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_multicast:
        return "a multicast address"
    if ip in _UNIQUE_LOCAL:
        return "a unique-local (private) address"
    if ip.is_site_local:
        return "a site-local address"
    if ip in _IPV4_COMPATIBLE:
        return "a deprecated IPv4-compatible address"
    if ip.is_reserved:
        return "a reserved address"
    if not ip.is_global:
        return "a non-global (special-purpose) address"
    return None


def _embedded_reason(form: str, inner: ipaddress.IPv4Address) -> str | None:
    reason = _ipv4_reason(inner)
    return None if reason is None else f"{form} form of {inner} ({reason})"


def _ipv4_reason(ip: ipaddress.IPv4Address) -> str | None:
    if ip.is_unspecified:
        return "the unspecified address"
    if ip in _THIS_NETWORK:  # 0.x.y.z: Linux connects these to the local host
        return "a 'this network' address"
    if ip.is_loopback:
        return "a loopback address"
    if ip == _METADATA:
        return "a link-local address (cloud metadata)"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_multicast:
        return "a multicast address"
    if any(ip in net for net in _RFC1918):
        return "a private address"
    if ip in _SHARED:
        return "a shared (carrier-grade NAT) address"
    if ip.is_reserved:
        return "a reserved address"
    if not ip.is_global:
        return "a non-global (special-purpose) address"
    return None


def check_address(ip: str | IPAddress) -> IPAddress:
    """Return ``ip`` parsed if a socket may be opened to it; otherwise raise ``ToolError``."""
    address = parse_ip_literal(ip) if isinstance(ip, str) else ip
    if address is None:
        raise ToolError(f"refused: {ip!r} is not an IP address")
    reason = refusal_reason(address)
    if reason is not None:
        raise ToolError(f"refused: {address} is {reason}")
    return address
