"""Issue 12's rules without sockets: log redaction on every datapulse logger, the ticket resume
window and floor (a fixed clock), ``crit``, the IdP retry schedule (autojump clock, a mocked
IdP), and ``--help`` defaults. The same defects attacked over 127.0.0.1 are in
tests/e2e/test_auth_hardening.py.
"""

from __future__ import annotations

import itertools
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio

from datapulse.__main__ import build_parser
from datapulse.auth.jwks import DiscoveryError, JwksCache
from datapulse.auth.redact import REDACTED_LOGGERS, install_redactor, redact, redact_handlers
from datapulse.auth.tickets import TicketBook
from datapulse.auth.verifier import BearerVerifier, Principal
from datapulse.config import settings
from datapulse.core.tokens import InvalidToken, check_header
from datapulse.errors import ServiceUnavailable, Unauthorized
from tests.idp import rsa_key

PACKAGE = Path(__file__).parents[2] / "datapulse"
SECRET = "unit-local-secret-token-42"
JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLWJ5dGVzLWhlcmU"


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def collected() -> Iterator[Collect]:
    handler = Collect()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def _logger_names_in_source() -> set[str]:
    names = set()
    for path in PACKAGE.rglob("*.py"):
        names.update(re.findall(r'getLogger\("(datapulse[\w.]*)"\)', path.read_text()))
    return names


# -- 7: redaction ---------------------------------------------------------------------------------


def test_every_datapulse_logger_redacts_every_kind_of_credential(collected: Collect) -> None:
    BearerVerifier(SECRET)  # a configured local token is registered for literal redaction
    install_redactor()
    names = _logger_names_in_source() | set(REDACTED_LOGGERS)
    assert {"datapulse.auth", "datapulse.dispatch", "datapulse.events"} <= names
    for name in sorted(names):
        logger = logging.getLogger(name)
        logger.warning("header line %r", f"Authorization : Bearer {SECRET}\x0bx")
        logger.warning("a JWT: %s, ticket=%s&token=%s", JWT, "tkt-123456", "tok-123456")
        logger.warning("quoted %s in passing", SECRET)
        logger.info("lowercase bearer %s", "opaque-credential-xyz")
        try:
            raise RuntimeError(f"upstream said Bearer {JWT}")
        except RuntimeError:
            logger.exception("call failed")
    text = "\n".join(collected.lines)
    # FAILS without the fix: datapulse.auth and the others printed them as they came.
    for secret in (SECRET, JWT, "tkt-123456", "tok-123456", "opaque-credential-xyz"):
        assert secret not in text, (secret, text)
    assert text.count("<redacted") >= 5 * len(names)


def test_a_handler_filter_covers_loggers_that_are_not_ours(collected: Collect) -> None:
    redact_handlers([collected])  # what the CLI does to the root handler it installs
    try:
        logging.getLogger("h11.somewhere").warning("Authorization: Bearer %s", "xyz-credential")
        assert "xyz-credential" not in collected.lines[-1]
    finally:
        collected.filters.clear()


def test_redaction_keeps_ordinary_log_lines_readable() -> None:
    for line in (
        "401 GET /events from 127.0.0.1: missing bearer token",
        "authorization must use the Bearer scheme",
        "discovered jwks_uri https://keycloak.internal.example/realms/x/certs from v1.2.3",
        "session s1 created (events)",
    ):
        assert redact(line) == line
    assert redact("x BEARER abc.def y") == "x BEARER <redacted> y"
    assert redact("b'Authorization : Basic dXNlcjpw'") == "b'Authorization : <redacted>'"
    assert redact("?id_token=a&refresh_token=b&ticket=c") == (
        "?id_token=<redacted>&refresh_token=<redacted>&ticket=<redacted>"
    )


# -- 12: the resume window and the floor, on a fixed clock -----------------------------------------

ALICE = Principal(id="jwt:alice", subject="alice")


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def _spent(window: float = 120.0, first_event_id: int | None = 5) -> tuple[TicketBook, Clock, str]:
    clock = Clock()
    book = TicketBook(clock=clock, resume_window_s=window)
    ticket = book.issue(ALICE, "s1")
    assert book.redeem(ticket, route="events", session_id="s1", resuming=False).first_use
    book.bind(ticket, ALICE, "s1", "events", first_event_id=first_event_id)
    return book, clock, ticket


def _resume(book: TicketBook, ticket: str, last_event_id: int | None) -> None:
    redeemed = book.redeem(
        ticket, route="events", session_id="s1", resuming=True, last_event_id=last_event_id
    )
    assert not redeemed.first_use and redeemed.principal == ALICE


def test_a_spent_ticket_resumes_within_the_window_after_its_stream_was_cut() -> None:
    book, clock, ticket = _spent()
    book.stream_started(ticket)
    clock.now += 10 * 3600  # however long the stream stays open, it is that page's
    _resume(book, ticket, 7)
    book.stream_ended(ticket)
    clock.now += 120
    _resume(book, ticket, 7)  # EventSource reconnecting after a blip
    clock.now += 0.5
    with pytest.raises(Unauthorized) as refused:  # FAILS without the fix: accepted for hours
        _resume(book, ticket, 7)
    assert refused.value.http_status == 401
    # A reconnect that was let in restarts nothing: the window runs from the last cut.
    book2, clock2, ticket2 = _spent()
    book2.stream_started(ticket2)
    book2.stream_ended(ticket2)
    clock2.now += 100
    _resume(book2, ticket2, 5)
    book2.stream_started(ticket2)
    book2.stream_ended(ticket2)
    clock2.now += 100
    _resume(book2, ticket2, 5)


def test_a_bound_ticket_whose_stream_never_started_gets_the_window_from_binding() -> None:
    book, clock, ticket = _spent(window=60.0)
    clock.now += 60.5
    with pytest.raises(Unauthorized):
        _resume(book, ticket, 5)


def test_a_spent_ticket_never_resumes_from_before_its_stream_started() -> None:
    book, _, ticket = _spent(first_event_id=5)
    for early in (0, 1, 4, None):  # None: a Last-Event-ID that does not parse
        with pytest.raises(Unauthorized):  # FAILS without the fix: accepted from 0
            _resume(book, ticket, early)
    _resume(book, ticket, 5)
    _resume(book, ticket, 900)
    # The exact start, learnt when the stream is written, only raises the floor.
    book.stream_started(ticket, first_event_id=8)
    with pytest.raises(Unauthorized):
        _resume(book, ticket, 7)
    book.stream_started(ticket, first_event_id=3)
    with pytest.raises(Unauthorized):
        _resume(book, ticket, 7)


def test_a_zero_window_means_no_resumption_after_a_cut() -> None:
    book, clock, ticket = _spent(window=0.0)
    book.stream_started(ticket)
    _resume(book, ticket, 5)
    book.stream_ended(ticket)
    clock.now += 0.001
    with pytest.raises(Unauthorized):
        _resume(book, ticket, 5)
    with pytest.raises(ValueError):
        TicketBook(resume_window_s=-1)


# -- 13a: crit --------------------------------------------------------------------------------------


@pytest.mark.parametrize("crit", [[], ["exp"], ["b64"], ["https://example.test/ext"]])
def test_any_crit_is_refused(crit: list[str]) -> None:
    header = {"alg": "RS256", "kid": "k1", "crit": crit}
    with pytest.raises(InvalidToken, match="crit"):  # FAILS without the fix for []
        check_header(header, algorithms=("RS256",))
    with pytest.raises(InvalidToken, match="crit must be a list"):
        check_header({"alg": "RS256", "crit": None}, algorithms=("RS256",))


# -- 10: the IdP retry schedule ---------------------------------------------------------------------

ISSUER = "https://idp.example.test"


class FakeIdP:
    """httpx.MockTransport handler: answers ``status`` to everything until ``up``."""

    def __init__(self, status: int) -> None:
        self.status = status
        self.up = False
        self.requests: list[float] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(trio.current_time())
        if not self.up:
            return httpx.Response(self.status, text="down")
        if request.url.path == "/keys":
            return httpx.Response(200, json={"keys": [rsa_key("rsa-1").as_dict(private=False)]})
        return httpx.Response(200, json={"issuer": ISSUER, "jwks_uri": ISSUER + "/keys"})


def _cache(idp: FakeIdP, **options: object) -> JwksCache:
    client = httpx.AsyncClient(transport=httpx.MockTransport(idp))
    return JwksCache(issuer=ISSUER, http_client=client, jitter=lambda: 1.0, **options)  # type: ignore[arg-type]


async def test_an_idp_down_at_start_is_retried_with_capped_backoff(
    autojump_clock: trio.testing.MockClock,
) -> None:
    idp = FakeIdP(503)
    cache = _cache(idp, retry_initial_s=1.0, retry_max_s=8.0)
    await cache.start()  # FAILS without the fix: DiscoveryError
    assert not cache.ready and cache.reason is not None and "HTTP 503" in cache.reason
    async with trio.open_nursery() as nursery:
        nursery.start_soon(cache.run_until_ready)
        await trio.sleep(0.1)
        # Requests do not wait on the IdP: 503 at once, Retry-After until the next attempt.
        with pytest.raises(ServiceUnavailable) as unavailable:
            await cache.get_key("rsa-1", "RS256")
        assert unavailable.value.retry_after_s == 1
        await trio.sleep(60)
        # Attempts (2 discovery URLs each) 1, 2, 4, 8, 8, 8 ... s apart: doubling, capped.
        starts = sorted(set(idp.requests))
        gaps = [round(b - a, 3) for a, b in itertools.pairwise(starts)]
        assert gaps[:4] == [1.0, 2.0, 4.0, 8.0] and set(gaps[4:]) == {8.0}, gaps
        idp.up = True
        await trio.sleep(8)
        assert cache.ready and cache.reason is None
    assert await cache.get_key("rsa-1", "RS256") is not None


async def test_backoff_is_jittered(autojump_clock: trio.testing.MockClock) -> None:
    idp = FakeIdP(502)
    client = httpx.AsyncClient(transport=httpx.MockTransport(idp))
    cache = JwksCache(
        issuer=ISSUER, http_client=client, jitter=lambda: 0.0, retry_initial_s=4, retry_max_s=4
    )
    await cache.start()
    with trio.move_on_after(10.5):
        await cache.run_until_ready()
    starts = sorted(set(idp.requests))
    assert [round(b - a, 3) for a, b in itertools.pairwise(starts)] == [2.0] * 5


@pytest.mark.parametrize("status", [400, 401, 404])
async def test_a_wrong_issuer_still_fails_start(
    autojump_clock: trio.testing.MockClock, status: int
) -> None:
    with pytest.raises(DiscoveryError) as info:
        await _cache(FakeIdP(status)).start()
    assert not info.value.transient


# -- 13c: --help ------------------------------------------------------------------------------------


def test_help_shows_each_real_default_and_env_variable() -> None:
    text = " ".join(build_parser().format_help().split())
    assert "(default: None)" not in text  # FAILS without the fix: every flag said so
    assert "default: None" not in text
    assert "[env DATAPULSE_HOST; default: 127.0.0.1]" in text
    assert "[env DATAPULSE_TICKET_RESUME_WINDOW; default: 300.0]" in text
    assert "[env LOCAL_BEARER_TOKEN; default: random, printed at start]" in text
    assert "default: the bound URL" in text
    for f in settings():
        assert f"env {f.metadata['env']}; default:" in text, f.name
