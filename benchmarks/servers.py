"""The servers under test: how to start each one, what it speaks, how to measure it.

Every server, datapulse included, runs as its own subprocess on a free loopback port with the
same token and ping interval, and counts as ready once ``GET /healthz`` answers 200. RSS and CPU
come from psutil over the process and its children.

``build_servers()`` is the table the rest of the suite iterates. Each entry says which stream
*kinds* (``events`` = original /events API, ``sse`` = legacy MCP HTTP+SSE, ``mcp`` = Streamable
HTTP GET stream) and which RPC *modes* (``seed`` = POST /message + result on /events, ``json`` /
``sse`` = Streamable HTTP tools/call answered as JSON or as an SSE stream) it offers.
``baseline_server(rev)`` adds datapulse as it was at a git revision, run from a temporary worktree.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import trio

REPO_ROOT = Path(__file__).resolve().parent.parent
TS_PEER_DIR = REPO_ROOT / "benchmarks" / "peers" / "ts"
HOST = "127.0.0.1"

# datapulse's switch for plain-JSON answers on POST /mcp. One constant, so a rename is one edit.
DATAPULSE_JSON_FLAG = "--json-response"
# Flags passed to datapulse only if its --help lists them: lift the caps the idle-stream scenario
# would otherwise hit (the peers get theirs lifted too) and keep per-request logging out of it.
# All load comes from 127.0.0.1 with one token, so the per-address and per-principal caps would
# otherwise turn the idle scenario into a test of datapulse's abuse limits.
DATAPULSE_OPTIONAL_FLAGS: dict[str, str] = {
    "--log-level": "WARNING",
    "--max-sessions": "1000000",
    "--max-connections": "1000000",
    "--max-connections-per-ip": "1000000",
    "--max-sessions-per-principal": "1000000",
}


class ServerUnavailable(Exception):
    """The server could not be started; the suite skips it and says why."""


@dataclass(frozen=True)
class LaunchOptions:
    port: int
    token: str
    ping_interval_s: float
    json_response: bool = False


@dataclass
class ServerSpec:
    name: str
    description: str
    kinds: tuple[str, ...]
    rpc_modes: tuple[str, ...]
    command: Callable[[LaunchOptions], list[str]]
    json_mode_needs_flag: bool = True  # json vs sse answers is a start-up switch
    unavailable: str | None = None  # set by probe(): why this server cannot run here
    version: str = ""
    extra_flags: list[str] = field(default_factory=list)
    checkout: Path = REPO_ROOT  # the source tree it runs from: cwd, and on PYTHONPATH if not ours

    def variants(self, scenario_kinds: tuple[str, ...]) -> list[str]:
        return [k for k in scenario_kinds if k in self.kinds]


def _datapulse_command(spec: ServerSpec) -> Callable[[LaunchOptions], list[str]]:
    def build(opts: LaunchOptions) -> list[str]:
        argv = [sys.executable, "-m", "datapulse", "--host", HOST, "--port", str(opts.port)]
        argv += ["--token", opts.token, "--ping-interval", f"{opts.ping_interval_s:g}"]
        argv += spec.extra_flags
        if opts.json_response:
            argv.append(DATAPULSE_JSON_FLAG)
        return argv

    return build


def _python_peer(module: str, *, json_flag: bool) -> Callable[[LaunchOptions], list[str]]:
    def build(opts: LaunchOptions) -> list[str]:
        argv = [sys.executable, "-m", module, "--host", HOST, "--port", str(opts.port)]
        argv += ["--token", opts.token, "--ping-interval", f"{opts.ping_interval_s:g}"]
        if json_flag and opts.json_response:
            argv.append("--json-response")
        return argv

    return build


def _ts_command(opts: LaunchOptions) -> list[str]:
    argv = ["node", str(TS_PEER_DIR / "server.mjs"), "--host", HOST, "--port", str(opts.port)]
    argv += ["--token", opts.token, "--ping-interval", f"{opts.ping_interval_s:g}"]
    if opts.json_response:
        argv.append("--json-response")
    return argv


def _datapulse_spec(name: str, description: str, checkout: Path = REPO_ROOT) -> ServerSpec:
    spec = ServerSpec(
        name=name,
        description=description,
        kinds=("events", "sse", "mcp"),
        rpc_modes=("seed", "json", "sse"),
        command=lambda _opts: [],
        checkout=checkout,
    )
    spec.command = _datapulse_command(spec)
    return spec


def build_servers() -> dict[str, ServerSpec]:
    return {
        "datapulse": _datapulse_spec("datapulse", "datapulse (Trio + h11), python -m datapulse"),
        "fastapi": ServerSpec(
            name="fastapi",
            description="FastAPI + sse-starlette on uvicorn, original /events API (the seed)",
            kinds=("events",),
            rpc_modes=("seed",),
            command=_python_peer("benchmarks.peers.fastapi_sse", json_flag=False),
        ),
        "fastmcp": ServerSpec(
            name="fastmcp",
            description="mcp Python SDK FastMCP/MCPServer on uvicorn (/mcp + legacy /sse)",
            kinds=("sse", "mcp"),
            rpc_modes=("json", "sse"),
            command=_python_peer("benchmarks.peers.fastmcp_server", json_flag=True),
        ),
        "ts": ServerSpec(
            name="ts",
            description="MCP TypeScript SDK on Node + express (/mcp + legacy /sse)",
            kinds=("sse", "mcp"),
            rpc_modes=("json", "sse"),
            command=_ts_command,
        ),
    }


def _git(*args: str) -> str:
    result = _run(["git", "-C", str(REPO_ROOT), *args], REPO_ROOT, 120)
    if result.returncode != 0:
        raise SystemExit(f"git {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout.strip()


@contextlib.contextmanager
def baseline_server(rev: str) -> Iterator[ServerSpec]:
    """datapulse as it was at git revision ``rev``, named ``datapulse@<short rev>``.

    Runs from a detached worktree of ``rev`` in a temporary directory outside the repository,
    removed (``git worktree remove --force``) when the block ends, however it ends.
    """
    short = _git("rev-parse", "--short", f"{rev}^{{commit}}")
    with tempfile.TemporaryDirectory(prefix=f"datapulse-{short}-") as tmp:
        checkout = Path(tmp) / "src"
        _git("worktree", "add", "--detach", str(checkout), short)
        try:
            yield _datapulse_spec(
                f"datapulse@{short}", f"datapulse at {rev} ({short}), worktree {checkout}", checkout
            )
        finally:
            _git("worktree", "remove", "--force", str(checkout))


def _env(spec: ServerSpec) -> dict[str, str]:
    """The environment ``spec`` runs in: ours, with its checkout first on PYTHONPATH if not ours."""
    env = dict(os.environ)
    if spec.checkout != REPO_ROOT:
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(spec.checkout), env.get("PYTHONPATH")])
        )
    return env


def _run(
    argv: list[str], cwd: Path, timeout_s: float, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout_s, check=False
    )


def _package_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def probe(spec: ServerSpec, log: Callable[[str], None]) -> None:
    """Find out before any scenario whether ``spec`` can start here; record why not."""
    try:
        if spec.name.partition("@")[0] == "datapulse":
            _probe_datapulse(spec)
        elif spec.name == "ts":
            _probe_ts(spec, log)
        else:
            missing = [
                m
                for m in (
                    "uvicorn",
                    "sse_starlette",
                    "fastapi" if spec.name == "fastapi" else "mcp",
                )
                if _package_version(m.replace("_", "-")) == "not installed"
            ]
            if missing:
                raise ServerUnavailable(
                    f"missing Python packages {missing}: pip install -r benchmarks/requirements.txt"
                )
            pkg = "fastapi" if spec.name == "fastapi" else "mcp"
            spec.version = f"{pkg} {_package_version(pkg)}, uvicorn {_package_version('uvicorn')}"
    except (ServerUnavailable, OSError, subprocess.SubprocessError) as exc:
        spec.unavailable = str(exc)


# Every datapulse module the package imports (its __init__ imports the server, and with it
# everything), and the version: all must come from the one checkout.
_WHICH_DATAPULSE = (
    "import sys, datapulse;"
    " files = sorted({m.__file__ for n, m in sys.modules.items()"
    " if n.split('.')[0] == 'datapulse' and getattr(m, '__file__', None)});"
    " print('\\n'.join(files)); print(datapulse.__version__)"
)


def _probe_datapulse(spec: ServerSpec) -> None:
    """Its --help decides the optional flags; the package it imports must be from its checkout."""
    outputs = []
    for args in (["-m", "datapulse", "--help"], ["-c", _WHICH_DATAPULSE]):
        result = _run([sys.executable, *args], spec.checkout, 60, _env(spec))
        if result.returncode != 0:
            tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
            raise ServerUnavailable(
                f"`python {' '.join(args)}` exited {result.returncode}: {' | '.join(tail)}"
            )
        outputs.append(result.stdout)
    help_text, (*files, version) = outputs[0], outputs[1].split()
    for where in files:
        if not Path(where).resolve().is_relative_to(spec.checkout.resolve()):
            raise ServerUnavailable(f"`python -m datapulse` imports {where}, not {spec.checkout}")
    spec.extra_flags = [
        part
        for flag, value in DATAPULSE_OPTIONAL_FLAGS.items()
        if flag in help_text
        for part in (flag, value)
    ]
    if DATAPULSE_JSON_FLAG not in help_text:
        spec.rpc_modes = tuple(m for m in spec.rpc_modes if m != "json")
        spec.version = f"(no {DATAPULSE_JSON_FLAG} flag: rpc json mode skipped)"
    spec.version = f"datapulse {version} {spec.version}".strip()


def _probe_ts(spec: ServerSpec, log: Callable[[str], None]) -> None:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None:
        raise ServerUnavailable("node is not on PATH (Node >= 20 needed)")
    sdk = TS_PEER_DIR / "node_modules" / "@modelcontextprotocol" / "sdk" / "package.json"
    if not sdk.exists():
        if npm is None:
            raise ServerUnavailable("node_modules missing and npm is not on PATH")
        log(f"ts peer: running `npm ci` in {TS_PEER_DIR.relative_to(REPO_ROOT)} (lockfile pinned)")
        result = _run([npm, "ci", "--no-audit", "--no-fund"], TS_PEER_DIR, 300)
        if result.returncode != 0:
            raise ServerUnavailable(f"npm ci failed: {result.stderr.strip()[-300:]}")
    node_version = _run([node, "--version"], REPO_ROOT, 30).stdout.strip()
    import json

    sdk_version = json.loads(sdk.read_text())["version"]
    spec.version = f"@modelcontextprotocol/sdk {sdk_version}, node {node_version}"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def new_token() -> str:
    return secrets.token_hex(16)  # hex: never starts with "-", which argparse would misread


class ServerProcess:
    """A running server: its port, token and process tree for RSS/CPU readings."""

    def __init__(self, spec: ServerSpec, opts: LaunchOptions, process: trio.Process) -> None:
        self.spec = spec
        self.opts = opts
        self.process = process
        self.ps = psutil.Process(process.pid)

    def _tree(self) -> list[psutil.Process]:
        with contextlib.suppress(psutil.Error):
            return [self.ps, *self.ps.children(recursive=True)]
        return []

    def rss_bytes(self) -> int:
        total = 0
        for proc in self._tree():
            with contextlib.suppress(psutil.Error):
                total += proc.memory_info().rss
        return total

    def cpu_seconds(self) -> float:
        total = 0.0
        for proc in self._tree():
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                total += times.user + times.system
        return total

    def alive(self) -> bool:
        return self.process.returncode is None

    def kernel_send_queue_bytes(self) -> int:
        """Bytes the kernel holds, written by the server but not yet acknowledged by clients.

        Summed over the server's established TCP sockets (``tx_queue`` in /proc/net/tcp). A slow
        reader's backlog sits here first -- several MiB per socket on loopback -- before it can
        show up in the server's RSS, so the slow-consumer scenario reports both.
        """
        wanted = f":{self.opts.port:04X}"
        total = 0
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with contextlib.suppress(OSError), open(table) as lines:
                next(lines, None)
                for line in lines:
                    fields = line.split()
                    if fields[1].endswith(wanted) and fields[3] == "01":
                        total += int(fields[4].split(":")[0], 16)
        return total


async def _healthy(port: int) -> bool:
    try:
        sock = trio.socket.socket()
        with sock:
            await sock.connect((HOST, port))
            await sock.send(f"GET /healthz HTTP/1.1\r\nHost: {HOST}:{port}\r\n\r\n".encode())
            data = await sock.recv(4096)
            return data.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200"))
    except OSError:
        return False


def _log_tail(path: Path, offset: int, lines: int = 5) -> str:
    """The last ``lines`` lines this start wrote to the (shared, appended) server log."""
    with contextlib.suppress(OSError), path.open("rb") as log:
        log.seek(offset)
        text = log.read().decode(errors="replace").strip()
        return " | ".join(text.splitlines()[-lines:])
    return ""


@contextlib.asynccontextmanager
async def run_server(
    spec: ServerSpec,
    *,
    ping_interval_s: float,
    json_response: bool = False,
    log_path: Path,
    ready_timeout_s: float = 30.0,
) -> AsyncIterator[ServerProcess]:
    """Start ``spec`` on a free port, wait for /healthz, yield it, then stop it (TERM, KILL)."""
    opts = LaunchOptions(free_port(), new_token(), ping_interval_s, json_response)
    env = _env(spec)
    env.update(
        LOCAL_BEARER_TOKEN=opts.token,
        DATAPULSE_PING_INTERVAL=f"{ping_interval_s:g}",
        PYTHONUNBUFFERED="1",
        NODE_ENV="production",
    )
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        log.write(f"\n==== {time.strftime('%H:%M:%S')} {spec.command(opts)}\n".encode())
        log.flush()
        offset = log.tell()
        process = await trio.lowlevel.open_process(
            spec.command(opts),
            cwd=spec.checkout,
            env=env,
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )
        try:
            ready = False
            with trio.move_on_after(ready_timeout_s):
                while not await _healthy(opts.port):
                    if process.poll() is not None:
                        raise ServerUnavailable(
                            f"{spec.name} exited with {process.returncode} before it was ready: "
                            f"{_log_tail(log_path, offset)}"
                        )
                    await trio.sleep(0.1)
                ready = True
            if not ready:
                raise ServerUnavailable(
                    f"{spec.name} not ready on /healthz within {ready_timeout_s:g} s: "
                    f"{_log_tail(log_path, offset)}"
                )
            yield ServerProcess(spec, opts, process)
        finally:
            await _stop(process)


async def _stop(process: trio.Process) -> None:
    with trio.CancelScope(shield=True):
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            with trio.move_on_after(5):
                await process.wait()
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            with trio.move_on_after(5):
                await process.wait()
