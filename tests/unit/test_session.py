"""core.session: id rules and TTL arithmetic, with a fixed ``now``."""

from __future__ import annotations

import pytest

from datapulse.core.session import SessionRecord, new_session_id, valid_session_id


def test_new_ids_are_valid() -> None:
    assert valid_session_id(new_session_id())


@pytest.mark.parametrize("value", ["a", "abc-123_XYZ", "!~", "x" * 128])
def test_valid_ids(value: str) -> None:
    assert valid_session_id(value)


@pytest.mark.parametrize("value", ["", "x" * 129, "a b", "abc\n", "abc\r\n", "\nabc", "é"])
def test_invalid_ids(value: str) -> None:
    # "abc\n" passed re.match(r"^...$"): $ also matches before a trailing newline.
    assert not valid_session_id(value)


def test_ttl() -> None:
    record = SessionRecord("s", "p", "mcp", created_at=10.0, last_active=10.0, ttl_s=5.0)
    assert record.expires_at == 15.0
    assert not record.is_expired(14.9) and record.is_expired(15.0)
    record.touch(12.0)
    record.touch(11.0)  # time never goes back
    assert record.expires_at == 17.0
