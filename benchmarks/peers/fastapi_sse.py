"""Benchmark peer 1: the seed's original /events + /message API on FastAPI + sse-starlette.

This is the server datapulse replaces, kept as close to the seed as the benchmark allows:
a module-level dict of per-session ``asyncio.Queue``s, tools run as fire-and-forget tasks whose
results land on the session's queue, ``EventSourceResponse`` with its own keep-alive ping, and a
plain bearer-token compare. Run it like every other server under test::

    python -m benchmarks.peers.fastapi_sse --port 8000 --token T --ping-interval 15

Endpoints: ``GET /healthz`` (no auth), ``GET /events?session_id=ID`` (SSE: ``id: N`` +
``data: {json}``), ``POST /message?session_id=ID`` with
``{"type": "call_tool", "request_id": "r1", "data": {"name": "get_time"}}`` -> 202
``{"status": "queued", "request_id": "r1"}``; the result arrives on the stream as
``{"type": "tool_result", "request_id": "r1", "data": {"time": "..."}}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import uvicorn
from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sse_starlette import EventSourceResponse

Tool = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


async def get_time(_args: dict[str, Any]) -> dict[str, Any]:
    return {"time": datetime.now(UTC).isoformat()}


async def fetch_url(args: dict[str, Any]) -> dict[str, Any]:
    # Present because the seed had it; the benchmark never calls it (no traffic leaves loopback).
    async with httpx.AsyncClient(timeout=5.0) as client:
        response = await client.get(str(args["url"]))
    return {"status": response.status_code, "body": response.text[:4096]}


TOOLS: dict[str, Tool] = {"get_time": get_time, "fetch_url": fetch_url}


class Message(BaseModel):
    type: str
    request_id: str
    data: dict[str, Any] = {}


def create_app(token: str, ping_interval_s: float) -> FastAPI:
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    sessions: dict[str, asyncio.Queue[dict[str, Any]]] = {}
    running: set[asyncio.Task[None]] = set()  # strong refs, or the loop may drop the task

    def require_token(authorization: str | None = Header(default=None)) -> None:
        if authorization != f"Bearer {token}":
            raise HTTPException(status_code=401, detail="unauthorized")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "server": "fastapi-sse-peer"}

    @app.get("/events", dependencies=[Depends(require_token)])
    async def events(session_id: str, request: Request) -> EventSourceResponse:
        queue = sessions.setdefault(session_id, asyncio.Queue())

        async def stream() -> AsyncIterator[dict[str, str]]:
            event_id = 0
            try:
                while True:
                    item = await queue.get()
                    event_id += 1
                    yield {"id": str(event_id), "data": json.dumps(item)}
            finally:
                sessions.pop(session_id, None)

        return EventSourceResponse(stream(), ping=ping_interval_s)

    async def run_tool(queue: asyncio.Queue[dict[str, Any]], message: Message) -> None:
        tool = TOOLS.get(str(message.data.get("name")))
        try:
            if tool is None:
                raise KeyError(f"unknown tool {message.data.get('name')!r}")
            result = await tool(message.data.get("arguments") or {})
            await queue.put(
                {"type": "tool_result", "request_id": message.request_id, "data": result}
            )
        except Exception as exc:  # the error is the event; the stream must go on
            await queue.put(
                {"type": "tool_error", "request_id": message.request_id, "error": str(exc)}
            )

    @app.post("/message", status_code=202, dependencies=[Depends(require_token)])
    async def message(session_id: str, body: Message) -> JSONResponse:
        if body.type != "call_tool":
            raise HTTPException(status_code=400, detail=f"unknown message type {body.type!r}")
        queue = sessions.setdefault(session_id, asyncio.Queue())
        task = asyncio.create_task(run_tool(queue, body))
        running.add(task)
        task.add_done_callback(running.discard)
        return JSONResponse({"status": "queued", "request_id": body.request_id}, status_code=202)

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--token", default=os.environ.get("LOCAL_BEARER_TOKEN", "bench"))
    parser.add_argument("--ping-interval", type=float, default=15.0)
    args = parser.parse_args()
    app = create_app(args.token, args.ping_interval)
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
