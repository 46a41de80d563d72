"""JwtVerifier and JwksCache against a real HTTP identity provider on 127.0.0.1 (tests/idp.py).

Network tests run under ``trio.fail_after``. The cache's clock is a ``FakeClock`` so TTLs and the
refresh rate limit are stepped by hand; timeouts still use Trio's real clock. Token times use the
wall clock, like the verifier.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import secrets
import time
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datapulse.auth.jwks import (
    DiscoveryError,
    KeySourceError,
    cache_ttl,
    check_metadata,
    discovery_urls,
    parse_jwks,
    require_secure_url,
)
from datapulse.auth.jwt import JwtSettings, JwtVerifier, principal_id
from datapulse.config import Config
from datapulse.core.tokens import InvalidToken, find_key
from datapulse.errors import ServiceUnavailable, Unauthorized
from tests.idp import AUDIENCE, IdP, b64url, ec_key, forge, rsa_key, start_idp

TIMEOUT = 10  # per network test; each should take well under a second


def _json(obj: Any) -> bytes:
    return json.dumps(obj).encode()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


async def open_verifier(idp: IdP, clock: FakeClock | None = None, **tuning: Any) -> JwtVerifier:
    settings = JwtSettings(issuer=idp.issuer, audience=AUDIENCE, **tuning)
    return await JwtVerifier.open(settings, clock=clock or FakeClock())


async def verify(verifier: JwtVerifier, token: str) -> Any:
    return await verifier.verify(f"Bearer {token}")


async def rejected(verifier: JwtVerifier, token: str) -> InvalidToken:
    with pytest.raises(InvalidToken) as info:
        await verify(verifier, token)
    assert info.value.challenge.startswith('Bearer error="invalid_token", error_description="')
    return info.value


@pytest.fixture
async def idp(nursery: trio.Nursery) -> IdP:
    return await start_idp(nursery, keys=[rsa_key("rsa-1"), ec_key("ec-1")])


# -- accepted tokens ---------------------------------------------------------------------------


async def test_valid_rs256(idp: IdP) -> None:
    with trio.fail_after(TIMEOUT):
        verifier = await open_verifier(idp)
        principal = await verify(verifier, idp.mint(sub="alice"))
    assert principal.subject == "alice"
    assert principal.issuer == idp.issuer
    assert principal.scopes == {"mcp:tools", "mcp:read"}
    assert principal.id == principal_id(idp.issuer, "alice")
    assert principal.id.startswith("jwt:") and "alice" not in principal.id
    assert principal.claims["client_id"] == "client-1"
    assert verifier.jwks is not None and verifier.jwks.jwks_uri == idp.jwks_uri


async def test_valid_es256(idp: IdP) -> None:
    with trio.fail_after(TIMEOUT):
        verifier = await open_verifier(idp)
        principal = await verify(verifier, idp.mint(key=ec_key("ec-1"), scp=["a", "b"], scope=None))
    assert principal.scopes == {"a", "b"}


async def test_aud_list_containing_ours(idp: IdP) -> None:
    with trio.fail_after(TIMEOUT):
        verifier = await open_verifier(idp)
        assert await verify(verifier, idp.mint(aud=["https://other.test", AUDIENCE]))


async def test_expired_within_leeway_accepted(idp: IdP) -> None:
    with trio.fail_after(TIMEOUT):
        verifier = await open_verifier(idp)
        assert await verify(verifier, idp.mint(exp=int(time.time()) - 30))


# -- rejected tokens ---------------------------------------------------------------------------


async def test_claim_failures(idp: IdP) -> None:
    now = int(time.time())
    cases = {
        "token expired": idp.mint(exp=now - 120),
        "token not yet valid": idp.mint(nbf=now + 300),
        "wrong issuer": idp.mint(iss="https://evil.test"),
        "token audience does not include this resource": idp.mint(aud="https://other.test"),
        "missing claim: sub": idp.mint(sub=None),
    }
    with trio.fail_after(TIMEOUT):
        verifier = await open_verifier(idp)
        for description, token in cases.items():
            assert (await rejected(verifier, token)).description == description


async def test_alg_none(idp: IdP) -> None:
    with trio.fail_after(TIMEOUT):
        verifier = await open_verifier(idp)
        token = forge({"alg": "none", "kid": "rsa-1"}, idp.claims())
        assert (await rejected(verifier, token)).description == "unsigned tokens are not accepted"


async def test_hs256_signed_with_public_key(idp: IdP) -> None:
    """The key-confusion forgery: HMAC keyed with the (public) RSA key in PEM form."""
    public_pem = rsa_key("rsa-1").as_pem(private=False)
    head = b64url(b'{"alg":"HS256","typ":"JWT","kid":"rsa-1"}')
    body = b64url(_json(idp.claims()))
    signature = hmac.new(public_pem, f"{head}.{body}".encode(), hashlib.sha256).digest()
    token = f"{head}.{body}.{b64url(signature)}"
    with trio.fail_after(TIMEOUT):
        verifier = await open_verifier(idp, algorithms=("RS256",))
        assert (
            await rejected(verifier, token)
        ).description == "HMAC-signed tokens are not accepted"


async def test_alg_outside_allow_list(idp: IdP) -> None:
    with trio.fail_after(TIMEOUT):
        verifier = await open_verifier(idp, algorithms=("RS256", "ES256"))
        token = idp.mint(alg="RS512")
        assert (await rejected(verifier, token)).description == "algorithm RS512 is not allowed"


async def test_signature_and_key_mismatches(idp: IdP) -> None:
    with trio.fail_after(TIMEOUT):
        verifier = await open_verifier(idp)
        # Signed by a key the IdP never published, but claiming a published kid.
        forged = idp.mint(key=rsa_key("attacker"), header={"kid": "rsa-1"})
        assert (await rejected(verifier, forged)).description == "invalid signature"
        # An RSA kid with an EC algorithm: refused without counting as an unknown kid.
        fetches = verifier.jwks.jwks_fetches  # type: ignore[union-attr]
        mixed = idp.mint(key=ec_key("ec-1"), header={"kid": "rsa-1"})
        assert "does not fit" in (await rejected(verifier, mixed)).description
        assert verifier.jwks.jwks_fetches == fetches  # type: ignore[union-attr]
        # Tampered claims under a valid signature.
        head, _body, sig = idp.mint().split(".")
        evil_body = b64url(_json(idp.claims(sub="admin")))
        assert (
            await rejected(verifier, f"{head}.{evil_body}.{sig}")
        ).description == "invalid signature"


async def test_jku_and_x5u_are_never_fetched(idp: IdP) -> None:
    attacker = rsa_key("attacker")
    evil = {"jku": idp.origin + "/evil-jwks", "x5u": idp.origin + "/evil-cert"}
    with trio.fail_after(TIMEOUT):
        verifier = await open_verifier(idp)
        token = idp.mint(key=attacker, header=evil)
        assert (await rejected(verifier, token)).description == "unknown signing key"
    assert idp.hits["/evil-jwks"] == 0 and idp.hits["/evil-cert"] == 0


async def test_missing_or_non_bearer_token(idp: IdP) -> None:
    with trio.fail_after(TIMEOUT):
        verifier = await open_verifier(idp)
    for header in [None, "", "Basic dXNlcjpwdw=="]:
        with pytest.raises(Unauthorized) as info:
            await verifier.verify(header)
        assert not isinstance(info.value, InvalidToken)
        assert info.value.challenge == "Bearer"
    assert (await rejected(verifier, "x" * 20_000)).description == "token too large"


# -- keys: rotation, outages, rate limits ------------------------------------------------------


async def test_unknown_kid_then_rotation(idp: IdP) -> None:
    clock = FakeClock()
    old, new = rsa_key("rsa-1"), rsa_key("rsa-2")
    with trio.fail_after(TIMEOUT):
        verifier = await open_verifier(idp, clock)
        jwks = verifier.jwks
        assert jwks is not None and jwks.jwks_fetches == 1
        old_token = idp.mint(key=old)
        assert await verify(verifier, old_token)

        idp.rotate(new)
        clock.advance(11)  # past the refresh rate limit, well inside the cache TTL
        assert await verify(verifier, idp.mint(key=new))
        assert jwks.jwks_fetches == 2  # exactly one refresh for the unknown kid

        # The old key is gone from the refreshed set; its token is now an unknown kid, and the
        # rate limit answers without asking the IdP again.
        assert (await rejected(verifier, old_token)).description == "unknown signing key"
        assert jwks.jwks_fetches == 2
        assert idp.hits[idp.jwks_path] == 2


async def test_random_kid_burst_fetches_once(idp: IdP) -> None:
    """1000 concurrent tokens with random kids: one shared refresh, then the rate limit."""
    clock = FakeClock()
    signer = ec_key("ec-1")
    tokens = [idp.mint(key=signer, header={"kid": secrets.token_hex(8)}) for _ in range(1000)]
    valid = idp.mint(key=signer)
    outcomes: list[str] = []

    async def one(token: str) -> None:
        try:
            await verify(verifier, token)
            outcomes.append("ok")
        except InvalidToken as exc:
            outcomes.append(exc.description)

    with trio.fail_after(TIMEOUT):
        verifier = await open_verifier(idp, clock)
        assert verifier.jwks is not None
        before = verifier.jwks.jwks_fetches
        clock.advance(11)  # the startup fetch no longer holds the rate limit
        async with trio.open_nursery() as nursery:
            for token in tokens:
                nursery.start_soon(one, token)
            nursery.start_soon(one, valid)
        burst_fetches = verifier.jwks.jwks_fetches - before
    print(f"\nJWKS fetches during a burst of 1000 random-kid tokens: {burst_fetches}")
    assert 1 <= burst_fetches <= 2
    assert outcomes.count("unknown signing key") == 1000
    assert outcomes.count("ok") == 1

    # Later random kids inside the rate-limit window cost the IdP nothing; after it, one fetch.
    with trio.fail_after(TIMEOUT):
        await rejected(verifier, tokens[0])
        assert verifier.jwks.jwks_fetches - before == burst_fetches
        clock.advance(11)
        await rejected(verifier, tokens[1])
        assert verifier.jwks.jwks_fetches - before == burst_fetches + 1


async def test_jwks_down_is_service_unavailable(idp: IdP, caplog: pytest.LogCaptureFixture) -> None:
    idp.down, idp.faulty_paths = "503", {idp.jwks_path}
    clock = FakeClock()
    caplog.set_level(logging.WARNING, logger="datapulse.auth")
    with trio.fail_after(TIMEOUT):
        verifier = await open_verifier(idp, clock)  # discovery works; the key fetch fails
        assert verifier.jwks is not None and verifier.jwks.keys is None
        with pytest.raises(ServiceUnavailable) as info:
            await verify(verifier, idp.mint())
        assert not isinstance(info.value, Unauthorized)
        assert info.value.retry_after_s >= 1
        # Inside the retry window nobody asks the IdP again.
        assert verifier.jwks.jwks_fetches == 1
        assert any("unavailable" in r.getMessage() for r in caplog.records)

        idp.down = "close"
        clock.advance(11)
        with pytest.raises(ServiceUnavailable):
            await verify(verifier, idp.mint())
        assert verifier.jwks.jwks_fetches == 2

        idp.down = None
        clock.advance(11)
        assert await verify(verifier, idp.mint())


async def test_cached_keys_outlive_an_outage(idp: IdP) -> None:
    clock = FakeClock()
    with trio.fail_after(TIMEOUT):
        verifier = await open_verifier(idp, clock)
        idp.down = "503"
        clock.advance(301)  # past max-age=300
        assert await verify(verifier, idp.mint())  # stale keys, refresh failed and was logged
        assert verifier.jwks is not None and verifier.jwks.jwks_fetches == 2
        # An unknown kid cannot be judged while the IdP fails: 503, not 401.
        with pytest.raises(ServiceUnavailable):
            await verify(verifier, idp.mint(key=rsa_key("rsa-2")))


async def test_jwks_slow_times_out_as_service_unavailable(idp: IdP) -> None:
    idp.delay_s, idp.faulty_paths = 5.0, {idp.jwks_path}
    settings = JwtSettings(issuer=idp.issuer, audience=AUDIENCE, http_timeout_s=0.3)
    verifier = JwtVerifier(settings, clock=FakeClock())  # not started: the request does the fetch
    start = trio.current_time()
    with trio.fail_after(3), pytest.raises(ServiceUnavailable):
        await verify(verifier, idp.mint())
    assert trio.current_time() - start < 2.0


async def test_jwks_too_large_is_refused(idp: IdP) -> None:
    idp.jwks_padding = 600 * 1024
    with trio.fail_after(TIMEOUT):
        verifier = await open_verifier(idp)
        with pytest.raises(ServiceUnavailable):
            await verify(verifier, idp.mint())


async def test_cancelled_fetcher_hands_over(idp: IdP) -> None:
    """The task that started a fetch goes away; a task waiting on it fetches instead."""
    idp.delay_s, idp.faulty_paths = 0.3, {idp.jwks_path}
    settings = JwtSettings(issuer=idp.issuer, jwks_uri=idp.jwks_uri, audience=AUDIENCE)
    verifier = JwtVerifier(settings, clock=FakeClock())
    results: list[str] = []

    async def leader() -> None:
        with trio.move_on_after(0.1):
            await verify(verifier, idp.mint())
            results.append("leader finished")

    async def follower() -> None:
        await trio.sleep(0.05)
        await verify(verifier, idp.mint())
        results.append("follower ok")

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(leader)
            nursery.start_soon(follower)
    assert results == ["follower ok"]
    assert verifier.jwks is not None and verifier.jwks.jwks_fetches == 2


async def test_cache_control_max_age(idp: IdP) -> None:
    clock = FakeClock()
    idp.cache_control = "public, max-age=120"
    with trio.fail_after(TIMEOUT):
        verifier = await open_verifier(idp, clock)
        assert verifier.jwks is not None
        clock.advance(100)
        await verify(verifier, idp.mint())
        assert verifier.jwks.jwks_fetches == 1
        clock.advance(30)
        await verify(verifier, idp.mint())
        assert verifier.jwks.jwks_fetches == 2


# -- discovery ---------------------------------------------------------------------------------


async def test_discovery_via_openid_configuration(nursery: trio.Nursery) -> None:
    idp = await start_idp(nursery, rfc8414=False, path="/tenant1")
    with trio.fail_after(TIMEOUT):
        verifier = await open_verifier(idp)
        assert await verify(verifier, idp.mint())
    assert idp.hits["/tenant1/.well-known/openid-configuration"] == 1
    assert idp.hits["/.well-known/oauth-authorization-server/tenant1"] == 0
    assert verifier.jwks is not None and verifier.jwks.discovery_fetches == 1


async def test_discovery_falls_back_to_rfc8414(nursery: trio.Nursery) -> None:
    idp = await start_idp(nursery, oidc=False, path="/tenant1")
    with trio.fail_after(TIMEOUT):
        verifier = await open_verifier(idp)
        assert await verify(verifier, idp.mint())
    assert idp.hits["/tenant1/.well-known/openid-configuration"] == 1  # 404
    assert idp.hits["/.well-known/oauth-authorization-server/tenant1"] == 1
    assert verifier.jwks is not None and verifier.jwks.jwks_uri == idp.jwks_uri


async def test_discovery_issuer_mismatch_refused(idp: IdP) -> None:
    idp.metadata_issuer = idp.issuer + "/"
    with trio.fail_after(TIMEOUT), pytest.raises(DiscoveryError, match="must match exactly"):
        await open_verifier(idp)
    assert idp.hits[idp.jwks_path] == 0


async def test_discovery_refuses_plain_http_jwks_uri(idp: IdP) -> None:
    idp.metadata_extra = {"jwks_uri": "http://keys.example.test/jwks"}
    with trio.fail_after(TIMEOUT), pytest.raises(DiscoveryError, match="https"):
        await open_verifier(idp)


async def test_discovery_with_no_metadata(idp: IdP) -> None:
    idp.oidc = idp.rfc8414 = False
    with trio.fail_after(TIMEOUT), pytest.raises(DiscoveryError, match="HTTP 404"):
        await open_verifier(idp)


async def test_jwks_uri_skips_discovery(idp: IdP) -> None:
    settings = JwtSettings(issuer="urn:example:issuer", audience=AUDIENCE, jwks_uri=idp.jwks_uri)
    with trio.fail_after(TIMEOUT):
        verifier = await JwtVerifier.open(settings, clock=FakeClock())
        assert await verify(verifier, idp.mint(iss="urn:example:issuer"))
    assert verifier.jwks is not None and verifier.jwks.discovery_fetches == 0


@pytest.mark.parametrize(
    ("field", "url"),
    [
        ("issuer", "http://idp.example.com"),
        ("issuer", "http://10.0.0.1/tenant"),
        ("issuer", "ftp://127.0.0.1/"),
        ("jwks_uri", "http://idp.example.com/jwks"),
        ("jwks_uri", "not a url"),
    ],
)
def test_non_https_non_loopback_refused(field: str, url: str) -> None:
    kwargs: dict[str, Any] = {"issuer": "https://idp.example.com", "audience": AUDIENCE, field: url}
    with pytest.raises(ValueError, match=r"https|URL"):
        JwtSettings(**kwargs)


def test_secure_url_policy() -> None:
    for ok in [
        "https://idp.example.com",
        "http://127.0.0.1:8080/x",
        "http://127.8.9.10/",
        "http://[::1]:9000/",
        "http://localhost/",
        "http://[::ffff:127.0.0.1]/",
    ]:
        assert require_secure_url(ok, what="t") == ok
    for bad in [
        "http://localhost.evil.test/",
        "http://192.168.1.1/",
        "https:///nohost",
        "http://[::2]/",
    ]:
        with pytest.raises(ValueError):
            require_secure_url(bad, what="t")


# -- static PEM key mode ------------------------------------------------------------------------


async def test_static_pem_key_mode() -> None:
    key = rsa_key("rsa-1")
    issuer = "https://issuer.example.test"
    idp = IdP(keys=[key], path="")  # not started: used only to mint
    settings = JwtSettings(
        issuer=issuer, audience=AUDIENCE, static_pem_key=key.as_pem(private=False).decode()
    )
    verifier = await JwtVerifier.open(settings)
    assert verifier.jwks is None
    principal = await verify(verifier, idp.mint(iss=issuer, header={"kid": "anything"}))
    assert principal.issuer == issuer
    other = await rejected(verifier, idp.mint(key=rsa_key("rsa-2"), iss=issuer))
    assert other.description == "invalid signature"
    ec = await rejected(verifier, idp.mint(key=ec_key("ec-1"), iss=issuer))
    assert "does not fit" in ec.description


def test_static_key_must_be_a_public_key_pem() -> None:
    with pytest.raises(ValueError, match="PEM"):
        JwtVerifier(JwtSettings(issuer="i", audience="a", static_pem_key="secret"))
    # A private key works, but only its public half is kept.
    private = rsa_key("rsa-1").as_pem(private=True).decode()
    verifier = JwtVerifier(JwtSettings(issuer="i", audience="a", static_pem_key=private))
    assert verifier.static_key is not None and not verifier.static_key.is_private


# -- settings ----------------------------------------------------------------------------------


def test_settings_from_config() -> None:
    config = Config(
        jwt_issuer="https://login.example.test/t/v2.0",
        jwt_audience="api://datapulse",
        jwt_algorithms=" RS256, ES256 ",
        jwt_leeway_s=30,
    )
    settings = JwtSettings.from_config(config, http_timeout_s=2.0)
    assert settings.algorithms == ("RS256", "ES256")
    assert settings.leeway_s == 30 and settings.http_timeout_s == 2.0
    assert settings.discovers
    with pytest.raises(ValueError, match="JWT_AUDIENCE"):
        JwtSettings.from_config(config.replace(jwt_audience=None))
    with pytest.raises(ValueError, match="not configured"):
        JwtSettings.from_config(Config())
    for algs in ["HS256", "RS256,none", "FOO"]:
        with pytest.raises(ValueError):
            JwtSettings.from_config(config.replace(jwt_algorithms=algs))
    with pytest.raises(ValueError, match="alternatives"):
        JwtSettings.from_config(config.replace(jwt_key="k", jwt_jwks_uri="https://x/jwks"))


# -- pure helpers of jwks.py -------------------------------------------------------------------


def test_discovery_urls() -> None:
    assert discovery_urls("https://idp.test") == [
        ("https://idp.test/.well-known/openid-configuration", True),
        ("https://idp.test/.well-known/oauth-authorization-server", False),
    ]
    assert discovery_urls("https://idp.test/t1/") == [
        ("https://idp.test/t1/.well-known/openid-configuration", True),
        ("https://idp.test/.well-known/oauth-authorization-server/t1", False),
        ("https://idp.test/.well-known/openid-configuration/t1", True),
    ]


def test_check_metadata() -> None:
    doc = {"issuer": "https://idp.test", "jwks_uri": "https://idp.test/keys"}
    assert check_metadata(doc, issuer="https://idp.test", oidc=False) == "https://idp.test/keys"
    for bad in [[], {**doc, "issuer": "https://idp.test/"}, {"issuer": "https://idp.test"}]:
        with pytest.raises(DiscoveryError):
            check_metadata(bad, issuer="https://idp.test", oidc=True)


def test_cache_ttl() -> None:
    ttl = {"floor_s": 60.0, "ceiling_s": 86400.0, "default_s": 3600.0}
    assert cache_ttl("max-age=600", **ttl) == 600
    assert cache_ttl("public, max-age=5", **ttl) == 60
    assert cache_ttl('max-age="999999999"', **ttl) == 86400
    assert cache_ttl("no-store", **ttl) == 60
    assert cache_ttl(None, **ttl) == 3600
    assert cache_ttl("max-age=" + "9" * 5000, **ttl) == 3600
    assert cache_ttl("max-age=-3, ,=,", **ttl) == 3600


def test_parse_jwks_skips_what_it_cannot_use() -> None:
    good = rsa_key("rsa-1").as_dict(private=False)
    doc = {
        "keys": [
            "junk",
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
            {**ec_key("ec-1").as_dict(private=False), "use": "enc"},
            {"kty": "RSA", "kid": "broken", "n": "x"},
            {"kty": "PQC", "kid": "future"},
            rsa_key("rsa-2").as_dict(private=True),
            good,
        ]
    }
    keys = parse_jwks(doc)
    assert [k.kid for k in keys] == ["rsa-2", "rsa-1"]
    assert not any(k.is_private for k in keys)
    for bad in [{}, {"keys": "x"}, {"keys": [{"kty": "oct", "k": "eA"}]}, []]:
        with pytest.raises(KeySourceError):
            parse_jwks(bad)


def test_find_key() -> None:
    keys = parse_jwks({"keys": [rsa_key("rsa-1").as_dict(), ec_key("ec-1").as_dict()]})
    assert find_key(keys, "rsa-1", "RS256") is not None
    assert find_key(keys, "nope", "RS256") is None
    assert find_key(keys, None, "ES256") is not None  # the only EC key: unambiguous
    two_rsa = parse_jwks({"keys": [rsa_key("rsa-1").as_dict(), rsa_key("rsa-2").as_dict()]})
    assert find_key(two_rsa, None, "RS256") is None


# -- garbage never escapes as anything but Unauthorized ----------------------------------------

_GARBAGE_VERIFIER = JwtVerifier(
    JwtSettings(
        issuer="https://issuer.example.test",
        audience=AUDIENCE,
        static_pem_key=rsa_key("rsa-1").as_pem(private=False).decode(),
        algorithms=("RS256", "ES256", "PS256", "Ed25519"),
    )
)
_segments = st.text(alphabet="ABCDEFGHIJabcdefghij0123456789-_", max_size=60)
_headers = st.dictionaries(
    st.sampled_from(["alg", "kid", "typ", "crit", "jku", "b64", "x5c"]),
    st.sampled_from(["RS256", "ES256", "PS256", "none", "HS256", "Ed25519", "", "JWT"])
    | st.integers()
    | st.lists(st.text(max_size=5), max_size=3)
    | st.none(),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.text(max_size=300),
        st.builds(lambda a, b, c: f"{a}.{b}.{c}", _segments, _segments, _segments),
        st.builds(lambda h, b, c: f"{b64url(_json(h))}.{b}.{c}", _headers, _segments, _segments),
    ),
    st.sampled_from(["Bearer ", "bearer ", "Bearer  ", ""]),
)
async def test_garbage_tokens_are_unauthorized(token: str, scheme: str) -> None:
    with contextlib.suppress(Unauthorized):
        await _GARBAGE_VERIFIER.verify(scheme + token)
