"""Shared fixtures: a real datapulse server on an ephemeral loopback port, and HTTP clients."""

from __future__ import annotations

import functools
import inspect
import os
import signal
import threading
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_timeout
import trio

from datapulse import Config, Server, ServerInfo
from datapulse.core.sse import SSEEvent, SSEParser

TOKEN = "test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def make_config(**overrides: Any) -> Config:
    base: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "token": TOKEN,
        "ping_interval_s": 5.0,
        "read_timeout_s": 5.0,
        "keepalive_timeout_s": 5.0,
        "shutdown_grace_s": 1.0,
    }
    base.update(overrides)
    return Config(**base)


async def start_server(nursery: trio.Nursery, **overrides: Any) -> tuple[Server, ServerInfo]:
    server = Server(make_config(**overrides))
    info = await nursery.start(server.serve)
    return server, info


@pytest.fixture
async def server(nursery: trio.Nursery) -> Server:
    srv, _ = await start_server(nursery)
    return srv


@pytest.fixture
async def client(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    assert server.info is not None
    async with httpx.AsyncClient(base_url=server.info.url, headers=AUTH, timeout=10) as c:
        yield c


class SSEReader:
    """Reads an httpx streaming response as SSE events (our WHATWG parser)."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.parser = SSEParser()
        self.pending: list[SSEEvent] = []
        self.raw = b""
        self._chunks = response.aiter_raw()

    async def next(self, timeout: float = 5.0) -> SSEEvent:
        with trio.fail_after(timeout):
            while not self.pending:
                chunk = await self._chunks.__anext__()
                self.raw += chunk
                self.pending.extend(self.parser.feed(chunk))
            return self.pending.pop(0)

    async def read_until(self, marker: bytes, count: int = 1, timeout: float = 5.0) -> None:
        """Read raw bytes until ``marker`` has been seen ``count`` times (events are kept)."""
        with trio.fail_after(timeout):
            while self.raw.count(marker) < count:
                chunk = await self._chunks.__anext__()
                self.raw += chunk
                self.pending.extend(self.parser.feed(chunk))

    async def next_data(self, timeout: float = 5.0) -> SSEEvent:
        """The next event that carries data (skipping the retry-only hint)."""
        while True:
            event = await self.next(timeout)
            if event.data is not None:
                return event


async def raw_exchange(port: int, payload: bytes, *, read_timeout: float = 5.0) -> bytes:
    """Send raw bytes, return everything the server sends until it closes (or the timeout)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    received = b""
    async with stream:
        if payload:
            await stream.send_all(payload)
        with trio.move_on_after(read_timeout):
            while True:
                try:
                    chunk = await stream.receive_some(65536)
                except trio.BrokenResourceError:
                    break
                if not chunk:
                    break
                received += chunk
    return received


# -- deadlines -------------------------------------------------------------------------------
# Every test has a deadline: pytest-timeout's ``timeout`` in pyproject.toml (a marker
# ``@pytest.mark.timeout(N)`` for the few long ones). Its signal method raises from the SIGALRM
# handler wherever the main thread happens to be, which in a trio test is Trio's run loop:
# that run is never unwound (fixtures do not clean up) and the next trio test then fails with
# "Attempted to call run() from inside a run()". So a trio test is first stopped the Trio way:
# the alarm cancels a scope around the test body, and the test fails saying where its tasks
# were waiting. Only if it is still running TIMEOUT_GRACE_S later (the cancellation itself is
# broken: a shielded or blocking wait) does pytest-timeout's own handler fire.

TIMEOUT_GRACE_S = 5.0
_DEADLINE = pytest.StashKey[dict[str, Any]]()


def _where_tasks_wait() -> str:
    """Each task's innermost frame outside Trio itself, e.g. ``test_x.py:12 test_x``."""
    trio_dir = os.path.dirname(trio.__file__)
    lines: list[str] = []

    def walk(task: trio.lowlevel.Task) -> None:
        frames = [
            f"{f.f_code.co_filename}:{lineno} {f.f_code.co_name}"
            for f, lineno in task.iter_await_frames()
            if not f.f_code.co_filename.startswith(trio_dir)
        ]
        if frames:
            lines.append(f"  {task.name}: {frames[-1]}")
        for nursery in task.child_nurseries:
            for child in nursery.child_tasks:
                walk(child)

    walk(trio.lowlevel.current_root_task())
    return "\n".join(lines[-20:])


@pytest.hookimpl(tryfirst=True)
def pytest_timeout_set_timer(item: pytest.Item, settings: Any) -> bool | None:
    if settings.method != "signal" or threading.current_thread() is not threading.main_thread():
        return None  # pytest-timeout's own timer
    state: dict[str, Any] = {"scope": None, "waiting": "", "timeout": settings.timeout}
    item.stash[_DEADLINE] = state

    def on_alarm(signum: int, frame: object) -> None:
        __tracebackhide__ = True
        scope: trio.CancelScope | None = state["scope"]
        if scope is not None and not scope.cancel_called:

            def cancel() -> None:
                state["waiting"] = _where_tasks_wait()
                scope.cancel()

            try:
                trio.lowlevel.current_trio_token().run_sync_soon(cancel)
            except RuntimeError:  # not inside the test's trio run after all
                pass
            else:
                signal.setitimer(signal.ITIMER_REAL, TIMEOUT_GRACE_S)
                return
        pytest_timeout.timeout_sigalrm(item, settings)

    def cancel_timer() -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)

    item.cancel_timeout = cancel_timer  # type: ignore[attr-defined]
    signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, settings.timeout)
    return True


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> Any:
    """Run a trio test's body in the scope the alarm cancels. Outermost wrapper, so this runs
    before pytest-trio turns the coroutine function into a ``trio.run`` call. Hypothesis tests
    (one trio run per example) keep pytest-timeout's plain handling."""
    state = item.stash.get(_DEADLINE, None)
    test = getattr(item, "obj", None)
    if (
        state is not None
        and isinstance(item, pytest.Function)
        and inspect.iscoroutinefunction(test)
        and not hasattr(test, "hypothesis")
    ):

        @functools.wraps(test)
        async def with_deadline(**kwargs: Any) -> Any:
            __tracebackhide__ = True
            with trio.CancelScope() as scope:
                state["scope"] = scope
                return await test(**kwargs)
            pytest.fail(
                f"Timeout (>{state['timeout']}s): the test was cancelled while its tasks"
                f" waited at\n{state['waiting']}",
                pytrace=False,
            )

        item.obj = with_deadline
    return (yield)
