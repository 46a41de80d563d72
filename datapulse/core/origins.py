"""Origin and Host checks against DNS rebinding, sans-IO.

A web page on ``evil.example`` can make a browser resolve ``evil.example`` to 127.0.0.1 and then
talk to a local server as if it were same-origin. Two checks stop it: a browser always sends
``Origin`` on cross-site requests, and we refuse origins not on the allow-list (403); and a server
bound to loopback refuses a ``Host`` that is not a loopback name (421), since a rebound name still
arrives in ``Host``. Requests without ``Origin`` (non-browser clients) are allowed.

``--allowed-hosts`` names the other Hosts a server answers to (the name a reverse proxy serves
it under): loopback names stay allowed on a loopback bind, and once the list is given a server
bound elsewhere answers only to the names on it (``*``: any Host).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from datapulse.core.loopback import is_loopback_host


def _host_only(netloc: str) -> str:
    """``host:port`` / ``[v6]:port`` -> host (brackets kept for v6), lowercased."""
    netloc = netloc.strip().lower()
    if netloc.startswith("["):
        end = netloc.find("]")
        return netloc[: end + 1] if end != -1 else netloc
    return netloc.rsplit(":", 1)[0] if netloc.count(":") == 1 else netloc


def is_loopback_name(host: str) -> bool:
    """``host`` may carry a port (a ``Host`` header, an origin's netloc)."""
    return is_loopback_host(_host_only(host))


def parse_origins(csv: str) -> frozenset[str]:
    return frozenset(o.strip().rstrip("/").lower() for o in csv.split(",") if o.strip())


def origin_allowed(origin: str | None, allowed: frozenset[str]) -> bool:
    """No Origin: allowed. ``null`` or unparsable: refused. Loopback origins are always allowed;
    others only when listed exactly (scheme://host[:port]) or when ``*`` is listed."""
    if origin is None:
        return True
    origin = origin.strip().rstrip("/").lower()
    if origin in allowed or "*" in allowed:
        return True
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return False
    return is_loopback_name(parts.netloc)


def parse_hosts(csv: str) -> frozenset[str]:
    """``--allowed-hosts``: names without their ports, lowercased (``*`` kept as is)."""
    return frozenset(_host_only(h) for h in csv.split(",") if h.strip())


def host_allowed(
    host: str | None, bound_to_loopback: bool, allowed: frozenset[str] = frozenset()
) -> bool:
    """A listed name (any port) is allowed; a loopback name on a loopback bind is. Otherwise a
    loopback-bound server refuses, and so does any server once ``allowed`` names anything."""
    if host is None:
        return True  # HTTP/1.0 without Host: nothing a browser would send
    if allowed:
        if "*" in allowed or _host_only(host) in allowed:
            return True
    elif not bound_to_loopback:
        return True
    return bound_to_loopback and is_loopback_name(host)
