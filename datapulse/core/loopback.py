"""Which host names mean "this machine": one predicate for every loopback exception we make.

Three rules lean on it: a loopback-bound server refuses a ``Host`` that is not loopback (DNS
rebinding), loopback ``Origin``\\s are always allowed, and key sources may use plain http only
on loopback. A name that merely *looks* local (``127.evil.example``) must not pass, so IP
literals are parsed, never prefix-matched.
"""

from __future__ import annotations

import functools
import ipaddress


# Asked on every request (the Host check) with a handful of distinct values; parsing an IP
# literal costs more than the rest of the check. Bounded, since the values come from clients.
@functools.lru_cache(maxsize=512)
def is_loopback_host(name: str) -> bool:
    """``localhost`` (any case), or an IP literal in 127.0.0.0/8 or ``::1``, bracketed or not.

    An IPv4-mapped ``::ffff:127.x.y.z`` counts too: packets to it reach the loopback interface.
    ``*.localhost`` names (RFC 6761) are not accepted: no caller has needed them, and a resolver
    that sends them elsewhere would turn the exception into a hole. ``name`` carries no port.
    """
    name = name.strip().lower()
    if name == "localhost":
        return True
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback
