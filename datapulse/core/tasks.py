"""Tasks: the wire shapes and rules of durable tool calls, per revision (no I/O here).

Two revisions define tasks, with different wires for the same idea (a ``tools/call`` answered at
once with a handle, its result fetched later):

* **2025-11-25** (handshake era, core spec): the client asks with ``params.task`` (``{"ttl":
  ms}``) on a tool whose ``tools/list`` entry says ``execution.taskSupport`` is ``optional`` or
  ``required``; the answer is ``CreateTaskResult`` = ``{"task": Task}``. Methods ``tasks/get``,
  ``tasks/result`` (blocks until terminal, then the tool's result or its JSON-RPC error),
  ``tasks/list`` and ``tasks/cancel``; ``notifications/tasks/status``. Field names ``ttl`` and
  ``pollInterval``; a tool result with ``isError`` makes the task ``failed``.
* **2026-07-28** (the ``io.modelcontextprotocol/tasks`` extension): the server decides, for a
  client whose request ``_meta`` declares the extension; ``CreateTaskResult`` is flat (``Result &
  Task`` with ``resultType: "task"``). Methods ``tasks/get`` (a ``DetailedTask``: the result, the
  error or the outstanding ``inputRequests`` inlined), ``tasks/update`` (``inputResponses``) and
  ``tasks/cancel`` (both an empty ack); ``notifications/tasks`` on ``subscriptions/listen``.
  Field names ``ttlMs`` and ``pollIntervalMs``; ``failed`` is only for JSON-RPC errors, a tool
  result with ``isError`` is ``completed``.

``TaskState`` is the one record both wires are rendered from: it is stored as it is (JSON-safe,
``to_dict``/``from_dict``), and ``status`` is kept in the 2026 sense (``failed`` = a JSON-RPC
error); the 2025-11-25 view turns a completed ``isError`` result into ``failed`` when rendering.
``datapulse.protocol.tasks`` runs the tasks and serves the methods.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from datapulse.core.mcp import MissingClientCapability, version_at_least
from datapulse.errors import DatapulseError, InvalidParams, quote

TASKS_EXTENSION: Final = "io.modelcontextprotocol/tasks"
META_RELATED_TASK: Final = "io.modelcontextprotocol/related-task"
HANDSHAKE_TASKS_VERSION: Final = "2025-11-25"
"""The handshake revision that has tasks (the only one: 2026-07-28 moved them to an extension)."""

Flavour = Literal["2025-11-25", "2026-07-28"]
HANDSHAKE: Final[Flavour] = "2025-11-25"
MODERN: Final[Flavour] = "2026-07-28"

TaskSupport = Literal["forbidden", "optional", "required"]
TASK_SUPPORT: Final = ("forbidden", "optional", "required")

WORKING: Final = "working"
INPUT_REQUIRED: Final = "input_required"
COMPLETED: Final = "completed"
FAILED: Final = "failed"
CANCELLED: Final = "cancelled"
STATUSES: Final = (WORKING, INPUT_REQUIRED, COMPLETED, FAILED, CANCELLED)
TERMINAL: Final = frozenset({COMPLETED, FAILED, CANCELLED})

MAX_TASK_ID_CHARS: Final = 128
"""Ours are 32 characters; a longer ``taskId`` is refused unread (-32602)."""

CANCELLED_MESSAGE: Final = "The task was cancelled by request."


# -- declarations -----------------------------------------------------------------------------


def task_support_of(value: bool | str) -> TaskSupport:
    """What ``@tool(task=...)`` means: True is ``optional`` (may run as a task), False is
    ``forbidden``; the three spec values are taken as they are. ValueError otherwise."""
    if value is True:
        return "optional"
    if value is False:
        return "forbidden"
    for support in ("forbidden", "optional", "required"):
        if value == support:
            return support
    raise ValueError(f"task= must be a bool or one of {', '.join(TASK_SUPPORT)}; got {value!r}")


def execution_entry(task_support: str) -> dict[str, Any] | None:
    """The ``execution`` member of a tool's ``tools/list`` entry (None: nothing to say, which
    means ``forbidden``)."""
    if task_support == "forbidden":
        return None
    return {"taskSupport": task_support}


def entry_for_version(
    entry: Mapping[str, Any], task_support: str, version: str | None, *, modern: bool
) -> dict[str, Any]:
    """``entry`` (a ``tools/list`` entry) with ``execution`` as ``version`` defines it: only
    2025-11-25 has the field (2026-07-28 tools do not declare task support: the server decides)."""
    out = dict(entry)
    out.pop("execution", None)
    execution = execution_entry(task_support)
    if execution is not None and not modern and version_at_least(version, HANDSHAKE_TASKS_VERSION):
        out["execution"] = execution
    return out


def handshake_capability() -> dict[str, Any]:
    """``capabilities.tasks`` of a 2025-11-25 ``initialize`` result: everything we serve."""
    return {"list": {}, "cancel": {}, "requests": {"tools": {"call": {}}}}


def server_capabilities(version: str | None, *, modern: bool) -> dict[str, Any]:
    """What to merge into the server's capabilities at ``version``: ``tasks`` at 2025-11-25,
    ``extensions[io.modelcontextprotocol/tasks]`` on 2026-07-28 (never the v1 ``tasks`` slot
    there), nothing before 2025-11-25."""
    if modern:
        return {"extensions": {TASKS_EXTENSION: {}}}
    if version_at_least(version, HANDSHAKE_TASKS_VERSION):
        return {"tasks": handshake_capability()}
    return {}


def merge_capabilities(capabilities: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``capabilities`` with ``extra`` merged in, one level deep (``extensions`` may already
    hold other extensions); returns ``capabilities``, changed in place."""
    for key, value in extra.items():
        held = capabilities.get(key)
        if isinstance(held, dict) and isinstance(value, Mapping):
            held.update(value)
        else:
            capabilities[key] = dict(value) if isinstance(value, Mapping) else value
    return capabilities


def client_declares_extension(capabilities: Mapping[str, Any] | None) -> bool:
    """Whether a request's client capabilities declare the tasks extension (2026-07-28)."""
    extensions = (capabilities or {}).get("extensions")
    return isinstance(extensions, Mapping) and isinstance(extensions.get(TASKS_EXTENSION), Mapping)


class MissingTasksExtension(MissingClientCapability):
    """-32021 on 2026-07-28: a task method, or a tool that only runs as a task, from a request
    whose ``_meta`` does not declare ``io.modelcontextprotocol/tasks``."""

    def __init__(self, detail: str = "") -> None:
        # Not MissingClientCapability's own __init__: the capability is nested under extensions.
        DatapulseError.__init__(
            self,
            detail or f"this request needs the client capability extensions.{TASKS_EXTENSION}",
            data={"requiredCapabilities": {"extensions": {TASKS_EXTENSION: {}}}},
        )


# -- request params ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskRequest:
    """2025-11-25 ``params.task``: the client asks for a task, maybe with a TTL (ms)."""

    ttl_ms: int | None = None


def parse_task_request(params: Mapping[str, Any]) -> TaskRequest | None:
    """``params.task`` of a 2025-11-25 request: None when absent (or null), -32602 when it is
    not an object or its ``ttl`` is not a non-negative integer."""
    task = params.get("task")
    if task is None:
        return None
    if not isinstance(task, dict):
        raise InvalidParams("task must be an object")
    ttl = task.get("ttl")
    if ttl is None:
        return TaskRequest()
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or ttl < 0 or ttl != int(ttl):
        raise InvalidParams("task.ttl must be a non-negative integer (milliseconds)")
    return TaskRequest(int(ttl))


def parse_task_id(params: Mapping[str, Any]) -> str:
    """``params.taskId``: -32602 unless it is a non-empty string of a sane length."""
    task_id = params.get("taskId")
    if not isinstance(task_id, str) or not task_id:
        raise InvalidParams("params.taskId must be a non-empty string")
    if len(task_id) > MAX_TASK_ID_CHARS:
        raise InvalidParams(f"unknown task: {quote(task_id)}")
    return task_id


def clamp_ttl_ms(requested: int | None, default_ms: int, max_ms: int) -> int:
    """The TTL a task gets: what the client asked for (the spec lets us override it), within
    [1 s, ``max_ms``]; ``default_ms`` when it asked for nothing. Never unlimited."""
    if requested is None:
        return min(default_ms, max_ms)
    return min(max(1000, requested), max_ms)


# -- time -------------------------------------------------------------------------------------


def iso8601(epoch_s: float) -> str:
    """``epoch_s`` as an RFC 3339 UTC timestamp with milliseconds: ``2025-11-25T10:30:00.123Z``."""
    whole = int(epoch_s)
    millis = round((epoch_s - whole) * 1000)
    if millis == 1000:
        whole, millis = whole + 1, 0
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{millis:03d}Z"


# -- the record -------------------------------------------------------------------------------


class IllegalTransition(ValueError):
    """A status change the lifecycle forbids (out of a terminal status, or to an unknown one)."""


@dataclass
class TaskState:
    """One task as stored: JSON-safe (``to_dict``), the same for both revisions.

    ``status`` is in the 2026 sense: ``failed`` means ``error`` (a JSON-RPC error object) is
    set; a tool result with ``isError`` is ``completed`` with that ``result``.
    ``input_requests`` are the outstanding requests for client input (key -> ``{"method",
    "params"}``); ``answers`` the responses delivered for them and not yet taken by the tool.
    """

    task_id: str
    tool: str
    created_at: float
    ttl_ms: int
    poll_interval_ms: int
    flavour: str = MODERN
    """The revision the task was created on (for the record; each reader sees its own wire)."""
    status: str = WORKING
    updated_at: float = 0.0
    status_message: str | None = None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    input_requests: dict[str, dict[str, Any]] = field(default_factory=dict)
    answers: dict[str, Any] = field(default_factory=dict)
    declined: dict[str, str] = field(default_factory=dict)
    """Requests the client answered with an error (key -> its message): the tool is told."""
    session_id: str | None = None

    def __post_init__(self) -> None:
        if not self.updated_at:
            self.updated_at = self.created_at

    # -- storage -------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TaskState:
        """Read back what ``to_dict`` wrote; ValueError on an unknown key or a bad value."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown task fields: {', '.join(sorted(unknown))}")
        state = cls(**data)
        if not isinstance(state.task_id, str) or not isinstance(state.tool, str):
            raise ValueError("task_id and tool must be strings")
        if state.status not in STATUSES:
            raise ValueError(f"unknown task status {state.status!r}")
        for name in ("created_at", "updated_at"):
            value = getattr(state, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a number")
        for name in ("ttl_ms", "poll_interval_ms"):
            value = getattr(state, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer")
        for name in ("result", "error"):
            if not isinstance(getattr(state, name), dict | None):
                raise ValueError(f"{name} must be an object or null")
        for name in ("input_requests", "answers", "declined"):
            if not isinstance(getattr(state, name), dict):
                raise ValueError(f"{name} must be an object")
        return state

    # -- the lifecycle ----------------------------------------------------------------------------

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def _move(self, status: str, now: float, message: str | None) -> None:
        if self.terminal:
            raise IllegalTransition(f"task {self.task_id} is {self.status} already")
        if status not in STATUSES:
            raise IllegalTransition(f"unknown task status {status!r}")
        self.status = status
        self.status_message = message
        self.updated_at = max(now, self.updated_at)

    def complete(self, result: Mapping[str, Any], now: float) -> None:
        """The tool returned ``result`` (a ``CallToolResult``, maybe with ``isError``)."""
        self._move(COMPLETED, now, _error_text(result) if result.get("isError") else None)
        self.result = dict(result)
        self._clear_inputs()

    def fail(self, error: Mapping[str, Any], now: float) -> None:
        """The call ended in a JSON-RPC error (``error``: its ``code``, ``message``, ``data``)."""
        self._move(FAILED, now, str(error.get("message") or "the task failed"))
        self.error = dict(error)
        self._clear_inputs()

    def cancel(self, now: float, message: str = CANCELLED_MESSAGE) -> None:
        self._move(CANCELLED, now, message)
        self._clear_inputs()

    def ask(self, requests: Mapping[str, Mapping[str, Any]], now: float) -> None:
        """The tool waits for the client to answer ``requests`` (key -> ``{method, params}``)."""
        self.input_requests.update({k: dict(v) for k, v in requests.items()})
        self._move(INPUT_REQUIRED, now, None)

    def answer(self, responses: Mapping[str, Any], now: float) -> list[str]:
        """Deliver the client's responses: only keys still outstanding count (the rest are
        ignored, as the spec says); the task is ``working`` again once none is outstanding.
        Returns the keys taken."""
        if self.terminal:
            return []
        taken = [key for key in responses if key in self.input_requests]
        for key in taken:
            self.answers[key] = responses[key]
            del self.input_requests[key]
        if taken and not self.input_requests and self.status == INPUT_REQUIRED:
            self._move(WORKING, now, None)
        elif taken:
            self.updated_at = max(now, self.updated_at)
        return taken

    def decline(self, key: str, message: str, now: float) -> None:
        """The client answered the request ``key`` with an error."""
        if key in self.input_requests:
            del self.input_requests[key]
            self.declined[key] = message
            if not self.input_requests and self.status == INPUT_REQUIRED:
                self._move(WORKING, now, None)

    def take(self, keys: Iterable[str]) -> tuple[dict[str, Any], dict[str, str]]:
        """Remove and return the answers (and refusals) delivered for ``keys``."""
        answers = {k: self.answers.pop(k) for k in keys if k in self.answers}
        declined = {k: self.declined.pop(k) for k in keys if k in self.declined}
        return answers, declined

    def _clear_inputs(self) -> None:
        self.input_requests.clear()
        self.answers.clear()
        self.declined.clear()


def _error_text(result: Mapping[str, Any]) -> str:
    content = result.get("content")
    if isinstance(content, list):
        for block in content:
            if isinstance(block, dict) and block.get("type") == "text":
                return f"Tool execution failed: {block.get('text', '')}"[:1000]
    return "Tool execution failed"


def error_object(exc: DatapulseError) -> dict[str, Any]:
    """A DatapulseError as the JSON-RPC error object a failed task keeps (and ``tasks/result``
    answers again): ``code``, ``message``, and ``data`` when the error has any."""
    error: dict[str, Any] = {"code": exc.jsonrpc_code, "message": str(exc)}
    data = exc.extra.get("data")
    if data is not None:
        error["data"] = data
    return error


class StoredError(DatapulseError):
    """A failed task's JSON-RPC error, raised again by 2025-11-25 ``tasks/result`` so that the
    client sees exactly what the call would have answered."""

    def __init__(self, error: Mapping[str, Any]) -> None:
        super().__init__(str(error.get("message") or "internal error"))
        code = error.get("code")
        self.jsonrpc_code = code if isinstance(code, int) and not isinstance(code, bool) else -32603
        if error.get("data") is not None:
            self.extra = {"data": error["data"]}


# -- rendering --------------------------------------------------------------------------------


def status_for(state: TaskState, flavour: str) -> str:
    """The status as ``flavour`` names it: 2025-11-25 calls an ``isError`` result ``failed``."""
    if (
        flavour == HANDSHAKE
        and state.status == COMPLETED
        and isinstance(state.result, dict)
        and state.result.get("isError") is True
    ):
        return FAILED
    return state.status


def task_wire(state: TaskState, flavour: str) -> dict[str, Any]:
    """The ``Task`` object: the fields both revisions share, under ``flavour``'s names."""
    wire: dict[str, Any] = {"taskId": state.task_id, "status": status_for(state, flavour)}
    if state.status_message:
        wire["statusMessage"] = state.status_message
    wire["createdAt"] = iso8601(state.created_at)
    wire["lastUpdatedAt"] = iso8601(state.updated_at)
    if flavour == HANDSHAKE:
        wire["ttl"] = state.ttl_ms
        wire["pollInterval"] = state.poll_interval_ms
    else:
        wire["ttlMs"] = state.ttl_ms
        wire["pollIntervalMs"] = state.poll_interval_ms
    return wire


def create_task_result(state: TaskState, flavour: str) -> dict[str, Any]:
    """The answer to a ``tools/call`` that became a task."""
    if flavour == HANDSHAKE:
        return {"task": task_wire(state, flavour)}
    return {"resultType": "task", **task_wire(state, flavour)}


def detailed_task(state: TaskState) -> dict[str, Any]:
    """2026-07-28 ``DetailedTask``: the task with what its status carries inlined (the tool's
    result, the JSON-RPC error, or the outstanding input requests). The inlined result carries
    no related-task ``_meta``: the task id is right there."""
    wire = task_wire(state, MODERN)
    if state.status == INPUT_REQUIRED:
        wire["inputRequests"] = {k: dict(v) for k, v in state.input_requests.items()}
    elif state.status == COMPLETED and state.result is not None:
        result = dict(state.result)
        meta = result.get("_meta")
        if isinstance(meta, dict) and META_RELATED_TASK in meta:
            meta = {k: v for k, v in meta.items() if k != META_RELATED_TASK}
            if meta:
                result["_meta"] = meta
            else:
                del result["_meta"]
        wire["result"] = result
    elif state.status == FAILED and state.error is not None:
        wire["error"] = dict(state.error)
    return wire


def get_task_result(state: TaskState, flavour: str) -> dict[str, Any]:
    """``tasks/get``: the Task (2025-11-25) or the DetailedTask (2026-07-28)."""
    return task_wire(state, flavour) if flavour == HANDSHAKE else detailed_task(state)


def related_task_meta(task_id: str) -> dict[str, Any]:
    return {META_RELATED_TASK: {"taskId": task_id}}


def payload_result(state: TaskState) -> dict[str, Any]:
    """2025-11-25 ``tasks/result`` of a task that ended with a result: that result, with the
    related-task ``_meta`` it MUST carry. Raises ``StoredError`` for a task that ended in a
    JSON-RPC error, InvalidParams for a cancelled one (it has no result), ValueError for a task
    that is not terminal (the caller waits first)."""
    if state.status == FAILED:
        raise StoredError(state.error or {"code": -32603, "message": "internal error"})
    if state.status == CANCELLED:
        raise InvalidParams(f"task {state.task_id} was cancelled; it has no result")
    if state.status != COMPLETED or state.result is None:
        raise ValueError(f"task {state.task_id} is {state.status}")
    result = dict(state.result)
    meta = result.get("_meta")
    result["_meta"] = {
        **(meta if isinstance(meta, dict) else {}),
        **related_task_meta(state.task_id),
    }
    return result


def status_notification(state: TaskState, flavour: str) -> tuple[str, dict[str, Any]]:
    """The status notification's method and params: ``notifications/tasks/status`` with the
    Task (2025-11-25), ``notifications/tasks`` with the DetailedTask (2026-07-28). Neither
    carries related-task ``_meta`` (the task id is in the params)."""
    if flavour == HANDSHAKE:
        return "notifications/tasks/status", task_wire(state, HANDSHAKE)
    return "notifications/tasks", detailed_task(state)


# -- tasks/list (2025-11-25) -------------------------------------------------------------------

_CURSOR_PREFIX: Final = "dpt1:"


def encode_cursor(state: TaskState) -> str:
    """A cursor naming the position after ``state``: its creation time and id, so that tasks
    expiring meanwhile do not shift the pages (an offset would)."""
    text = f"{_CURSOR_PREFIX}{round(state.created_at * 1000)}:{state.task_id}"
    return base64.urlsafe_b64encode(text.encode()).decode("ascii")


def decode_cursor(cursor: object) -> tuple[int, str]:
    if not isinstance(cursor, str) or len(cursor) > 4 * MAX_TASK_ID_CHARS:
        raise InvalidParams("invalid cursor")
    try:
        text = base64.urlsafe_b64decode(cursor.encode("ascii")).decode("ascii")
    except (binascii.Error, UnicodeError, ValueError):
        raise InvalidParams("invalid cursor") from None
    body = text.removeprefix(_CURSOR_PREFIX)
    millis, sep, task_id = body.partition(":")
    if body == text or not sep or not task_id or not millis.isdigit() or len(millis) > 18:
        raise InvalidParams("invalid cursor")
    return int(millis), task_id


def order_key(state: TaskState) -> tuple[int, str]:
    return round(state.created_at * 1000), state.task_id


def list_result(states: Sequence[TaskState], cursor: object, page_size: int) -> dict[str, Any]:
    """``tasks/list``: one page of ``states`` (oldest first) after ``cursor``."""
    if page_size < 1:
        raise ValueError("page_size must be at least 1")
    ordered = sorted(states, key=order_key)
    if cursor is not None:
        after = decode_cursor(cursor)
        ordered = [s for s in ordered if order_key(s) > after]
    page = ordered[:page_size]
    result: dict[str, Any] = {"tasks": [task_wire(s, HANDSHAKE) for s in page]}
    if len(ordered) > page_size:
        result["nextCursor"] = encode_cursor(page[-1])
    return result
