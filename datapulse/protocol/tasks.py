"""Durable tasks: ``tools/call`` answered with a handle, the tool running on in the background.

``TaskRunner`` owns a nursery (started in ``Server.serve``) that outlives every HTTP request:
a task's tool runs there, so its result is kept after the request's connection is gone. The
record lives in the ``SessionStore`` (``create_task`` ... ``save_task``), keyed by principal, with
a TTL from creation and a per-principal bound; this process keeps only what is live here (the
cancel scope of a running tool, the events that wake a waiter). The wire shapes are
``core.tasks``'.

How a call becomes a task (``methods.call_tool``)::

    if d.tasks is not None and d.tasks.wants_task(session, call, tool):
        return await d.tasks.start(session, call, tool, arguments, run)

``wants_task`` applies each revision's rules (raising -32601 / -32021 where the spec says so);
``start`` writes the record (it is readable before the ``CreateTaskResult`` goes out) and runs
``run(handle)`` in the runner's nursery. ``run`` is the coroutine function that runs the tool
and returns the ``tools/call`` result dict; ``handle.input_sink(inline)`` is the
``ToolContext.input_sink`` a task's tool asks the client through: ``input_required`` until
``tasks/update`` answers (2026-07-28), or a request over the client's ``tasks/result`` call
(2025-11-25, ``ask_over_stream``). With ``defer_s`` (2026-07-28) the tool runs first and the
call becomes a task only when it calls ``handle.detach()`` (or runs past ``defer_s``): a tool
can gather input over the round trip (``input_required``) before it is a task.

Every method handler reads the record through the requester's principal: another principal's
task answers exactly like a missing one (-32602), and ``tasks/list`` lists only its own.
Cancellation (``tasks/cancel``) writes ``cancelled`` first (it then stays cancelled whatever the
tool does) and cancels the tool's scope here; a task running on another instance notices within
``watch_interval_s`` (it re-reads its record). A task whose TTL passes is stopped: nobody could
read its result.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import orjson
import trio

from datapulse.core import tasks as wire
from datapulse.core.inputs import ClientDeclined, InputRequest, InputRequired, wire_request
from datapulse.core.jsonrpc import MethodNotFound
from datapulse.core.tasks import HANDSHAKE, MODERN, TaskState
from datapulse.errors import (
    DatapulseError,
    InvalidParams,
    ServiceUnavailable,
    ToolError,
    TooManyRequests,
    quote,
)
from datapulse.metrics import Metrics
from datapulse.protocol.call import Call
from datapulse.protocol.session import McpSession
from datapulse.store.base import SessionStore, TaskExists, TaskLimitReached

log = logging.getLogger("datapulse.tasks")

DEFAULT_TTL_S: Final = 3600.0
MAX_TTL_S: Final = 86_400.0
MAX_TASKS_PER_PRINCIPAL: Final = 100
POLL_INTERVAL_MS: Final = 1000
WATCH_INTERVAL_S: Final = 1.0
WRITE_TIMEOUT_S: Final = 10.0
DEFAULT_INPUT_TIMEOUT_S: Final = 300.0
_SAVE_ATTEMPTS: Final = 16
_SUBSCRIBER_BUFFER: Final = 64


class ToolLike(Protocol):
    """What the runner reads of a ``tools.registry.Tool``: its name and ``task_support``."""

    @property
    def name(self) -> str: ...


ClientAsker = Callable[[McpSession, Call, str, dict[str, Any]], Awaitable[Any]]
"""2025-11-25: send one request (``method``, ``params``; the params' ``_meta`` already carries
the related-task key) to the client over the ``tasks/result`` call and return its result;
raise ``ToolError`` (``ClientDeclined``) when the client refuses or does not answer."""


@dataclass(frozen=True)
class _Relayed:
    """A stored ``inputRequests`` entry in the shape ``McpSession.ask_client`` sends."""

    method: str
    body: dict[str, Any]

    def params(self, version: str | None = None) -> dict[str, Any]:
        return dict(self.body)


async def ask_over_stream(
    session: McpSession, call: Call, method: str, params: dict[str, Any]
) -> Any:
    """The default ``ClientAsker``: ``McpSession.ask_client`` over the ``tasks/result`` call,
    bounded by the dispatcher's ``input_timeout_s``."""
    timeout = getattr(session.dispatcher, "input_timeout_s", DEFAULT_INPUT_TIMEOUT_S)
    return await session.ask_client(call, _Relayed(method, params), timeout)  # type: ignore[arg-type]


StatusHook = Callable[[str, TaskState], None]
"""Told ``(principal, state)`` after each status change made here (never awaits: a publisher
appends to a log, e.g. the session's GET stream for ``notifications/tasks/status``)."""


def principal_key(session: McpSession) -> str:
    """Whose tasks these are: the session's principal (every datapulse endpoint authenticates);
    "" only for an embedding without one, where task ids are bearer secrets."""
    return session.principal_id or ""


def new_task_id() -> str:
    """192 random bits: unguessable even without the principal binding."""
    return secrets.token_urlsafe(24)


def flavour_of(session: McpSession) -> str:
    return MODERN if session.modern else HANDSHAKE


def json_safe(result: Mapping[str, Any]) -> dict[str, Any]:
    """``result`` as the JSON the store keeps (what the wire would have carried); TypeError
    when it is not JSON."""
    value = orjson.loads(orjson.dumps(result, option=orjson.OPT_NON_STR_KEYS))
    if not isinstance(value, dict):
        raise TypeError("a task result must be an object")
    return value


@dataclass(eq=False)
class _Live:
    """A task this process runs: what cancels it and what wakes those waiting on it."""

    runner: TaskRunner
    principal: str
    state: TaskState
    """The record as created (``create_task``); later changes are read from the store."""
    tool: str
    flavour: str
    scope: trio.CancelScope | None = None
    cancel_requested: bool = False
    done: trio.Event = field(default_factory=trio.Event)
    changed: trio.Event = field(default_factory=trio.Event)
    used_keys: set[str] = field(default_factory=set)
    created: bool = False
    """Whether the record exists: from the start, or once a deferred call became a task."""
    creating: trio.Event | None = None
    """Set once the record has been written (or could not be); None before anyone tried."""
    settled: trio.Event = field(default_factory=trio.Event)
    """A deferred call has an answer: it became a task, or it ended inline."""
    inline: _Inline | None = None
    """A deferred call's outcome while it is not (yet) a task."""

    @property
    def task_id(self) -> str:
        return self.state.task_id

    def cancel(self) -> None:
        self.cancel_requested = True
        if self.scope is not None:
            self.scope.cancel()

    def poke(self) -> None:
        """Wake everyone waiting for a change of this task (a new event for the next wait)."""
        self.changed.set()
        self.changed = trio.Event()


@dataclass(eq=False)
class _Inline:
    """How a deferred call ended before it became a task: its result or its error."""

    result: dict[str, Any] | None = None
    error: DatapulseError | None = None
    ended: bool = False

    def answer(self) -> dict[str, Any]:
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


class TaskHandle:
    """What ``run`` is given: the task's id, ``ask`` (its tool's ``ToolContext.input_sink``
    once it is a task) and, for a deferred call, ``detach``."""

    def __init__(self, live: _Live) -> None:
        self._live = live

    @property
    def task_id(self) -> str:
        return self._live.task_id

    @property
    def is_task(self) -> bool:
        """Whether the call is a task now (always, unless it was started deferred and has not
        detached yet)."""
        return self._live.created

    async def detach(self) -> None:
        """Become a task now (a deferred call; a no-op for a task): the record is written and
        the request is answered ``CreateTaskResult`` while the tool goes on. A tool that
        gathered input over the 2026 round trip (``input_required``) calls this once it has
        everything (SEP-2663: MRTR exchanges before the task is created)."""
        await self._live.runner._detach(self._live)

    def input_sink(self, inline: InputSink) -> InputSink:
        """The ``ToolContext.input_sink`` for this call: ``inline`` (the request's own way of
        asking) until it is a task, ``ask`` from then on."""

        async def sink(requests: dict[str, InputRequest]) -> dict[str, Any]:
            if self.is_task:
                return await self.ask(requests)
            return await inline(requests)

        return sink

    async def ask(self, requests: dict[str, InputRequest]) -> dict[str, Any]:
        """Ask the client ``requests`` (key -> request) and return its answers by the same
        keys: the task is ``input_required`` (the requests in ``inputRequests``) until every
        one is answered, then ``working`` again."""
        return await self._live.runner._ask(self._live, requests)


Run = Callable[[TaskHandle], Awaitable[dict[str, Any]]]
InputSink = Callable[[dict[str, InputRequest]], Awaitable[dict[str, Any]]]


class TaskRunner:
    """Runs tasks and serves the task methods; one per server, given to the ``Dispatcher``."""

    def __init__(
        self,
        store: SessionStore,
        *,
        metrics: Metrics | None = None,
        default_ttl_s: float = DEFAULT_TTL_S,
        max_ttl_s: float = MAX_TTL_S,
        max_tasks_per_principal: int = MAX_TASKS_PER_PRINCIPAL,
        poll_interval_ms: int = POLL_INTERVAL_MS,
        watch_interval_s: float | None = WATCH_INTERVAL_S,
        write_timeout_s: float = WRITE_TIMEOUT_S,
        client_asker: ClientAsker | None = ask_over_stream,
        on_status: StatusHook | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not 0 < default_ttl_s <= max_ttl_s:
            raise ValueError("need 0 < default_ttl_s <= max_ttl_s")
        if max_tasks_per_principal < 1:
            raise ValueError("max_tasks_per_principal must be at least 1")
        if poll_interval_ms < 1:
            raise ValueError("poll_interval_ms must be at least 1")
        if watch_interval_s is not None and not watch_interval_s > 0:
            raise ValueError("watch_interval_s must be positive (or None: no watching)")
        self.store = store
        self.metrics = metrics
        self.default_ttl_ms = int(default_ttl_s * 1000)
        self.max_ttl_ms = int(max_ttl_s * 1000)
        self.max_tasks_per_principal = max_tasks_per_principal
        self.poll_interval_ms = poll_interval_ms
        self.watch_interval_s = watch_interval_s
        self.write_timeout_s = write_timeout_s
        self.client_asker = client_asker
        self.on_status: list[StatusHook] = [on_status] if on_status is not None else []
        self.clock = clock
        self._nursery: trio.Nursery | None = None
        self._live: dict[str, _Live] = {}
        self._subscribers: dict[str, set[_Subscriber]] = {}

    @property
    def running(self) -> int:
        """How many tasks this process runs now."""
        return len(self._live)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the tasks' nursery until cancelled (``nursery.start(runner.run)``). A task still
        running when it is cancelled is recorded as ``failed`` (the server shut down): no other
        instance can continue a tool's code."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._nursery = None

    # -- when a call becomes a task -------------------------------------------------------------

    def wants_task(self, session: McpSession, call: Call, tool: ToolLike) -> bool:
        """Whether this ``tools/call`` runs as a task, by the rules of the session's revision;
        raises where the call may not run at all:

        * 2026-07-28: a task when the tool allows it (``optional``/``required``) and the
          request's ``_meta`` declares the extension; a ``required`` tool without it is -32021.
          A ``task`` param (the 2025-11-25 hint) is ignored: the server decides.
        * 2025-11-25: a task when ``params.task`` asks for one; -32601 for a task on a
          ``forbidden`` tool and for a ``required`` tool called without one.
        * older revisions have no tasks: ``required`` tools are -32601 there, others run inline.
        """
        support = getattr(tool, "task_support", "forbidden")
        if session.modern:
            if support == "forbidden":
                return False
            capabilities = call.meta.client_capabilities if call.meta is not None else {}
            if wire.client_declares_extension(capabilities):
                return True
            if support == "required":
                raise wire.MissingTasksExtension(
                    f"{tool.name} runs only as a task: declare the client capability"
                    f" extensions.{wire.TASKS_EXTENSION}"
                )
            return False
        if session.protocol_version == wire.HANDSHAKE_TASKS_VERSION:
            requested = wire.parse_task_request(call.params)
            if requested is not None and support == "forbidden":
                raise MethodNotFound(f"{tool.name} does not support task-augmented execution")
            if requested is None and support == "required":
                raise MethodNotFound(f"{tool.name} must be called as a task (params.task)")
            return requested is not None
        if support == "required":
            raise MethodNotFound(
                f"{tool.name} runs only as a task, which protocol version"
                f" {session.protocol_version} does not have"
            )
        return False

    async def start(
        self,
        session: McpSession,
        call: Call,
        tool: ToolLike,
        arguments: dict[str, Any],
        run: Run,
        *,
        defer_s: float | None = None,
    ) -> dict[str, Any]:
        """Create the task (durably: readable before this returns), run ``run(handle)`` in the
        runner's nursery, and return the ``CreateTaskResult`` for the session's revision.
        ``arguments`` are the validated arguments (kept out of the record: ``run`` has them).

        ``defer_s`` (2026-07-28, where the server decides): run the tool first and make it a
        task only when it calls ``handle.detach()`` or is still running after ``defer_s``
        seconds (``math.inf``: only when it detaches). A call that ends before that answers
        inline, as a plain ``tools/call`` would (its result, its ``input_required`` round, or
        its error): the spec's immediate-result shortcut, and MRTR before task creation."""
        nursery = self._nursery
        if nursery is None:
            raise ServiceUnavailable("tasks are not being run (the server is not serving)")
        flavour = flavour_of(session)
        requested = None if session.modern else wire.parse_task_request(call.params)
        ttl_ms = wire.clamp_ttl_ms(
            requested.ttl_ms if requested else None, self.default_ttl_ms, self.max_ttl_ms
        )
        state = TaskState(
            task_id=new_task_id(),
            tool=tool.name,
            created_at=self.clock(),
            ttl_ms=ttl_ms,
            poll_interval_ms=self.poll_interval_ms,
            flavour=flavour,
            session_id=session.session_id,
        )
        live = _Live(self, principal_key(session), state, tool.name, flavour)
        if defer_s is None:
            await self._create(live)
            nursery.start_soon(self._execute, live, run)
            return wire.create_task_result(live.state, flavour)
        live.inline = _Inline()
        nursery.start_soon(self._execute, live, run)
        try:
            with trio.move_on_after(defer_s):
                await live.settled.wait()
            if not live.created and not live.inline.ended:
                await self._detach(live)  # still running: a task from now on
        except BaseException:
            if not live.created:
                live.cancel()  # the tool was this request's, and goes with it
            raise
        if live.created:
            return wire.create_task_result(live.state, flavour)
        return live.inline.answer()

    async def _create(self, live: _Live) -> None:
        """Write the record; TooManyRequests past the principal's bound."""
        state = live.state
        for _ in range(3):
            try:
                await self.store.create_task(
                    live.principal,
                    state.task_id,
                    state.to_dict(),
                    state.ttl_ms / 1000,
                    self.max_tasks_per_principal,
                )
                break
            except TaskExists:
                state.task_id = new_task_id()  # 192 random bits: only a broken RNG gets here
            except TaskLimitReached as exc:
                if self.metrics is not None:
                    self.metrics.rejected("tasks_per_principal")
                raise TooManyRequests(str(exc), retry_after_s=5) from None
        else:
            raise DatapulseError("could not allocate a task id")
        live.created = True
        self._live[state.task_id] = live
        if live.scope is not None:
            live.scope.deadline = trio.current_time() + state.ttl_ms / 1000
        if self.watch_interval_s is not None and self._nursery is not None:
            self._nursery.start_soon(self._watch, live)
        log.info("task %s created (%s, principal %s)", state.task_id, live.tool, live.principal)

    async def _detach(self, live: _Live) -> None:
        """Make a deferred call a task (once; concurrent callers wait for the first)."""
        if live.created:
            return
        if live.creating is not None:
            await live.creating.wait()
            if not live.created:
                raise ServiceUnavailable("the call could not become a task")
            return
        if live.inline is not None and live.inline.ended:
            raise RuntimeError("the call has ended; it cannot become a task")
        live.creating = trio.Event()
        try:
            # The TTL counts from the record's creation, not from the call's.
            live.state.created_at = live.state.updated_at = self.clock()
            await self._create(live)
        finally:
            live.creating.set()
        live.settled.set()

    # -- running ----------------------------------------------------------------------------------

    async def _execute(self, live: _Live, run: Run) -> None:
        started = time.perf_counter()
        outcome = "cancelled"
        result: dict[str, Any] | None = None
        error: DatapulseError | None = None
        final: Callable[[TaskState, float], None] | None = None
        deadline = math.inf
        if live.created:
            deadline = trio.current_time() + live.state.ttl_ms / 1000
        try:
            with trio.CancelScope(deadline=deadline) as scope:
                live.scope = scope
                if live.cancel_requested:
                    scope.cancel()
                try:
                    result = json_safe(await run(TaskHandle(live)))
                except DatapulseError as exc:
                    outcome, error = "protocol_error", exc
                except InputRequired:
                    # The 2026 round trip's way out of a tool; a task asks through its handle.
                    log.error("task %s: the tool asked for input outside its task", live.task_id)
                    outcome, error = "protocol_error", DatapulseError("internal error")
                except Exception:
                    log.exception("task %s (%s) failed", live.task_id, live.tool)
                    outcome, error = "protocol_error", DatapulseError("internal error")
                else:
                    outcome = "error" if result.get("isError") else "ok"
            if result is not None:
                done = result
                final = lambda s, now: s.complete(done, now)  # noqa: E731
            elif error is not None:
                failure = wire.error_object(error)
                final = lambda s, now: s.fail(failure, now)  # noqa: E731
            elif live.cancel_requested:  # our own scope caught it: tasks/cancel
                final = lambda s, now: s.cancel(now)  # noqa: E731
            else:  # ... or the TTL ran out
                final = _failure("the task outlived its ttl and was stopped")
                error = ServiceUnavailable("the call was stopped")
        except trio.Cancelled:
            final = _failure("the server running this task shut down")
            error = ServiceUnavailable("the server is shutting down")
            raise
        finally:
            if final is None:  # a BaseException we do not handle (KeyboardInterrupt...)
                final = _failure("internal error")
            with trio.CancelScope(shield=True), trio.move_on_after(self.write_timeout_s):
                if live.creating is not None:
                    await live.creating.wait()  # becoming a task right now: the task's outcome
                if live.created:
                    try:
                        await self._update(live.principal, live.task_id, final, live)
                    except Exception:
                        log.exception("task %s: its outcome could not be written", live.task_id)
            self._live.pop(live.task_id, None)
            if not live.created and live.inline is not None:
                live.inline.result, live.inline.error = result, error
                if result is None and error is None:
                    live.inline.error = DatapulseError("internal error")
                live.inline.ended = True
                live.settled.set()
            live.done.set()
            live.poke()
            if self.metrics is not None:
                self.metrics.tool_call(live.tool, outcome, time.perf_counter() - started)

    async def _watch(self, live: _Live) -> None:
        """Re-read the record now and then: a ``tasks/cancel`` served by another instance only
        reaches the store, and a record that expired or was deleted means nobody waits."""
        assert self.watch_interval_s is not None
        while not live.done.is_set():
            with trio.move_on_after(self.watch_interval_s):
                await live.done.wait()
                return
            try:
                stored = await self.store.load_task(live.principal, live.task_id)
            except Exception:
                log.warning("task %s: its record could not be read", live.task_id, exc_info=True)
                continue
            if stored is None or stored.data.get("status") == wire.CANCELLED:
                live.cancel()
                return
            live.poke()  # a change another instance made (tasks/update) wakes the waiters

    async def _update(
        self,
        principal: str,
        task_id: str,
        change: Callable[[TaskState, float], Any],
        live: _Live | None = None,
    ) -> TaskState | None:
        """Apply ``change`` to the stored record (compare-and-set, retried on a conflict) and
        tell whoever waits; a terminal record is left as it is (``change`` is not applied: no
        status leaves a terminal one). The state as saved, or None if the task is gone."""
        for _ in range(_SAVE_ATTEMPTS):
            stored = await self.store.load_task(principal, task_id)
            if stored is None:
                return None
            state = TaskState.from_dict(stored.data)
            if state.terminal:
                return state
            before = state.status
            change(state, self.clock())
            if await self.store.save_task(principal, task_id, state.to_dict(), stored.rev):
                live = live or self._live.get(task_id)
                if live is not None:
                    live.poke()
                if state.status != before:
                    self._told(principal, state)
                return state
        raise ServiceUnavailable(f"task {task_id} is changing too fast to update; try again")

    def _told(self, principal: str, state: TaskState) -> None:
        for hook in self.on_status:
            try:
                hook(principal, state)
            except Exception:
                log.exception("a task status hook failed")
        for subscriber in list(self._subscribers.get(state.task_id, ())):
            if subscriber.principal == principal:
                subscriber.offer(state)

    # -- asking the client ----------------------------------------------------------------------

    async def _ask(self, live: _Live, requests: dict[str, InputRequest]) -> dict[str, Any]:
        if live.flavour == HANDSHAKE and self.client_asker is None:
            raise ToolError("this task cannot ask the client for input")
        keys: dict[str, str] = {}  # the tool's key -> the key on the wire, unique in this task
        for key in requests:
            wire_key, n = key, 1
            while wire_key in live.used_keys:
                n += 1
                wire_key = f"{key}.{n}"
            live.used_keys.add(wire_key)
            keys[key] = wire_key
        pending = {keys[k]: wire_request(r) for k, r in requests.items()}
        asked = await self._update(
            live.principal, live.task_id, lambda s, now: s.ask(pending, now), live
        )
        wanted = set(pending)
        answers: dict[str, Any] = {}
        declined: dict[str, str] = {}
        while wanted:
            changed = live.changed
            stored = (
                None if asked is None else await self.store.load_task(live.principal, live.task_id)
            )
            state = None if stored is None else TaskState.from_dict(stored.data)
            if state is None or state.terminal:
                # Gone (expired, deleted) or cancelled meanwhile: nobody will answer.
                live.cancel()
                await trio.sleep_forever()
            assert state is not None
            if wanted & (set(state.answers) | set(state.declined)):
                taken: dict[str, Any] = {}
                refused: dict[str, str] = {}
                await self._update(
                    live.principal, live.task_id, _taker(wanted, taken, refused), live
                )
                answers.update(taken)
                declined.update(refused)
                wanted -= set(taken) | set(refused)
                continue
            with trio.move_on_after(self.poll_interval_ms / 1000):
                await changed.wait()
        if declined:
            key, message = next(iter(declined.items()))
            raise ClientDeclined(f"the client declined {key}: {message}")
        return {key: answers[wire_key] for key, wire_key in keys.items()}

    async def answer(
        self, principal: str, task_id: str, responses: Mapping[str, Any]
    ) -> TaskState | None:
        """Deliver responses to a task's outstanding input requests (``tasks/update``, or the
        2025-11-25 relay); keys not outstanding are ignored. None if the task is gone."""
        return await self._update(principal, task_id, lambda s, now: s.answer(responses, now))

    # -- cancelling and waiting -------------------------------------------------------------

    async def cancel(self, principal: str, task_id: str) -> TaskState | None:
        """Record the task ``cancelled`` (unless it is terminal already) and stop its tool if it
        runs here. The state after, or None if there is no such task of ``principal``."""
        state = await self._update(principal, task_id, lambda s, now: s.cancel(now))
        live = self._live.get(task_id)
        if live is not None and live.principal == principal:
            live.cancel()
        return state

    async def load(self, principal: str, task_id: str) -> TaskState:
        """The principal's task; -32602 when there is none (never stored, expired, or someone
        else's: they read the same)."""
        stored = await self.store.load_task(principal, task_id)
        if stored is None:
            raise InvalidParams(f"Failed to retrieve task: task not found: {quote(task_id)}")
        return TaskState.from_dict(stored.data)

    async def wait_change(self, task_id: str, timeout_s: float) -> None:
        """Until the task changes here, or ``timeout_s`` (a change elsewhere is only seen by
        reading the store again)."""
        live = self._live.get(task_id)
        with trio.move_on_after(timeout_s):
            if live is None:
                await trio.sleep_forever()
            else:
                await live.changed.wait()

    async def wait_terminal(
        self,
        principal: str,
        task_id: str,
        on_input: Callable[[TaskState], Awaitable[None]] | None = None,
    ) -> TaskState:
        """The task once it is terminal (``tasks/result`` blocks on this). ``on_input`` is
        awaited whenever it waits for client input with requests not yet handed to it."""
        offered: set[str] = set()
        while True:
            state = await self.load(principal, task_id)
            if state.terminal:
                return state
            fresh = set(state.input_requests) - offered
            if on_input is not None and fresh:
                offered |= fresh
                await on_input(state)
                continue
            await self.wait_change(task_id, self.poll_interval_ms / 1000)

    # -- notifications/tasks (2026-07-28 subscriptions/listen) ----------------------------------

    @contextmanager
    def subscribe(
        self, principal: str, task_ids: Sequence[str], buffer: int = _SUBSCRIBER_BUFFER
    ) -> Iterator[trio.MemoryReceiveChannel[dict[str, Any]]]:
        """Hear each status change of these tasks of ``principal`` made in this process, as
        ``notifications/tasks`` params (a DetailedTask), while the block runs. A slow reader
        misses changes past ``buffer`` (it can still poll ``tasks/get``)."""
        send, receive = trio.open_memory_channel[dict[str, Any]](buffer)
        subscriber = _Subscriber(principal, send)
        ids = list(dict.fromkeys(task_ids))
        for task_id in ids:
            self._subscribers.setdefault(task_id, set()).add(subscriber)
        try:
            with receive:
                yield receive
        finally:
            send.close()
            for task_id in ids:
                held = self._subscribers.get(task_id)
                if held is not None:
                    held.discard(subscriber)
                    if not held:
                        del self._subscribers[task_id]

    async def owned(self, principal: str, task_ids: Sequence[str]) -> list[str]:
        """Those of ``task_ids`` that are tasks of ``principal`` (what a listen ack echoes)."""
        return [t for t in dict.fromkeys(task_ids) if await self.store.load_task(principal, t)]


@dataclass(eq=False)
class _Subscriber:
    principal: str
    send: trio.MemorySendChannel[dict[str, Any]]

    def offer(self, state: TaskState) -> None:
        with suppress(trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            self.send.send_nowait(wire.status_notification(state, MODERN)[1])


def _taker(
    keys: set[str], taken: dict[str, Any], refused: dict[str, str]
) -> Callable[[TaskState, float], None]:
    """A change that removes the answers (and refusals) for ``keys`` into the two dicts. Run
    again on a conflict, it starts over: what a retry takes replaces what the failed try saw."""
    wanted = frozenset(keys)

    def take(state: TaskState, now: float) -> None:
        got, no = state.take(wanted)
        taken.clear()
        refused.clear()
        taken.update(got)
        refused.update(no)

    return take


def _answerer(key: str, answer: Any) -> Callable[[TaskState, float], None]:
    def apply(state: TaskState, now: float) -> None:
        state.answer({key: answer}, now)

    return apply


def _decliner(key: str, message: str) -> Callable[[TaskState, float], None]:
    return lambda state, now: state.decline(key, message, now)


def _failure(message: str, code: int = -32603) -> Callable[[TaskState, float], None]:
    error = {"code": code, "message": message}
    return lambda state, now: state.fail(error, now)


# -- the methods --------------------------------------------------------------------------------


def _runner(session: McpSession) -> TaskRunner:
    runner = getattr(session.dispatcher, "tasks", None)
    if not isinstance(runner, TaskRunner):
        raise MethodNotFound(f"method not found: {quote('tasks/*')} (tasks are not enabled)")
    return runner


def _check_era(session: McpSession, call: Call) -> TaskRunner:
    """The runner, if the request may use tasks: 2025-11-25 sessions, and 2026-07-28 requests
    that declare the extension (-32021 otherwise, before looking at the task id)."""
    runner = _runner(session)
    if session.modern:
        capabilities = call.meta.client_capabilities if call.meta is not None else {}
        if not wire.client_declares_extension(capabilities):
            raise wire.MissingTasksExtension(
                f"{call.request.method} needs the client capability"
                f" extensions.{wire.TASKS_EXTENSION}"
            )
    elif session.protocol_version != wire.HANDSHAKE_TASKS_VERSION:
        raise MethodNotFound(
            f"{call.request.method} is not part of protocol version {session.protocol_version}"
        )
    return runner


async def get_task(session: McpSession, call: Call) -> dict[str, Any]:
    """``tasks/get``: the Task (2025-11-25) or the DetailedTask (2026-07-28)."""
    runner = _check_era(session, call)
    state = await runner.load(principal_key(session), wire.parse_task_id(call.params))
    return wire.get_task_result(state, flavour_of(session))


async def cancel_task(session: McpSession, call: Call) -> dict[str, Any]:
    """``tasks/cancel``: 2025-11-25 answers the task, now ``cancelled`` (-32602 if it was
    terminal already); 2026-07-28 answers an empty ack, also for a terminal task."""
    runner = _check_era(session, call)
    principal, task_id = principal_key(session), wire.parse_task_id(call.params)
    state = await runner.load(principal, task_id)
    was_terminal = state.terminal
    if not was_terminal:
        state = await runner.cancel(principal, task_id) or state
    if session.modern:
        return {}
    # Terminal already (a cancelled task too), or it ended while we were cancelling it.
    if was_terminal or state.status != wire.CANCELLED:
        status = wire.status_for(state, HANDSHAKE)
        raise InvalidParams(f"Cannot cancel task: already in terminal status {status!r}")
    return wire.task_wire(state, HANDSHAKE)


async def update_task(session: McpSession, call: Call) -> dict[str, Any]:
    """2026-07-28 ``tasks/update``: deliver ``inputResponses``; an empty ack. Keys that are not
    outstanding (never asked, answered already) are ignored, as the spec says."""
    runner = _check_era(session, call)
    principal, task_id = principal_key(session), wire.parse_task_id(call.params)
    responses = call.params.get("inputResponses")
    if not isinstance(responses, dict) or not all(isinstance(v, dict) for v in responses.values()):
        raise InvalidParams("inputResponses must be an object of response objects")
    await runner.load(principal, task_id)  # -32602 for an unknown task
    await runner.answer(principal, task_id, responses)
    return {}


async def task_result(session: McpSession, call: Call) -> dict[str, Any]:
    """2025-11-25 ``tasks/result``: wait until the task is terminal, then answer exactly what
    the call would have (its result with the related-task ``_meta``, or its JSON-RPC error).
    While waiting, a task that needs client input has its requests relayed over this call."""
    runner = _check_era(session, call)
    if session.modern:
        raise MethodNotFound("method not found: 'tasks/result'")
    principal, task_id = principal_key(session), wire.parse_task_id(call.params)

    async def relay(state: TaskState) -> None:
        asker = runner.client_asker
        if asker is None:
            return
        meta = wire.related_task_meta(task_id)
        for key, request in state.input_requests.items():
            params = dict(request.get("params") or {})
            held = params.get("_meta")
            params["_meta"] = {**(held if isinstance(held, dict) else {}), **meta}
            try:
                answer = await asker(session, call, str(request.get("method")), params)
            except ToolError as exc:
                message = exc.detail or str(exc)
                change: Callable[[TaskState, float], Any] = _decliner(key, message)
            else:
                change = _answerer(key, answer)
            await runner._update(principal, task_id, change)

    state = await runner.wait_terminal(principal, task_id, relay)
    return wire.payload_result(state)


async def list_tasks(session: McpSession, call: Call) -> dict[str, Any]:
    """2025-11-25 ``tasks/list``: the principal's tasks, oldest first, a page at a time."""
    runner = _check_era(session, call)
    if session.modern:
        raise MethodNotFound("method not found: 'tasks/list'")
    stored = await runner.store.list_tasks(principal_key(session))
    states = [TaskState.from_dict(s.data) for s in stored]
    page_size = getattr(session.dispatcher, "page_size", 50)
    return wire.list_result(states, call.params.get("cursor"), page_size)


HANDSHAKE_METHODS: Final = {
    "tasks/get": get_task,
    "tasks/result": task_result,
    "tasks/list": list_tasks,
    "tasks/cancel": cancel_task,
}
"""For ``Dispatcher.handshake_methods`` (each refuses a session older than 2025-11-25)."""

MODERN_METHODS: Final = {
    "tasks/get": get_task,
    "tasks/update": update_task,
    "tasks/cancel": cancel_task,
}
"""For ``Dispatcher.modern_methods`` (tasks/result and tasks/list are gone there: -32601)."""

__all__ = [
    "HANDSHAKE_METHODS",
    "MODERN_METHODS",
    "TaskHandle",
    "TaskRunner",
    "cancel_task",
    "get_task",
    "list_tasks",
    "principal_key",
    "task_result",
    "update_task",
]
