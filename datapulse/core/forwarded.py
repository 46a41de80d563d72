"""Who the client is behind a reverse proxy: ``Forwarded`` (RFC 7239) and ``X-Forwarded-*``, sans-IO.

Proxy headers are believed only from a peer inside ``--trusted-proxies``; anyone else could
write them. The hop list (``X-Forwarded-For`` entries, or the ``for=`` of each ``Forwarded``
element) is read from the right: every proxy appends the address it was connected from, so the
rightmost entry that is not a trusted proxy is the client, and whatever lies left of it is the
client's own say and worth nothing. A chain made only of trusted proxies names its leftmost.

Only one family of headers is read (``--proxy-headers``): a proxy appends to the one it writes
and passes the other through untouched, so believing both would let a client forge the other.
With ``x-forwarded`` the scheme and host are the rightmost ``X-Forwarded-Proto`` and
``X-Forwarded-Host`` values (what the nearest proxy set); with ``forwarded`` they are the
``proto=`` and ``host=`` of the element that named the client. A malformed header, a scheme
that is not http(s) or a host that is not a host name is not believed (the peer stays the
client, and the scheme and host stay unknown).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

X_FORWARDED = "x-forwarded"
FORWARDED = "forwarded"
PROXY_HEADER_KINDS = (X_FORWARDED, FORWARDED)

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_HOST = re.compile(r"(?:[a-z0-9_.-]+|\[[0-9a-f:.]+\])(?::[0-9]{1,5})?")
MAX_HOPS = 32
"""Hops read from the right at most: past that the chain is the client's own fiction anyway."""


@dataclass(frozen=True, slots=True)
class ForwardedFor:
    """What a trusted proxy says of a request: the client, and the scheme and host it used."""

    client: str
    """An IP address (normalised), or an RFC 7239 obfuscated node name such as ``_hidden``."""
    port: int
    scheme: str | None
    host: str | None


def parse_networks(csv: str) -> tuple[Network, ...]:
    """``"10.0.0.0/8, 127.0.0.1"`` -> networks (a bare address is a /32 or /128).
    Raises ``ValueError`` naming the entry that is not a network."""
    networks = []
    for item in filter(None, (part.strip() for part in csv.split(","))):
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"not an address or CIDR network: {item!r}") from None
    return tuple(networks)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_trusted(address: str, networks: tuple[Network, ...]) -> bool:
    ip = _ip(address)
    return ip is not None and any(ip in network for network in networks)


def parse_node(text: str) -> tuple[str, int] | None:
    """A hop: ``192.0.2.1``, ``192.0.2.1:80``, ``2001:db8::1``, ``[2001:db8::1]:80``, or an
    RFC 7239 name (``unknown``, ``_hidden``). None when it is none of these."""
    text = text.strip()
    port = 0
    if text.startswith("["):
        end = text.find("]")
        if end == -1:
            return None
        host, rest = text[1:end], text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                return None
            port_text = rest[1:]
            if not port_text.isdigit():
                return None if not port_text.startswith("_") else (host, 0)
            port = int(port_text)
        ip = _ip(host)
        return (str(ip), port) if ip is not None else None
    if text.count(":") == 1:
        host, _, port_text = text.partition(":")
        if port_text.isdigit():
            port = int(port_text)
        elif not port_text.startswith("_"):
            return None
        text = host
    ip = _ip(text)
    if ip is not None:
        return str(ip), port if port <= 65535 else 0
    if text.lower() == "unknown" or (text.startswith("_") and _TOKEN.fullmatch(text)):
        return text, 0
    return None


def parse_forwarded(values: list[str]) -> list[dict[str, str]] | None:
    """The elements of ``Forwarded`` field values, each a dict of lowercased parameter names;
    None when it does not parse (RFC 7239 4: a list of ``;``-separated ``token=value`` pairs,
    the value a token or a quoted-string)."""
    elements: list[dict[str, str]] = []
    for value in values:
        i, n = 0, len(value)
        element: dict[str, str] = {}
        while i < n:
            while i < n and value[i] in " \t":
                i += 1
            if i >= n:
                break
            name = _TOKEN.match(value, i)
            if name is None or name.end() >= n or value[name.end()] != "=":
                return None
            i = name.end() + 1
            if i < n and value[i] == '"':
                i += 1
                chars: list[str] = []
                while i < n and value[i] != '"':
                    if value[i] == "\\" and i + 1 < n:
                        i += 1
                    chars.append(value[i])
                    i += 1
                if i >= n:
                    return None
                i += 1
                parsed = "".join(chars)
            else:
                token = _TOKEN.match(value, i)
                if token is None:
                    return None
                parsed, i = token.group(), token.end()
            key = name.group().lower()
            if key in element:
                return None  # RFC 7239 4: each parameter at most once per element
            element[key] = parsed
            while i < n and value[i] in " \t":
                i += 1
            if i < n and value[i] == ";":
                i += 1
            elif i < n and value[i] == ",":
                i += 1
                elements.append(element)
                element = {}
            elif i < n:
                return None
        if element:
            elements.append(element)
    return elements


def _scheme(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip().lower()
    return value if value in ("http", "https") else None


def _host(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip().lower()
    return value if len(value) <= 255 and _HOST.fullmatch(value) else None


def _rightmost(values: list[str]) -> str | None:
    items = [item.strip() for value in values for item in value.split(",") if item.strip()]
    return items[-1] if items else None


def _client_index(hops: list[tuple[str, int]], networks: tuple[Network, ...]) -> int:
    """The hop that is the client: the rightmost one that is not a trusted proxy."""
    first = max(0, len(hops) - MAX_HOPS)
    for index in range(len(hops) - 1, first - 1, -1):
        if not is_trusted(hops[index][0], networks):
            return index
    return first


def resolve(
    peer: str,
    networks: tuple[Network, ...],
    kind: str,
    header_values: dict[str, list[str]],
) -> ForwardedFor | None:
    """What the proxy at ``peer`` says of the request whose headers (lowercased names) are
    ``header_values``; None when ``peer`` is not a trusted proxy (nothing is believed)."""
    if not is_trusted(peer, networks):
        return None
    own = ForwardedFor(peer, 0, None, None)
    if kind == FORWARDED:
        elements = parse_forwarded(header_values.get("forwarded", []))
        if not elements:
            return own
        nodes = [parse_node(element.get("for", "")) for element in elements]
        if any(node is None for node in nodes):
            return own
        hops = [node for node in nodes if node is not None]
        index = _client_index(hops, networks)
        element = elements[index]
        client, port = hops[index]
        return ForwardedFor(client, port, _scheme(element.get("proto")), _host(element.get("host")))
    scheme = _scheme(_rightmost(header_values.get("x-forwarded-proto", [])))
    host = _host(_rightmost(header_values.get("x-forwarded-host", [])))
    entries = [
        item for value in header_values.get("x-forwarded-for", []) for item in value.split(",")
    ]
    x_nodes = [parse_node(item) for item in entries if item.strip()]
    if not x_nodes or any(node is None for node in x_nodes):
        return ForwardedFor(peer, 0, scheme, host)
    x_hops = [node for node in x_nodes if node is not None]
    client, port = x_hops[_client_index(x_hops, networks)]
    return ForwardedFor(client, port, scheme, host)
