"""Response heads as h11 events: the headers every response carries, the status line, and a
complete ``Response`` (its ``Content-Length`` and body) ready to send.

Split out of net/connection.py: these are pure decisions about what a head says (no socket, no
state beyond the cached Date), so the connection only decides when to send them and whether to
close. The connection (``HTTPConnection``) sends what these build through its ``SocketWriter``.
"""

from __future__ import annotations

import time
from email.utils import formatdate
from http import HTTPStatus

import h11

from datapulse.net.http import Response

SERVER_HEADER = ("Server", "datapulse")
CLOSE_HEADER = ("Connection", "close")


class _DateCache:
    """RFC 9110 wants a Date header; formatting it once per second instead of per response."""

    second = -1
    value = ""

    @classmethod
    def now(cls) -> str:
        second = int(time.time())
        if second != cls.second:
            cls.second, cls.value = second, formatdate(second, usegmt=True)
        return cls.value


def response_headers(headers: list[tuple[str, str]], close: bool) -> list[tuple[str, str]]:
    """``headers`` after ours (Server, Date), with ``Connection: close`` when ``close``."""
    out = [SERVER_HEADER, ("Date", _DateCache.now()), *headers]
    if close:
        out.append(CLOSE_HEADER)
    return out


def response_head(status: int, headers: list[tuple[str, str]]) -> h11.Response:
    """The status line and ``headers``, with the standard reason phrase (none if unknown)."""
    try:
        reason = HTTPStatus(status).phrase.encode()
    except ValueError:
        reason = b""
    return h11.Response(status_code=status, headers=headers, reason=reason)


def complete_response(
    response: Response, headers: list[tuple[str, str]], head_only: bool
) -> list[h11.Event]:
    """The events of a whole ``response`` with ``headers`` (from ``response_headers``): a
    ``Content-Length`` unless it has one, the body unless ``head_only`` (a HEAD), the end."""
    # RFC 9110 8.6: never on a 204 (or 304, whose length is the representation's).
    if response.status not in (204, 304) and not any(
        k.lower() == "content-length" for k, _ in headers
    ):
        headers.append(("Content-Length", str(len(response.body))))
    events: list[h11.Event] = [response_head(response.status, headers)]
    if response.body and not head_only:
        events.append(h11.Data(data=response.body))
    events.append(h11.EndOfMessage())
    return events
