"""Fixtures only the e2e tests use: the MCP ``env`` (a server with the tests/mcp_tools.py tools
and an httpx client), and the IdP stand-in with a JWT-enabled server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

from datapulse import Server
from tests.helpers import Env, make_env, start_auth_server
from tests.idp import IdP, rsa_key, start_idp


@pytest.fixture
async def env(nursery: trio.Nursery) -> AsyncIterator[Env]:
    async with make_env(nursery) as value:
        yield value


@pytest.fixture
async def idp(nursery: trio.Nursery) -> IdP:
    return await start_idp(nursery, keys=[rsa_key("rsa-1")])


@pytest.fixture
async def jwt_server(nursery: trio.Nursery, idp: IdP) -> tuple[Server, IdP]:
    server, _ = await start_auth_server(nursery, idp)
    return server, idp
