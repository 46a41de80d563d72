"""A spent stream ticket resumes only the route it was spent on, even for the same session id."""

from __future__ import annotations

import pytest

from datapulse.auth.tickets import TicketBook
from datapulse.auth.verifier import Principal
from datapulse.errors import Unauthorized

ALICE = Principal(id="local:alice", subject="alice")


def book() -> TicketBook:
    return TicketBook(clock=lambda: 0.0)


@pytest.mark.parametrize(("spent_on", "tried_on"), [("events", "sse"), ("sse", "events")])
def test_a_spent_ticket_never_resumes_another_route(spent_on: str, tried_on: str) -> None:
    tickets = book()
    ticket = tickets.issue(ALICE)
    assert tickets.redeem(ticket, route=spent_on, session_id=None, resuming=False).first_use
    tickets.bind(ticket, ALICE, "s1", spent_on)
    # Same session id, resuming: only the route differs, so only the route check can refuse.
    with pytest.raises(Unauthorized):
        tickets.redeem(ticket, route=tried_on, session_id="s1", resuming=True)
    # It still resumes where it was spent.
    resumed = tickets.redeem(ticket, route=spent_on, session_id="s1", resuming=True)
    assert resumed.principal == ALICE and not resumed.first_use


def test_a_ticket_issued_for_an_events_session_cannot_open_sse() -> None:
    tickets = book()
    ticket = tickets.issue(ALICE, "s1")
    for resuming in (False, True):
        with pytest.raises(Unauthorized):
            tickets.redeem(ticket, route="sse", session_id=None, resuming=resuming)
    # Refusing it did not spend it: it still opens the session it names.
    assert tickets.redeem(ticket, route="events", session_id="s1", resuming=False).first_use
