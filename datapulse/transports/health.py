"""Liveness (``GET /healthz``) and readiness (``GET /readyz``): no auth, no session, no limit.

* ``/healthz`` is liveness: 200 ``{"status":"ok","sessions":N}`` for as long as the process can
  answer, a graceful shutdown included (an orchestrator must not kill a process that is draining).
* ``/readyz`` is readiness: 200 ``{"status":"ready","checks":{...}}`` when the server is
  listening and not shutting down, the verifier is ready (JWT signing keys loaded when JWT is
  configured: ``auth.verifier.is_ready``) and the session store says it is ready. Otherwise 503
  with ``Retry-After`` and ``{"status":"not_ready"|"shutting_down","reasons":[...],"checks":...}``.

The body is public (no auth), so its reasons are short fixed phrases; the details (an IdP's
address and error, a store's own words) go to the log, once per change of state, never to the
client. HEAD is answered by the router with the GET handler (the head only).

The store seam: a store may define ``async def ready(self) -> str | None`` (``ReadinessProbe``):
None when it can serve, else why not (a Redis backend: the server is unreachable). Stores
without it (the memory store) are always ready. It is given ``STORE_TIMEOUT_S`` to answer.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sized
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import trio

from datapulse.auth.verifier import Verifier, not_ready_reason
from datapulse.net.http import Request, Response, json_response

log = logging.getLogger("datapulse.health")

RETRY_AFTER_S = 5
"""``Retry-After`` on a 503 from ``/readyz``."""
STORE_TIMEOUT_S = 1.0
"""How long the store's ``ready()`` may take before it counts as not ready."""

OK = "ok"
SHUTTING_DOWN = "shutting down"
NOT_LISTENING = "not listening"
AUTH_NOT_READY = "authentication not ready"
STORE_NOT_READY = "session store not ready"


@runtime_checkable
class ReadinessProbe(Protocol):
    """What a session store may implement to take part in ``/readyz``."""

    async def ready(self) -> str | None:
        """None when ready; otherwise why not (for the log only: clients see a fixed phrase)."""
        ...


@dataclass(frozen=True)
class Readiness:
    """One evaluation: each check's public value (``OK`` or a short phrase), and the details."""

    checks: dict[str, str]
    shutting_down: bool
    details: tuple[str, ...]
    """Operator-facing reasons (may name hosts): logged, never sent."""

    @property
    def ready(self) -> bool:
        return not self.shutting_down and all(v == OK for v in self.checks.values())

    @property
    def reasons(self) -> list[str]:
        found = [SHUTTING_DOWN] if self.shutting_down else []
        return found + [v for v in self.checks.values() if v != OK]

    def body(self) -> dict[str, object]:
        if self.ready:
            return {"status": "ready", "checks": self.checks}
        status = "shutting_down" if self.shutting_down else "not_ready"
        return {"status": status, "reasons": self.reasons, "checks": self.checks}


class HealthRoutes:
    """The two handlers. Everything is read at request time through callables, because the
    verifier is replaced once JWT discovery ran and ``listening`` changes when serve starts."""

    def __init__(
        self,
        *,
        sessions: Sized,
        verifier: Callable[[], Verifier],
        store: object,
        listening: Callable[[], bool],
        shutting_down: Callable[[], bool],
    ) -> None:
        self._sessions = sessions
        self._verifier = verifier
        self._store = store
        self._listening = listening
        self._shutting_down = shutting_down
        self._last_reasons: tuple[str, ...] | None = None

    async def healthz(self, request: Request) -> Response:
        # pid: which process answered (several serve one port under --workers).
        body = {"status": "ok", "sessions": len(self._sessions), "pid": os.getpid()}
        return json_response(200, body)

    async def readyz(self, request: Request) -> Response:
        readiness = await self.readiness()
        self._log_change(readiness)
        if readiness.ready:
            return json_response(200, readiness.body())
        return json_response(503, readiness.body(), [("Retry-After", str(RETRY_AFTER_S))])

    async def readiness(self) -> Readiness:
        details: list[str] = []
        checks = {"listening": OK if self._listening() else NOT_LISTENING}
        auth_reason = not_ready_reason(self._verifier())
        checks["auth"] = OK if auth_reason is None else AUTH_NOT_READY
        if auth_reason is not None:
            details.append(auth_reason)
        store_reason = await self._store_reason()
        checks["store"] = OK if store_reason is None else STORE_NOT_READY
        if store_reason is not None:
            details.append(store_reason)
        return Readiness(checks, self._shutting_down(), tuple(details))

    async def _store_reason(self) -> str | None:
        probe = getattr(self._store, "ready", None)
        if probe is None or not callable(probe):
            return None  # a store that does not say is always ready (the memory store)
        with trio.move_on_after(STORE_TIMEOUT_S):
            try:
                reason = await probe()
            except Exception as exc:  # a failing probe means not ready, never a 500
                return f"session store readiness check failed ({type(exc).__name__})"
            return None if reason is None else str(reason)
        return f"session store did not answer within {STORE_TIMEOUT_S:g}s"

    def _log_change(self, readiness: Readiness) -> None:
        """One line per change of what ``/readyz`` answers, with the details the body omits."""
        reasons = tuple(readiness.reasons)
        if reasons == self._last_reasons:
            return
        self._last_reasons = reasons
        if readiness.ready:
            log.info("ready")
        elif readiness.shutting_down:
            log.info("not ready: shutting down")
        else:
            detail = "; ".join(readiness.details)
            log.warning("not ready: %s%s", ", ".join(reasons), f" ({detail})" if detail else "")
