"""Issue 12, defect 3: the DNS-rebinding guard takes only real loopback names for loopback.

A name that merely starts with ``127.`` (``127.evil.example``) resolves wherever its owner likes;
a page on it could read a loopback-bound server through the victim's browser. It used to get 200
and could obtain a stream ticket.
"""

from __future__ import annotations

import httpx
import pytest
import trio

from tests.conftest import AUTH, start_server

FOREIGN = ["127.evil.example", "127.0.0.1.evil.example", "127.1", "localhost.evil.example"]
LOOPBACK = ["127.0.0.1", "localhost", "127.5.6.7", "[::1]"]


@pytest.mark.parametrize("host", FOREIGN)
async def test_a_name_that_only_looks_like_loopback_is_misdirected(
    nursery: trio.Nursery, host: str
) -> None:
    _, info = await start_server(nursery)
    with trio.fail_after(5):
        async with httpx.AsyncClient(base_url=info.url, headers=AUTH) as client:
            for method, path in (("GET", "/healthz"), ("POST", "/tickets")):
                response = await client.request(method, path, headers={"Host": f"{host}:80"})
                assert response.status_code == 421, (host, path)
                assert response.json()["error"] == "misdirected_request"
                assert "ticket" not in response.text


@pytest.mark.parametrize("host", LOOPBACK)
async def test_real_loopback_names_are_served(nursery: trio.Nursery, host: str) -> None:
    _, info = await start_server(nursery)
    with trio.fail_after(5):
        async with httpx.AsyncClient(base_url=info.url, headers=AUTH) as client:
            response = await client.get("/healthz", headers={"Host": f"{host}:{info.port}"})
    assert response.status_code == 200
