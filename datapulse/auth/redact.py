"""Keeping credentials out of every log line datapulse emits.

Our own log lines print paths, never headers or query strings, but some quote what a client
sent: h11 quotes a malformed request line (target and all), a 400 may quote a header line, an
exception message may carry a value. So every record is rewritten on its way out:

* ``Bearer <x>`` (any case) and ``Authorization: <scheme> <x>`` -> ``<redacted>``;
* JWT-shaped strings (three base64url segments, the first a JSON object's ``ey...``, or three
  long ones) -> ``<redacted-jwt>``;
* credential query parameters (``ticket=``, ``token=``, ``access_token=``, any ``*_token=``);
* the configured local bearer token itself, wherever it appears (``add_secret``).

``install_redactor`` puts one ``SecretRedactor`` on every ``datapulse.*`` logger (a logger's
filter sees only records logged on that very logger, not its children's, hence each of them);
``redact_handlers`` puts one on handlers, which see every record that reaches them (the CLI
does this for the root handler it installs, so third-party loggers are covered there too).
Pure standard library.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

REDACTED = "<redacted>"

# Query parameters whose values are credentials (ours, and the ones clients wrongly send).
_SECRET_PARAM = re.compile(r"(?i)\b(ticket|[a-z_]*token)=[^&\s'\"\\]*")
# The credentials of an Authorization header, quoted in any form (``Authorization : Basic x``).
_AUTHORIZATION = re.compile(r"(?i)\b(authorization\s*[:=]\s*)[^\s'\",;]+(?:[ \t]+[^\s'\",;]+)?")
# ``Bearer <token>``: the token runs to the next space, quote or comma; repr() escapes (``\x0b``)
# are taken along, so a token split by a control character is hidden whole. Our own messages'
# "bearer token" and "Bearer scheme" are words, not tokens.
_BEARER = re.compile(
    r"(?i)\b(bearer)(?:[\s\x00-\x1f]+|\\x[0-9a-f]{2}|\\[tnrv0])+"
    r"(?!(?:token|tokens|scheme)\b)[^\s'\",;]+"
)
# A JWS/JWE compact serialization: its header is base64url JSON (``{"`` -> ``ey``); or any three
# long base64url segments. Dotted host and module names are too short to match the second.
_JWT = re.compile(
    r"(?<![A-Za-z0-9_-])(?:ey[A-Za-z0-9_-]{6,}\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"
    r"|[A-Za-z0-9_-]{20,}\.[A-Za-z0-9_-]{20,}\.[A-Za-z0-9_-]{20,})"
)
#: Secrets shorter than this are not replaced literally (a 3-letter token would blank out every
#: word that contains it); the patterns above still hide them where they are used as tokens.
MIN_LITERAL_SECRET = 8
_MAX_SECRETS = 64
_secrets: dict[str, None] = {}  # insertion-ordered set: the newest _MAX_SECRETS are kept


def add_secret(secret: str | None) -> None:
    """Redact ``secret`` literally from every log line from now on (the local bearer token)."""
    if not secret or len(secret) < MIN_LITERAL_SECRET:
        return
    _secrets.pop(secret, None)
    _secrets[secret] = None
    while len(_secrets) > _MAX_SECRETS:
        del _secrets[next(iter(_secrets))]


def redact(text: str) -> str:
    """``...?ticket=abc&x=1`` -> ``...?ticket=<redacted>&x=1``; see the module docstring."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    text = _AUTHORIZATION.sub(lambda m: f"{m.group(1)}{REDACTED}", text)
    text = _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    text = _JWT.sub("<redacted-jwt>", text)
    return _SECRET_PARAM.sub(lambda m: f"{m.group(1)}={REDACTED}", text)


class SecretRedactor(logging.Filter):
    """Rewrites a record whose message, traceback or stack carries a credential."""

    _format_exception = logging.Formatter().formatException

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: leave it to the handler to report
            return True
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            # Formatters use exc_text when it is set: the redacted traceback is what is printed.
            record.exc_text = self._format_exception(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


#: The loggers datapulse logs on (every ``datapulse.*`` logger that exists is covered as well).
REDACTED_LOGGERS = (
    "datapulse",
    *(
        f"datapulse.{name}"
        for name in (
            "auth",
            "dispatch",
            "events",
            "http",
            "mcp",
            "server",
            "sessions",
            "sse",
            "stream",
            "ws",
        )
    ),
)


def _ours(name: str) -> bool:
    return name == "datapulse" or name.startswith("datapulse.")


def install_redactor(names: Iterable[str] = REDACTED_LOGGERS) -> None:
    """Attach one SecretRedactor to each named logger and to every ``datapulse.*`` logger that
    exists now (idempotent; ``Server`` calls it when built, after every module has loaded)."""
    existing = [name for name in list(logging.Logger.manager.loggerDict) if _ours(name)]
    for name in {*names, *existing}:
        logger = logging.getLogger(name)
        if not any(isinstance(f, SecretRedactor) for f in logger.filters):
            logger.addFilter(SecretRedactor())


def redact_handlers(handlers: Iterable[logging.Handler]) -> None:
    """Attach one SecretRedactor to each handler (idempotent): it sees every record it prints."""
    for handler in handlers:
        if not any(isinstance(f, SecretRedactor) for f in handler.filters):
            handler.addFilter(SecretRedactor())
