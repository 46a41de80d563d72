"""Hostile input, generated: raw HTTP/1.1 requests and JSON-RPC bodies against one live server.

The server runs in a background thread with its own ``trio.run`` for the whole module; the tests
are plain synchronous hypothesis tests with blocking sockets. For every example:

* whatever the server sends back is a sequence of well-formed HTTP/1.1 responses (or nothing,
  when it just closes), never a 5xx;
* the server answers or closes within a bound (it never hangs: read with a deadline);
* a normal request on a fresh connection is served afterwards;
* the server logged no error (an error log line here means a bug, not a bad client).

Only 127.0.0.1 is contacted; the fuzz server has no built-in tools (``fetch_url`` would reach
out), only an ``echo`` tool.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import re
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import trio
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from datapulse import Server, ServerInfo
from datapulse.tools.registry import ToolContext
from tests.helpers import TOKEN, make_config

READ_TIMEOUT_S = 0.2  # the server's read and keep-alive timeouts: short, so examples are fast
DEADLINE_S = 5.0  # "never hangs": the server must answer or close within this
FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


class ErrorLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@dataclass
class Live:
    server: Server
    info: ServerInfo
    token: trio.lowlevel.TrioToken
    errors: ErrorLog
    mcp_session: str = ""
    legacy_endpoint: str = ""
    http: httpx.Client | None = None

    @property
    def client(self) -> httpx.Client:
        assert self.http is not None
        return self.http

    @property
    def port(self) -> int:
        return self.info.port


def run_server(ready: queue.Queue[Any]) -> None:
    async def main() -> None:
        config = make_config(
            read_timeout_s=READ_TIMEOUT_S,
            keepalive_timeout_s=READ_TIMEOUT_S,
            max_body_bytes=64 * 1024,
            max_header_bytes=4096,
            max_header_count=30,
            write_timeout_s=2.0,
            ping_interval_s=30,
            max_batch_items=20,
            max_json_depth=32,
        )
        server = Server(config, builtin_tools=False)

        @server.tool("echo")
        async def echo(arguments: dict[str, Any], context: ToolContext) -> dict[str, Any]:
            return arguments

        async with trio.open_nursery() as nursery:
            info = await nursery.start(server.serve)
            ready.put((server, info, trio.lowlevel.current_trio_token()))

    try:
        trio.run(main)
    except BaseException as exc:  # reported to the fixture, which fails loudly
        ready.put(exc)


def drain(sock: socket.socket) -> None:
    """Read and discard a stream for ever (keeps the legacy session's writer unblocked)."""
    with contextlib.suppress(OSError):
        while sock.recv(65536):
            pass


@pytest.fixture(scope="module")
def live() -> Iterator[Live]:
    errors = ErrorLog()
    logging.getLogger("datapulse").addHandler(errors)
    ready: queue.Queue[Any] = queue.Queue()
    thread = threading.Thread(target=run_server, args=(ready,), daemon=True)
    thread.start()
    started = ready.get(timeout=15)
    if isinstance(started, BaseException):
        raise started
    live = Live(*started, errors=errors)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=live.info.url, headers=auth, timeout=5) as http:
        # An original-API session (/message needs one), a 2025-03-26 /mcp session (batches
        # allowed), and a legacy /sse session whose stream a thread keeps reading.
        with http.stream("GET", "/events?session_id=fz") as response:
            assert response.status_code == 200
        init = {
            "jsonrpc": "2.0",
            "id": 0,
            "method": "initialize",
            "params": {"protocolVersion": "2025-03-26", "capabilities": {}},
        }
        headers = {"Accept": "application/json, text/event-stream"}
        response = http.post("/mcp", json=init, headers=headers)
        live.mcp_session = response.headers["mcp-session-id"]
    legacy = socket.create_connection(("127.0.0.1", live.port), timeout=5)
    legacy.sendall(
        f"GET /sse HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode()
    )
    head = b""
    while not (found := re.search(rb"data: (/messages\?session_id=\S+)\n", head)):
        head += legacy.recv(4096)
    live.legacy_endpoint = found.group(1).decode()
    legacy.settimeout(None)
    threading.Thread(target=drain, args=(legacy,), daemon=True).start()
    live.http = httpx.Client(base_url=live.info.url, timeout=DEADLINE_S)
    try:
        yield live
    finally:
        live.http.close()
        legacy.close()
        trio.from_thread.run_sync(live.server.shutdown, trio_token=live.token)
        thread.join(10)
        logging.getLogger("datapulse").removeHandler(errors)
    assert not thread.is_alive()


# -- checking what came back ----------------------------------------------------------------------

STATUS_LINE = re.compile(rb"HTTP/1\.1 (\d{3}) [^\r\n]*")


class Malformed(AssertionError):
    pass


def parse_responses(data: bytes) -> tuple[list[int], bool]:
    """Statuses of the complete responses in ``data``; True if the last one is a stream (SSE or
    an upgrade) that legitimately stays open. Raises Malformed for anything else."""
    statuses: list[int] = []
    pos = 0
    while pos < len(data):
        end = data.find(b"\r\n\r\n", pos)
        if end < 0:
            raise Malformed(f"truncated response head: {data[pos : pos + 200]!r}")
        lines = data[pos:end].split(b"\r\n")
        match = STATUS_LINE.fullmatch(lines[0])
        if not match:
            raise Malformed(f"bad status line {lines[0]!r}")
        status = int(match.group(1))
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not name or name != name.strip():
                raise Malformed(f"bad header line {line!r}")
            headers[name.lower()] = value.strip()
        statuses.append(status)
        pos = end + 4
        if status == 101 or headers.get(b"content-type", b"").startswith(b"text/event-stream"):
            return statuses, True
        if 100 <= status < 200:
            continue
        if headers.get(b"transfer-encoding") == b"chunked":
            raise Malformed("chunked response that is not a stream")
        length = int(headers.get(b"content-length", b"0"))
        body = data[pos : pos + length]
        if len(body) < length:
            raise Malformed(f"truncated body ({len(body)} of {length})")
        if headers.get(b"content-type") == b"application/json" and body:
            json.loads(body)
        pos += length
    return statuses, False


def send_raw(port: int, chunks: list[bytes], ending: str) -> tuple[bytes, bool]:
    """Send ``chunks``, end as told, read until the server closes. Returns (bytes, timed_out)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_S)
    received = b""
    try:
        try:
            for chunk in chunks:
                sock.sendall(chunk)
        except OSError:
            pass  # the server may refuse and close before we are done sending
        if ending == "abort":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return b"", False
        if ending == "half_close":
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                # Still open: legitimate only for a stream that has started.
                return received, True
            except OSError:
                return received, False  # reset by the server: a close
            if not chunk:
                return received, False
            received += chunk
            with contextlib.suppress(Malformed, ValueError):
                _, streaming = parse_responses(received)
                if streaming:
                    return received, False
    finally:
        sock.close()


def assert_still_serving(live: Live) -> None:
    with socket.create_connection(("127.0.0.1", live.port), timeout=DEADLINE_S) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 "), data
    assert not live.errors.records, [r.getMessage() for r in live.errors.records]


def check_exchange(live: Live, chunks: list[bytes], ending: str) -> str:
    """Run one exchange and check it; returns a summary (for hypothesis' statistics)."""
    received, timed_out = send_raw(live.port, chunks, ending)
    statuses, streaming = parse_responses(received)
    assert not timed_out or streaming, f"no answer and no close within {DEADLINE_S}s: {received!r}"
    assert all(s < 500 for s in statuses), (statuses, received[:500])
    assert_still_serving(live)
    classes = [str(s) for s in sorted(set(statuses))] or ["closed"]
    return f"{ending}: {', '.join(classes)}{' + stream' if streaming else ''}"


# -- raw HTTP requests ---------------------------------------------------------------------------

GOOD_HEADERS = [(b"Host", b"localhost"), (b"Authorization", f"Bearer {TOKEN}".encode())]
PATHS = [
    b"/healthz",
    b"/events?session_id=fz",
    b"/events?session_id=fz&last_event_id=abc",
    b"/message?session_id=fz",
    b"/mcp",
    b"/sse",
    b"/messages?session_id=nope",
    b"/ws",
    b"/nope",
    b"*",
    b"http://localhost/healthz",
    b"/%00",
    b"/\xff\xfe",
    b"/a b",
    b"/" + b"a" * 5000,
]
NAMES = [
    b"Host",
    b"Content-Length",
    b"Transfer-Encoding",
    b"Content-Type",
    b"Connection",
    b"Expect",
    b"Authorization",
    b"Accept",
    b"Mcp-Session-Id",
    b"MCP-Protocol-Version",
    b"Last-Event-ID",
    b"Upgrade",
    b"Origin",
]
VALUES = [
    b"0",
    b"5",
    b"-1",
    b"99999999999999999999999",
    b"1e3",
    b"5, 6",
    b"chunked",
    b"gzip, chunked",
    b"chunked, chunked",
    b"identity",
    b"close",
    b"keep-alive, Upgrade",
    b"websocket",
    b"100-continue",
    b"application/json",
    b"text/event-stream",
    b"2026-07-28",
    b"Bearer wrong",
    b"http://evil.example",
    b"a\r\nInjected: yes",
    b"a\nX: y",
    b"a\rb",
    b"\x00",
    b" leading",
    b"x" * 3000,
]


def mostly(common: st.SearchStrategy[Any], rare: st.SearchStrategy[Any]) -> Any:
    """``common`` about four times in five: enough valid structure to reach the handlers.
    (Hypothesis favours small integers, so the rare branch sits at the top of the range.)"""
    return st.integers(0, 4).flatmap(lambda k: rare if k == 4 else common)


methods = mostly(
    st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"get"]),
    st.binary(max_size=8),
)
targets = mostly(st.sampled_from(PATHS), st.binary(max_size=24))
versions = mostly(
    st.just(b"HTTP/1.1"),
    st.sampled_from([b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1x", b"", b"http/1.1"]),
)
header = st.tuples(
    mostly(st.sampled_from(NAMES), st.binary(max_size=10)),
    mostly(st.sampled_from(VALUES), st.binary(max_size=30)),
)
line_ends = mostly(st.just(b"\r\n"), st.sampled_from([b"\n", b"\r"]))


@st.composite
def chunked_bodies(draw: st.DrawFn) -> bytes:
    out = b""
    for data in draw(st.lists(st.binary(max_size=40), max_size=4)):
        size = draw(
            st.sampled_from(
                [
                    f"{len(data):x}".encode(),
                    f"{len(data):x};ext=1".encode(),
                    b"-1",
                    b"zz",
                    b"ffffffffffffffffffff",
                    f"{len(data) + 3:x}".encode(),
                ]
            )
        )
        out += size + b"\r\n" + data + draw(st.sampled_from([b"\r\n", b"", b"\n"]))
    out += draw(st.sampled_from([b"0\r\n\r\n", b"0\r\nTrailer: x\r\n\r\n", b"", b"0\r\n"]))
    return out


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    eol = draw(line_ends)
    head = draw(methods) + b" " + draw(targets) + b" " + draw(versions) + eol
    headers = [] if draw(st.integers(0, 3)) == 3 else list(GOOD_HEADERS)
    headers += draw(st.lists(header, max_size=draw(st.sampled_from([0, 0, 2, 6]))))
    body = draw(st.binary(max_size=120) | chunked_bodies())
    if not draw(st.booleans()):  # the simplest choice is a consistent Content-Length
        headers.append((b"Content-Length", str(len(body)).encode()))
    if draw(st.integers(0, 9)) == 0:
        headers.append((b"X-Fold", b"a"))
        head += b"".join(n + b": " + v + eol for n, v in headers) + b" folded" + eol
    else:
        head += b"".join(n + b": " + v + eol for n, v in headers)
    return head + eol + body


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(draw(st.sampled_from([0, 0, 1, 2, 4]))):
        if not buf:
            break
        at = draw(st.integers(0, len(buf) - 1))
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        if op == "flip":
            buf[at] = draw(st.integers(0, 255))
        elif op == "insert":
            buf[at:at] = draw(st.sampled_from([b"\r\n", b"\n", b"\x00", b":", b" ", b"\xff"]))
        elif op == "delete":
            del buf[at]
        else:
            del buf[at:]
    return bytes(buf)


@st.composite
def well_formed(draw: st.DrawFn) -> bytes:
    """A request h11 accepts (so it reaches the router), hostile only in its header values."""
    method = draw(st.sampled_from([b"GET", b"POST", b"DELETE", b"GET"]))
    head = method + b" " + draw(st.sampled_from(PATHS[:9])) + b" HTTP/1.1\r\n"
    names = st.sampled_from(NAMES[3:])  # no framing headers: the body below is framed right
    values = st.sampled_from([v for v in VALUES if b"\r" not in v and b"\n" not in v])
    headers = [*GOOD_HEADERS, *draw(st.lists(st.tuples(names, values), max_size=3))]
    body = b""
    if method == b"POST":
        body = draw(st.sampled_from([b"{}", b'{"jsonrpc":"2.0","id":1,"method":"ping"}', b"[]"]))
        headers.append((b"Content-Length", str(len(body)).encode()))
    return head + b"".join(n + b": " + v + b"\r\n" for n, v in headers) + b"\r\n" + body


@st.composite
def conversations(draw: st.DrawFn) -> tuple[list[bytes], str]:
    kind = draw(st.sampled_from(["well_formed", "mutated", "mutated", "bytes"]))
    if kind == "well_formed":
        parts = [draw(well_formed()) for _ in range(draw(st.integers(1, 3)))]
    elif kind == "bytes":
        parts = [draw(st.binary(max_size=300))]
    else:
        parts = [draw(mutated(draw(requests()))) for _ in range(draw(st.integers(1, 3)))]
    wire = b"".join(parts)
    wire += draw(st.sampled_from([b"", b"\r\n", b"garbage\r\n\r\n"]) | st.binary(max_size=20))
    cuts = sorted(draw(st.lists(st.integers(0, len(wire)), max_size=3)))
    chunks = [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True) if wire[a:b]]
    ending = draw(st.sampled_from(["wait", "wait", "half_close", "half_close", "abort"]))
    return chunks, ending


@pytest.mark.timeout(60)  # ~9 s on the dev machine
@FUZZ
@given(conversation=conversations())
def test_fuzzed_raw_requests_get_a_4xx_or_a_close_never_5xx_or_a_hang(
    live: Live, conversation: tuple[list[bytes], str]
) -> None:
    chunks, ending = conversation
    event(check_exchange(live, chunks, ending))


@pytest.mark.parametrize(
    "wire",
    [
        b"POST /message?session_id=fz HTTP/1.1\r\nHost: l\r\nContent-Length: -5\r\n\r\n",
        b"POST /message?session_id=fz HTTP/1.1\r\nHost: l\r\nContent-Length: 99999999999999999999\r\n\r\n",
        b"POST /mcp HTTP/1.1\r\nHost: l\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nabc",
        b"POST /mcp HTTP/1.1\r\nHost: l\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: l\r\nX: a\r\nInjected: b\rc\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: l\r\n\r\n" * 3 + b"\x00\x01garbage\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: l\r\n\r\n" * 200,
    ],
    ids=[
        "negative-length",
        "huge-length",
        "huge-chunk",
        "length-and-chunked",
        "bare-cr-in-header",
        "pipelined-then-garbage",
        "pipelined-200",
    ],
)
@pytest.mark.parametrize("ending", ["wait", "half_close"])
def test_known_hostile_requests(live: Live, wire: bytes, ending: str) -> None:
    check_exchange(live, [wire], ending)


# -- JSON-RPC bodies ------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
METHODS = [
    "initialize",
    "ping",
    "tools/list",
    "tools/call",
    "server/discover",
    "logging/setLevel",
    "notifications/initialized",
    "notifications/cancelled",
    "resources/list",
]
MODERN_META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {},
}


@st.composite
def messages(draw: st.DrawFn) -> Any:
    message: dict[str, Any] = {}
    if draw(st.integers(0, 9)):
        message["jsonrpc"] = draw(st.sampled_from(["2.0"] * 6 + ["1.0", 2]))
    if draw(st.booleans()):
        message["id"] = draw(
            st.integers() | st.text(max_size=6) | st.none() | st.floats() | st.booleans()
        )
    if draw(st.integers(0, 9)):
        message["method"] = draw(st.sampled_from(METHODS) | st.text(max_size=12))
    if draw(st.booleans()):
        params: Any = draw(
            st.fixed_dictionaries(
                {},
                optional={
                    "name": st.sampled_from(["echo", "nope", ""]) | json_values,
                    "arguments": json_values,
                    "protocolVersion": st.sampled_from(["2025-03-26", "2024-11-05", "x"]),
                    "capabilities": json_values,
                    "requestId": json_values,
                    "level": st.sampled_from(["debug", "loud"]),
                    "cursor": json_values,
                    "_meta": st.just(MODERN_META) | json_values,
                },
            )
            | json_values
        )
        message["params"] = params
    if draw(st.integers(0, 9)) == 0:
        message[draw(st.sampled_from(["result", "error"]))] = draw(json_values)
    return message


@st.composite
def plausible(draw: st.DrawFn) -> dict[str, Any]:
    """A well-formed request or notification, so that fuzzing also reaches the handlers."""
    method = draw(st.sampled_from(METHODS))
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if not method.startswith("notifications/"):
        message["id"] = draw(st.integers(0, 10**6) | st.text(min_size=1, max_size=6))
    params: dict[str, Any] = {}
    if method == "tools/call":
        name = draw(st.sampled_from(["echo", "echo", "nope"]))
        params = {
            "name": name,
            "arguments": draw(st.dictionaries(st.text(max_size=5), json_values)),
        }
    elif method == "notifications/cancelled":
        params = {"requestId": draw(st.integers(0, 5))}
    elif method == "logging/setLevel":
        params = {"level": draw(st.sampled_from(["debug", "info", "loud"]))}
    elif method == "initialize":
        params = {"protocolVersion": "2025-03-26", "capabilities": {}}
    if draw(st.booleans()):
        params["_meta"] = MODERN_META
    message["params"] = params
    return message


def deep(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


bodies = (
    plausible().map(lambda m: json.dumps(m).encode())
    | st.lists(plausible(), min_size=1, max_size=25).map(lambda ms: json.dumps(ms).encode())
    | messages().map(lambda m: json.dumps(m).encode())
    | st.lists(messages(), max_size=25).map(lambda ms: json.dumps(ms).encode())
    | json_values.map(lambda v: json.dumps(v).encode())
    | st.integers(20, 200).map(
        lambda d: json.dumps(
            {"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {"a": deep(d)}}
        ).encode()
    )
    | st.binary(max_size=80)
    | messages()
    .map(lambda m: json.dumps(m).encode())
    .flatmap(lambda b: st.integers(0, len(b)).map(lambda n: b[:n]))
)


@FUZZ
@given(
    body=bodies,
    where=st.sampled_from(["mcp_session", "mcp_modern", "mcp_new", "messages", "message"]),
)
def test_fuzzed_json_rpc_bodies_never_get_a_5xx(live: Live, body: bytes, where: str) -> None:
    headers = {
        "Authorization": f"Bearer {TOKEN}",
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
    }
    path = "/mcp"
    if where == "mcp_session":
        headers["Mcp-Session-Id"] = live.mcp_session
    elif where == "mcp_modern":
        headers["MCP-Protocol-Version"] = "2026-07-28"
        with contextlib.suppress(ValueError, AttributeError, TypeError, KeyError):
            decoded = json.loads(body)
            method, name = decoded["method"], decoded["params"]["name"]
            headers["Mcp-Method"] = str(method).encode()  # type: ignore[assignment]
            headers["Mcp-Name"] = str(name).encode()  # type: ignore[assignment]
    elif where == "messages":
        path = live.legacy_endpoint
    elif where == "message":
        path = "/message?session_id=fz"
    response = live.client.post(path, content=body, headers=headers)
    assert response.status_code < 500, (response.status_code, response.text)
    event(f"{where}: {response.status_code}")
    ctype = response.headers.get("content-type", "")
    if ctype.startswith("application/json") and response.content:
        json.loads(response.content)
    assert_still_serving(live)


@FUZZ
@given(message=json_values | messages(), request_id=st.text(min_size=1, max_size=8))
def test_fuzzed_original_api_messages_get_202_or_a_4xx(
    live: Live, message: Any, request_id: str
) -> None:
    if isinstance(message, dict) and message and message.get("jsonrpc") is None:
        message = {"type": "call_tool", "request_id": request_id, "data": message}
    response = live.client.post(
        "/message?session_id=fz",
        content=json.dumps(message).encode(),  # Infinity included: not JSON to orjson
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    assert response.status_code in (202, 400, 413, 422), (response.status_code, response.text)
    event(f"/message: {response.status_code}")
    json.loads(response.content)
    assert_still_serving(live)
