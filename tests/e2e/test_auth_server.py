"""Authorization wired into the server: JWT at start-up, RFC 9728 metadata, challenges, scopes.

Tokens come from the IdP stand-in (tests/idp.py) on 127.0.0.1; every network test runs under
``trio.fail_after``. The server and client helpers are in tests/helpers.py, the ``idp`` and
``jwt_server`` fixtures in tests/e2e/conftest.py.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from typing import Any

import httpx
import orjson
import pytest
import trio

from datapulse import Server
from datapulse.auth.prm import (
    InsufficientScope,
    advertised_scopes,
    canonical_resource,
    metadata_url,
    with_resource_metadata,
)
from datapulse.auth.setup import AuthStartupError
from tests.helpers import (
    AUTH,
    MCP_HEADERS,
    SSEReader,
    bearer,
    client_for,
    make_config,
    start_auth_server,
)
from tests.idp import AUDIENCE, IdP, rsa_key, start_idp

TIMEOUT = 10
PRM = "/.well-known/oauth-protected-resource"
JSON = {"Content-Type": "application/json"}


# -- shared helpers ------------------------------------------------------------------------------


def challenge_params(header: str) -> dict[str, str]:
    """``Bearer a="x", b="y"`` -> {a: x, b: y} (the Python SDK parses it the same way)."""
    assert header.startswith("Bearer"), header
    return dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', header))


# -- pure pieces -------------------------------------------------------------------------------


def test_resource_urls_are_canonical_and_metadata_is_path_inserted() -> None:
    assert canonical_resource("HTTPS://MCP.Example.com/") == "https://mcp.example.com"
    assert canonical_resource("https://h.example/api/") == "https://h.example/api"
    for bad in ("mcp.example.com", "ftp://h/", "https://h/?q=1", "https://h/#f"):
        with pytest.raises(ValueError):
            canonical_resource(bad)
    assert metadata_url("https://h.example/mcp") == f"https://h.example{PRM}/mcp"
    assert metadata_url("https://h.example") == f"https://h.example{PRM}"
    assert advertised_scopes(["b", None, "a", "offline_access", "a"]) == ["a", "b"]
    for bad in ("mcp.example.com", "https://h/?q=1", "https:///path"):
        with pytest.raises(ValueError, match="resource_url"):
            make_config(resource_url=bad)


def test_challenges_gain_resource_metadata_once() -> None:
    url = f"https://h{PRM}"
    assert with_resource_metadata("Bearer", url) == f'Bearer resource_metadata="{url}"'
    invalid = 'Bearer error="invalid_token", error_description="expired"'
    assert with_resource_metadata(invalid, url) == f'{invalid}, resource_metadata="{url}"'
    assert with_resource_metadata(with_resource_metadata(invalid, url), url).count("resource_") == 1
    exc = InsufficientScope("data:read", what="tool x", resource_metadata=url)
    assert exc.http_status == 403
    assert exc.headers == [
        (
            "WWW-Authenticate",
            'Bearer error="insufficient_scope", scope="data:read", '
            f'resource_metadata="{url}", error_description="tool x needs the scope \'data:read\'"',
        )
    ]


# -- wiring: JWT beside the local token ------------------------------------------------------------


async def test_jwt_and_local_token_both_authenticate(jwt_server: tuple[Server, IdP]) -> None:
    server, idp = jwt_server
    assert server.info is not None
    prm_root = f"{server.info.url}{PRM}"
    with trio.fail_after(TIMEOUT):
        async with client_for(server) as http:
            for headers in (AUTH, bearer(idp.mint(sub="alice"))):
                assert (await http.post("/tickets", headers=headers)).status_code == 200
            missing = await http.post("/tickets")
            assert missing.status_code == 401
            assert missing.headers["www-authenticate"] == f'Bearer resource_metadata="{prm_root}"'
            # JWT is last in the chain: a bad JWT's own reason is what the client reads.
            expired = idp.mint(sub="alice", exp=1_000_000)
            refused = await http.post("/tickets", headers=bearer(expired))
            assert refused.status_code == 401
            params = challenge_params(refused.headers["www-authenticate"])
            assert params["error"] == "invalid_token"
            assert "expired" in params["error_description"]
            assert params["resource_metadata"] == prm_root
            wrong_local = await http.post("/tickets", headers=bearer("not-the-token"))
            assert challenge_params(wrong_local.headers["www-authenticate"])["error"] == (
                "invalid_token"
            )


async def test_jwt_alone_generates_no_local_token(nursery: trio.Nursery, idp: IdP) -> None:
    with trio.fail_after(TIMEOUT):
        server, info = await start_auth_server(nursery, idp, token=None)
        assert server.token is None and info.token is None
        async with client_for(server) as http:
            assert (await http.post("/tickets", headers=AUTH)).status_code == 401
            ok = await http.post("/tickets", headers=bearer(idp.mint(sub="bob")))
            assert ok.status_code == 200


async def test_discovery_failure_stops_the_server_before_it_listens(
    nursery: trio.Nursery,
) -> None:
    # A configuration error stops it; an IdP that is only down does not (test_auth_hardening).
    issuer = "http://idp.example.test"  # plain http to a host that is not loopback
    server = Server(
        builtin_tools=True, config=make_config(jwt_issuer=issuer, jwt_audience=AUDIENCE)
    )
    with trio.fail_after(TIMEOUT), pytest.raises(AuthStartupError) as info:
        await nursery.start(server.serve)
    assert issuer in str(info.value) and "https" in str(info.value)
    assert server.info is None
    missing_audience = Server(
        builtin_tools=True, config=make_config(jwt_issuer="https://idp.example")
    )
    with trio.fail_after(TIMEOUT), pytest.raises(AuthStartupError, match="JWT_AUDIENCE"):
        await nursery.start(missing_audience.serve)


async def test_keys_unavailable_is_503_not_401(nursery: trio.Nursery) -> None:
    idp = await start_idp(nursery, keys=[rsa_key("rsa-1")], down="503", faulty_paths={"/keys"})
    with trio.fail_after(TIMEOUT):
        server, _ = await start_auth_server(nursery, idp)
        async with client_for(server) as http:
            response = await http.post("/tickets", headers=bearer(idp.mint()))
            assert response.status_code == 503
            assert "retry-after" in response.headers
            # The local token does not need the IdP.
            assert (await http.post("/tickets", headers=AUTH)).status_code == 200


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _cli_env(**extra: str) -> dict[str, str]:
    names = ("LOCAL_BEARER_TOKEN", "JWT_ISSUER", "JWT_AUDIENCE", "DATAPULSE_RESOURCE_URL")
    env = {k: v for k, v in os.environ.items() if k not in names}
    return {**env, **extra}


async def test_cli_exits_1_with_a_clear_line_when_discovery_fails() -> None:
    issuer = "http://idp.example.test"  # a configuration error: plain http, not loopback
    with trio.fail_after(30):
        result = await trio.run_process(
            [sys.executable, "-m", "datapulse", "--port", "0"],
            env=_cli_env(JWT_ISSUER=issuer, JWT_AUDIENCE=AUDIENCE),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    err = result.stderr.decode()
    assert result.returncode == 1, err
    assert "datapulse: cannot start: JWT authentication cannot start" in err
    assert issuer in err
    assert "Traceback" not in err


async def test_cli_with_jwt_serves_metadata_and_prints_no_token(idp: IdP) -> None:
    with trio.fail_after(40):
        await _run_cli_with_jwt(idp)


async def _run_cli_with_jwt(idp: IdP) -> None:
    async with trio.open_nursery() as nursery:
        proc = await nursery.start(
            lambda task_status=trio.TASK_STATUS_IGNORED: trio.run_process(
                [sys.executable, "-m", "datapulse", "--port", "0"],
                env=_cli_env(JWT_ISSUER=idp.issuer, JWT_AUDIENCE=AUDIENCE),
                stderr=subprocess.PIPE,
                check=False,
                task_status=task_status,
            )
        )
        try:
            text = ""
            with trio.fail_after(20):
                while "JWT access tokens" not in text:
                    chunk = await proc.stderr.receive_some(4096)
                    assert chunk, text
                    text += chunk.decode()
            assert "bearer token" not in text
            url = re.search(r"listening on (http://[^\s\"]+)", text)
            assert url, text
            with trio.fail_after(TIMEOUT):
                async with httpx.AsyncClient(base_url=url.group(1)) as http:
                    doc = (await http.get(PRM + "/mcp")).json()
                    assert doc["resource"] == url.group(1) + "/mcp"
                    assert doc["authorization_servers"] == [idp.issuer]
                    ok = await http.post("/tickets", headers=bearer(idp.mint()))
                    assert ok.status_code == 200
        finally:
            proc.terminate()
    assert proc.returncode in (0, -15)


# -- Protected Resource Metadata -------------------------------------------------------------------


async def test_metadata_documents_are_public_and_name_the_resource(
    jwt_server: tuple[Server, IdP],
) -> None:
    server, idp = jwt_server
    assert server.info is not None
    base = server.info.url
    with trio.fail_after(TIMEOUT):
        async with client_for(server) as http:
            for path, resource in ((PRM, base), (PRM + "/mcp", base + "/mcp")):
                response = await http.get(path)
                assert response.status_code == 200
                assert response.headers["content-type"] == "application/json"
                assert response.json() == {
                    "resource": resource,
                    "authorization_servers": [idp.issuer],
                    "bearer_methods_supported": ["header"],
                    "resource_name": "datapulse",
                    # The union of tool scopes, never offline_access.
                    "scopes_supported": ["data:read", "data:write"],
                }
            # Any origin may read it (and preflight it): it is public metadata.
            foreign = {"Origin": "https://inspector.example"}
            read = await http.get(PRM + "/mcp", headers=foreign)
            assert read.status_code == 200
            assert read.headers["access-control-allow-origin"] == "*"
            preflight = await http.options(
                PRM + "/mcp",
                headers={
                    **foreign,
                    "Access-Control-Request-Method": "GET",
                    "Access-Control-Request-Headers": "mcp-protocol-version",
                },
            )
            assert preflight.status_code == 204
            assert preflight.headers["access-control-allow-origin"] == "*"
            assert "GET" in preflight.headers["access-control-allow-methods"]
            # Everything else still refuses that origin (DNS-rebinding guard).
            assert (await http.post("/tickets", headers={**AUTH, **foreign})).status_code == 403


async def test_every_mcp_request_without_a_token_points_at_the_metadata(
    jwt_server: tuple[Server, IdP],
) -> None:
    server, _ = jwt_server
    assert server.info is not None
    root = f"{server.info.url}{PRM}"
    cases = [
        ("POST", "/mcp", root + "/mcp"),
        ("GET", "/mcp", root + "/mcp"),
        ("DELETE", "/mcp", root + "/mcp"),
        ("GET", "/sse", root),
        ("POST", "/messages?session_id=x", root),
        ("GET", "/events?session_id=x", root),
        ("POST", "/message?session_id=x", root),
        ("POST", "/tickets", root),
        ("GET", "/ws", root),
    ]
    with trio.fail_after(TIMEOUT):
        async with client_for(server) as http:
            for method, path, prm in cases:
                response = await http.request(method, path, headers=MCP_HEADERS, content=b"{}")
                assert response.status_code == 401, (method, path)
                header = response.headers["www-authenticate"]
                assert header == f'Bearer resource_metadata="{prm}"', (method, path)


async def test_resource_url_setting_is_what_clients_are_told(
    nursery: trio.Nursery, idp: IdP
) -> None:
    with trio.fail_after(TIMEOUT):
        server, _ = await start_auth_server(nursery, idp, resource_url="https://MCP.example.test/")
        async with client_for(server) as http:
            doc = (await http.get(PRM + "/mcp")).json()
            assert doc["resource"] == "https://mcp.example.test/mcp"
            refused = await http.post("/mcp", headers=MCP_HEADERS, content=b"{}")
            assert challenge_params(refused.headers["www-authenticate"]) == {
                "resource_metadata": f"https://mcp.example.test{PRM}/mcp"
            }


async def test_without_jwt_there_is_no_metadata_and_a_plain_challenge(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(TIMEOUT):
        server, _ = await start_auth_server(nursery, None)
        async with client_for(server) as http:
            assert (await http.get(PRM)).status_code == 404
            refused = await http.post("/tickets")
            assert refused.headers["www-authenticate"] == "Bearer"


# -- scopes on the original API --------------------------------------------------------------------


async def _message(http: httpx.AsyncClient, headers: dict[str, str], name: str, rid: str) -> Any:
    body = {"type": "call_tool", "request_id": rid, "data": {"name": name}}
    return await http.post("/message?session_id=s1", headers=headers, json=body)


async def test_plain_http_tool_call_without_its_scope_is_a_403_step_up(
    jwt_server: tuple[Server, IdP],
) -> None:
    server, idp = jwt_server
    assert server.info is not None
    low = bearer(idp.mint(sub="alice", scope="mcp:tools"))
    high = bearer(idp.mint(sub="alice", scope="mcp:tools data:read"))
    with trio.fail_after(TIMEOUT):
        async with client_for(server) as http:
            async with http.stream("GET", "/events?session_id=s1", headers=low) as stream:
                assert stream.status_code == 200
                reader = SSEReader(stream)
                refused = await _message(http, low, "secret", "r1")
                assert refused.status_code == 403
                assert refused.json()["error"] == "insufficient_scope"
                assert refused.headers["www-authenticate"] == (
                    'Bearer error="insufficient_scope", scope="data:read", '
                    f'resource_metadata="{server.info.url}{PRM}", '
                    "error_description=\"tool secret needs the scope 'data:read'\""
                )
                # Tools without a scope, unknown tools and list_tools are not affected.
                assert (await _message(http, low, "echo", "r2")).status_code == 202
                assert (await _message(http, low, "nope", "r3")).status_code == 202
                # Step-up: the same subject with a better token, on the same session.
                assert (await _message(http, high, "secret", "r4")).status_code == 202
                seen = {}
                while len(seen) < 3:
                    event = await reader.next_data()
                    message = orjson.loads(event.data or "")
                    seen[message["request_id"]] = message
                assert seen["r2"]["type"] == "tool_result"
                assert seen["r3"]["type"] == "error"
                assert seen["r4"] == {
                    "type": "tool_result",
                    "request_id": "r4",
                    "data": {"secret": 42},
                }
                assert "r1" not in seen


async def test_local_token_holds_every_scope(jwt_server: tuple[Server, IdP]) -> None:
    server, _ = jwt_server
    with trio.fail_after(TIMEOUT):
        async with client_for(server) as http:
            async with http.stream("GET", "/events?session_id=s1", headers=AUTH) as stream:
                reader = SSEReader(stream)
                assert (await _message(http, AUTH, "writer", "w1")).status_code == 202
                event = orjson.loads((await reader.next_data()).data or "")
                assert event["type"] == "tool_result" and event["request_id"] == "w1"


async def test_mcp_sessions_report_a_missing_scope_as_a_jsonrpc_error(
    jwt_server: tuple[Server, IdP],
) -> None:
    server, idp = jwt_server
    headers = {**MCP_HEADERS, **bearer(idp.mint(sub="carol", scope="mcp:tools"))}
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"},
        },
    }
    call = {
        "jsonrpc": "2.0",
        "id": 2,
        "method": "tools/call",
        "params": {"name": "secret", "arguments": {}},
    }
    with trio.fail_after(TIMEOUT):
        async with client_for(server) as http:
            opened = await http.post("/mcp", headers=headers, json=init)
            session = {"Mcp-Session-Id": opened.headers["mcp-session-id"]}
            response = await http.post("/mcp", headers={**headers, **session}, json=call)
            body = response.json()
            assert "error" in body and "data:read" in body["error"]["message"], body
