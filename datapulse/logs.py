"""Log line formats: ``--log-format json`` (one JSON object per line) or ``text``.

Pure standard library (rank 0): the net and live layers import ``REQUEST_ID`` and the field
names from here; ``__main__`` installs a handler with one of the formatters. Structured fields
travel on the record through logging's ``extra=`` (``log.info("...", extra={"status": 200})``):
the text format prints the message, which stays readable on its own; the JSON format prints the
message as ``event`` and every known field beside it.

A JSON line: ``time`` (RFC 3339, UTC, milliseconds), ``level``, ``logger``, ``event``, then
whichever of ``FIELDS`` the record carries; ``request_id`` also comes from ``REQUEST_ID``, the
request the logging task is answering now (set per request by net/connection.py; Trio copies
it into the tasks a request starts). A traceback is ``exc``.

Redaction: the ``SecretRedactor`` filter (auth/redact.py) rewrites the message, the traceback and
the stack before any formatter sees them; the extra fields are not part of the message, so
``JsonFormatter`` passes every string field through the ``redact`` function it is given (the CLI
gives it ``auth.redact.redact``; this module cannot import it, being below auth/).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import IO, Any

#: The id of the request the current task is answering (None outside a request).
REQUEST_ID: ContextVar[str | None] = ContextVar("datapulse_request_id", default=None)

#: The structured fields a JSON line may carry, in the order they are written.
FIELDS = (
    "request_id",
    "session_id",
    "principal_id",
    "method",
    "path",
    "status",
    "duration_ms",
    "client",
    "bytes",
    "events",
    "reason",
)

FORMATS = ("auto", "json", "text")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _identity(text: str) -> str:
    return text


def rfc3339(created: float) -> str:
    """``1700000000.123`` -> ``2023-11-14T22:13:20.123Z``."""
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines inside values are escaped)."""

    def __init__(self, redact: Callable[[str], str] | None = None) -> None:
        super().__init__()
        self._redact = redact or _identity

    def format(self, record: logging.LogRecord) -> str:
        redact = self._redact
        line: dict[str, Any] = {
            "time": rfc3339(record.created),
            "level": record.levelname,
            "logger": record.name,
            "event": record.getMessage(),
        }
        fields = record.__dict__
        for name in FIELDS:
            value = fields.get(name)
            if value is None and name == "request_id":
                value = REQUEST_ID.get()
            if value is not None:
                line[name] = redact(value) if isinstance(value, str) else value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exc"] = redact(record.exc_text)
        if record.stack_info:
            line["stack"] = redact(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def resolve_format(name: str, stream: IO[str] | None = None) -> str:
    """``auto`` -> ``text`` when ``stream`` (stderr) is a terminal, else ``json``."""
    if name != "auto":
        return name
    stream = sys.stderr if stream is None else stream
    try:
        return "text" if stream.isatty() else "json"
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return "json"


def make_handler(
    name: str, stream: IO[str] | None = None, redact: Callable[[str], str] | None = None
) -> logging.Handler:
    """A handler on ``stream`` (stderr) writing the ``name`` format (``auto`` resolved)."""
    stream = sys.stderr if stream is None else stream
    handler = logging.StreamHandler(stream)
    if resolve_format(name, stream) == "json":
        handler.setFormatter(JsonFormatter(redact))
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    return handler
