"""The router's first hook: Origin and Host validation on every request (see core/origins)."""

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
        if not host_allowed(request.header("host"), self.bound_to_loopback):
            raise MisdirectedRequest("this server answers only to localhost names")
        origin = request.header("origin")
        if request.path in self.open_paths:
            return None
        if not origin_allowed(origin, self.allowed):
            log.warning("refused Origin %r on %s %s", origin, request.method, request.path)
            raise Forbidden(f"origin not allowed: {origin}")
        return None
