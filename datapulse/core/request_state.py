"""``requestState`` for 2026-07-28 multi round-trip requests: sealed, bound, expiring.

The spec makes ``requestState`` attacker-controlled input that the server MUST integrity-protect
when it matters (it does here: it says which call a retry continues, for whom). A state is
``v1.<payload>.<mac>``: the payload is base64url JSON, the MAC HMAC-SHA256 over ``v1.<payload>``
with the first of the configured keys. Every configured key is tried when opening, so keys can
be rotated: add the new one first, keep the old one until states sealed with it have expired.

The payload binds the state to the principal, the method, a digest of the request's salient
params (the tool's name and arguments) and an expiry; it carries a nonce under which the
server keeps the answers gathered so far (``protocol.roundtrip``), redeemed once.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from typing import Any, Final

import orjson

from datapulse.errors import InvalidParams

VERSION: Final = "v1"
MAX_STATE_CHARS: Final = 4096
"""A sealed state of ours is a few hundred characters; anything longer is refused unread."""


class BadRequestState(InvalidParams):
    """A ``requestState`` that is not ours, was altered, is for another request, or expired."""

    error = "bad_request_state"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def digest(value: Any) -> str:
    """A stable digest of JSON ``value`` (keys sorted), to bind a state to a request's params."""
    canonical = orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    return hashlib.sha256(canonical).hexdigest()[:32]


def seal(payload: Mapping[str, Any], key: bytes) -> str:
    body = f"{VERSION}.{_b64(orjson.dumps(dict(payload)))}"
    mac = hmac.new(key, body.encode("ascii"), hashlib.sha256).digest()
    return f"{body}.{_b64(mac)}"


def unseal(state: object, keys: Sequence[bytes]) -> dict[str, Any]:
    """The payload of a state sealed with one of ``keys``; BadRequestState otherwise."""
    if not isinstance(state, str) or len(state) > MAX_STATE_CHARS:
        raise BadRequestState("requestState is not one of ours")
    version, _, rest = state.partition(".")
    payload_text, _, mac_text = rest.rpartition(".")
    if version != VERSION or not payload_text or not mac_text:
        raise BadRequestState("requestState is not one of ours")
    body = f"{version}.{payload_text}".encode("ascii", "replace")
    try:
        mac = _unb64(mac_text)
    except (binascii.Error, ValueError):
        raise BadRequestState("requestState failed its integrity check") from None
    if not any(
        hmac.compare_digest(mac, hmac.new(key, body, hashlib.sha256).digest()) for key in keys
    ):
        raise BadRequestState("requestState failed its integrity check")
    payload = orjson.loads(_unb64(payload_text))
    if not isinstance(payload, dict):
        raise BadRequestState("requestState is not one of ours")
    return payload


def check_binding(
    payload: Mapping[str, Any],
    *,
    principal: str | None,
    method: str,
    params_digest: str,
    now: float,
) -> str:
    """The state's nonce, if it was sealed for this principal, method and params and has not
    expired; BadRequestState naming what does not match otherwise."""
    if payload.get("p") != principal:
        raise BadRequestState("requestState belongs to another principal")
    if payload.get("m") != method or payload.get("d") != params_digest:
        raise BadRequestState("requestState belongs to another request")
    expires = payload.get("exp")
    if not isinstance(expires, int | float) or expires <= now:
        raise BadRequestState("requestState has expired; start the request again")
    nonce = payload.get("n")
    if not isinstance(nonce, str) or not nonce:
        raise BadRequestState("requestState is not one of ours")
    return nonce
