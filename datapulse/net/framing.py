"""What a request head may say about its body, and h11's refusals in our words (sans-IO).

Framing is refused before the app sees the request (400, and the connection closes, since
nothing after a badly framed body can be trusted to be a request):
* ``Content-Length`` together with ``Transfer-Encoding``: RFC 9112 6.1 says such a message
  "ought to be handled as an error"; it is how a body is smuggled past an intermediary that
  reads the other header (the bytes after the chunked body would be served as a request);
* ``Transfer-Encoding`` in an HTTP/1.0 request (RFC 9112 6.1: the framing is faulty);
* ``Content-Length`` twice, or as a list (``5, 5``): h11 refuses differing values but folds
  identical ones into one field, which RFC 9110 8.6 allows; an intermediary in front of us may
  not have read them the same way, so we refuse them too;
* a transfer coding other than chunked, or several: h11 refuses those (we answer 400).

Nothing the client sent may reach a response or a log line: h11's messages quote what they
refuse (a header line with its value, a chunk header), so ``describe_protocol_error`` names
the problem instead.
"""

from __future__ import annotations

import re

import h11

from datapulse.errors import BadRequest, PayloadTooLarge

# h11's messages quote what they refuse (a header line with its value, a chunk header), and
# nothing the client sent may reach a response or a log line: these words replace them. A
# message not listed (another h11 version) is just "malformed request".
_H11_PROBLEMS: tuple[tuple[str, str], ...] = (
    ("illegal request line", "malformed request line"),
    ("no request line", "malformed request line"),
    ("Illegal method", "malformed request line"),
    ("Illegal target", "malformed request target"),
    ("illegal header line", "malformed header field"),
    ("Illegal header", "malformed header field"),
    ("continuation line", "malformed header field"),
    ("bad Content-Length", "invalid Content-Length"),
    ("conflicting Content-Length", "conflicting Content-Length"),
    ("Only Transfer-Encoding: chunked", "unsupported Transfer-Encoding"),
    ("multiple Transfer-Encoding", "unsupported Transfer-Encoding"),
    ("Missing mandatory Host", "missing Host header"),
    ("Found multiple Host", "more than one Host header"),
    ("illegal chunk header", "malformed chunked body"),
    ("malformed chunk footer", "malformed chunked body"),
    ("peer closed connection without", "incomplete request body"),
    ("peer unexpectedly closed", "incomplete request"),
)

# A Content-Length field line (with any obs-fold continuation lines) in a raw request head.
_CONTENT_LENGTH_FIELD = re.compile(
    rb"^content-length:([^\r\n]*(?:\r?\n[ \t][^\r\n]*)*)", re.I | re.M
)
_END_OF_HEAD = re.compile(rb"\n\r?\n")


def describe_protocol_error(exc: h11.ProtocolError) -> str:
    """What was wrong with a request h11 refused, without any byte of the request."""
    message = str(exc)
    for prefix, problem in _H11_PROBLEMS:
        if message.startswith(prefix):
            return problem
    return "malformed request"


def repeats_content_length(raw_head: bytes) -> bool:
    """More than one Content-Length field, or a comma-listed value, in a raw request head (the
    bytes h11 parsed it from; anything after the head is ignored)."""
    end = _END_OF_HEAD.search(raw_head)
    head = raw_head[: end.start()] if end else raw_head
    values = _CONTENT_LENGTH_FIELD.findall(head)
    return len(values) > 1 or any(b"," in value for value in values)


def announced_body(event: h11.Request, raw_head: bytes, max_body_bytes: int) -> bool:
    """Whether the request announces a body (a length above 0, or chunked).

    Raises ``BadRequest`` for framing we refuse (above), ``PayloadTooLarge`` for a length over
    ``max_body_bytes`` (before a byte of the body is read). ``raw_head`` is what h11 parsed the
    head from.
    """
    length: int | None = None
    chunked = False
    for name, value in event.headers:
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = True  # h11 lets only "chunked" through, and only once
    if chunked and length is not None:
        raise BadRequest("Content-Length together with Transfer-Encoding")
    if chunked and event.http_version == b"1.0":
        raise BadRequest("Transfer-Encoding in an HTTP/1.0 request")
    if length is not None and repeats_content_length(raw_head):
        raise BadRequest("more than one Content-Length")
    if length is not None and length > max_body_bytes:
        raise PayloadTooLarge(f"body exceeds {max_body_bytes} bytes")
    return chunked or bool(length)
