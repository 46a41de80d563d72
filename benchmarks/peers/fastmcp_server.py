"""Benchmark peer 2: the official Python SDK's high-level server (FastMCP) on uvicorn.

In ``mcp`` 2.x FastMCP is called ``MCPServer`` (``mcp.server.mcpserver``); the API is the same
decorator-based one. One process serves both transports the SDK offers, each built by the SDK's
own app factory:

* Streamable HTTP at ``/mcp`` (stateful sessions; ``--json-response`` switches POST replies
  from SSE to plain JSON),
* legacy HTTP+SSE at ``/sse`` + ``/messages/`` (protocol 2024-11-05),
* ``GET /healthz`` for the readiness poll.

Every other route needs ``Authorization: Bearer TOKEN`` (a plain string compare, as in the
other servers). Pings come from sse-starlette's ``EventSourceResponse``, which both transports
use; ``--ping-interval`` sets its class default because the SDK exposes no knob for it::

    python -m benchmarks.peers.fastmcp_server --port 8000 --token T --ping-interval 15
"""

from __future__ import annotations

import argparse
import os
from datetime import UTC, datetime

import uvicorn
from mcp.server.mcpserver import MCPServer
from sse_starlette import EventSourceResponse
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

# The SDK's own cap is 10,000 sessions; the idle-stream scenario goes to 20,000, and every
# server under test gets its artificial caps lifted the same way.
MAX_SESSIONS = 1_000_000


class BearerAuth:
    """Pure-ASGI bearer check: the cheapest auth a user could bolt onto the SDK app."""

    def __init__(self, app: ASGIApp, token: str, open_paths: frozenset[str]) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()
        self.open_paths = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in self.open_paths:
            authorization = dict(scope["headers"]).get(b"authorization")
            if authorization != self.expected:
                await JSONResponse({"error": "unauthorized"}, status_code=401)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(token: str, ping_interval_s: float, json_response: bool) -> ASGIApp:
    EventSourceResponse.DEFAULT_PING_INTERVAL = ping_interval_s  # type: ignore[assignment]
    server: MCPServer = MCPServer("fastmcp-peer", log_level="WARNING")

    @server.tool()
    def get_time() -> dict[str, str]:
        """Current UTC time (ISO 8601)."""
        return {"time": datetime.now(UTC).isoformat()}

    @server.custom_route("/healthz", methods=["GET"])
    async def healthz(_request: Request) -> Response:
        return JSONResponse({"status": "ok", "server": "fastmcp-peer"})

    app = server.streamable_http_app(
        json_response=json_response, max_sessions=MAX_SESSIONS, host="127.0.0.1"
    )
    legacy = server.sse_app(host="127.0.0.1")
    # The streamable app owns the lifespan (its session manager); the legacy routes need none.
    app.router.routes.extend(r for r in legacy.routes if getattr(r, "path", "") != "/healthz")
    return BearerAuth(app, token, open_paths=frozenset({"/healthz"}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--token", default=os.environ.get("LOCAL_BEARER_TOKEN", "bench"))
    parser.add_argument("--ping-interval", type=float, default=15.0)
    parser.add_argument("--json-response", action="store_true")
    args = parser.parse_args()
    app = create_app(args.token, args.ping_interval, args.json_response)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        backlog=4096,
    )


if __name__ == "__main__":
    main()
