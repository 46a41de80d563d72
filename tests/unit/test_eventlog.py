"""ReplayLog bounds and replay semantics, and the session record's TTL arithmetic."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from datapulse.core.eventlog import ReplayGone, ReplayLog, parse_event_id
from datapulse.core.session import SessionRecord, new_session_id, valid_session_id


def test_ids_are_sequential_and_framed_once() -> None:
    log = ReplayLog(10, 10_000)
    first = log.append('{"a":1}')
    second = log.append('{"a":2}', event="message")
    assert (first.seq, second.seq) == (1, 2)
    assert first.wire == b'id: 1\ndata: {"a":1}\n\n'
    assert second.wire == b'event: message\nid: 2\ndata: {"a":2}\n\n'
    assert [e.seq for e in log.events_after(0)] == [1, 2]
    assert [e.seq for e in log.events_after(1)] == [2]
    assert log.events_after(2) == []


def test_count_bound_evicts_oldest_and_reports_gap() -> None:
    log = ReplayLog(3, 10_000)
    for i in range(5):
        log.append(str(i))
    assert len(log) == 3
    assert log.oldest_seq == 3
    assert [e.seq for e in log.events_after(2)] == [3, 4, 5]
    with pytest.raises(ReplayGone) as gone:
        log.events_after(1)
    assert gone.value.oldest == 3


def test_byte_bound_holds_but_keeps_newest() -> None:
    log = ReplayLog(1000, 100)
    for _ in range(50):
        log.append("x" * 30)
    assert log.size_bytes <= 100
    log.append("y" * 500)  # larger than the whole bound: still kept, alone
    assert len(log) == 1
    assert log.events_after(log.last_seq - 1)[0].seq == log.last_seq


@given(
    max_events=st.integers(1, 20),
    max_bytes=st.integers(1, 2000),
    sizes=st.lists(st.integers(0, 100), max_size=60),
    after=st.integers(0, 70),
)
def test_replay_is_ordered_without_duplicates_or_silent_gaps(
    max_events: int, max_bytes: int, sizes: list[int], after: int
) -> None:
    log = ReplayLog(max_events, max_bytes)
    for size in sizes:
        log.append("d" * size)
    assert len(log) <= max_events
    assert len(log) <= 1 or log.size_bytes <= max_bytes
    try:
        replay = log.events_after(after)
    except ReplayGone as gone:
        assert after + 1 < gone.oldest
        return
    seqs = [e.seq for e in replay]
    assert seqs == list(range(after + 1, log.last_seq + 1))


@pytest.mark.parametrize(
    ("raw", "parsed"),
    [("12", 12), (" 3 ", 3), ("", None), ("x", None), ("-1", None), ("1e3", None)],
)
def test_parse_event_id(raw: str, parsed: int | None) -> None:
    assert parse_event_id(raw) == parsed


def test_session_ttl_is_refreshed_by_activity() -> None:
    rec = SessionRecord("s", "owner", "events", created_at=0, last_active=0, ttl_s=10)
    assert not rec.is_expired(9.9)
    rec.touch(5)
    assert rec.expires_at == 15
    assert rec.is_expired(15)
    rec.touch(1)  # time never goes backwards for a record
    assert rec.expires_at == 15


def test_session_ids() -> None:
    ids = {new_session_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(valid_session_id(i) and len(i) == 32 for i in ids)
    assert not valid_session_id("")
    assert not valid_session_id("a b")
    assert not valid_session_id("x" * 129)
