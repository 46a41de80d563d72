"""Request builders and response readers shared by test_conformance_mcp.py (``/mcp``) and
test_conformance_sse.py (``/sse`` + ``/messages``); ``rpc``, ``note``, ``Env`` and the ``env``
fixture come from tests/helpers.py and tests/e2e/conftest.py."""

from __future__ import annotations

from typing import Any

import httpx
import orjson

from datapulse.core import mcp
from datapulse.core.sse import SSEEvent, SSEParser
from tests.helpers import AUTH, BOTH, Env, note, rpc

LATEST = "2025-11-25"
MODERN = "2026-07-28"
HANDSHAKE = ("2025-03-26", "2025-06-18", "2025-11-25")
BASE = {**AUTH, "Accept": BOTH, "Content-Type": "application/json"}


def init_body(version: str = LATEST, id: int | str = 1) -> dict[str, Any]:
    return rpc(
        "initialize",
        {
            "protocolVersion": version,
            "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"},
        },
        id,
    )


def call(name: str, arguments: dict[str, Any] | None = None, id: int | str = 2, **meta: Any):
    params: dict[str, Any] = {"name": name, "arguments": arguments or {}}
    if meta:
        params["_meta"] = meta
    return rpc("tools/call", params, id)


def session_of(response: httpx.Response) -> str | None:
    return response.headers.get("mcp-session-id")


async def initialize(
    env: Env, version: str = LATEST, *, initialized: bool = True
) -> dict[str, str]:
    """Open a handshake session; returns the headers every later request of it carries."""
    response = await env.http.post("/mcp", headers=BASE, json=init_body(version))
    assert response.status_code == 200, response.text
    sid = session_of(response)
    assert sid
    headers = {**BASE, "Mcp-Session-Id": sid, "MCP-Protocol-Version": version}
    if initialized:
        ack = await env.http.post("/mcp", headers=headers, json=note("notifications/initialized"))
        assert ack.status_code == 202
    return headers


def sse_events(raw: bytes) -> list[SSEEvent]:
    return SSEParser().feed(raw)


def messages(response: httpx.Response) -> list[dict[str, Any]]:
    """The JSON-RPC messages of a finished response, JSON or SSE alike."""
    ctype = response.headers.get("content-type", "")
    if ctype.startswith("application/json"):
        body = response.json()
        return body if isinstance(body, list) else [body]
    assert ctype.startswith("text/event-stream"), ctype
    return [orjson.loads(e.data) for e in sse_events(response.content) if e.data]


def result_of(response: httpx.Response) -> Any:
    replies = [m for m in messages(response) if "method" not in m]
    assert len(replies) == 1, replies
    assert "result" in replies[0], replies[0]
    return replies[0]["result"]


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert body["jsonrpc"] == "2.0"
    assert "error" in body, body
    return body


def modern_body(
    method: str,
    params: dict[str, Any] | None = None,
    *,
    id: int | str = 1,
    version: str = MODERN,
    **meta: Any,
) -> dict[str, Any]:
    envelope: dict[str, Any] = {
        mcp.META_PROTOCOL_VERSION: version,
        mcp.META_CLIENT_CAPABILITIES: {},
        mcp.META_CLIENT_INFO: {"name": "t", "version": "1"},
    }
    for key, value in meta.items():
        full = key if "/" in key or key == "progressToken" else f"io.modelcontextprotocol/{key}"
        if value is None:
            envelope.pop(full, None)
        else:
            envelope[full] = value
    return rpc(method, {**(params or {}), "_meta": envelope}, id)


def modern_headers(method: str, name: str | None = None, version: str = MODERN) -> dict[str, str]:
    headers = {**BASE, "MCP-Protocol-Version": version, "Mcp-Method": method}
    if name is not None:
        headers["Mcp-Name"] = name
    return headers


async def post_modern(env: Env, method: str, params: dict[str, Any] | None = None, **meta: Any):
    name = (params or {}).get("name")
    return await env.http.post(
        "/mcp", headers=modern_headers(method, name), json=modern_body(method, params, **meta)
    )


def assert_jsonrpc_error(response: httpx.Response, status: int, code: int, id: Any) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = error_of(response)
    assert body["error"]["code"] == code, body
    assert body["id"] == id, body
    return body
