"""Fixtures for tests/unit and tests/e2e: a real datapulse server on an ephemeral loopback port, an
HTTP client for it, and the per-test deadline. The helpers they are built from are in
tests/helpers.py; fixtures only e2e tests use are in tests/e2e/conftest.py."""

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

from datapulse import Server
from tests.helpers import AUTH, start_server


@pytest.fixture
async def server(nursery: trio.Nursery) -> Server:
    srv, _ = await start_server(nursery)
    return srv


@pytest.fixture
async def client(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    assert server.info is not None
    async with httpx.AsyncClient(base_url=server.info.url, headers=AUTH, timeout=10) as c:
        yield c


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
