"""IdpFetcher: one GET of a JSON document from the issuer, bounded in time and size.

Discovery (``discovery.py``) and the key cache (``jwks.py``) both read documents the IdP serves;
this module owns how: one deadline over the whole fetch, a byte cap, no redirects, and one error
type, ``KeySourceError``, whose ``transient`` says whether asking again later may help (the
network failed, 5xx, 408, 429) or the answer itself was wrong (a 404, a document too large or not
JSON). It knows nothing of what the documents mean.
"""

from __future__ import annotations

import json

import httpx
import trio

KiB = 1024


class KeySourceError(Exception):
    """One fetch or document failed (status, timeout, size, not JSON, no usable keys).

    ``transient``: the IdP could not be reached or answered 5xx/408/429, so asking again later
    may work; otherwise the answer itself was wrong (a 404, a document that is not ours).
    """

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


def _transient_status(status: int) -> bool:
    return status >= 500 or status in (408, 429)


class IdpFetcher:
    """GETs JSON documents with ``http_client`` (or a client of its own per fetch).

    ``timeout_s`` bounds each whole fetch and ``max_bytes`` each body; the caller validates them.
    """

    def __init__(
        self, *, timeout_s: float, max_bytes: int, http_client: httpx.AsyncClient | None
    ) -> None:
        self._timeout_s = timeout_s
        self._max_bytes = max_bytes
        self._client = http_client

    async def get_json(self, url: str) -> tuple[object, httpx.Headers]:
        """The parsed JSON body at ``url`` and the response headers; ``KeySourceError`` if not."""
        # httpx's timeout bounds each phase; this bounds the whole fetch, so an IdP that drips
        # one byte a second cannot hold a request for long.
        with trio.move_on_after(self._timeout_s) as scope:
            if self._client is not None:
                body, headers = await self._get(self._client, url)
            else:
                async with httpx.AsyncClient(timeout=self._timeout_s) as client:
                    body, headers = await self._get(client, url)
        if scope.cancelled_caught:
            raise KeySourceError(f"timed out after {self._timeout_s:g} s", transient=True)
        try:
            return json.loads(body), headers
        except (ValueError, RecursionError):
            raise KeySourceError("response is not JSON") from None

    async def _get(self, client: httpx.AsyncClient, url: str) -> tuple[bytes, httpx.Headers]:
        request_headers = {"Accept": "application/json", "Accept-Encoding": "identity"}
        try:
            # Redirects are not followed: metadata and keys are named by exact URLs, and a
            # redirect could lead to plain http.
            async with client.stream(
                "GET", url, headers=request_headers, follow_redirects=False
            ) as response:
                if response.status_code != 200:
                    status = response.status_code
                    raise KeySourceError(f"HTTP {status}", transient=_transient_status(status))
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and (len(declared) > 12 or int(declared) > self._max_bytes):
                    raise KeySourceError(f"response larger than {self._max_bytes} bytes")
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > self._max_bytes:
                        raise KeySourceError(f"response larger than {self._max_bytes} bytes")
                return bytes(body), response.headers
        except httpx.InvalidURL as exc:
            raise KeySourceError(str(exc) or type(exc).__name__) from None
        except httpx.HTTPError as exc:  # connect, read, protocol errors: the network's fault
            raise KeySourceError(str(exc) or type(exc).__name__, transient=True) from None
