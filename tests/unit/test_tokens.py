"""core.tokens: claim and header rules with a fixed ``now``; no keys, no sockets."""

from __future__ import annotations

import base64
import contextlib
import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from datapulse.core.tokens import (
    InvalidToken,
    TokenClaims,
    check_claims,
    check_header,
    clean_description,
    enforced_scopes,
    has_scope,
    invalid_token_challenge,
    parse_claims,
    parse_header,
    parse_scopes,
)
from datapulse.errors import Unauthorized

NOW = 1_700_000_000
ISS = "https://idp.example.test/tenant"
AUD = "https://mcp.example.test/mcp"
ALGS = ("RS256", "ES256", "PS256")


def claims(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "iss": ISS,
        "sub": "alice",
        "aud": AUD,
        "exp": NOW + 300,
        "iat": NOW - 10,
        "scope": "mcp:tools mcp:read",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def check(c: dict[str, Any], leeway_s: float = 60) -> TokenClaims:
    return check_claims(c, issuer=ISS, audience=AUD, leeway_s=leeway_s, now=NOW)


def rejected(c: dict[str, Any], leeway_s: float = 60) -> str:
    with pytest.raises(InvalidToken) as info:
        check(c, leeway_s)
    return info.value.description


# -- check_claims ------------------------------------------------------------------------------


def test_valid_claims() -> None:
    tc = check(claims(client_id="c1", jti="j1", nbf=NOW - 5))
    assert tc.issuer == ISS
    assert tc.subject == "alice"
    assert tc.audience == (AUD,)
    assert tc.expires_at == NOW + 300
    assert tc.not_before == NOW - 5
    assert tc.issued_at == NOW - 10
    assert tc.scopes == {"mcp:tools", "mcp:read"}
    assert (tc.client_id, tc.token_id) == ("c1", "j1")
    assert tc.raw["sub"] == "alice"


def test_expired() -> None:
    assert rejected(claims(exp=NOW - 61)) == "token expired"
    assert rejected(claims(exp=NOW - 60)) == "token expired"  # exp is exclusive: RFC 7519 §4.1.4


def test_expired_within_leeway() -> None:
    assert check(claims(exp=NOW - 59)).expires_at == NOW - 59
    assert rejected(claims(exp=NOW - 1), leeway_s=0) == "token expired"


def test_not_before() -> None:
    assert rejected(claims(nbf=NOW + 61)) == "token not yet valid"
    check(claims(nbf=NOW + 60))


def test_issued_in_the_future() -> None:
    assert rejected(claims(iat=NOW + 61)) == "token issued in the future"
    check(claims(iat=NOW + 59))


def test_issuer_exact_match() -> None:
    assert rejected(claims(iss=ISS + "/")) == "wrong issuer"
    assert rejected(claims(iss=ISS.upper())) == "wrong issuer"
    assert rejected(claims(iss=["x"])) == "wrong issuer"


def test_audience() -> None:
    assert check(claims(aud=["other", AUD])).audience == ("other", AUD)
    assert rejected(claims(aud="other")) == "token audience does not include this resource"
    assert rejected(claims(aud=["a", "b"])) == "token audience does not include this resource"
    assert rejected(claims(aud=[])) == "token audience does not include this resource"
    assert rejected(claims(aud=[AUD, 3])) == "token audience does not include this resource"


@pytest.mark.parametrize("name", ["iss", "sub", "exp", "aud"])
def test_required_claims(name: str) -> None:
    assert rejected(claims(**{name: None})) == f"missing claim: {name}"


def test_bad_types() -> None:
    assert rejected(claims(exp="tomorrow")) == "exp must be a NumericDate"
    assert rejected(claims(exp=True)) == "exp must be a NumericDate"
    assert rejected(claims(exp=math.nan)) == "exp must be a NumericDate"
    assert rejected(claims(sub="")) == "sub must be a non-empty string"
    assert rejected(claims(sub=42)) == "sub must be a non-empty string"
    assert rejected(claims(nbf="x")) == "nbf must be a NumericDate"
    assert rejected(claims(iat=[1])) == "iat must be a NumericDate"
    assert rejected(claims(jti=5)) == "invalid claim: jti"


def test_huge_numeric_dates_do_not_crash() -> None:
    assert check(claims(exp=10**400)).expires_at == 10**400


def test_wildcard_scope_is_read_in_one_place() -> None:
    assert enforced_scopes(frozenset({"*"})) is None
    assert enforced_scopes(frozenset({"*", "a"})) is None
    assert enforced_scopes(frozenset({"a"})) == {"a"}
    assert enforced_scopes(frozenset()) == frozenset()


@pytest.mark.parametrize(
    ("granted", "needed", "ok"),
    [
        (None, "admin", True),  # authorization off
        (frozenset(), None, True),
        (frozenset(), "", True),
        (frozenset(), "admin", False),
        (frozenset({"read"}), "admin", False),
        (frozenset({"admin"}), "admin", True),
        (frozenset({"*"}), "admin", True),  # the local token's wildcard
    ],
)
def test_has_scope(granted: frozenset[str] | None, needed: str | None, ok: bool) -> None:
    assert has_scope(granted, needed) is ok
    # A session given the raw grant and one given enforced_scopes() decide the same.
    normalised = None if granted is None else enforced_scopes(granted)
    assert has_scope(normalised, needed) is ok


def test_scopes() -> None:
    assert parse_scopes({"scope": " a  b "}) == {"a", "b"}
    assert parse_scopes({"scp": "User.Read Mail.Send"}) == {"User.Read", "Mail.Send"}  # Entra
    assert parse_scopes({"scp": ["a", "b"]}) == {"a", "b"}  # Okta
    assert parse_scopes({"scope": "a", "scp": ["b"]}) == {"a", "b"}
    assert parse_scopes({}) == frozenset()
    assert rejected(claims(scope=["a"])) == "scope must be a space-separated string"
    assert rejected(claims(scp=[1])) == "scp must be a string or a list of strings"


def test_not_a_mapping() -> None:
    with pytest.raises(InvalidToken):
        check_claims([], issuer=ISS, audience=AUD, leeway_s=0, now=NOW)  # type: ignore[arg-type]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
claim_names = st.sampled_from(["iss", "sub", "aud", "exp", "nbf", "iat", "jti", "scope", "scp"])


@given(
    overrides=st.dictionaries(claim_names | st.text(max_size=10), json_values, max_size=6),
    leeway=st.floats(0, 600),
)
def test_any_claims_give_token_claims_or_invalid_token(
    overrides: dict[str, Any], leeway: float
) -> None:
    try:
        tc = check(claims(**overrides) if overrides else claims(), leeway)
    except InvalidToken as exc:
        assert exc.description
    else:
        assert tc.issuer == ISS
        assert AUD in tc.audience


# -- headers -----------------------------------------------------------------------------------


def header(**overrides: Any) -> dict[str, Any]:
    return {"alg": "RS256", "kid": "k1", "typ": "at+jwt", **overrides}


def header_error(h: dict[str, Any], **kwargs: Any) -> str:
    with pytest.raises(InvalidToken) as info:
        check_header(h, algorithms=ALGS, **kwargs)
    return info.value.description


def test_header_allowed() -> None:
    assert check_header(header(), algorithms=ALGS) == "RS256"
    assert check_header(header(alg="ES256", typ=None), algorithms=ALGS) == "ES256"


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_header_none(alg: str) -> None:
    assert header_error(header(alg=alg)) == "unsigned tokens are not accepted"


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512", "hs256"])
def test_header_hmac_even_if_allowed(alg: str) -> None:
    with pytest.raises(InvalidToken, match="HMAC"):
        check_header(header(alg=alg), algorithms=(*ALGS, alg))


def test_header_alg_outside_allow_list() -> None:
    assert header_error(header(alg="RS512")) == "algorithm RS512 is not allowed"
    assert header_error(header(alg=None)) == "token header has no alg"
    assert header_error(header(alg=["RS256"])) == "token header has no alg"


def test_header_other_members() -> None:
    assert header_error(header(kid=7)) == "kid must be a string"
    assert header_error(header(crit=5)) == "crit must be a list of strings"
    assert header_error(header(b64=False)) == "unencoded payloads are not accepted"
    assert header_error(header(typ="JWT"), require_at_jwt_typ=True) == "token type must be at+jwt"
    assert check_header(header(typ="application/AT+JWT"), algorithms=ALGS, require_at_jwt_typ=True)
    # jku/x5u/jwk are not errors, they are ignored: the key always comes from our own source.
    assert check_header(
        header(jku="https://evil.test/jwks", x5u="https://evil.test/c"), algorithms=ALGS
    )


# -- parsing -----------------------------------------------------------------------------------


def b64(obj: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def test_parse_header() -> None:
    assert parse_header(b64({"alg": "RS256"}) + ".e30.sig") == {"alg": "RS256"}
    for bad in ["", "a", "a.b", "a.b.c.d", "a b.c.d", b64([1]) + ".e30.x", "!!!.e30.x", "e30.e30"]:
        with pytest.raises(InvalidToken):
            parse_header(bad)
    with pytest.raises(InvalidToken, match="too large"):
        parse_header("e" * 5000 + ".e30.x")
    deep = base64.urlsafe_b64encode(b"[" * 3000).decode().rstrip("=")
    with pytest.raises(InvalidToken):
        parse_header(deep + ".e30.x")


def test_parse_claims() -> None:
    assert parse_claims(b'{"a": 1}') == {"a": 1}
    for bad in [b"[]", b"{", b"\xff", b"[" * 100_000]:
        with pytest.raises(InvalidToken):
            parse_claims(bad)


@given(st.text())
def test_parse_header_never_crashes_on_text(garbage: str) -> None:
    with contextlib.suppress(InvalidToken):
        parse_header(garbage)


@given(st.binary(max_size=300), st.text(alphabet="abcXYZ012_-.", max_size=40))
def test_parse_header_never_crashes_on_encoded_garbage(raw: bytes, rest: str) -> None:
    token = base64.urlsafe_b64encode(raw).decode().rstrip("=") + "." + rest
    try:
        h = parse_header(token)
    except InvalidToken:
        return
    with contextlib.suppress(InvalidToken):
        check_header(h, algorithms=ALGS)


# -- challenge ---------------------------------------------------------------------------------


def test_invalid_token_is_an_unauthorized_with_challenge() -> None:
    exc = InvalidToken('bad "alg"\\ \r\nInjected: 1')
    assert isinstance(exc, Unauthorized)
    assert exc.http_status == 401
    assert "\r" not in exc.challenge and "\n" not in exc.challenge
    assert exc.challenge == (
        'Bearer error="invalid_token", error_description="bad \\"alg\\"\\\\ ??Injected: 1"'
    )
    assert exc.headers == [("WWW-Authenticate", exc.challenge)]
    assert invalid_token_challenge("ok") == 'Bearer error="invalid_token", error_description="ok"'


def test_descriptions_are_bounded() -> None:
    assert len(clean_description("x" * 10_000)) <= 120
    assert clean_description("é\x00") == "??"
