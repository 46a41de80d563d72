"""Sans-IO HTTP/1.1 response and SSE parsing for the load generator.

Bytes go in through ``feed()``; parsed pieces come out. Nothing here touches a socket, so the
same code serves every scenario and can be checked with plain byte strings.

Why not h11: a load-generator process must not be the bottleneck on a 2-core machine, and h11's
generality (both roles, every framing corner) costs several times more per response than this
handful of ``bytes.find`` calls. This parser understands exactly what the servers under test
send -- Content-Length, chunked, or read-to-EOF bodies, and ``text/event-stream`` -- and raises
``WireError`` on anything else instead of guessing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


class WireError(Exception):
    """The peer sent bytes this client does not understand."""


@dataclass(frozen=True, slots=True)
class ResponseHead:
    status: int
    headers: dict[str, str]  # lower-cased names; a repeated header keeps its last value

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")

    @property
    def is_sse(self) -> bool:
        return self.content_type.startswith("text/event-stream")


def build_request(
    method: str,
    path: str,
    host: str,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    lines.extend(f"{name}: {value}" for name, value in headers)
    if body or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def parse_head(buffer: bytes) -> tuple[ResponseHead, bytes] | None:
    """Return the head and the bytes after it, or None while the head is incomplete."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        if len(buffer) > 64 * 1024:
            raise WireError("response head over 64 KiB")
        return None
    lines = buffer[:end].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
        raise WireError(f"bad status line {lines[0]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise WireError(f"bad header line {line!r}")
        headers[name.strip().lower()] = value.strip()
    return ResponseHead(int(parts[1]), headers), buffer[end + 4 :]


class BodyDecoder:
    """Strips HTTP framing from a response body; ``done`` once the last byte arrived."""

    done: bool = False
    leftover: bytes = b""  # bytes past the end of this body (the next response's start)

    def feed(self, data: bytes) -> bytes:
        raise NotImplementedError

    def feed_eof(self) -> None:
        """The connection closed; fine only for read-to-EOF bodies."""
        if not self.done:
            raise WireError("connection closed inside a response body")


class LengthDecoder(BodyDecoder):
    def __init__(self, length: int) -> None:
        self.remaining = length
        self.done = length == 0

    def feed(self, data: bytes) -> bytes:
        if self.done:
            self.leftover += data
            return b""
        take = data[: self.remaining]
        self.remaining -= len(take)
        if self.remaining == 0:
            self.done = True
            self.leftover = data[len(take) :]
        return take


class EofDecoder(BodyDecoder):
    def feed(self, data: bytes) -> bytes:
        return data

    def feed_eof(self) -> None:
        self.done = True


class ChunkedDecoder(BodyDecoder):
    def __init__(self) -> None:
        self._buffer = b""
        self._remaining = 0  # bytes of chunk data still to come
        self._need_crlf = False  # after a chunk's data
        self._in_trailer = False  # after the zero-size chunk

    def feed(self, data: bytes) -> bytes:
        if self.done:
            self.leftover += data
            return b""
        buffer = self._buffer + data if self._buffer else data
        out: list[bytes] = []
        pos, size = 0, len(buffer)
        while pos < size:
            if self._remaining:
                take = min(self._remaining, size - pos)
                out.append(buffer[pos : pos + take])
                pos += take
                self._remaining -= take
                self._need_crlf = self._remaining == 0
                continue
            if self._need_crlf:
                if size - pos < 2:
                    break
                if buffer[pos : pos + 2] != b"\r\n":
                    raise WireError("chunk data not followed by CRLF")
                pos += 2
                self._need_crlf = False
                continue
            end = buffer.find(b"\r\n", pos)
            if end < 0:
                break
            line = buffer[pos:end]
            pos = end + 2
            if self._in_trailer:
                if not line:
                    self.done = True
                    self.leftover = buffer[pos:]
                    pos = size
                    break
                continue
            try:
                chunk_size = int(line.split(b";", 1)[0], 16)
            except ValueError:
                raise WireError(f"bad chunk size line {line[:40]!r}") from None
            if chunk_size == 0:
                self._in_trailer = True
            else:
                self._remaining = chunk_size
        self._buffer = b"" if self.done else buffer[pos:]
        return b"".join(out)


def body_decoder(head: ResponseHead, *, request_method: str = "GET") -> BodyDecoder:
    if request_method == "HEAD" or head.status in (204, 304) or 100 <= head.status < 200:
        return LengthDecoder(0)
    if "chunked" in head.headers.get("transfer-encoding", "").lower():
        return ChunkedDecoder()
    length = head.headers.get("content-length")
    if length is not None:
        return LengthDecoder(int(length))
    return EofDecoder()


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One dispatched event; ``comment`` marks a block of only ``:`` lines (a keep-alive ping)."""

    event: bytes = b""
    data: bytes = b""
    id: bytes | None = None
    comment: bool = False


class SSEParser:
    """Splits a ``text/event-stream`` body into events; accepts CRLF, LF and CR line ends."""

    def __init__(self) -> None:
        self._buffer = b""
        self._held_cr = False  # a trailing CR may be the first half of a CRLF split across feeds

    def feed(self, data: bytes) -> list[SSEEvent]:
        if self._held_cr:
            data = b"\r" + data
            self._held_cr = False
        if data.endswith(b"\r"):
            data = data[:-1]
            self._held_cr = True
        if b"\r" in data:
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        buffer = self._buffer + data
        if b"\n\n" not in buffer:
            self._buffer = buffer
            return []
        blocks = buffer.split(b"\n\n")
        self._buffer = blocks.pop()
        events = []
        for block in blocks:
            event = _parse_block(block)
            if event is not None:
                events.append(event)
        return events


def _parse_block(block: bytes) -> SSEEvent | None:
    if not block:
        return None
    name, event_id, data_lines, comments = b"", None, [], 0
    for line in block.split(b"\n"):
        if line.startswith(b":"):
            comments += 1
            continue
        field, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if field == b"data":
            data_lines.append(value)
        elif field == b"event":
            name = value
        elif field == b"id":
            event_id = value
    if data_lines:
        return SSEEvent(name, b"\n".join(data_lines), event_id)
    if comments and not name:
        return SSEEvent(comment=True)
    return None  # e.g. a lone `retry:` or `id:` block: nothing to dispatch
