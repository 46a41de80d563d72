"""protocol.state: what a session knows of its client survives a trip through JSON."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from datapulse.protocol.state import ProtocolState


def test_round_trip_through_json() -> None:
    state = ProtocolState(
        protocol_version="2025-06-18",
        initialized=True,
        client_info={"name": "c", "version": "1"},
        client_capabilities={"roots": {"listChanged": True}},
        client_ready=True,
        log_level="warning",
    )
    wire = orjson.dumps(state.to_dict())
    assert ProtocolState.from_dict(orjson.loads(wire)) == state
    assert ProtocolState.from_dict({}) == ProtocolState()


def test_to_dict_is_a_copy() -> None:
    state = ProtocolState(client_info={"name": "c"})
    state.to_dict()["client_info"]["name"] = "changed"
    assert state.client_info == {"name": "c"}


@pytest.mark.parametrize(
    "data",
    [
        {"surprise": 1},
        {"protocol_version": 2025},
        {"initialized": "yes"},
        {"client_ready": 1},
        {"client_info": ["c"]},
        {"client_capabilities": "all"},
        {"log_level": "loud"},
    ],
)
def test_from_dict_refuses_bad_values(data: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        ProtocolState.from_dict(data)
