"""What a running tool may ask the client for, mid-call: elicitation (a form or a URL for the
user), sampling (a completion from the client's model) and the client's roots.

Each is an ``InputRequest``: the request's method and params as MCP defines them, and the client
capability it needs. How the question travels depends on the revision, not on the tool:

* handshake era (2025-06-18, 2025-11-25; sampling and roots since 2024-11-05): the server sends
  the request to the client over the call's stream and awaits the client's response
  (``protocol.session.McpSession.ask_client``);
* 2026-07-28 (multi round-trip requests): the server answers the call with
  ``resultType: "input_required"``, the requests and a ``requestState``; the client retries
  with ``inputResponses`` (``protocol.roundtrip``). ``InputRequired`` carries the questions out
  of the tool.

Pure data and rules: no I/O here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from datapulse.core.mcp import version_at_least
from datapulse.errors import InvalidParams, ToolError


class BadAnswer(InvalidParams):
    """The client's answer to a question is not an answer of that kind: a protocol error
    (-32602) for the request, not a failure of the tool that asked."""

    error = "bad_input_response"


@dataclass(frozen=True)
class Elicitation:
    """``elicitation/create``: ask the user. Form mode takes a flat JSON Schema of primitive
    fields (``requested_schema``); URL mode sends the user to ``url`` (2025-11-25 on) and the
    answer only says whether they went."""

    message: str
    requested_schema: Mapping[str, Any] | None = None
    mode: Literal["form", "url"] = "form"
    url: str | None = None
    elicitation_id: str | None = None

    method = "elicitation/create"
    capability = "elicitation"

    def params(self, version: str | None = None) -> dict[str, Any]:
        """The request's params; ``version``: the session's revision, which decides whether
        ``mode`` is on the wire (it arrived in 2025-11-25; None: the newest)."""
        if self.mode == "url":
            if not self.url or not self.elicitation_id:
                raise ValueError("a URL elicitation needs url and elicitation_id")
            return {
                "mode": "url",
                "message": self.message,
                "url": self.url,
                "elicitationId": self.elicitation_id,
            }
        schema = dict(self.requested_schema or {"type": "object", "properties": {}})
        params = {"message": self.message, "requestedSchema": schema}
        if version is None or version_at_least(version, "2025-11-25"):
            params = {"mode": "form", **params}
        return params

    def supported_by(self, capabilities: Mapping[str, Any]) -> bool:
        declared = capabilities.get("elicitation")
        if not isinstance(declared, dict):
            return False
        if self.mode == "url":
            return "url" in declared
        # An empty object is form mode only (2025-11-25 backwards compatibility).
        return not declared or "form" in declared


@dataclass(frozen=True)
class Sampling:
    """``sampling/createMessage``: a completion from the client's model. ``messages`` are MCP
    sampling messages; plain strings become user text messages."""

    messages: Sequence[str | Mapping[str, Any]]
    max_tokens: int = 1000
    system_prompt: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    """Further params as MCP names them (``modelPreferences``, ``temperature``...)."""

    method = "sampling/createMessage"
    capability = "sampling"

    def params(self, version: str | None = None) -> dict[str, Any]:
        messages = [
            {"role": "user", "content": {"type": "text", "text": m}} if isinstance(m, str) else m
            for m in self.messages
        ]
        params: dict[str, Any] = {**self.extra, "messages": messages, "maxTokens": self.max_tokens}
        if self.system_prompt is not None:
            params["systemPrompt"] = self.system_prompt
        return params

    def supported_by(self, capabilities: Mapping[str, Any]) -> bool:
        return isinstance(capabilities.get("sampling"), dict)


@dataclass(frozen=True)
class ListRoots:
    """``roots/list``: the client's roots (directories or other URIs it exposes)."""

    method = "roots/list"
    capability = "roots"

    def params(self, version: str | None = None) -> dict[str, Any]:
        return {}

    def supported_by(self, capabilities: Mapping[str, Any]) -> bool:
        return isinstance(capabilities.get("roots"), dict)


InputRequest = Elicitation | Sampling | ListRoots


def wire_request(request: InputRequest) -> dict[str, Any]:
    """The request as an ``inputRequests`` entry (2026-07-28) or a JSON-RPC request's body."""
    return {"method": request.method, "params": request.params()}


@dataclass(frozen=True)
class ElicitResult:
    """The user's answer: ``accept`` (with ``content``), ``decline`` or ``cancel``."""

    action: Literal["accept", "decline", "cancel"]
    content: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_wire(cls, value: object) -> ElicitResult:
        if not isinstance(value, dict) or value.get("action") not in (
            "accept",
            "decline",
            "cancel",
        ):
            raise BadAnswer("an elicitation answer needs action accept, decline or cancel")
        content = value.get("content")
        if content is not None and not isinstance(content, dict):
            raise BadAnswer("an elicitation answer's content must be an object")
        return cls(value["action"], content or {})


def check_answer(request: InputRequest, value: object) -> Any:
    """The client's answer to ``request`` in the form a tool receives it: an ``ElicitResult``,
    the sampling result (a dict with ``role``, ``content``, ``model``...), or the list of roots.
    BadAnswer (-32602) when it is not an answer of that kind."""
    if isinstance(request, Elicitation):
        return ElicitResult.from_wire(value)
    if isinstance(request, Sampling):
        if not isinstance(value, dict) or not isinstance(value.get("content"), dict | list):
            raise BadAnswer("a sampling answer needs content")
        return value
    if not isinstance(value, dict) or not isinstance(value.get("roots"), list):
        raise BadAnswer("a roots/list answer needs a roots list")
    return value["roots"]


class InputRequired(BaseException):
    """Raised out of a tool on 2026-07-28 when it asked for input the client has not given yet.

    A BaseException so that a tool's own ``except Exception`` does not swallow it: the call
    answers ``input_required`` with these requests, and the tool runs again on the retry.
    """

    def __init__(self, requests: Mapping[str, InputRequest]) -> None:
        super().__init__(f"input required: {', '.join(requests)}")
        self.requests = dict(requests)


class ClientDeclined(ToolError):
    """The client answered a request for input with a JSON-RPC error."""
