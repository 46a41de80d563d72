"""Config: every setting in one frozen dataclass, units in the field names.

Each field's metadata names its CLI flag and environment variable; ``__main__`` builds argparse
from it and the README's settings table lists the same, so the three cannot drift apart (a test
checks the README against this file).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit


def _setting(default: Any, flag: str, env: str, help: str) -> Any:
    return field(default=default, metadata={"flag": flag, "env": env, "help": help})


MiB = 1024 * 1024


@dataclass(frozen=True)
class Config:
    # Network
    host: str = _setting("127.0.0.1", "--host", "DATAPULSE_HOST", "address to bind")
    port: int = _setting(8000, "--port", "DATAPULSE_PORT", "TCP port to bind (0 picks a free one)")
    # Auth
    token: str | None = _setting(
        None,
        "--token",
        "LOCAL_BEARER_TOKEN",
        "shared bearer token; when neither it nor JWT settings are given, a random one is printed",
    )
    jwt_issuer: str | None = _setting(
        None,
        "--jwt-issuer",
        "JWT_ISSUER",
        "JWT issuer: tokens' iss must equal it exactly; its OIDC/RFC 8414 metadata names the keys",
    )
    jwt_audience: str | None = _setting(
        None, "--jwt-audience", "JWT_AUDIENCE", "audience a JWT must contain"
    )
    jwt_key: str | None = _setting(
        None, "--jwt-key", "JWT_KEY", "static PEM public key for JWTs (instead of JWKS)"
    )
    jwt_jwks_uri: str | None = _setting(
        None, "--jwt-jwks-uri", "JWT_JWKS_URI", "JWKS URL (skips OIDC discovery)"
    )
    jwt_algorithms: str = _setting(
        "RS256,ES256,PS256", "--jwt-algorithms", "JWT_ALGORITHMS", "allowed JWT algorithms"
    )
    jwt_leeway_s: float = _setting(
        60.0, "--jwt-leeway", "JWT_LEEWAY", "clock leeway for exp/nbf/iat, seconds"
    )
    resource_url: str = _setting(
        "",
        "--resource-url",
        "DATAPULSE_RESOURCE_URL",
        "canonical URL clients use for this server (OAuth resource metadata)",
    )
    cors_origins: str = _setting(
        "",
        "--cors-origins",
        "DATAPULSE_CORS_ORIGINS",
        "comma-separated browser origins allowed to call the API cross-origin (CORS)",
    )
    ticket_resume_window_s: float = _setting(
        300.0,
        "--ticket-resume-window",
        "DATAPULSE_TICKET_RESUME_WINDOW",
        "seconds after a ticket-opened stream was cut during which its spent ticket may resume it",
    )
    # Streams and sessions
    ping_interval_s: float = _setting(
        15.0, "--ping-interval", "DATAPULSE_PING_INTERVAL", "idle seconds before a ': ping'"
    )
    session_ttl_s: float = _setting(
        3600.0, "--session-ttl", "DATAPULSE_SESSION_TTL", "idle seconds before a session expires"
    )
    sweep_interval_s: float = _setting(
        30.0, "--sweep-interval", "DATAPULSE_SWEEP_INTERVAL", "seconds between expiry sweeps"
    )
    retry_ms: int = _setting(
        3000, "--retry-ms", "DATAPULSE_RETRY_MS", "reconnect delay hinted to SSE clients (ms)"
    )
    replay_events: int = _setting(
        1000, "--replay-events", "DATAPULSE_REPLAY_EVENTS", "events kept per stream for replay"
    )
    replay_bytes: int = _setting(
        4 * MiB, "--replay-bytes", "DATAPULSE_REPLAY_BYTES", "bytes kept per stream for replay"
    )
    write_timeout_s: float = _setting(
        30.0, "--write-timeout", "DATAPULSE_WRITE_TIMEOUT", "seconds one socket write may block"
    )
    max_sessions: int = _setting(
        10_000, "--max-sessions", "DATAPULSE_MAX_SESSIONS", "sessions held at once"
    )
    # HTTP limits
    max_connections: int = _setting(
        20_000, "--max-connections", "DATAPULSE_MAX_CONNECTIONS", "open connections at once"
    )
    max_body_bytes: int = _setting(
        1 * MiB, "--max-body", "DATAPULSE_MAX_BODY", "largest request body (bytes)"
    )
    max_header_bytes: int = _setting(
        16 * 1024, "--max-header-bytes", "DATAPULSE_MAX_HEADER_BYTES", "largest header block"
    )
    max_header_count: int = _setting(
        100, "--max-header-count", "DATAPULSE_MAX_HEADER_COUNT", "most header fields"
    )
    read_timeout_s: float = _setting(
        10.0, "--read-timeout", "DATAPULSE_READ_TIMEOUT", "seconds to receive a whole request"
    )
    keepalive_timeout_s: float = _setting(
        30.0, "--keepalive-timeout", "DATAPULSE_KEEPALIVE_TIMEOUT", "idle keep-alive seconds"
    )
    shutdown_grace_s: float = _setting(
        5.0, "--shutdown-grace", "DATAPULSE_SHUTDOWN_GRACE", "seconds in-flight work gets at exit"
    )
    # MCP
    json_response: bool = _setting(
        False,
        "--json-response",
        "DATAPULSE_JSON_RESPONSE",
        "answer every /mcp request as application/json, never as an SSE stream",
    )
    allowed_origins: str = _setting(
        "",
        "--allowed-origins",
        "DATAPULSE_ALLOWED_ORIGINS",
        "comma-separated browser origins allowed besides localhost ones (DNS-rebinding guard)",
    )
    max_calls_per_session: int = _setting(
        16, "--max-calls-per-session", "DATAPULSE_MAX_CALLS_PER_SESSION", "concurrent tool calls"
    )
    call_timeout_s: float = _setting(
        300.0, "--call-timeout", "DATAPULSE_CALL_TIMEOUT", "seconds one tool call may run"
    )
    # Tools
    fetch_timeout_s: float = _setting(
        5.0, "--fetch-timeout", "DATAPULSE_FETCH_TIMEOUT", "fetch_url total timeout (seconds)"
    )
    fetch_allow_private: bool = _setting(
        False,
        "--fetch-allow-private",
        "DATAPULSE_FETCH_ALLOW_PRIVATE",
        "let fetch_url reach loopback/private addresses (local testing only)",
    )
    # Limits (each documented in docs/limits.md: default, status, rationale)
    max_connections_per_ip: int = _setting(
        1000,
        "--max-connections-per-ip",
        "DATAPULSE_MAX_CONNECTIONS_PER_IP",
        "open connections from one client address (429 beyond)",
    )
    max_sessions_per_principal: int = _setting(
        1000,
        "--max-sessions-per-principal",
        "DATAPULSE_MAX_SESSIONS_PER_PRINCIPAL",
        "sessions one principal may hold at once (429 beyond)",
    )
    max_json_depth: int = _setting(
        64, "--max-json-depth", "DATAPULSE_MAX_JSON_DEPTH", "deepest JSON-RPC body nesting (-32600)"
    )
    max_batch_items: int = _setting(
        50,
        "--max-batch-items",
        "DATAPULSE_MAX_BATCH_ITEMS",
        "most messages in one JSON-RPC batch (-32600)",
    )
    # Misc
    log_level: str = _setting("INFO", "--log-level", "DATAPULSE_LOG_LEVEL", "logging level")
    # Reverse proxies (docs/deploy-nginx.md)
    allowed_hosts: str = _setting(
        "",
        "--allowed-hosts",
        "DATAPULSE_ALLOWED_HOSTS",
        "comma-separated Host names answered besides loopback ones (DNS-rebinding guard; * any)",
    )
    trusted_proxies: str = _setting(
        "",
        "--trusted-proxies",
        "DATAPULSE_TRUSTED_PROXIES",
        "comma-separated proxy addresses/CIDRs whose forwarded client, scheme and host are believed",
    )
    proxy_headers: str = _setting(
        "x-forwarded",
        "--proxy-headers",
        "DATAPULSE_PROXY_HEADERS",
        "which headers trusted proxies write: x-forwarded (X-Forwarded-*) or forwarded (RFC 7239)",
    )
    log_format: str = _setting(
        "auto",
        "--log-format",
        "DATAPULSE_LOG_FORMAT",
        "log lines: json (one object per line) or text; auto: text on a terminal, else json",
    )
    metrics_port: int = _setting(
        0,
        "--metrics-port",
        "DATAPULSE_METRICS_PORT",
        "serve /metrics without auth on this loopback port (0: off; /metrics then needs the token)",
    )
    # Scale-out: the shared session store
    redis_url: str = _setting(
        "",
        "--redis-url",
        "DATAPULSE_REDIS_URL",
        "share sessions through Redis: redis://[user:password@]host[:port][/db] or rediss://"
        " (TLS, ?ssl_ca_certs=FILE); empty: in memory, this process only",
    )
    redis_prefix: str = _setting(
        "datapulse",
        "--redis-prefix",
        "DATAPULSE_REDIS_PREFIX",
        "prefix of every Redis key (deployments sharing one Redis use different ones)",
    )
    redis_timeout_s: float = _setting(
        2.0,
        "--redis-timeout",
        "DATAPULSE_REDIS_TIMEOUT",
        "seconds one store call may wait for Redis, reconnects and retries included",
    )
    workers: int = _setting(
        1,
        "--workers",
        "DATAPULSE_WORKERS",
        "server processes sharing the port (needs --redis-url: they share sessions through it)",
    )
    # Asking the client mid-call (elicitation, sampling, roots)
    input_timeout_s: float = _setting(
        300.0,
        "--input-timeout",
        "DATAPULSE_INPUT_TIMEOUT",
        "seconds a client may take to answer a tool's question; also how long a 2026-07-28"
        " requestState stays valid",
    )
    request_state_keys: str = _setting(
        "",
        "--request-state-keys",
        "DATAPULSE_REQUEST_STATE_KEYS",
        "comma-separated secrets sealing 2026-07-28 requestState (the first seals, all open:"
        " rotate by adding one in front); default: a random key per process",
    )
    # Tasks (tools that outlast their request)
    task_ttl_s: float = _setting(
        3600.0,
        "--task-ttl",
        "DATAPULSE_TASK_TTL",
        "seconds a task and its result are kept when the client asks for no TTL (at most 24 h)",
    )
    max_tasks_per_principal: int = _setting(
        100,
        "--max-tasks-per-principal",
        "DATAPULSE_MAX_TASKS_PER_PRINCIPAL",
        "tasks one principal may hold at once (running or finished, until their TTL)",
    )
    # The app
    app: str = _setting(
        "",
        "--app",
        "DATAPULSE_APP",
        "what to serve: path/to/app.py:server or package.module:server (default: the built-ins)",
    )

    def __post_init__(self) -> None:
        positive = [
            "ping_interval_s",
            "session_ttl_s",
            "sweep_interval_s",
            "read_timeout_s",
            "keepalive_timeout_s",
            "write_timeout_s",
            "fetch_timeout_s",
            "call_timeout_s",
            "input_timeout_s",
            "task_ttl_s",
            "redis_timeout_s",
        ]
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")
        for name in [
            "replay_events",
            "replay_bytes",
            "max_sessions",
            "max_connections",
            "max_body_bytes",
            "max_header_bytes",
            "max_header_count",
            "max_calls_per_session",
            "max_connections_per_ip",
            "max_sessions_per_principal",
            "max_json_depth",
            "max_batch_items",
            "max_tasks_per_principal",
            "workers",
        ]:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.workers > 1 and not self.redis_url:
            raise ValueError(
                "--workers needs --redis-url: each worker is a process of its own, and they"
                " share sessions only through Redis"
            )
        if self.task_ttl_s > 86_400:
            raise ValueError("task_ttl_s must be at most 86400 (24 h)")
        for name in ("port", "metrics_port"):
            if not 0 <= getattr(self, name) <= 65535:
                raise ValueError(f"{name} must be 0..65535")
        if self.shutdown_grace_s < 0 or self.retry_ms < 0 or self.jwt_leeway_s < 0:
            raise ValueError("shutdown_grace_s, retry_ms and jwt_leeway_s must be >= 0")
        if self.ticket_resume_window_s < 0:
            raise ValueError("ticket_resume_window_s must be >= 0")
        if self.redis_url and urlsplit(self.redis_url).scheme not in ("redis", "rediss"):
            raise ValueError("redis_url must be redis://... or rediss://...")
        prefix = self.redis_prefix
        if not (0 < len(prefix) <= 100 and prefix.isprintable() and prefix.isascii()) or any(
            c in prefix for c in "{} "
        ):
            raise ValueError("redis_prefix must be 1-100 visible ASCII characters without braces")
        if self.log_format not in ("auto", "json", "text"):
            raise ValueError("log_format must be json, text or auto")
        if self.proxy_headers not in ("x-forwarded", "forwarded"):
            raise ValueError("proxy_headers must be x-forwarded or forwarded")
        for item in filter(None, (p.strip() for p in self.trusted_proxies.split(","))):
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"trusted_proxies: not an address or CIDR: {item!r}") from None
        if self.resource_url:
            url = urlsplit(self.resource_url)
            if url.scheme not in ("http", "https") or not url.netloc or url.query or url.fragment:
                raise ValueError("resource_url must be an http(s) URL without query or fragment")

    @property
    def jwt_enabled(self) -> bool:
        return bool(self.jwt_issuer or self.jwt_key or self.jwt_jwks_uri)

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)


def settings() -> list[dataclasses.Field[Any]]:
    """The Config fields that are user settings, in declaration order."""
    return [f for f in dataclasses.fields(Config) if "flag" in f.metadata]


def parse_value(f: dataclasses.Field[Any], raw: str) -> Any:
    """Convert a CLI/env string to the field's type."""
    kind = str(f.type)
    if "bool" in kind:
        lowered = raw.strip().lower()
        if lowered in {"1", "true", "yes", "on"}:
            return True
        if lowered in {"0", "false", "no", "off", ""}:
            return False
        raise ValueError(f"{f.metadata['env']}: expected a boolean, got {raw!r}")
    if "int" in kind and "float" not in kind:
        return int(raw)
    if "float" in kind:
        return float(raw)
    return raw


def config_from_env(environ: Mapping[str, str] | None = None, **overrides: Any) -> Config:
    """Build a Config from environment variables, then explicit overrides."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in settings():
        env = f.metadata["env"]
        if env in environ:
            values[f.name] = parse_value(f, environ[env])
    values.update({k: v for k, v in overrides.items() if v is not None})
    return Config(**values)


def default_text(f: dataclasses.Field[Any]) -> str:
    """A setting's default as ``--help`` and the README show it."""
    default = f.default
    if f.name == "token":
        return "random, printed at start"
    if f.name == "resource_url":
        return "the bound URL"
    if default is None or default == "":
        return "-"
    return str(default)


def settings_table() -> str:
    """The README's settings table (Markdown), generated from the fields above."""
    rows = ["| flag | env variable | default | meaning |", "|---|---|---|---|"]
    for f in settings():
        default = default_text(f)
        rows.append(
            f"| `{f.metadata['flag']}` | `{f.metadata['env']}` | {default} | {f.metadata['help']} |"
        )
    return "\n".join(rows) + "\n"
