"""Deadlines and the breaker's outage warning, on a fake clock: exact, with no waiting.

The forwarder runs on Twisted's MemoryReactorClock: connection attempts are recorded and never
complete, as with an antispam server that does not answer, and time moves only when the test
advances it. So "the deadline is 1 s" can be checked as "nothing at 0.999 s, a timeout at 1 s"
instead of with a wall-clock margin.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest

from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock

from synapse_http_antispam.catalogue import Kind
from synapse_http_antispam.config import parse_config
from synapse_http_antispam.forwarder import Forwarder
from synapse_http_antispam.verdict import Failure, Verdict

# Nothing listens there, and nothing is ever sent: the memory reactor makes no connection.
UNANSWERED = "http://127.0.0.1:9"


@pytest.fixture
def clock() -> Iterator[MemoryReactorClock]:
    yield MemoryReactorClock()


def forwarder(clock: MemoryReactorClock, **extra: Any) -> Forwarder:
    return Forwarder(parse_config({"base_url": UNANSWERED, **extra}), reactor=clock)


def start(f: Forwarder, name: str, kind: Kind = Kind.GATE) -> defer.Deferred[Verdict]:
    return defer.ensureDeferred(f.check(name, kind, {"user_id": "@a:x"}))


def times_out_at(clock: MemoryReactorClock, d: defer.Deferred[Verdict], seconds: float) -> None:
    """d is still waiting just before `seconds` (from now) and a timeout exactly then."""
    clock.advance(seconds - 0.001)
    assert not d.called, f"gave up before its {seconds} s deadline"
    clock.advance(0.001)
    assert d.called, f"still waiting after its {seconds} s deadline"
    verdict: Verdict = d.result
    assert verdict.failure is Failure.TIMEOUT


def test_the_deadline_is_the_configured_timeout(clock: MemoryReactorClock) -> None:
    f = forwarder(clock, timeout=1.0)
    times_out_at(clock, start(f, "user_may_invite"), 1.0)


def test_a_per_callback_timeout_replaces_the_global_one(clock: MemoryReactorClock) -> None:
    f = forwarder(clock, timeout=4.0, timeouts={"user_may_invite": 0.5})
    invite, create = start(f, "user_may_invite"), start(f, "user_may_create_room")
    times_out_at(clock, invite, 0.5)
    times_out_at(clock, create, 3.5)  # the others keep the global timeout


def test_media_gets_30_seconds_by_default_unless_configured(clock: MemoryReactorClock) -> None:
    """Hashing and sending a large upload takes longer than a room check (documented)."""
    f = forwarder(clock)
    times_out_at(clock, start(f, "check_media_file_for_spam", Kind.MEDIA), 30.0)
    g = forwarder(clock, timeouts={"check_media_file_for_spam": 2})
    times_out_at(clock, start(g, "check_media_file_for_spam", Kind.MEDIA), 2.0)


def test_a_long_outage_is_reported_again_while_the_breaker_stays_open(
    clock: MemoryReactorClock, caplog: pytest.LogCaptureFixture
) -> None:
    """One warning when it opens, then a reminder every minute: an admin reading the log an
    hour later must see that the antispam server is still unreachable."""
    f = forwarder(clock, timeout=1.0, circuit_breaker={"failure_threshold": 3})
    with caplog.at_level(logging.WARNING, logger="synapse_http_antispam"):
        for _ in range(3):
            times_out_at(clock, start(f, "user_may_invite"), 1.0)
        assert f.breaker.is_open
        opened = clock.seconds()

        def reminders() -> list[str]:
            return [r.getMessage() for r in caplog.records if "still open" in r.getMessage()]

        while clock.seconds() < opened + f.breaker.REMIND_EVERY - 1:
            clock.advance(0.5)
        assert reminders() == [], "reminded before a minute had passed"
        while clock.seconds() < opened + 2 * f.breaker.REMIND_EVERY + 5:
            clock.advance(0.5)
        assert f.breaker.is_open
    assert len(reminders()) == 2, reminders()
    assert UNANSWERED in reminders()[0]
