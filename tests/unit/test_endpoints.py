"""The memory of which callbacks the antispam server has no endpoint for, on a fake clock.

The forwarder tests drive it through real HTTP; these pin down its timing and its log lines,
which an admin reads to find a wrong base_url or a server without some endpoint.
"""

from __future__ import annotations

import logging

import pytest

from twisted.internet import defer
from twisted.internet.task import Clock

from synapse_http_antispam.answers import PingResult
from synapse_http_antispam.endpoints import Endpoints

URL = "http://antispam.test:8080/api"
log = logging.getLogger("synapse_http_antispam.test_endpoints")


def records(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records]


def test_no_server_is_believed_for_ten_seconds_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    endpoints = Endpoints(clock, URL, log)
    assert not endpoints.no_server_known
    with caplog.at_level(logging.INFO, logger=log.name):
        endpoints.no_server("user_may_invite", 404)
        assert endpoints.no_server_known
        clock.advance(Endpoints.NO_SERVER_RECHECK - 0.5)
        assert endpoints.no_server_known
        clock.advance(0.5)
        assert not endpoints.no_server_known
        endpoints.no_server("user_may_join_room", 405)  # still not there: not logged again
        assert endpoints.no_server_known
    assert records(caplog) == [
        (
            logging.ERROR,
            f"base_url {URL} does not reach an antispam server: user_may_invite and ping were "
            "both answered with HTTP 404 (no such endpoint). Check base_url's host, port and "
            "path. Until the antispam server answers, calls fail under their failure policy.",
        )
    ]


def test_the_server_showing_up_ends_no_server_at_once_and_the_next_outage_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    endpoints = Endpoints(Clock(), URL, log)
    with caplog.at_level(logging.INFO, logger=log.name):
        endpoints.no_server("user_may_invite", 404)
        endpoints.saw_server()
        assert not endpoints.no_server_known
        endpoints.no_server("user_may_invite", 404)  # the next outage
    assert [level for level, _ in records(caplog)] == [logging.ERROR, logging.ERROR]


def test_the_server_going_away_forgets_its_missing_endpoints_not_what_it_served(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """What the server said about its endpoints is its word only while it is there: once it
    cannot be reached (a restart, maybe an upgrade), each callback is asked again, and each
    warning is news again. A callback it served stays one whose 404 is a glitch: a dropped
    connection must not turn the next proxy 404 into ten minutes of silence."""
    endpoints = Endpoints(Clock(), URL, log)
    endpoints.answered("user_may_invite")
    with caplog.at_level(logging.INFO, logger=log.name):
        endpoints.unimplemented("user_may_publish_room", 404)
        endpoints.lost()
        assert not endpoints.known_unimplemented("user_may_publish_room")
        endpoints.unimplemented("user_may_invite", 404)  # still a glitch: not marked
        endpoints.unimplemented("user_may_publish_room", 404)
        assert not endpoints.known_unimplemented("user_may_invite")
        assert endpoints.known_unimplemented("user_may_publish_room")
    assert [level for level, _ in records(caplog)] == [logging.WARNING] * 3


def test_an_unimplemented_callback_is_skipped_for_ten_minutes_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    endpoints = Endpoints(clock, URL, log)
    with caplog.at_level(logging.INFO, logger=log.name):
        endpoints.unimplemented("user_may_publish_room", 501)
        assert endpoints.known_unimplemented("user_may_publish_room")
        assert not endpoints.known_unimplemented("user_may_invite")
        clock.advance(Endpoints.RECHECK - 0.5)
        assert endpoints.known_unimplemented("user_may_publish_room")
        clock.advance(0.5)
        assert not endpoints.known_unimplemented("user_may_publish_room")
        endpoints.unimplemented("user_may_publish_room", 501)  # asked again: still none
        assert endpoints.known_unimplemented("user_may_publish_room")
        endpoints.answered("user_may_publish_room")  # the server was upgraded
        assert not endpoints.known_unimplemented("user_may_publish_room")
        endpoints.answered("user_may_publish_room")  # said once only
    assert records(caplog) == [
        (
            logging.WARNING,
            f"The antispam server at {URL} has no endpoint for user_may_publish_room (HTTP "
            "501): allowing it, and not sending it for 600s before asking again. To stop "
            "sending it, leave it out of enabled_callbacks.",
        ),
        (logging.INFO, f"The antispam server at {URL} now answers user_may_publish_room"),
    ]


def test_a_404_from_an_endpoint_that_answered_before_is_a_glitch(
    caplog: pytest.LogCaptureFixture,
) -> None:
    endpoints = Endpoints(Clock(), URL, log)
    endpoints.answered("user_may_invite")
    with caplog.at_level(logging.INFO, logger=log.name):
        endpoints.unimplemented("user_may_invite", 404)
        endpoints.unimplemented("user_may_invite", 404)
    assert not endpoints.known_unimplemented("user_may_invite")  # keeps being asked
    assert records(caplog) == [
        (
            logging.WARNING,
            f"The antispam server at {URL} answered user_may_invite with HTTP 404 (no such "
            "endpoint), although it answered it before; allowing this call",
        )
    ]


def test_answering_a_callback_never_missing_says_nothing(caplog: pytest.LogCaptureFixture) -> None:
    endpoints = Endpoints(Clock(), URL, log)
    with caplog.at_level(logging.INFO, logger=log.name):
        endpoints.answered("user_may_invite")
        endpoints.answered("user_may_invite")
    assert records(caplog) == []


class Pings:
    """Stands in for the forwarder's ping: notes the time each one is given, answers as told."""

    def __init__(self, outcome: str, status: int | None = 404) -> None:
        self.outcome = outcome
        self.status = status
        self.given: list[float] = []

    async def __call__(self, timeout: float) -> PingResult:
        self.given.append(timeout)
        there = self.outcome in ("ok", "unexpected_answer", "auth")
        return PingResult(self.outcome, "id", self.status, antispam_server=there)


def evidence(endpoints: Endpoints, ping: Pings, deadline: float) -> bool | None:
    d = defer.ensureDeferred(endpoints.server_is_there("user_may_invite", 404, deadline, ping))
    return d.result if d.called else None


def test_the_evidence_ping_gets_what_is_left_of_the_deadline() -> None:
    clock = Clock()
    clock.advance(100)
    ping = Pings("ok", 200)
    endpoints = Endpoints(clock, URL, log)
    assert evidence(endpoints, ping, deadline=103) is True
    assert ping.given == [3]


def test_evidence_is_asked_every_time_never_remembered() -> None:
    """A ping answered a moment ago proves nothing about the 404 that came now: a proxy may
    have started answering for a restarting server in between."""
    clock = Clock()
    endpoints = Endpoints(clock, URL, log)
    ping = Pings("ok", 200)
    assert evidence(endpoints, ping, deadline=5) is True
    endpoints.saw_server()
    ping.outcome, ping.status = "not_implemented", 404
    assert evidence(endpoints, ping, deadline=5) is False
    assert len(ping.given) == 2


@pytest.mark.parametrize(
    "outcome, status, works",
    [
        ("ok", 200, True),
        ("unexpected_answer", 200, True),
        ("auth", 401, False),
        ("bad_response", 404, False),
        ("not_implemented", 404, False),
        ("timeout", None, False),
    ],
)
def test_a_404_with_an_errcode_is_believed_only_when_ping_works(
    outcome: str, status: int | None, works: bool
) -> None:
    endpoints = Endpoints(Clock(), URL, log)
    ping = Pings(outcome, status)
    d = defer.ensureDeferred(endpoints.ping_works("user_may_invite", 404, 5.0, ping))
    assert d.result is works
    assert endpoints.no_server_known is (status == 404)


def test_no_evidence_ping_once_the_deadline_has_passed_or_no_server_is_known() -> None:
    """A ping with no time left would get a full timeout of its own (0 means "the default"),
    and while no server is known the answer is known too: neither is asked."""
    clock = Clock()
    clock.advance(100)
    ping = Pings("not_implemented")
    endpoints = Endpoints(clock, URL, log)
    assert evidence(endpoints, ping, deadline=100) is False
    assert evidence(endpoints, ping, deadline=99) is False
    assert ping.given == []
    assert evidence(endpoints, ping, deadline=105) is False  # asked: no ping endpoint either
    assert ping.given == [5] and endpoints.no_server_known
    assert evidence(endpoints, ping, deadline=105) is False  # known now: not asked again
    assert ping.given == [5]
