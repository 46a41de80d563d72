"""Content-Type and Accept, read the one way every transport agrees on (RFC 9110), sans-IO.

Parameters never decide a type (``application/json; charset=utf-8`` is JSON), names compare
ignoring case, and an Accept range with ``q=0`` means "not this" rather than "least preferred".
Preference order is ignored: each transport answers in one media type or refuses the request.
"""

from __future__ import annotations


def media_type(content_type: str | None) -> str:
    """The ``type/subtype`` of a Content-Type value, lowercased; "" when there is none."""
    return (content_type or "").split(";", maxsplit=1)[0].strip().lower()


def accepted_media_types(accept: str | None) -> frozenset[str]:
    """The media ranges an Accept header admits. No header admits anything (``*/*``)."""
    if accept is None:
        return frozenset({"*/*"})
    types = set()
    for part in accept.split(","):
        media, _, params = part.partition(";")
        media = media.strip().lower()
        if media and not _refused(params):
            types.add(media)
    return frozenset(types)


def _refused(params: str) -> bool:
    # Only an explicit q=0 refuses; an unreadable q is treated as absent (q=1), as browsers do.
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            try:
                return float(value.strip()) == 0
            except ValueError:
                return False
    return False


def accepts(accept: str | None, wanted: str) -> bool:
    """Whether an Accept header admits ``wanted`` (a lowercase ``type/subtype``), by wildcard too."""
    major = wanted.split("/", maxsplit=1)[0]
    return bool({wanted, "*/*", f"{major}/*"} & accepted_media_types(accept))
