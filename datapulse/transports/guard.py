"""The router's first hook: Origin and Host validation on every request (see core/origins).

An absolute-form target (``GET http://host/path``) names the host the client means (RFC 9112
3.2.2); it is checked like the Host header, and so is that header: both must be ours. Neither a
refused Origin nor a refused Host is quoted in the answer or the log (header values are the
client's bytes, and the log and a 4xx body are no place for them).

Behind a trusted proxy (``Request.proxy``) the Host the client used may arrive in
``X-Forwarded-Host`` (``Request.forwarded_host``) while ``Host`` names us as the proxy's
upstream; the forwarded one is checked as well, since it is what the resource URL is built from.

Health probes (``probe_paths``: ``/healthz``, ``/readyz``) skip the Host check on a
non-loopback bind: orchestrators (Kubernetes, Azure Container Apps, App Service) send the pod's
IP as Host, which no ``--allowed-hosts`` list names. The check exists against DNS rebinding of a
*loopback* server, and a loopback bind keeps it for every path.
"""

from __future__ import annotations

import logging

from datapulse.config import Config
from datapulse.core.origins import (
    host_allowed,
    is_loopback_name,
    origin_allowed,
    parse_hosts,
    parse_origins,
)
from datapulse.errors import Forbidden, MisdirectedRequest
from datapulse.net.http import Request, Response

log = logging.getLogger("datapulse.http")


class OriginGuard:
    def __init__(
        self,
        config: Config,
        extra_origins: str = "",
        open_paths: frozenset[str] = frozenset(),
        probe_paths: frozenset[str] = frozenset(),
    ) -> None:
        self.allowed = parse_origins(
            ",".join(filter(None, [config.allowed_origins, extra_origins]))
        )
        self.bound_to_loopback = is_loopback_name(config.host)
        self.hosts = parse_hosts(config.allowed_hosts)
        # Public documents any page may read (OAuth metadata): Host is checked, Origin is not.
        self.open_paths = open_paths
        self.probe_paths = probe_paths

    async def __call__(self, request: Request) -> Response | None:
        loopback, hosts = self.bound_to_loopback, self.hosts
        probe = not loopback and request.path in self.probe_paths
        hosts_named = (request.header("host"), request.authority, request.forwarded_host)
        for host in () if probe else hosts_named:
            if host is not None and not host_allowed(host, loopback, hosts):
                raise MisdirectedRequest(
                    "this server does not answer to that Host (see --allowed-hosts)"
                )
        if request.path in self.open_paths:
            return None
        if not origin_allowed(request.header("origin"), self.allowed):
            log.warning("refused an Origin not allowed on %s %s", request.method, request.path)
            raise Forbidden("origin not allowed")
        return None
