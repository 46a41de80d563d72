"""The browser page at ``/``: static files shipped in the package (``datapulse/static/``).

``GET /`` answers ``index.html``; ``GET /static/<name>`` answers one file of that directory.
Routes are public: the page holds no secret, and everything it does (tickets, streams, tool
calls) goes through the authenticated API with a token the user pastes, kept in page memory.

Only names that exist in the package are routed, one exact route each (the router matches whole
paths), so ``/static/../server.py`` or ``/static/%2e%2e/x`` is a 404 like any unknown path: there
is no path to traverse. Files are read once through ``importlib.resources`` (works from a wheel
or a zip). Every answer carries a strict Content-Security-Policy (no inline script or style,
same-origin connections only), ``X-Content-Type-Options: nosniff``, and ``Cache-Control``:
``no-cache`` (revalidate; no ETag yet, so it is a refetch), since the files change with releases.
"""

from __future__ import annotations

from collections.abc import Iterator
from importlib import resources

from datapulse.net.http import Handler, Request, Response

PACKAGE = "datapulse"
DIRECTORY = "static"
INDEX = "index.html"

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

SECURITY_HEADERS = (
    ("Content-Security-Policy", CSP),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
    ("Cache-Control", "no-cache"),
)


def _content_type(name: str) -> str | None:
    dot = name.rfind(".")
    return CONTENT_TYPES.get(name[dot:].lower()) if dot > 0 else None


class PageRoutes:
    """The page's files, loaded at construction: ``routes()`` yields (path, handler) pairs."""

    def __init__(self, package: str = PACKAGE, directory: str = DIRECTORY) -> None:
        self.files: dict[str, tuple[str, bytes]] = {}
        # package data, not a package: datapulse/static has no __init__.py
        root = resources.files(package).joinpath(directory)
        for entry in root.iterdir():
            name = entry.name
            kind = _content_type(name)
            # Plain names only (no dot files, no directories); unknown types are not served.
            if kind is None or name.startswith(".") or not entry.is_file():
                continue
            self.files[name] = (kind, entry.read_bytes())

    def routes(self) -> Iterator[tuple[str, Handler]]:
        if INDEX in self.files:
            yield "/", self._handler(INDEX)
        for name in sorted(self.files):
            yield f"/static/{name}", self._handler(name)

    def _handler(self, name: str) -> Handler:
        kind, body = self.files[name]
        headers = [("Content-Type", kind), *SECURITY_HEADERS]

        async def serve(request: Request) -> Response:
            return Response(200, list(headers), body)

        return serve
