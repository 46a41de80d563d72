"""A private ``redis-server`` for tests: Debian's package, on a free loopback port, in a temp dir.

``RedisServer(directory)`` starts nothing until ``start()``; ``stop()`` ends it by its PID
(SIGTERM, then SIGKILL), ``restart()`` brings it back on the same port, ``pause()``/``resume()``
SIGSTOP/SIGCONT it. Persistence is off (``--save '' --appendonly no``) unless a test asks
(``persist=True``: an fsync'd append-only file, so a restart keeps the data). ``cluster=True``
makes it a one-node Redis Cluster holding every slot: the server then refuses any command or
script whose keys are in different slots (CROSSSLOT), which is how the tests check the store's
hash tags. ``tls=True`` serves TLS only, with a fresh CA (``ca_file``). ``users`` adds ACL users
(name -> password) and turns the passwordless default user off.

Nothing is skipped: without ``redis-server`` the fixtures fail, saying how to install it
(``.ci/run`` does). The fixtures: ``redis_server`` (one per test) and ``shared_redis`` (one per
session, for tests that keep apart by key prefix).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

REDIS_SERVER = "redis-server"
REDIS_CLI = "redis-cli"
START_TIMEOUT_S = 10.0
INSTALL_HINT = (
    "redis-server is not installed: the Redis store tests need Debian's redis-server package "
    "(apt-get install -y redis-server; .ci/run installs it)"
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def redis_binary(name: str = REDIS_SERVER) -> str:
    found = shutil.which(name) or (
        f"/usr/bin/{name}" if os.access(f"/usr/bin/{name}", os.X_OK) else None
    )
    if found is None:
        pytest.fail(INSTALL_HINT, pytrace=False)
    return found


def _write_tls_files(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for localhost and 127.0.0.1 (cryptography, no CLI)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "datapulse test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    ca_file, cert_file, key_file = (
        directory / "ca.pem",
        directory / "server.pem",
        directory / "server.key",
    )
    ca_file.write_bytes(ca.public_bytes(pem))
    cert_file.write_bytes(cert.public_bytes(pem))
    key_file.write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return ca_file, cert_file, key_file


class RedisServer:
    def __init__(
        self,
        directory: Path,
        *,
        persist: bool = False,
        cluster: bool = False,
        tls: bool = False,
        users: Mapping[str, str] | None = None,
        args: Sequence[str] = (),
    ) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.persist = persist
        self.cluster = cluster
        self.tls = tls
        self.users = dict(users or {})
        self.extra_args = list(args)
        self.port = free_port()
        self.cluster_port = free_port() if cluster else 0
        self.log_file = directory / "redis.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.ca_file: Path | None = None
        if tls:
            self.ca_file, self._cert_file, self._key_file = _write_tls_files(directory)

    # -- addresses -----------------------------------------------------------------------

    def url(
        self, user: str | None = None, password: str | None = None, host: str = "127.0.0.1"
    ) -> str:
        from urllib.parse import quote

        auth = ""
        if user is not None or password is not None:
            auth = (
                quote(user or "", safe="")
                + (":" + quote(password, safe="") if password is not None else "")
                + "@"
            )
        if self.tls:
            assert self.ca_file is not None
            return f"rediss://{auth}{host}:{self.port}/0?ssl_ca_certs={quote(str(self.ca_file))}"
        return f"redis://{auth}{host}:{self.port}/0"

    @property
    def pid(self) -> int:
        assert self.process is not None, "the redis-server is not running"
        return self.process.pid

    # -- running -------------------------------------------------------------------------

    def command(self) -> list[str]:
        options: list[tuple[str, str]] = [
            ("bind", "127.0.0.1"),
            ("dir", str(self.directory)),
            ("logfile", str(self.log_file)),
            ("daemonize", "no"),
            ("databases", "1"),
        ]
        if self.tls:
            options += [
                ("port", "0"),
                ("tls-port", str(self.port)),
                ("tls-cert-file", str(self._cert_file)),
                ("tls-key-file", str(self._key_file)),
                ("tls-ca-cert-file", str(self.ca_file)),
                ("tls-auth-clients", "no"),
            ]
        else:
            options.append(("port", str(self.port)))
        options.append(("save", ""))
        if self.persist:
            options += [("appendonly", "yes"), ("appendfsync", "always")]
        else:
            options.append(("appendonly", "no"))
        if self.cluster:
            options += [
                ("cluster-enabled", "yes"),
                ("cluster-config-file", str(self.directory / "nodes.conf")),
                # Explicit: the default (port + 10000) does not exist for ports above 55535.
                ("cluster-port", str(self.cluster_port)),
            ]
        argv = [redis_binary()]
        for name, value in options:
            argv += [f"--{name}", value]
        for user, password in self.users.items():
            argv += ["--user", user, "on", f">{password}", "~*", "&*", "+@all"]
        if self.users:
            argv += ["--user", "default", "off"]
        return argv + self.extra_args

    def start(self) -> RedisServer:
        assert self.process is None, "already running"
        offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        self.process = subprocess.Popen(
            self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            log = self._log_since(offset)
            if "Ready to accept connections" in log:
                break
            if self.process.poll() is not None:
                err = (
                    self.process.stderr.read().decode(errors="replace")
                    if self.process.stderr
                    else ""
                )
                self.process = None
                raise RuntimeError(f"redis-server exited at start:\n{err}\n{log[-2000:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"redis-server not ready within {START_TIMEOUT_S}s:\n{log[-2000:]}"
                )
            time.sleep(0.01)
        if self.cluster:
            self._claim_all_slots()
        return self

    def _log_since(self, offset: int) -> str:
        try:
            with self.log_file.open("rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def cli(self, *args: str) -> str:
        """``redis-cli`` against this server (the test's own admin channel, not the store's)."""
        argv = [redis_binary(REDIS_CLI), "-h", "127.0.0.1", "-p", str(self.port)]
        if self.tls:
            argv += ["--tls", "--cacert", str(self.ca_file)]
        if self.users:
            name, password = next(iter(self.users.items()))
            argv += ["--user", name, "--pass", password, "--no-auth-warning"]
        done = subprocess.run([*argv, *args], capture_output=True, timeout=10, check=True)
        return done.stdout.decode().strip()

    def _claim_all_slots(self) -> None:
        if "cluster_state:ok" not in self.cli("cluster", "info"):
            self.cli("cluster", "addslotsrange", "0", "16383")
        deadline = time.monotonic() + START_TIMEOUT_S
        while "cluster_state:ok" not in self.cli("cluster", "info"):
            if time.monotonic() > deadline:
                raise RuntimeError("the one-node cluster did not come up")
            time.sleep(0.02)

    def stop(self) -> None:
        """End the server by its PID: SIGTERM (SIGCONT first, should it be paused), then
        SIGKILL if it is still there after 5 s. Idempotent."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            os.kill(process.pid, signal.SIGCONT)
            os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait(5)
        if process.stderr is not None:
            process.stderr.close()

    def restart(self) -> None:
        """Stop, then start again on the same port (and, with ``persist``, the same data)."""
        self.stop()
        self.start()

    def pause(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own (stopped after it)."""
    with RedisServer(tmp_path / "redis") as server:
        yield server


@pytest.fixture(scope="session")
def shared_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the whole run, for tests kept apart by key prefix."""
    with RedisServer(tmp_path_factory.mktemp("redis-shared")) as server:
        yield server


@pytest.fixture(scope="session")
def shared_redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One one-node Redis Cluster (every slot) for the whole run: CROSSSLOT is refused."""
    with RedisServer(tmp_path_factory.mktemp("redis-cluster"), cluster=True) as server:
        yield server
