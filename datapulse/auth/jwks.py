"""JwksCache: the issuer's signing keys, cached, refreshed on rotation, never hammered.

This module owns the key cache: how long a key set is kept and when it may be fetched again. It
is kept as long as the IdP's ``Cache-Control: max-age`` says (clamped, ``keyset.cache_ttl``) and
refetched early only for an unknown ``kid``, which is how key rotation shows up. Two promises
protect the IdP from us, and us from a slow IdP:

* single flight: however many requests need a refresh at once, one fetch runs and the rest wait
  on its ``trio.Event``;
* rate limit: a fetch starts at most once per ``refresh_interval_s`` (after a failure, or for an
  unknown ``kid``), so a flood of tokens with random ``kid``s costs the IdP one request.

No keys at all raises ``ServiceUnavailable``: an IdP outage must not look like a bad token, or
clients would throw good tokens away. Keys past their ``max-age`` stay in use while refreshes
fail; they are the IdP's own keys, only older.

The rest lives beside it, one job each: ``discovery.py`` finds ``jwks_uri`` (OIDC, then RFC 8414)
and owns the issuer, metadata and https rules, and which failures are configuration errors that
fail ``start``; ``keyset.py`` reads a JWKS document and its ``Cache-Control``; ``idp_fetch.py``
is the bounded GET and ``KeySourceError``; ``startup_retry.py`` is the backoff of
``run_until_ready``, which keeps retrying while an IdP that was down at start stays down (requests
get 503 with ``Retry-After`` meanwhile). The names tests and callers have always imported from
here (``DiscoveryError``, ``KeySourceError``, ``KiB``, ``cache_ttl``, ``check_metadata``,
``discovery_urls``, ``parse_jwks``, ``require_secure_url``) are re-exported.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable

import httpx
import trio
from joserfc.jwk import Key, KeySet

from datapulse.auth.discovery import (
    DiscoveryError,
    check_issuer,
    check_metadata,
    discover,
    discovery_urls,
    require_secure_url,
)
from datapulse.auth.idp_fetch import IdpFetcher, KeySourceError, KiB
from datapulse.auth.keyset import cache_ttl, parse_jwks
from datapulse.auth.startup_retry import StartupRetry
from datapulse.core.tokens import find_key
from datapulse.errors import ServiceUnavailable
from datapulse.metrics import Metrics

__all__ = [
    "DiscoveryError",
    "JwksCache",
    "KeySourceError",
    "KiB",
    "cache_ttl",
    "check_metadata",
    "discovery_urls",
    "parse_jwks",
    "require_secure_url",
]

logger = logging.getLogger("datapulse.auth")


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
        metrics: Metrics | None = None,
    ) -> None:
        fetches = (metrics if metrics is not None else Metrics()).jwks_fetches
        self._fetched_ok = fetches.labels("ok")
        self._fetch_failed = fetches.labels("error")
        if jwks_uri is not None:
            require_secure_url(jwks_uri, what="JWKS URI")
        elif issuer is not None:
            check_issuer(issuer)
        else:
            raise ValueError("JwksCache needs an issuer to discover from, or a JWKS URI")
        if timeout_s <= 0 or max_bytes < 1 or refresh_interval_s < 0 or max_keys < 1:
            raise ValueError("timeout_s and max_bytes must be > 0, refresh_interval_s >= 0")
        if not 0 < min_ttl_s <= max_ttl_s:
            raise ValueError("cache TTLs must satisfy 0 < min_ttl_s <= max_ttl_s")
        self._retry = StartupRetry(
            initial_s=retry_initial_s, max_s=retry_max_s, clock=clock, jitter=jitter
        )
        self._issuer = issuer
        self._jwks_uri = jwks_uri
        self._min_ttl_s = min_ttl_s
        self._max_ttl_s = max_ttl_s
        self._default_ttl_s = default_ttl_s
        self._refresh_interval_s = refresh_interval_s
        self._max_keys = max_keys
        self._fetcher = IdpFetcher(
            timeout_s=timeout_s, max_bytes=max_bytes, http_client=http_client
        )
        self._clock = clock
        self._last_error: str | None = None
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
        await self._retry.run(lambda: self._keys is not None, self._refresh)

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
        if self._keys is None and self._retry.active:
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
        if self._retry.active:
            next_try = self._retry.next_at
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
        attempts = self.jwks_fetches
        try:
            if self._jwks_uri is None:
                self._jwks_uri = await self._discover()
            self.jwks_fetches += 1
            doc, headers = await self._fetcher.get_json(self._jwks_uri)
            keys = parse_jwks(doc, max_keys=self._max_keys)
        except KeySourceError as exc:
            if self.jwks_fetches > attempts:  # the key set's own GET failed, not discovery
                self._fetch_failed.inc()
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
        self._fetched_ok.inc()
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
        return await discover(self._issuer, self._get_discovery_json)

    async def _get_discovery_json(self, url: str) -> tuple[object, httpx.Headers]:
        self.discovery_fetches += 1
        return await self._fetcher.get_json(url)
