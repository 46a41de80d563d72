"""JSON-RPC framing: pure, no sockets, no Trio."""

from __future__ import annotations

import contextlib
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from datapulse.core.jsonrpc import (
    ErrorObject,
    ErrorResponse,
    InvalidRequest,
    Message,
    MethodNotFound,
    Notification,
    ParseError,
    Request,
    Response,
    encode_error,
    encode_notification,
    encode_request,
    encode_result,
    parse_message,
)


def test_parse_request() -> None:
    msg = parse_message(b'{"jsonrpc":"2.0","id":7,"method":"ping"}')
    assert msg == Request(7, "ping", None)


def test_parse_string_id_and_params() -> None:
    msg = parse_message('{"jsonrpc":"2.0","id":"a","method":"m","params":{"x":[1]}}')
    assert msg == Request("a", "m", {"x": [1]})


def test_parse_notification() -> None:
    msg = parse_message(b'{"jsonrpc":"2.0","method":"notifications/initialized"}')
    assert msg == Notification("notifications/initialized", None)


def test_parse_responses() -> None:
    assert parse_message(b'{"jsonrpc":"2.0","id":1,"result":{}}') == Response(1, {})
    err = parse_message(b'{"jsonrpc":"2.0","id":null,"error":{"code":-1,"message":"x","data":3}}')
    assert err == ErrorResponse(None, ErrorObject(-1, "x", 3))


@pytest.mark.parametrize(
    "body",
    [b"", b"{", b"\xff\xfe", b"NaN", b"[1,]", b'{"a":1}}', b"1e999"],
)
def test_parse_error(body: bytes) -> None:
    with pytest.raises(ParseError) as info:
        parse_message(body)
    assert info.value.jsonrpc_code == -32700


@pytest.mark.parametrize(
    ("body", "request_id"),
    [
        (b"1", None),
        (b'"x"', None),
        (b'{"id":1,"method":"m"}', 1),  # no jsonrpc
        (b'{"jsonrpc":"1.0","id":1,"method":"m"}', 1),
        (b'{"jsonrpc":"2.0","id":true,"method":"m"}', None),
        (b'{"jsonrpc":"2.0","id":1.5,"method":"m"}', None),
        (b'{"jsonrpc":"2.0","id":1.0,"method":"m"}', None),
        (b'{"jsonrpc":"2.0","id":null,"method":"m"}', None),
        (b'{"jsonrpc":"2.0","id":[1],"method":"m"}', None),
        (b'{"jsonrpc":"2.0","id":"r","method":5}', "r"),
        (b'{"jsonrpc":"2.0","id":"r","method":"m","params":3}', "r"),
        (b'{"jsonrpc":"2.0","id":"r","method":"m","params":"p"}', "r"),
        (b'{"jsonrpc":"2.0","id":1}', 1),
        (b'{"jsonrpc":"2.0","id":1,"result":1,"error":{"code":1,"message":""}}', 1),
        (b'{"jsonrpc":"2.0","id":null,"result":1}', None),
        (b'{"jsonrpc":"2.0","id":1,"error":"bad"}', 1),
        (b'{"jsonrpc":"2.0","id":1,"error":{"code":"1","message":"m"}}', 1),
        (b'{"jsonrpc":"2.0","id":1,"error":{"code":true,"message":"m"}}', 1),
        (b'{"jsonrpc":"2.0","id":1.5,"error":{"code":1,"message":"m"}}', None),
        # An integer too large for 64 bits decodes as a float: not a usable id.
        (b'{"jsonrpc":"2.0","id":123456789012345678901234567890,"method":"m"}', None),
    ],
)
def test_invalid_request(body: bytes, request_id: Any) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_message(body)
    assert info.value.jsonrpc_code == -32600
    assert info.value.request_id == request_id


def test_null_params_read_as_omitted() -> None:
    assert parse_message(b'{"jsonrpc":"2.0","method":"m","params":null}') == Notification("m")


def test_array_params_allowed_at_this_layer() -> None:
    assert parse_message(b'{"jsonrpc":"2.0","id":1,"method":"m","params":[1]}') == Request(
        1, "m", [1]
    )


def test_max_depth() -> None:
    inner = b'{"a":' * 60 + b"1" + b"}" * 60
    body = b'{"jsonrpc":"2.0","method":"m","params":' + inner + b"}"
    with pytest.raises(InvalidRequest, match="deeper than 16"):
        parse_message(body, max_depth=16)
    assert isinstance(parse_message(body, max_depth=64), Notification)
    with pytest.raises(InvalidRequest, match="deeper than 64"):
        parse_message(b"[" * 65 + b"]" * 65, allow_batch=True)


def test_orjson_depth_limit_is_a_parse_error() -> None:
    with pytest.raises(ParseError):
        parse_message(b"[" * 5000 + b"]" * 5000, allow_batch=True)


def test_batch_rejected_unless_allowed() -> None:
    body = b'[{"jsonrpc":"2.0","id":1,"method":"ping"}]'
    with pytest.raises(InvalidRequest, match="batches"):
        parse_message(body)
    assert parse_message(body, allow_batch=True) == [Request(1, "ping")]


def test_batch_keeps_bad_members_in_place() -> None:
    body = b'[{"jsonrpc":"2.0","id":1,"method":"a"}, 5, {"jsonrpc":"2.0","method":"n"}]'
    items = parse_message(body, allow_batch=True)
    assert isinstance(items, list)
    assert items[0] == Request(1, "a")
    assert isinstance(items[1], InvalidRequest)
    assert items[2] == Notification("n")


def test_empty_batch_invalid() -> None:
    with pytest.raises(InvalidRequest):
        parse_message(b"[]", allow_batch=True)


def test_encoders() -> None:
    assert orjson.loads(encode_result(1, {"a": 1})) == {
        "jsonrpc": "2.0",
        "id": 1,
        "result": {"a": 1},
    }
    assert orjson.loads(encode_error(None, -32700, "bad")) == {
        "jsonrpc": "2.0",
        "id": None,
        "error": {"code": -32700, "message": "bad"},
    }
    assert orjson.loads(encode_error("x", -32602, "m", {"k": 1}))["error"]["data"] == {"k": 1}
    assert orjson.loads(encode_notification("n")) == {"jsonrpc": "2.0", "method": "n"}
    assert orjson.loads(encode_notification("n", {"p": 1}))["params"] == {"p": 1}
    assert orjson.loads(encode_result(1, {1: "x"}))["result"] == {"1": "x"}


def test_method_not_found_codes() -> None:
    exc = MethodNotFound("nope")
    assert (exc.jsonrpc_code, exc.http_status) == (-32601, 404)


# -- properties ---------------------------------------------------------------------------------

ids = st.one_of(st.text(max_size=10), st.integers(min_value=-(2**63), max_value=2**63 - 1))
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=12,
)
params = st.one_of(
    st.none(),
    st.dictionaries(st.text(max_size=5), json_values, max_size=4),
    st.lists(json_values, max_size=4),
)
messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(Request, ids, st.text(max_size=12), params),
    st.builds(Notification, st.text(max_size=12), params),
    st.builds(Response, ids, json_values),
    st.builds(
        ErrorResponse,
        st.none() | ids,
        st.builds(ErrorObject, st.integers(-(2**31), 2**31), st.text(max_size=10), json_values),
    ),
)


def _encode(message: Message) -> bytes:
    """Any message back to bytes through the public encoders, one per kind."""
    match message:
        case Request(request_id, method, params):
            return encode_request(request_id, method, params)
        case Notification(method, params):
            return encode_notification(method, params)
        case Response(request_id, result):
            return encode_result(request_id, result)
        case ErrorResponse(request_id, ErrorObject(code, text, data)):
            return encode_error(request_id, code, text, data)
    raise AssertionError(message)


@given(messages)
def test_round_trip(message: Message) -> None:
    assert parse_message(_encode(message), max_depth=100) == message


@given(st.binary(max_size=200))
def test_arbitrary_bytes_only_raise_typed_errors(data: bytes) -> None:
    for allow_batch in (False, True):
        with contextlib.suppress(ParseError, InvalidRequest):
            parse_message(data, allow_batch=allow_batch)


@given(json_values)
def test_arbitrary_json_only_raises_typed_errors(value: Any) -> None:
    data = orjson.dumps(value)
    for allow_batch in (False, True):
        with contextlib.suppress(ParseError, InvalidRequest):
            parse_message(data, allow_batch=allow_batch, max_depth=3)


@given(
    st.dictionaries(
        st.sampled_from(["jsonrpc", "id", "method", "params", "result", "error"]),
        json_values | ids,
        max_size=6,
    )
)
def test_message_shaped_objects_only_raise_typed_errors(obj: dict[str, Any]) -> None:
    with contextlib.suppress(ParseError, InvalidRequest):
        parse_message(orjson.dumps(obj))
