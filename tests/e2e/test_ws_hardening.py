"""/ws against hostile peers (issue 12, defect 1): every test sends its attack over a real
loopback socket and checks that the server bounds it.

* in-flight work: a flood of ``tools/list`` from a client that never reads costs a bounded amount
  of memory (tracemalloc, the server runs in this process), released once the client has gone;
  a client whose calls all run can still cancel one;
* writes: a peer that stops reading is dropped after ``--write-timeout``, its calls cancelled;
* reads: a frame header announcing 2^63 bytes is refused at once (1009), a message that never
  completes is closed after ``--read-timeout`` (1008), a silent peer is pinged and closed if it
  never answers (1011), a peer that answers pings may idle;
* shutdown: every /ws connection gets a close frame (1001) and ends within the grace;
* the handshake: what wsproto would refuse with bare responses of its own is answered with the
  JSON error body of every endpoint (426 names version 13), and nothing is left hanging.

Frames a well-behaved library would never send are written by hand (``client_frame``).
"""

from __future__ import annotations

import base64
import gc
import os
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson
import pytest
import trio
import trio_websocket
from wsproto.events import AcceptConnection, CloseConnection, Event, Ping, Request, TextMessage

from datapulse.transports.ws_stream import FrameTracker, MessageTooBig
from tests.helpers import (
    AUTH,
    TOKEN,
    MiB,
    RawClient,
    RawWebSocket,
    add_counted_tools,
    bound_tests,
    make_env,
    raw_exchange,
    rpc,
    start_server,
    wait_for,
    wire,
)

TEST_TIMEOUT_S = 10
AUTH_HEADER = [(b"authorization", AUTH["Authorization"].encode())]
MASK = b"\x11\x22\x33\x44"


# -- hand-made frames and a raw client ---------------------------------------------------------


def masked(payload: bytes, offset: int = 0) -> bytes:
    """``payload`` masked with MASK, as bytes ``offset..`` of a frame's payload."""
    return bytes(b ^ MASK[(offset + i) % 4] for i, b in enumerate(payload))


def client_frame(
    payload: bytes, *, opcode: int = 0x1, fin: bool = True, announce: int | None = None
) -> bytes:
    """A masked client frame; ``announce`` claims a payload length other than the real one."""
    length = len(payload) if announce is None else announce
    first = (0x80 if fin else 0) | opcode
    if length < 126:
        head = bytes([first, 0x80 | length])
    elif length < 1 << 16:
        head = bytes([first, 0x80 | 126]) + length.to_bytes(2, "big")
    else:
        head = bytes([first, 0x80 | 127]) + length.to_bytes(8, "big")
    return head + MASK + masked(payload)


async def raw_ws(port: int, *, rcvbuf: int | None = None) -> RawWebSocket:
    """RawWebSocket.connect with an optional small receive buffer (a client slow to read)."""
    ws = RawWebSocket(await RawClient.connect(port, rcvbuf=rcvbuf))
    request = Request(
        host="localhost",
        target="/ws",
        subprotocols=["mcp"],
        extra_headers=[(b"authorization", f"Bearer {TOKEN}".encode())],
    )
    await ws.client.stream.send_all(ws.ws.send(request))
    with trio.fail_after(5):
        while not await ws._pump(AcceptConnection):
            pass
    return ws


async def close_of(ws: RawWebSocket, timeout: float) -> tuple[int, list[Event]]:
    """Read until the server's close frame (1006: the socket closed without one)."""
    seen: list[Event] = []
    with trio.fail_after(timeout):
        while True:
            try:
                data = await ws.client.stream.receive_some(65536)
            except trio.BrokenResourceError:
                data = b""
            ws.ws.receive_data(data or None)
            for event in ws.ws.events():
                seen.append(event)
                if isinstance(event, CloseConnection):
                    return event.code, seen


def tools_list_frame(ws: RawWebSocket, n: int) -> bytes:
    return ws.ws.send(TextMessage(data=wire(rpc("tools/list", id=n)).decode()))


@contextmanager
def traced() -> Iterator[None]:
    gc.collect()
    tracemalloc.start()
    try:
        yield
    finally:
        tracemalloc.stop()


def traced_now() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


class Flood:
    """Sends tools/list requests and never reads; ``sent`` counts those the socket took."""

    def __init__(self, ws: RawWebSocket, frames: int) -> None:
        self.ws = ws
        # Built before anything is measured: the client's own frames are not the server's.
        self.frames = [tools_list_frame(ws, n) for n in range(frames)]
        self.sent = 0
        self.ended = False

    async def run(self) -> None:
        try:
            for frame in self.frames:
                await self.ws.client.stream.send_all(frame)
                self.sent += 1
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the server dropped us
        self.frames = []
        self.ended = True


# -- a. in-flight work is bounded --------------------------------------------------------------


async def test_flood_from_a_client_that_never_reads_is_bounded_and_released(
    nursery: trio.Nursery,
) -> None:
    # A long write timeout: what bounds the memory here is the slots, not dropping the client.
    server, info = await start_server(nursery, write_timeout_s=30.0)
    ws = await raw_ws(info.port)
    await ws.initialize()
    flood = Flood(ws, 20_000)
    with traced():
        baseline = traced_now()
        peak = 0
        async with trio.open_nursery() as inner:
            inner.start_soon(flood.run)
            # While the frames go out, and a second after (the server may still be at work).
            deadline = trio.current_time() + 5
            with trio.move_on_at(deadline):
                while not flood.ended:
                    peak = max(peak, tracemalloc.get_traced_memory()[0] - baseline)
                    await trio.sleep(0.05)
            with trio.move_on_at(min(deadline, trio.current_time() + 1)):
                await trio.sleep_forever()
            inner.cancel_scope.cancel()
        peak = max(peak, tracemalloc.get_traced_memory()[1] - baseline)
        held = traced_now() - baseline
        await ws.client.abort()
        await wait_for(lambda: not server.http.connections, 5, "the connection to be dropped")
        released = traced_now() - baseline
    print(f"flood: sent={flood.sent} peak={peak / MiB:.2f} MiB held={held / MiB:.2f} MiB")
    print(f"flood: after the client left {released / MiB:.3f} MiB")
    assert peak < 20 * MiB, peak
    assert released < 1 * MiB, released


async def test_a_client_whose_calls_all_run_can_still_cancel_one(nursery: trio.Nursery) -> None:
    server, info = await start_server(nursery, max_calls_per_session=2)
    tools = add_counted_tools(server)
    ws = await raw_ws(info.port)
    await ws.initialize()
    for n in (1, 2):
        await ws.send(wire(rpc("tools/call", {"name": "hang", "arguments": {}}, id=n)))
    await tools.until(lambda t: t.started == 2)
    # The third is refused, as on every transport, and the socket is still being read.
    await ws.send(wire(rpc("tools/call", {"name": "hang", "arguments": {}}, id=3)))
    refused = await ws.next_message()
    assert refused["id"] == 3
    assert refused["error"]["code"] == -32000
    await ws.send(
        wire({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 1}})
    )
    await tools.until(lambda t: t.cleaned == 1)
    await ws.send(wire(rpc("ping", id=4)))
    assert await ws.next_message() == {"jsonrpc": "2.0", "id": 4, "result": {}}


# -- b. every write is bounded -----------------------------------------------------------------


async def test_a_peer_that_stops_reading_is_dropped_and_its_calls_cancelled(
    nursery: trio.Nursery,
) -> None:
    async with make_env(nursery, write_timeout_s=0.5) as env:
        ws = await raw_ws(env.port, rcvbuf=4096)
        await ws.initialize()
        await ws.send(wire(rpc("tools/call", {"name": "sleeper", "arguments": {}}, id="s")))
        await env.probe.started.wait()
        flood = Flood(ws, 20_000)
        with traced():
            baseline = traced_now()
            started = trio.current_time()
            async with trio.open_nursery() as inner:
                inner.start_soon(flood.run)
                with trio.fail_after(5):
                    await env.probe.cleaned.wait()  # the write timed out: the call is cancelled
                await wait_for(lambda: not env.server.http.connections, 2, "the drop")
                dropped_after = trio.current_time() - started
                peak = tracemalloc.get_traced_memory()[1] - baseline
                inner.cancel_scope.cancel()
            await ws.client.abort()
            released = traced_now() - baseline
    print(f"stopped reading: {flood.sent=} dropped after {dropped_after:.2f}s")
    print(f"stopped reading: peak={peak / MiB:.2f} MiB")
    print(f"stopped reading: after the drop {released / MiB:.3f} MiB")
    assert peak < 20 * MiB, peak
    assert released < 1 * MiB, released


# -- c. every wait for the peer is bounded -----------------------------------------------------


@pytest.mark.parametrize("announce", [2**63 - 1, 2**40, 5000])
async def test_a_header_announcing_a_huge_message_is_refused_at_once(
    nursery: trio.Nursery, announce: int
) -> None:
    _, info = await start_server(nursery, max_body_bytes=4096)
    ws = await raw_ws(info.port)
    await ws.initialize()
    await ws.client.stream.send_all(client_frame(b"", announce=announce))
    started = trio.current_time()
    code, _ = await close_of(ws, 3)
    assert code == 1009
    assert trio.current_time() - started < 1  # not after 4096 bytes, nor the read timeout


async def test_fragments_adding_up_past_the_limit_are_refused(nursery: trio.Nursery) -> None:
    _, info = await start_server(nursery, max_body_bytes=4096)
    ws = await raw_ws(info.port)
    await ws.initialize()
    await ws.client.stream.send_all(client_frame(b"[" * 3000, fin=False))
    await ws.client.stream.send_all(client_frame(b"", opcode=0x0, fin=False, announce=3000))
    code, _ = await close_of(ws, 3)
    assert code == 1009


async def test_a_message_that_never_completes_is_closed_after_the_read_timeout(
    nursery: trio.Nursery,
) -> None:
    _, info = await start_server(nursery, read_timeout_s=1.0)
    ws = await raw_ws(info.port)
    await ws.initialize()
    payload = wire(rpc("ping", id=1)) + b" " * 200
    await ws.client.stream.send_all(client_frame(b"", announce=len(payload)))
    started = trio.current_time()

    async def trickle() -> None:
        # One byte every 0.1 s: each read is quick, the message is not.
        for i, byte in enumerate(payload):
            await ws.client.stream.send_all(masked(bytes([byte]), i))
            await trio.sleep(0.1)

    async with trio.open_nursery() as inner:
        inner.start_soon(trickle)
        code, _ = await close_of(ws, 4)
        inner.cancel_scope.cancel()
    assert code == 1008
    assert 0.9 < trio.current_time() - started < 2.5


async def test_a_silent_peer_is_pinged_then_closed(nursery: trio.Nursery) -> None:
    _, info = await start_server(nursery, ping_interval_s=0.3, keepalive_timeout_s=0.5)
    ws = await raw_ws(info.port)  # wsproto: it does not answer pings unless told to
    await ws.initialize()
    started = trio.current_time()
    code, seen = await close_of(ws, 3)
    assert any(isinstance(e, Ping) for e in seen)
    assert code == 1011
    assert trio.current_time() - started < 1.5


async def test_a_peer_that_answers_pings_may_idle(nursery: trio.Nursery) -> None:
    _, info = await start_server(nursery, ping_interval_s=0.2, keepalive_timeout_s=0.3)
    async with trio_websocket.open_websocket(
        "127.0.0.1",
        info.port,
        "/ws",
        use_ssl=False,
        subprotocols=["mcp"],
        extra_headers=AUTH_HEADER,
        connect_timeout=5,
        disconnect_timeout=2,
    ) as ws:
        await trio.sleep(1.5)  # several ping intervals; trio-websocket answers each ping
        await ws.send_message(orjson.dumps(rpc("ping", id=1)).decode())
        with trio.fail_after(2):
            assert orjson.loads(await ws.get_message()) == {"jsonrpc": "2.0", "id": 1, "result": {}}


def test_frame_tracker_follows_fragments_and_control_frames() -> None:
    tracker = FrameTracker(max_message_bytes=100)
    assert tracker.at_boundary
    first = client_frame(b"abc", fin=False)
    tracker.feed(first[:1])  # half a header
    assert not tracker.at_boundary
    tracker.feed(first[1:])
    assert not tracker.at_boundary  # the message continues
    tracker.feed(client_frame(b"", opcode=0x9))  # a ping between fragments
    assert not tracker.at_boundary
    last = client_frame(b"defg", opcode=0x0)
    tracker.feed(last[:-1])
    assert not tracker.at_boundary
    tracker.feed(last[-1:])
    assert tracker.at_boundary
    tracker.feed(client_frame(b"x" * 300, opcode=0x1)[:2])
    assert not tracker.at_boundary
    with pytest.raises(MessageTooBig):
        tracker.feed(client_frame(b"x" * 300)[2:])


# -- d. graceful shutdown ----------------------------------------------------------------------


async def test_shutdown_sends_going_away_and_cancels_calls_within_the_grace(
    nursery: trio.Nursery,
) -> None:
    async with make_env(nursery, shutdown_grace_s=1.0) as env:
        async with trio_websocket.open_websocket(
            "127.0.0.1",
            env.port,
            "/ws",
            use_ssl=False,
            subprotocols=["mcp"],
            extra_headers=AUTH_HEADER,
            connect_timeout=5,
            disconnect_timeout=2,
        ) as ws:
            params = {"protocolVersion": "2025-11-25", "capabilities": {}}
            await ws.send_message(orjson.dumps(rpc("initialize", params, id=0)).decode())
            await ws.get_message()
            call = rpc("tools/call", {"name": "sleeper", "arguments": {}}, id=1)
            await ws.send_message(orjson.dumps(call).decode())
            await env.probe.started.wait()
            started = trio.current_time()
            env.server.shutdown()
            with pytest.raises(trio_websocket.ConnectionClosed) as closed:
                with trio.fail_after(3):
                    await ws.get_message()
        elapsed = trio.current_time() - started
        assert closed.value.reason.code == 1001
        assert env.probe.cleaned.is_set()
        assert elapsed < 1.0, elapsed


async def test_shutdown_ends_a_peer_that_never_answers_the_close(nursery: trio.Nursery) -> None:
    server, info = await start_server(nursery, shutdown_grace_s=1.0)
    ws = await raw_ws(info.port)
    await ws.initialize()
    started = trio.current_time()
    server.shutdown()
    code, _ = await close_of(ws, 3)  # read, never answered
    assert code == 1001
    await wait_for(lambda: not server.http.connections, 2, "the connection to end")
    assert trio.current_time() - started < 1.5


# -- e. the handshake is refused like any other request ----------------------------------------

KEY = base64.b64encode(os.urandom(16)).decode()
GOOD = {
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": KEY,
    "Sec-WebSocket-Protocol": "mcp",
}


def upgrade_headers(**changes: str | None) -> list[tuple[str, str]]:
    headers: dict[str, str | None] = {**GOOD, **changes}
    named = [(k.replace("_", "-"), v) for k, v in headers.items() if v is not None]
    return [("Authorization", AUTH["Authorization"]), *named]


@pytest.mark.parametrize(
    ("changes", "status", "error"),
    [
        ({"Sec-WebSocket-Version": "8"}, 426, "upgrade_required"),
        ({"Sec-WebSocket-Version": None}, 426, "upgrade_required"),
        ({"Sec-WebSocket-Key": None}, 400, "bad_request"),
        ({"Sec-WebSocket-Key": "c2hvcnQ="}, 400, "bad_request"),  # 5 bytes
        ({"Sec-WebSocket-Key": "not base64!"}, 400, "bad_request"),
        ({"Connection": "keep-alive"}, 400, "bad_request"),
        ({"Upgrade": "h2c"}, 400, "bad_request"),
    ],
)
async def test_refused_handshakes_get_json_error_bodies(
    nursery: trio.Nursery, changes: dict[str, str | None], status: int, error: str
) -> None:
    _, info = await start_server(nursery)
    client = await RawClient.connect(info.port)
    response = await client.exchange("GET", "/ws", upgrade_headers(**changes), b"")
    assert response.status_code == status
    body: dict[str, Any] = orjson.loads(client.body)
    assert body["error"] == error
    assert body["detail"]
    headers = {k.lower(): v for k, v in response.headers}
    assert headers[b"content-type"] == b"application/json"
    if status == 426:
        assert headers[b"sec-websocket-version"] == b"13"
    # The connection is still an ordinary HTTP/1.1 one: nothing was left waiting.
    health = await client.exchange("GET", "/healthz")
    assert health.status_code == 200
    await client.aclose()


async def test_head_is_not_an_upgrade(nursery: trio.Nursery) -> None:
    _, info = await start_server(nursery)
    client = await RawClient.connect(info.port)
    response = await client.exchange("HEAD", "/ws", upgrade_headers(), b"")
    assert response.status_code == 405
    assert (b"allow", b"GET") in list(response.headers)
    await client.aclose()


async def test_an_http_1_0_upgrade_is_refused(nursery: trio.Nursery) -> None:
    _, info = await start_server(nursery)
    head = "GET /ws HTTP/1.0\r\n" + "".join(f"{k}: {v}\r\n" for k, v in upgrade_headers())
    reply = await raw_exchange(info.port, (head + "\r\n").encode(), read_timeout=3)
    assert reply.startswith(b"HTTP/1.1 400 ")
    assert orjson.loads(reply.partition(b"\r\n\r\n")[2])["error"] == "bad_request"


# Every test runs under a deadline (reads also have their own, shorter ones).
bound_tests(globals(), TEST_TIMEOUT_S)
