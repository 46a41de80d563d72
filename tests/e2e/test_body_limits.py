"""``max_body_bytes`` is inclusive: a body of exactly the limit is read, one byte more is a 413.

Raw sockets, so the framing (Content-Length or chunked) is exactly what the test says, and a
refusal must be a real ``413`` with the JSON error body: a server that just hangs up fails.
``POST /tickets`` is the target because it answers 200 to a JSON object padded with spaces.
"""

from __future__ import annotations

import json

import pytest
import trio

from tests.helpers import TOKEN, raw_exchange, start_server

LIMIT = 1000
HEAD = (
    f"POST /tickets HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
    "Content-Type: application/json\r\nConnection: close\r\n"
)


def json_body(size: int) -> bytes:
    """A JSON object of exactly ``size`` bytes."""
    return b"{}".ljust(size)


def with_content_length(body: bytes) -> bytes:
    return f"{HEAD}Content-Length: {len(body)}\r\n\r\n".encode() + body


def chunked(body: bytes, piece: int = 300) -> bytes:
    """``body`` in several chunks, so the server has to add them up."""
    framed = b"".join(
        b"%x\r\n%b\r\n" % (len(body[i : i + piece]), body[i : i + piece])
        for i in range(0, len(body), piece)
    )
    return f"{HEAD}Transfer-Encoding: chunked\r\n\r\n".encode() + framed + b"0\r\n\r\n"


def parse(raw: bytes) -> tuple[int, dict[str, object]]:
    assert raw.startswith(b"HTTP/1.1 "), f"no HTTP response (the server hung up?): {raw[:200]!r}"
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


@pytest.mark.parametrize("frame", [with_content_length, chunked], ids=["content-length", "chunked"])
async def test_a_body_of_exactly_max_body_bytes_is_accepted(nursery: trio.Nursery, frame) -> None:
    _, info = await start_server(nursery, max_body_bytes=LIMIT)
    with trio.fail_after(10):
        raw = await raw_exchange(info.port, frame(json_body(LIMIT)))
    status, document = parse(raw)
    assert status == 200, document
    assert isinstance(document["ticket"], str) and document["ticket"]


@pytest.mark.parametrize("frame", [with_content_length, chunked], ids=["content-length", "chunked"])
async def test_one_byte_over_max_body_bytes_is_413(nursery: trio.Nursery, frame) -> None:
    _, info = await start_server(nursery, max_body_bytes=LIMIT)
    with trio.fail_after(10):
        raw = await raw_exchange(info.port, frame(json_body(LIMIT + 1)))
    status, document = parse(raw)
    assert status == 413
    assert document["error"] == "payload_too_large"
    assert str(LIMIT) in str(document["detail"])
