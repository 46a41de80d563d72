"""The router's first hook: Origin and Host validation on every request (see core/origins).

An absolute-form target (``GET http://host/path``) names the host the client means (RFC 9112
3.2.2); it is checked like the Host header, and so is that header: both must be ours. Neither a
refused Origin nor a refused Host is quoted in the answer or the log (header values are the
client's bytes, and the log and a 4xx body are no place for them).
"""

from __future__ import annotations

import logging

from datapulse.config import Config
from datapulse.core.origins import host_allowed, is_loopback_name, origin_allowed, parse_origins
from datapulse.errors import Forbidden, MisdirectedRequest
from datapulse.net.http import Request, Response

log = logging.getLogger("datapulse.http")


class OriginGuard:
    def __init__(
        self, config: Config, extra_origins: str = "", open_paths: frozenset[str] = frozenset()
    ) -> None:
        self.allowed = parse_origins(
            ",".join(filter(None, [config.allowed_origins, extra_origins]))
        )
        self.bound_to_loopback = is_loopback_name(config.host)
        # Public documents any page may read (OAuth metadata): Host is checked, Origin is not.
        self.open_paths = open_paths

    async def __call__(self, request: Request) -> Response | None:
        if not host_allowed(request.header("host"), self.bound_to_loopback) or (
            request.authority is not None
            and not host_allowed(request.authority, self.bound_to_loopback)
        ):
            raise MisdirectedRequest("this server answers only to localhost names")
        if request.path in self.open_paths:
            return None
        if not origin_allowed(request.header("origin"), self.allowed):
            log.warning("refused an Origin not allowed on %s %s", request.method, request.path)
            raise Forbidden("origin not allowed")
        return None
