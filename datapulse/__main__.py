"""Command line: ``python -m datapulse [--flag value ...]``.

Flags are generated from ``Config`` (each field names its flag and environment variable), so
``--help`` always documents every setting. Precedence: flag > environment > default.
"""

from __future__ import annotations

import argparse
import gc
import logging
import signal
import sys
import traceback
from collections.abc import Sequence
from typing import Any

import trio

from datapulse import __version__
from datapulse.app import AppLoadError, load_app
from datapulse.auth.redact import install_redactor, redact, redact_handlers
from datapulse.auth.setup import AuthStartupError
from datapulse.config import Config, config_from_env, default_text, parse_value, settings
from datapulse.logs import make_handler
from datapulse.server import Server, ServerInfo
from datapulse.workers import run_supervisor, worker_socket

log = logging.getLogger("datapulse")


def build_parser() -> argparse.ArgumentParser:
    # No ArgumentDefaultsHelpFormatter: every argparse default is None (so that an unset flag
    # falls through to the environment), which it would print as "(default: None)". The help
    # names the environment variable and Config's real default instead.
    parser = argparse.ArgumentParser(
        prog="datapulse",
        description="An MCP server over Server-Sent Events (Trio + h11)."
        " Precedence: flag > environment variable > default.",
    )
    parser.add_argument("--version", action="version", version=f"datapulse {__version__}")
    for f in settings():
        flag, env = f.metadata["flag"], f.metadata["env"]
        # argparse %-formats help strings: a literal % must be doubled.
        help_text = f"{f.metadata['help']} [env {env}; default: {default_text(f)}]".replace(
            "%", "%%"
        )
        if "bool" in str(f.type):
            parser.add_argument(
                flag, dest=f.name, action="store_const", const="true", default=None, help=help_text
            )
        else:
            parser.add_argument(flag, dest=f.name, default=None, metavar=env, help=help_text)
    return parser


def config_from_args(argv: Sequence[str] | None = None) -> Config:
    args = build_parser().parse_args(argv)
    overrides: dict[str, Any] = {}
    by_name = {f.name: f for f in settings()}
    for name, raw in vars(args).items():
        if raw is not None and name in by_name:
            overrides[name] = parse_value(by_name[name], raw)
    return config_from_env(**overrides)


async def run(config: Config, server: Server | None = None) -> None:
    if server is None:
        server = Server(config, builtin_tools=True)  # the default app: the built-ins
    server.http.inherited_socket = worker_socket(config)  # under --workers: the shared port
    # Before any nursery, so that a JWT discovery failure reaches main() unwrapped.
    await server.open_verifier()

    async def watch_signals(*, task_status: trio.TaskStatus[None]) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            task_status.started()
            async for signum in signals:
                if server.http.shutting_down:
                    log.warning("second %s: stopping now", signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()
                    return
                log.info(
                    "%s: shutting down gracefully (up to %ss)",
                    signal.Signals(signum).name,
                    config.shutdown_grace_s,
                )
                server.shutdown()

    class Announce:
        def started(self, info: ServerInfo | None = None) -> None:
            assert info is not None
            # Everything made so far (modules, the app, its tools) lives as long as the process:
            # moved out of the collector's generations, no full collection scans it again. A
            # full collection of a few thousand streams' objects otherwise stalls every stream
            # for tens of ms (docs/benchmarks.md). The CLI owns the process; an embedding host
            # decides this for its own.
            gc.freeze()
            log.debug("%d start-up objects frozen out of the collector", gc.get_freeze_count())
            announce(info, config)

    async with trio.open_nursery() as nursery:
        await nursery.start(watch_signals)
        # serve() returns after a graceful shutdown; the signal watcher goes with it.
        await server.serve(task_status=Announce())
        nursery.cancel_scope.cancel()


def announce(info: ServerInfo, config: Config) -> None:
    print(f"datapulse {__version__} listening on {info.url}", file=sys.stderr, flush=True)
    if info.token and config.token is None:
        print(f"bearer token (generated): {info.token}", file=sys.stderr, flush=True)
    elif info.token:
        print("bearer token: from --token / LOCAL_BEARER_TOKEN", file=sys.stderr, flush=True)
    if config.jwt_enabled:
        print(
            f"JWT access tokens from {config.jwt_issuer} (audience {config.jwt_audience})",
            file=sys.stderr,
            flush=True,
        )
    print(
        f"  curl -N -H 'Authorization: Bearer <token>' '{info.url}/events?session_id=abc123'",
        file=sys.stderr,
        flush=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = config_from_args(argv)
    except ValueError as exc:
        print(f"datapulse: {exc}", file=sys.stderr)
        return 2
    # --log-format: json (one object per line, for collectors) or text; auto picks text on a
    # terminal. The JSON formatter redacts the structured fields (extra=) itself; the filter
    # below redacts every message and traceback, in both formats.
    logging.basicConfig(
        level=config.log_level.upper(),
        handlers=[make_handler(config.log_format, sys.stderr, redact)],
    )
    # Every line printed, ours and the libraries', without a credential in it.
    redact_handlers(logging.getLogger().handlers)
    install_redactor()
    if config.workers > 1:
        return run_supervisor(config, list(sys.argv[1:] if argv is None else argv))
    server = None
    if config.app:
        try:
            server = load_app(config.app)
            server.configure(config)
        except AppLoadError as exc:
            print(f"datapulse: cannot load --app: {exc}", file=sys.stderr)
            return 2
        except Exception:
            # The app's own code failed while it loaded: its traceback is the operator's to read.
            print(f"datapulse: --app {config.app} failed to load:", file=sys.stderr)
            traceback.print_exc()
            return 2
    try:
        trio.run(run, config, server)
    except (OSError, AuthStartupError) as exc:
        print(f"datapulse: cannot start: {exc}", file=sys.stderr)
        return 1
    except BaseExceptionGroup as group:
        # A bind failure surfaces from inside the server's nurseries, wrapped in groups.
        start_errors, rest = group.split((OSError, AuthStartupError))
        if start_errors is None or rest is not None:
            raise
        print(f"datapulse: cannot start: {_first_leaf(start_errors)}", file=sys.stderr)
        return 1
    return 0


def _first_leaf(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


if __name__ == "__main__":
    sys.exit(main())
