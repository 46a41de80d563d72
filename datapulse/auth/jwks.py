"""JwksCache: where the issuer's signing keys come from, and how often we may ask for them.

``jwks_uri`` comes from discovery (OIDC ``openid-configuration``, then RFC 8414
``oauth-authorization-server``) unless configured. The key set is kept as long as the IdP's
``Cache-Control: max-age`` says (clamped) and refetched early only for an unknown ``kid``, which
is how key rotation shows up. Two promises protect the IdP from us, and us from a slow IdP:

* single flight: however many requests need a refresh at once, one fetch runs and the rest wait
  on its ``trio.Event``;
* rate limit: a fetch starts at most once per ``refresh_interval_s`` (after a failure, or for an
  unknown ``kid``), so a flood of tokens with random ``kid``s costs the IdP one request.

No keys at all raises ``ServiceUnavailable``: an IdP outage must not look like a bad token, or
clients would throw good tokens away. An IdP that is down when we start (network errors, 5xx)
does not stop the server either: ``start`` returns with ``ready`` False, and
``run_until_ready`` (a background task of the server) retries discovery and the first key fetch
with capped, jittered exponential backoff until keys are loaded, while requests get 503 with
``Retry-After`` at once. Only configuration errors (a malformed or plain-http issuer, metadata
that names another issuer, 4xx from every discovery URL) fail ``start``. Keys past their ``max-age`` stay in use while refreshes
fail; they are the IdP's own keys, only older. The pure helpers come first and are tested
without sockets; ``JwksCache`` is the thin Trio part.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Callable
from urllib.parse import urlsplit

import httpx
import trio
from authlib.oauth2.rfc8414 import AuthorizationServerMetadata
from authlib.oidc.discovery import OpenIDProviderMetadata
from joserfc.errors import JoseError
from joserfc.jwk import JWKRegistry, Key, KeySet

from datapulse.core.loopback import is_loopback_host
from datapulse.core.tokens import find_key
from datapulse.errors import ServiceUnavailable

logger = logging.getLogger("datapulse.auth")

KiB = 1024
# JWK members that only private keys have: a JWKS must be public, and if an IdP ever leaked
# private members we still load only the public half.
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_KEY_TYPES = ("RSA", "EC", "OKP")  # "oct" never verifies a token here: that is HMAC


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


class DiscoveryError(KeySourceError):
    """The issuer's metadata could not be found or was not acceptable; the message says which."""


# ---------------------------------------------------------------------------------------------
# Pure helpers


def require_secure_url(url: str, *, what: str) -> str:
    """Return ``url`` if it is https, or http to a loopback host; raise ValueError otherwise.

    Keys fetched over plain http could be swapped by anyone on the path, which would let them
    sign tokens we accept; loopback stays allowed for local IdPs and tests.
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname
        _ = parts.port  # raises ValueError for a port that is not a number
    except ValueError:
        raise ValueError(f"{what} is not a valid URL: {url!r}") from None
    if not host:
        raise ValueError(f"{what} must be an absolute URL with a host: {url!r}")
    scheme = parts.scheme.lower()
    if scheme == "https" or (scheme == "http" and is_loopback_host(host)):
        return url
    raise ValueError(
        f"{what} must use https (plain http is allowed only for a loopback host:"
        f" 127.0.0.0/8, ::1, localhost): {url!r}"
    )


def discovery_urls(issuer: str) -> list[tuple[str, bool]]:
    """Metadata URLs to try, in order, each with "is OIDC".

    OIDC Discovery appends its well-known segment to the issuer; RFC 8414 §3.1 inserts its own
    between host and path. For an issuer with a path we also try OIDC's segment inserted, as the
    MCP clients do, since some IdPs publish it there.
    """
    parts = urlsplit(issuer)
    origin = f"{parts.scheme}://{parts.netloc}"
    path = parts.path.rstrip("/")
    urls = [
        (issuer.rstrip("/") + "/.well-known/openid-configuration", True),
        (f"{origin}/.well-known/oauth-authorization-server{path}", False),
    ]
    if path:
        urls.append((f"{origin}/.well-known/openid-configuration{path}", True))
    return urls


def check_metadata(doc: object, *, issuer: str, oidc: bool) -> str:
    """Validate an issuer's metadata document and return its ``jwks_uri``.

    The document's ``issuer`` must equal ours exactly (RFC 8414 §3.3, OIDC Discovery §4.3):
    otherwise anyone able to serve a document at that URL could name a key set for our issuer.
    """
    if not isinstance(doc, dict):
        raise DiscoveryError("issuer metadata is not a JSON object")
    found = doc.get("issuer")
    if found != issuer:
        raise DiscoveryError(
            f"issuer metadata names issuer {found!r}, not the configured {issuer!r}"
            " (they must match exactly, trailing slash included)"
        )
    metadata = OpenIDProviderMetadata(doc) if oidc else AuthorizationServerMetadata(doc)
    try:
        # Only the members we use are validated: IdPs differ in the rest, and a quirk in, say,
        # response_modes_supported must not stop token checks.
        metadata.validate_issuer()
        metadata.validate_jwks_uri()
    except ValueError as exc:
        raise DiscoveryError(f"issuer metadata is invalid: {exc}") from None
    jwks_uri = doc.get("jwks_uri")
    if not isinstance(jwks_uri, str) or not jwks_uri:
        raise DiscoveryError("issuer metadata has no jwks_uri")
    try:
        return require_secure_url(jwks_uri, what="jwks_uri from issuer metadata")
    except ValueError as exc:
        raise DiscoveryError(str(exc)) from None


def cache_ttl(
    cache_control: str | None, *, floor_s: float, ceiling_s: float, default_s: float
) -> float:
    """Seconds to keep a JWKS: ``max-age`` (or ``default_s``) clamped to [floor_s, ceiling_s].

    ``no-store``/``no-cache`` mean the floor, not zero: refetching per token would make us the
    IdP's heaviest client, and rotation is handled by the unknown-kid refresh anyway.
    """
    ttl = default_s
    directives: dict[str, str] = {}
    for part in (cache_control or "").split(","):
        name, _, value = part.strip().partition("=")
        directives[name.strip().lower()] = value.strip().strip('"')
    max_age = directives.get("max-age", "")
    if "no-store" in directives or "no-cache" in directives:
        ttl = floor_s
    elif max_age.isdigit() and len(max_age) <= 12:  # int() of a huge digit string is slow
        ttl = float(max_age)
    return min(max(ttl, floor_s), ceiling_s)


def parse_jwks(doc: object, *, max_keys: int = 100) -> KeySet:
    """The usable public signing keys of a JWKS document; others are skipped, not fatal.

    RFC 7517 §5 says to ignore keys we do not understand; IdPs publish encryption keys and new
    key types beside signing keys, and one odd key must not take the whole set down.
    """
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise KeySourceError("JWKS document has no 'keys' list")
    keys: list[Key] = []
    for entry in doc["keys"][:max_keys]:
        if not isinstance(entry, dict) or entry.get("kty") not in _KEY_TYPES:
            continue
        if entry.get("use", "sig") != "sig":
            continue
        public = {k: v for k, v in entry.items() if k not in _PRIVATE_MEMBERS}
        try:
            keys.append(JWKRegistry.import_key(public, entry["kty"]))
        except (JoseError, ValueError, TypeError) as exc:
            logger.debug("skipping JWKS key %r: %s", entry.get("kid"), exc)
    if not keys:
        raise KeySourceError("JWKS has no usable signing keys")
    return KeySet(keys)


# ---------------------------------------------------------------------------------------------
# The Trio part


class JwksCache:
    """The issuer's key set: discovered, cached, refreshed once per rotation, never hammered.

    Call ``start()`` once before serving: it runs discovery (raising ``DiscoveryError`` with a
    reason an operator can act on when the configuration is wrong) and tries a first key fetch;
    if the IdP cannot be reached it only logs, ``ready`` stays False and tokens get 503 until
    ``run_until_ready`` (or a request, at most once per ``refresh_interval_s``) loads the keys.
    ``clock`` is only for cache and rate-limit arithmetic (tests pass a fake one); timeouts
    always use Trio's clock; ``jitter`` (0..1) spreads the background retries.
    """

    def __init__(
        self,
        *,
        issuer: str | None = None,
        jwks_uri: str | None = None,
        timeout_s: float = 5.0,
        max_bytes: int = 512 * KiB,
        min_ttl_s: float = 60.0,
        max_ttl_s: float = 24 * 3600.0,
        default_ttl_s: float = 3600.0,
        refresh_interval_s: float = 10.0,
        max_keys: int = 100,
        retry_initial_s: float = 1.0,
        retry_max_s: float = 60.0,
        http_client: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = trio.current_time,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        if jwks_uri is not None:
            require_secure_url(jwks_uri, what="JWKS URI")
        elif issuer is not None:
            require_secure_url(issuer, what="JWT issuer (used for discovery)")
            parts = urlsplit(issuer)
            if parts.query or parts.fragment:
                raise ValueError(f"JWT issuer must have no query or fragment: {issuer!r}")
        else:
            raise ValueError("JwksCache needs an issuer to discover from, or a JWKS URI")
        if timeout_s <= 0 or max_bytes < 1 or refresh_interval_s < 0 or max_keys < 1:
            raise ValueError("timeout_s and max_bytes must be > 0, refresh_interval_s >= 0")
        if not 0 < min_ttl_s <= max_ttl_s:
            raise ValueError("cache TTLs must satisfy 0 < min_ttl_s <= max_ttl_s")
        if not 0 < retry_initial_s <= retry_max_s:
            raise ValueError("retry delays must satisfy 0 < retry_initial_s <= retry_max_s")
        self._issuer = issuer
        self._jwks_uri = jwks_uri
        self._timeout_s = timeout_s
        self._max_bytes = max_bytes
        self._min_ttl_s = min_ttl_s
        self._max_ttl_s = max_ttl_s
        self._default_ttl_s = default_ttl_s
        self._refresh_interval_s = refresh_interval_s
        self._max_keys = max_keys
        self._client = http_client
        self._clock = clock
        self._retry_initial_s = retry_initial_s
        self._retry_max_s = retry_max_s
        self._jitter = jitter
        self._last_error: str | None = None
        self._recovering = False  # run_until_ready is running: requests never wait on a fetch
        self._next_retry_at = -math.inf  # its next attempt
        self._keys: KeySet | None = None
        self._expires_at = -math.inf
        self._retry_at = -math.inf  # after a failed fetch: no new one before this
        self._last_attempt_at: float | None = None
        self._last_ok = False
        self._inflight: trio.Event | None = None
        self._generation = 0  # fetch attempts that ran to the end (success or failure)
        #: HTTP requests made, for tests and operators.
        self.jwks_fetches = 0
        self.discovery_fetches = 0

    @property
    def jwks_uri(self) -> str | None:
        return self._jwks_uri

    @property
    def keys(self) -> KeySet | None:
        return self._keys

    @property
    def ready(self) -> bool:
        """Whether signing keys are loaded (stale ones count: they still verify)."""
        return self._keys is not None

    @property
    def reason(self) -> str | None:
        """Why not ``ready``, for an operator (or a /readyz); None when ready."""
        if self._keys is not None:
            return None
        if self._last_error is None:
            return "JWT signing keys not loaded yet"
        return f"JWT signing keys unavailable from {self._source}: {self._last_error}"

    async def start(self) -> None:
        """Discover and load the keys once. Raises ``DiscoveryError`` only for a configuration
        error; an unreachable or failing IdP leaves the cache not ``ready`` (logged once)."""
        if self._jwks_uri is None:
            try:
                self._jwks_uri = await self._discover()
            except DiscoveryError as exc:
                if not exc.transient:
                    raise
                self._last_error = str(exc)
                self._last_attempt_at = self._clock()
                self._retry_at = self._last_attempt_at + self._refresh_interval_s
        if self._jwks_uri is None or not await self._refresh():
            logger.warning(
                "starting without JWT signing keys (%s); JWT requests get 503 until they load,"
                " retried in the background; the local token works meanwhile",
                self.reason,
            )

    async def run_until_ready(self) -> None:
        """Retry discovery and the key fetch until keys are loaded, then return.

        The delay doubles from ``retry_initial_s`` up to ``retry_max_s``, each one jittered
        (x0.5 .. x1) so that instances restarted together do not hit a recovering IdP at once.
        Meanwhile requests are answered 503 at once, with ``Retry-After`` until the next try.
        """
        delay = self._retry_initial_s
        self._recovering = True
        try:
            while self._keys is None:
                wait = delay * (0.5 + 0.5 * self._jitter())
                self._next_retry_at = self._clock() + wait
                await trio.sleep(wait)
                if self._keys is None:
                    await self._refresh()
                delay = min(delay * 2, self._retry_max_s)
        finally:
            self._recovering = False
            self._next_retry_at = -math.inf

    async def get_key(self, kid: str | None, alg: str) -> Key | None:
        """The key for this ``kid``, or None if the issuer has no such key (a bad token).

        Raises ServiceUnavailable when no keys can be had, or when an unknown ``kid`` could not
        be checked because the IdP is failing.
        """
        keys = await self._current_keys()
        key = find_key(keys, kid, alg)
        if key is not None or kid is None:
            return key
        # An unknown kid may be a rotation. Join a fetch in flight, or start one if allowed.
        if self._inflight is None and not self._may_fetch():
            if not self._last_ok:
                raise self._unavailable()
            return None
        ok = await self._refresh()
        key = find_key(self._keys or keys, kid, alg)
        if key is None and not ok:
            raise self._unavailable()
        return key

    async def _current_keys(self) -> KeySet:
        now = self._clock()
        if self._keys is not None and now < self._expires_at:
            return self._keys
        if self._keys is None and self._recovering:
            raise self._unavailable()  # the background task is on it: no request waits
        if self._inflight is None and now < self._retry_at:
            if self._keys is not None:
                return self._keys  # stale beats none while the IdP is failing
            raise self._unavailable()
        await self._refresh()
        if self._keys is None:
            raise self._unavailable()
        return self._keys

    def _may_fetch(self) -> bool:
        last = self._last_attempt_at
        return last is None or self._clock() - last >= self._refresh_interval_s

    def _unavailable(self) -> ServiceUnavailable:
        last = self._last_attempt_at
        next_try = (
            self._retry_at if last is None else max(self._retry_at, last + self._refresh_interval_s)
        )
        if self._recovering:
            next_try = self._next_retry_at
        wait = next_try - self._clock()
        retry_after = max(1, math.ceil(wait)) if math.isfinite(wait) else 1
        return ServiceUnavailable(
            "token signing keys are unavailable; try again later", retry_after_s=retry_after
        )

    async def _refresh(self) -> bool:
        """Fetch the key set, or wait for the fetch already running; True if it succeeded."""
        while (inflight := self._inflight) is not None:
            generation = self._generation
            await inflight.wait()
            if self._generation != generation:
                return self._last_ok
            # The fetching task was cancelled (its client went away) before it finished: take
            # over rather than report a failure that never happened.
        event = self._inflight = trio.Event()
        previous = self._last_attempt_at
        self._last_attempt_at = self._clock()
        try:
            ok = await self._fetch_keys()
        except BaseException:
            self._last_attempt_at = previous  # a cancelled attempt does not use up the limit
            raise
        else:
            self._generation += 1
            self._last_ok = ok
            return ok
        finally:
            self._inflight = None
            event.set()

    async def _fetch_keys(self) -> bool:
        try:
            if self._jwks_uri is None:
                self._jwks_uri = await self._discover()
            self.jwks_fetches += 1
            doc, headers = await self._get_json(self._jwks_uri)
            keys = parse_jwks(doc, max_keys=self._max_keys)
        except KeySourceError as exc:
            self._retry_at = self._clock() + self._refresh_interval_s
            self._last_error = str(exc)
            if self._keys is None:
                # The outage is logged once, by start(); each retry only at debug level.
                logger.debug("JWT signing keys unavailable from %s: %s", self._source, exc)
            else:
                logger.warning(
                    "JWKS refresh from %s failed, keeping cached keys: %s", self._source, exc
                )
            return False
        ttl = cache_ttl(
            headers.get("cache-control"),
            floor_s=self._min_ttl_s,
            ceiling_s=self._max_ttl_s,
            default_s=self._default_ttl_s,
        )
        recovered = self._keys is None and self._last_error is not None
        self._keys = keys
        self._expires_at = self._clock() + ttl
        self._retry_at = -math.inf
        self._last_error = None
        if recovered:
            logger.info(
                "JWT authentication ready: loaded %d signing keys from %s for %g s",
                len(keys.keys),
                self._source,
                ttl,
            )
        else:
            logger.info(
                "loaded %d signing keys from %s for %g s", len(keys.keys), self._source, ttl
            )
        return True

    @property
    def _source(self) -> str:
        return self._jwks_uri or f"discovery for {self._issuer}"

    async def _discover(self) -> str:
        assert self._issuer is not None
        failures: list[str] = []
        transient = False
        for url, oidc in discovery_urls(self._issuer):
            self.discovery_fetches += 1
            try:
                doc, _ = await self._get_json(url)
            except KeySourceError as exc:
                failures.append(f"{url}: {exc}")
                transient = transient or exc.transient
                continue
            # A document that answers but is wrong (issuer mismatch) ends discovery: falling
            # through to another URL would hide a misconfiguration or an attack.
            jwks_uri = check_metadata(doc, issuer=self._issuer, oidc=oidc)
            logger.info("discovered jwks_uri %s from %s", jwks_uri, url)
            return jwks_uri
        # Transient if any URL might answer later: one that 404s beside one that is down is
        # more likely an IdP that serves only one of the two documents than a wrong issuer.
        raise DiscoveryError(
            f"no usable metadata for issuer {self._issuer!r}: " + "; ".join(failures),
            transient=transient,
        )

    async def _get_json(self, url: str) -> tuple[object, httpx.Headers]:
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
