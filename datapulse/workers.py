"""``--workers N``: N server processes on one port, one supervisor over them.

Where the system has SO_REUSEPORT (Linux, the BSDs), every worker listens on the port itself
with it, and the kernel spreads connections over their accept queues by a hash of the client's
address: each worker gets its share even when all of them are idle. (One listening socket shared
by all would queue every connection once, but the worker that happens to be awake accepts
nearly all of them; measured here, one of two workers took 40 of 40 sequential connections.)
The supervisor keeps the port bound, not listening, so no other program takes it while a worker
restarts. The price: connections queued at a worker that dies are reset, not passed on.
Elsewhere the supervisor listens and hands the one socket to every worker (inherited by fd).

Workers are ``python -m datapulse`` with the same settings (``--workers`` aside), so they share
everything through Redis (``--redis-url`` is required). What must be the same in every worker
and would otherwise be drawn at random per process is drawn once here and handed down: the
bearer token (printed once) and the ``requestState`` key.

A worker that exits is started again (after 1 s, doubling to 30 s while it keeps failing within
a minute of its start). SIGTERM or SIGINT to the supervisor is passed to every worker, which
stop gracefully; a worker still running ``shutdown_grace_s + 5`` s later is killed.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import sys
from collections.abc import Sequence

import trio

from datapulse.config import Config

log = logging.getLogger("datapulse.workers")

WORKER_FD_ENV = "DATAPULSE_WORKER_FD"
"""Set by the supervisor in a worker's environment: the fd of the listening socket."""
REUSE_PORT_ENV = "DATAPULSE_WORKER_REUSE_PORT"
"""Set instead where SO_REUSEPORT exists: the worker listens on the port itself, with it."""
HAS_REUSE_PORT = hasattr(socket, "SO_REUSEPORT")
RESTART_DELAY_S = 1.0
MAX_RESTART_DELAY_S = 30.0
STABLE_AFTER_S = 60.0


def worker_socket(config: Config) -> socket.socket | None:
    """The listening socket of this process if it is a worker (None: it is not): its own, on
    the supervisor's port with SO_REUSEPORT, or the one the supervisor handed down."""
    if os.environ.get(REUSE_PORT_ENV):
        return _bind(config, reuse_port=True, listening=True)
    fd = os.environ.get(WORKER_FD_ENV)
    return socket.socket(fileno=int(fd)) if fd else None


def _bind(config: Config, *, reuse_port: bool, listening: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((config.host, config.port))
    if listening:
        sock.listen(1024)
    return sock


def worker_argv(argv: Sequence[str]) -> list[str]:
    """The command line minus ``--workers N`` / ``--workers=N``: a worker is one process."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--workers":
            skip = True
        elif not arg.startswith("--workers="):
            out.append(arg)
    return out


async def supervise(config: Config, argv: Sequence[str]) -> int:
    # Bound (so the port is ours, port 0 picks one), listening only if it is the shared socket.
    sock = _bind(config, reuse_port=HAS_REUSE_PORT, listening=not HAS_REUSE_PORT)
    port = sock.getsockname()[1]
    env = dict(os.environ)
    pass_fds: tuple[int, ...] = ()
    if HAS_REUSE_PORT:
        env[REUSE_PORT_ENV] = "1"
    else:
        sock.set_inheritable(True)
        env[WORKER_FD_ENV] = str(sock.fileno())
        pass_fds = (sock.fileno(),)
    env["DATAPULSE_WORKERS"] = "1"
    if config.token is None and not config.jwt_enabled:
        env["LOCAL_BEARER_TOKEN"] = token = secrets.token_urlsafe(32)
        print(f"bearer token (generated): {token}", file=sys.stderr, flush=True)
    if not config.request_state_keys:
        env["DATAPULSE_REQUEST_STATE_KEYS"] = secrets.token_urlsafe(32)
    # The port chosen here (port 0 picks one) goes last: argparse keeps a flag's last value.
    command = [sys.executable, "-m", "datapulse", *worker_argv(argv), "--port", str(port)]
    print(
        f"datapulse supervisor: {config.workers} workers on port {port}",
        file=sys.stderr,
        flush=True,
    )
    stopping = trio.Event()
    procs: dict[int, trio.Process] = {}

    async def keep_running(index: int) -> None:
        delay = RESTART_DELAY_S
        while not stopping.is_set():
            started = trio.current_time()
            proc = await trio.lowlevel.open_process(
                command, env={**env, "DATAPULSE_WORKER_ID": str(index)}, pass_fds=pass_fds
            )
            procs[index] = proc
            code = await proc.wait()
            if stopping.is_set():
                return
            if trio.current_time() - started > STABLE_AFTER_S:
                delay = RESTART_DELAY_S
            log.warning(
                "worker %d (pid %d) exited with %s; starting it again in %gs",
                index,
                proc.pid,
                code,
                delay,
            )
            with trio.move_on_after(delay):
                await stopping.wait()
            delay = min(delay * 2, MAX_RESTART_DELAY_S)

    async def stop_all() -> None:
        for proc in procs.values():
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        with trio.move_on_after(config.shutdown_grace_s + 5):
            for proc in procs.values():
                await proc.wait()
        for proc in procs.values():
            if proc.returncode is None:
                log.warning("worker pid %d did not stop in time: killing it", proc.pid)
                proc.kill()
                await proc.wait()

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            for index in range(config.workers):
                nursery.start_soon(keep_running, index)

            async def on_signal() -> None:
                async for signum in signals:
                    log.info("%s: stopping %d workers", signal.Signals(signum).name, len(procs))
                    stopping.set()
                    await stop_all()
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(on_signal)
    sock.close()
    return 0


def run_supervisor(config: Config, argv: Sequence[str]) -> int:
    try:
        return trio.run(supervise, config, argv)
    except OSError as exc:
        print(f"datapulse: cannot start: {exc}", file=sys.stderr)
        return 1


__all__ = ["REUSE_PORT_ENV", "WORKER_FD_ENV", "run_supervisor", "worker_argv", "worker_socket"]
