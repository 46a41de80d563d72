"""``RoundTrips``: the server's half of 2026-07-28 multi round-trip requests.

A tool (or prompt) that asks the client for input on 2026-07-28 does not wait: the call
answers ``resultType: "input_required"`` with the questions and a ``requestState``, and the
client retries the same request with ``inputResponses``. The tool then runs again from the
start; every question it already had answered is answered from what was gathered, so it gets
one round further each time (``ToolContext.request_input``).

Between rounds the answers gathered so far wait in the session store under a nonce
(``put_state``/``take_state``: any instance can continue the call, and each state is redeemed
once, so a captured ``requestState`` cannot be replayed). The ``requestState`` itself is sealed
(``core.request_state``): it names the nonce and binds it to the principal, the method, a
digest of the request's name and arguments, and an expiry.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import orjson

from datapulse.core import request_state
from datapulse.core.inputs import InputRequest, wire_request
from datapulse.errors import InvalidParams

MAX_KEPT_BYTES = 256 * 1024
"""The answers one state may keep between rounds (a form's or a completion's worth, many times)."""

PutState = Callable[[str, dict[str, Any], float], Awaitable[None]]
TakeState = Callable[[str], Awaitable[dict[str, Any] | None]]


class RoundTrips:
    def __init__(
        self, keys: Sequence[bytes], put_state: PutState, take_state: TakeState, ttl_s: float
    ) -> None:
        if not keys:
            raise ValueError("RoundTrips needs at least one key")
        self.keys = list(keys)
        self.put_state = put_state
        self.take_state = take_state
        self.ttl_s = ttl_s

    async def answers(
        self, params: Mapping[str, Any], principal: str | None, method: str, salient: Any
    ) -> dict[str, Any]:
        """What the client has answered so far for this request: the answers kept under its
        ``requestState`` (checked and redeemed) with its new ``inputResponses`` on top."""
        responses = params.get("inputResponses", {})
        if not isinstance(responses, dict):
            raise InvalidParams("inputResponses must be an object")
        state = params.get("requestState")
        if state is None:
            return dict(responses)
        payload = request_state.unseal(state, self.keys)
        nonce = request_state.check_binding(
            payload,
            principal=principal,
            method=method,
            params_digest=request_state.digest(salient),
            now=time.time(),
        )
        kept = await self.take_state(nonce)
        if kept is None:
            raise request_state.BadRequestState(
                "requestState was already used or has expired; start the request again"
            )
        gathered = kept.get("answers", {})
        return {**gathered, **responses}

    async def input_required(
        self,
        requests: Mapping[str, InputRequest],
        answers: Mapping[str, Any],
        principal: str | None,
        method: str,
        salient: Any,
    ) -> dict[str, Any]:
        """The ``input_required`` result asking ``requests``, with a sealed state that keeps
        ``answers`` (those the run used: what a client sends unasked is not kept) for the
        retry. At most ``MAX_KEPT_BYTES`` of them: a state is held for ``ttl_s``."""
        kept = dict(answers)
        if len(orjson.dumps(kept)) > MAX_KEPT_BYTES:
            raise InvalidParams(f"the answers so far exceed {MAX_KEPT_BYTES} bytes")
        nonce = secrets.token_urlsafe(18)
        await self.put_state(nonce, {"answers": kept}, self.ttl_s)
        sealed = request_state.seal(
            {
                "p": principal,
                "m": method,
                "d": request_state.digest(salient),
                "exp": time.time() + self.ttl_s,  # not rounded: it must last ttl_s, not less
                "n": nonce,
            },
            self.keys[0],
        )
        return {
            "resultType": "input_required",
            "inputRequests": {key: wire_request(r) for key, r in requests.items()},
            "requestState": sealed,
        }
