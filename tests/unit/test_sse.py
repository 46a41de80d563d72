"""SSE framing: unit cases plus property tests against two independent parsers."""

from __future__ import annotations

import re

import pytest
from httpx_sse._decoders import SSEDecoder
from hypothesis import given
from hypothesis import strategies as st

from datapulse.core.sse import (
    PING,
    InvalidEventField,
    SSEEvent,
    SSEParser,
    encode_comment,
    encode_data,
    encode_event,
    encode_retry,
)


def normalise(text: str) -> str:
    """What any SSE parser must give back for a payload: line breaks become LF."""
    return re.sub(r"\r\n|\r", "\n", text)


def httpx_sse_parse(wire: bytes) -> list[tuple[str, str, str]]:
    """httpx-sse's maintained decoder, fed with WHATWG line splitting (CRLF, CR, LF)."""
    decoder = SSEDecoder()
    out = []
    text = wire.decode()
    for line in re.split(r"\r\n|\r|\n", text)[:-1]:
        event = decoder.decode(line)
        if event is not None:
            out.append((event.event, event.data, event.id))
    return out


single_line = st.text(
    alphabet=st.characters(blacklist_characters="\r\n\x00", blacklist_categories=("Cs",)),
    max_size=30,
)
payloads = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=200)


@st.composite
def sse_events(draw: st.DrawFn) -> SSEEvent:
    return SSEEvent(
        data=draw(payloads),
        event=draw(st.none() | single_line.filter(bool)),
        id=draw(st.none() | single_line),
        retry=draw(st.none() | st.integers(0, 10**9)),
    )


@given(events=st.lists(sse_events(), max_size=8), cuts=st.lists(st.integers(0, 4096)))
def test_round_trip_through_our_parser_in_any_chunking(
    events: list[SSEEvent], cuts: list[int]
) -> None:
    wire = b"".join(encode_event(e) for e in events)
    parser = SSEParser()
    got = []
    last = 0
    for cut in [*sorted({c % (len(wire) + 1) for c in cuts}), len(wire)]:
        got.extend(parser.feed(wire[last:cut]))
        last = cut
    expected = [
        SSEEvent(data=normalise(e.data or ""), event=e.event, id=e.id, retry=e.retry)
        for e in events
    ]
    assert got == expected


@given(events=st.lists(sse_events(), max_size=8))
def test_round_trip_through_httpx_sse(events: list[SSEEvent]) -> None:
    wire = b"".join(encode_event(e) for e in events)
    got = httpx_sse_parse(wire)
    # httpx-sse carries the last id forward, as the spec's lastEventId does.
    expected = []
    last_id = ""
    for e in events:
        if e.id is not None:
            last_id = e.id
        expected.append((e.event or "message", normalise(e.data or ""), last_id))
    assert got == expected


@given(data=payloads, event_id=st.none() | single_line)
def test_fast_path_equals_general_encoder(data: str, event_id: str | None) -> None:
    assert encode_data(data, event_id=event_id) == encode_event(SSEEvent(data=data, id=event_id))


@pytest.mark.parametrize("bad", ["a\nb", "a\rb", "a\r\nb", "a\x00b"])
def test_id_with_line_break_or_nul_is_refused(bad: str) -> None:
    with pytest.raises(InvalidEventField):
        encode_event(SSEEvent(data="x", id=bad))
    with pytest.raises(InvalidEventField):
        encode_data("x", event_id=bad)


def test_event_name_with_newline_is_refused() -> None:
    with pytest.raises(InvalidEventField):
        encode_event(SSEEvent(data="x", event="a\nb"))


def test_multiline_payload_gets_one_data_field_per_line() -> None:
    wire = encode_event(SSEEvent(data="one\r\ntwo\rthree\nfour", id="7", event="message"))
    assert wire == (b"event: message\nid: 7\ndata: one\ndata: two\ndata: three\ndata: four\n\n")


def test_leading_space_survives() -> None:
    wire = encode_event(SSEEvent(data="  indented"))
    assert SSEParser().feed(wire) == [SSEEvent(data="  indented")]


def test_comments_retry_and_ping() -> None:
    assert PING == b": ping\n\n"
    assert encode_comment("a\nb") == b": a\n: b\n\n"
    assert encode_retry(1500) == b"retry: 1500\n\n"
    parser = SSEParser()
    assert parser.feed(PING + encode_comment("x")) == []
    assert parser.feed(encode_retry(10)) == [SSEEvent(retry=10)]


def test_parser_handles_crlf_split_across_chunks_and_bom() -> None:
    parser = SSEParser()
    assert parser.feed(b"\xef\xbb\xbfdata: a\r") == []
    assert parser.feed(b"\n\r\n") == [SSEEvent(data="a")]
    assert parser.feed(b"data:b\r\rdata\n\n") == [SSEEvent(data="b"), SSEEvent(data="")]
