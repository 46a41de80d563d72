"""Server-Sent Events framing, sans-IO.

The wire format (WHATWG HTML, "Server-sent events", section 9.2) is line based: an event is a
block of ``field: value`` lines ended by a blank line. Three rules shape this module:

* A payload may itself contain line breaks, and the spec treats CR, LF and CRLF all as line
  ends. So every line of the payload becomes its own ``data:`` field; the parser joins them back
  with LF. (A CR in the payload therefore comes back as LF: the format cannot carry a bare CR, and
  we document that rather than pretend otherwise.)
* ``id`` values must not contain LF, CR or NUL: a newline would end the field early and the
  parser ignores ids containing NUL, so we refuse them at encode time instead of emitting an event
  the client silently mangles.
* A leading space after the colon is stripped by the parser, exactly one. We always write one
  space, so a payload line starting with a space survives.

``encode_event`` returns bytes ready for the socket; hot paths (pings, the retry hint) use the
pre-encoded constants below so nothing is formatted per write.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

_LINE_BREAK = re.compile(r"\r\n|\r|\n")

PING = b": ping\n\n"
"""The keep-alive comment. Comments are ignored by EventSource but keep proxies from timing out."""


class InvalidEventField(ValueError):
    """An id or event name that cannot be framed without changing its meaning."""


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One event. ``data=None`` means an event without a data field (e.g. only ``retry``)."""

    data: str | None = None
    event: str | None = None
    id: str | None = None
    retry: int | None = None


def _check_single_line(name: str, value: str) -> None:
    if "\n" in value or "\r" in value or "\0" in value:
        raise InvalidEventField(f"SSE {name} must not contain CR, LF or NUL: {value!r}")


def encode_event(event: SSEEvent) -> bytes:
    """Frame one event. Raises InvalidEventField for an id/event name that cannot be framed."""
    parts: list[str] = []
    if event.event is not None:
        _check_single_line("event", event.event)
        parts.append(f"event: {event.event}\n")
    if event.id is not None:
        _check_single_line("id", event.id)
        parts.append(f"id: {event.id}\n")
    if event.retry is not None:
        if event.retry < 0:
            raise InvalidEventField("SSE retry must be a non-negative integer")
        parts.append(f"retry: {event.retry}\n")
    if event.data is not None:
        parts.extend(f"data: {line}\n" for line in _LINE_BREAK.split(event.data))
    parts.append("\n")
    return "".join(parts).encode()


def encode_data(data: str, *, event_id: str | None = None, event: str | None = None) -> bytes:
    """Fast path for the common event: one JSON line (no line breaks possible) with an id.

    JSON text produced by our encoder never contains a raw line break, so the split is skipped;
    anything else goes through ``encode_event``.
    """
    if "\n" in data or "\r" in data:
        return encode_event(SSEEvent(data=data, id=event_id, event=event))
    head = b""
    if event is not None:
        _check_single_line("event", event)
        head += b"event: " + event.encode() + b"\n"
    if event_id is not None:
        _check_single_line("id", event_id)
        head += b"id: " + event_id.encode() + b"\n"
    return head + b"data: " + data.encode() + b"\n\n"


def encode_comment(text: str = "") -> bytes:
    """A comment line per payload line (``: text``). Clients ignore it; proxies see traffic."""
    return "".join(f": {line}\n" for line in _LINE_BREAK.split(text)).encode() + b"\n"


def encode_retry(retry_ms: int) -> bytes:
    """A ``retry:`` hint on its own: sets the client's reconnection delay, dispatches nothing."""
    return encode_event(SSEEvent(retry=retry_ms))


class SSEParser:
    """Incremental parser following the WHATWG event-stream rules (used by tests and clients).

    ``feed(bytes)`` returns the events completed by that chunk. Like EventSource, an event with no
    data field is not dispatched unless it carries ``id`` or ``retry`` (which we surface so tests
    can see them); ``last_event_id`` persists across events as the spec requires.
    """

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[str] = []
        self._has_data = False
        self._event: str | None = None
        self._id: str | None = None
        self._retry: int | None = None
        self._seen_field = False
        self.last_event_id = ""
        self._first = True

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        self._buffer += chunk
        events: list[SSEEvent] = []
        for line in self._complete_lines():
            event = self._process_line(line)
            if event is not None:
                events.append(event)
        return events

    def _complete_lines(self) -> Iterator[str]:
        while True:
            match = re.search(rb"\r\n|\r|\n", self._buffer)
            if match is None:
                return
            # A CR at the very end may be the first half of a CRLF: wait for the next byte.
            if match.group() == b"\r" and match.end() == len(self._buffer):
                return
            raw, self._buffer = self._buffer[: match.start()], self._buffer[match.end() :]
            if self._first:
                self._first = False
                raw = raw.removeprefix(b"\xef\xbb\xbf")
            yield raw.decode("utf-8", errors="replace")

    def _process_line(self, line: str) -> SSEEvent | None:
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
            self._has_data = True
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self._id = value
                self.last_event_id = value
        elif name == "retry":
            if value.isdigit():
                self._retry = int(value)
        else:
            return None
        self._seen_field = True
        return None

    def _dispatch(self) -> SSEEvent | None:
        if not self._seen_field:
            return None
        event = SSEEvent(
            data="\n".join(self._data) if self._has_data else None,
            event=self._event,
            id=self._id,
            retry=self._retry,
        )
        self._data, self._has_data, self._event, self._id, self._retry = [], False, None, None, None
        self._seen_field = False
        return event
