"""logs.py: the JSON line, the format choice, request ids; config's log_format."""

from __future__ import annotations

import io
import json
import logging
import re

import pytest

from datapulse.auth.redact import install_redactor, redact, redact_handlers
from datapulse.config import Config, config_from_env
from datapulse.logs import REQUEST_ID, JsonFormatter, make_handler, resolve_format, rfc3339
from datapulse.net.connection import request_id_for
from datapulse.net.http import Request

JWT = (
    "eyJhbGciOiJSUzI1NiIsImtpZCI6ImsxIn0"
    ".eyJzdWIiOiJhbGljZSIsImF1ZCI6Imh0dHBzOi8vbWNwLmV4YW1wbGUudGVzdCJ9"
    ".c2lnbmF0dXJlLXRoYXQtd291bGQtb3Blbi10aGUtZG9vcg"
)


def _record(msg: str = "hello %s", args: tuple[object, ...] = ("world",), **extra: object):
    record = logging.LogRecord("datapulse.access", logging.INFO, __file__, 1, msg, args, None)
    record.created = 1700000000.1234
    record.__dict__.update(extra)
    return record


def test_a_json_line_has_time_level_logger_event_and_the_known_fields() -> None:
    line = JsonFormatter().format(
        _record(status=200, duration_ms=1.5, path="/mcp", principal_id="p1", other="x")
    )
    assert "\n" not in line
    data = json.loads(line)
    assert data == {
        "time": "2023-11-14T22:13:20.123Z",
        "level": "INFO",
        "logger": "datapulse.access",
        "event": "hello world",
        "principal_id": "p1",
        "path": "/mcp",
        "status": 200,
        "duration_ms": 1.5,
    }


def test_rfc3339_is_utc_with_a_z() -> None:
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", rfc3339(0.5))
    assert rfc3339(0) == "1970-01-01T00:00:00.000Z"


def test_the_request_id_comes_from_the_context_when_the_record_has_none() -> None:
    token = REQUEST_ID.set("abc123")
    try:
        assert json.loads(JsonFormatter().format(_record()))["request_id"] == "abc123"
        assert json.loads(JsonFormatter().format(_record(request_id="x")))["request_id"] == "x"
    finally:
        REQUEST_ID.reset(token)
    assert "request_id" not in json.loads(JsonFormatter().format(_record()))


def test_a_traceback_is_one_field_and_redacted() -> None:
    try:
        raise RuntimeError(f"Authorization: Bearer {JWT}")
    except RuntimeError:
        record = logging.LogRecord("datapulse", logging.ERROR, __file__, 1, "boom", (), None)
        import sys

        record.exc_info = sys.exc_info()
    line = JsonFormatter(redact).format(record)
    assert JWT not in line
    assert "RuntimeError" in json.loads(line)["exc"]


def test_the_json_formatter_redacts_the_structured_fields() -> None:
    """extra= fields are not the message: the SecretRedactor filter never sees them."""
    record = _record(request_id=JWT, path="/x", session_id="ticket=abc")
    line = JsonFormatter(redact).format(record)
    assert JWT not in line and "ticket=abc" not in line
    assert json.loads(line)["request_id"] == "<redacted-jwt>"


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_every_line_is_redacted_in_both_formats(fmt: str) -> None:
    out = io.StringIO()
    handler = make_handler(fmt, out, redact)
    redact_handlers([handler])
    logger = logging.getLogger("datapulse.test_logs")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        logger.info("header: Authorization: Bearer %s", "opaque-credential-123")
        logger.info("GET /events?ticket=secret-ticket-value HTTP/1.1", extra={"path": "/events"})
    finally:
        logger.removeHandler(handler)
    text = out.getvalue()
    assert "opaque-credential-123" not in text and "secret-ticket-value" not in text
    assert text.count("<redacted>") == 2
    lines = text.splitlines()
    assert len(lines) == 2
    if fmt == "json":
        assert [json.loads(line)["logger"] for line in lines] == ["datapulse.test_logs"] * 2
    else:
        assert " INFO datapulse.test_logs: header: Authorization: <redacted>" in lines[0]


def test_install_redactor_still_covers_the_access_and_stream_loggers() -> None:
    import datapulse.live.streams
    import datapulse.net.connection  # noqa: F401

    install_redactor()
    for name in ("datapulse.access", "datapulse.stream"):
        assert logging.getLogger(name).filters


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_auto_is_text_on_a_terminal_and_json_otherwise() -> None:
    assert resolve_format("auto", _Tty()) == "text"
    assert resolve_format("auto", io.StringIO()) == "json"
    assert resolve_format("json", _Tty()) == "json"
    assert resolve_format("text", io.StringIO()) == "text"
    assert isinstance(make_handler("auto", io.StringIO()).formatter, JsonFormatter)
    assert not isinstance(make_handler("auto", _Tty()).formatter, JsonFormatter)


def test_log_format_setting() -> None:
    assert Config().log_format == "auto"
    assert config_from_env({"DATAPULSE_LOG_FORMAT": "json"}).log_format == "json"
    with pytest.raises(ValueError, match="log_format"):
        Config(log_format="xml")


def _request(*headers: tuple[bytes, bytes]) -> Request:
    return Request.from_target("GET", "/healthz", list(headers))


@pytest.mark.parametrize("value", ["a", "req-1.2_3:x/y", "!" * 64, "abc~}{"])
def test_a_client_request_id_of_1_to_64_visible_ascii_is_kept(value: str) -> None:
    assert request_id_for(_request((b"x-request-id", value.encode()))) == value


@pytest.mark.parametrize("value", ["", "a" * 65, "two words", "caf\u00e9", "tab\there", "a\x7f"])
def test_any_other_request_id_is_replaced_by_a_random_one(value: str) -> None:
    header = (b"x-request-id", value.encode())
    generated = request_id_for(_request(header))
    assert re.fullmatch(r"[0-9a-f]{16}", generated)
    assert generated != request_id_for(_request(header))


def test_several_request_id_fields_are_not_one_id() -> None:
    made = request_id_for(_request((b"x-request-id", b"a"), (b"x-request-id", b"b")))
    assert re.fullmatch(r"[0-9a-f]{16}", made)


def test_no_request_id_gets_a_random_one() -> None:
    assert re.fullmatch(r"[0-9a-f]{16}", request_id_for(_request()))
