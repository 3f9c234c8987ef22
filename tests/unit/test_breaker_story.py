"""One outage told by the circuit breaker, on a controlled clock: what the admin reads in the
log and what the metrics are told, from opening through failed probes to closing.

test_breaker_limiter.py holds when it opens and closes; this holds what it says while it does.
"""

from __future__ import annotations

import logging

import pytest

from twisted.internet import defer, task

from synapse_http_antispam.config import BreakerConfig
from synapse_http_antispam.guards import Breaker
from tests.support.recorder import Recorder

log = logging.getLogger("synapse_http_antispam.test_breaker_story")


class Probe:
    def __init__(self) -> None:
        self.answering = False
        self.calls = 0
        self.pending: defer.Deferred[bool] | None = None
        self.hold = False
        self.error: Exception | None = None

    def __call__(self) -> defer.Deferred[bool]:
        self.calls += 1
        if self.error is not None:
            return defer.fail(self.error)
        if self.hold:
            self.pending = defer.Deferred()
            return self.pending
        return defer.succeed(self.answering)


def make(clock: task.Clock, probe: Probe, observer: Recorder) -> Breaker:
    config = BreakerConfig(3, failure_rate=0.8, window=10, probe_interval=1)
    return Breaker(config, clock, observer, probe=probe, describe="the test server", log=log)


def lines(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records]


def test_an_outage_from_opening_to_closing(caplog: pytest.LogCaptureFixture) -> None:
    clock, probe, observer = task.Clock(), Probe(), Recorder()
    clock.advance(100)
    b = make(clock, probe, observer)
    with caplog.at_level(logging.INFO, logger=log.name):
        b.reachable()
        for _ in range(3):
            b.unreachable("connect")
        b.unreachable("timeout")
        assert b.is_open
        for _ in range(60):
            clock.advance(1)
        assert probe.calls == 60 and b.is_open
        probe.answering = True
        clock.advance(1)
    assert not b.is_open and probe.calls == 61
    assert b.window_counts() == (0, 0)  # afresh: old failures must not reopen it
    assert lines(caplog) == [
        (
            logging.WARNING,
            "Circuit breaker open: 4 of 5 calls to the test server in the last 10s got no "
            "answer (last: timeout); calls now fail at once under their failure policy, and "
            "the test server is probed every 1s in the background",
        ),
        (
            logging.WARNING,
            "Circuit breaker still open after 60s: the test server has not answered 60 probes",
        ),
        (
            logging.WARNING,
            "Circuit breaker closed: the test server answered a probe again after 61.0s open; "
            "calls are forwarded again",
        ),
    ]
    assert observer.breaker == [
        ("changed", True, "timeout"),
        *[("probed", False, None)] * 60,
        ("probed", True, None),
        ("changed", False, "answered a probe"),
    ]


def test_a_real_answer_closes_it_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    clock, probe, observer = task.Clock(), Probe(), Recorder()
    clock.advance(50)
    b = make(clock, probe, observer)
    with caplog.at_level(logging.INFO, logger=log.name):
        for _ in range(3):
            b.unreachable("connect")
        clock.advance(0.5)
        b.reachable()
    assert not b.is_open
    assert lines(caplog)[-1] == (
        logging.WARNING,
        "Circuit breaker closed: the test server answered again after 0.5s open; calls are "
        "forwarded again",
    )
    assert observer.breaker == [("changed", True, "connect"), ("changed", False, "answered")]


def test_a_probe_failing_inside_the_module_counts_as_unanswered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock, probe, observer = task.Clock(), Probe(), Recorder()
    probe.error = RuntimeError("bug")
    b = make(clock, probe, observer)
    with caplog.at_level(logging.INFO, logger=log.name):
        for _ in range(3):
            b.unreachable("connect")
        clock.advance(1)
    assert b.is_open and probe.calls == 1
    assert observer.breaker[-1] == ("probed", False, None)
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert record.getMessage() == "Circuit breaker probe failed inside the module"
    assert record.exc_info is not None
    clock.advance(1)  # and the probing goes on
    assert probe.calls == 2


def test_stopped_it_probes_no_more_and_reports_no_closing() -> None:
    clock, probe, observer = task.Clock(), Probe(), Recorder()
    b = make(clock, probe, observer)
    for _ in range(3):
        b.unreachable("connect")
    probe.hold = True
    clock.advance(1)
    assert probe.pending is not None
    b.stop()  # the module is shutting down while a probe is in flight
    probe.pending.callback(True)
    assert b.is_open
    assert ("changed", False, "answered a probe") not in observer.breaker


def test_opened_after_stopping_it_sends_no_probe_and_leaves_no_timer() -> None:
    clock, probe, observer = task.Clock(), Probe(), Recorder()
    b = make(clock, probe, observer)
    b.stop()
    for _ in range(3):
        b.unreachable("connect")
    assert clock.getDelayedCalls() == []
    clock.advance(10)
    assert probe.calls == 0


def test_the_window_holds_its_last_ten_buckets_and_no_more() -> None:
    """window=10: a failure counts for the rest of its one-second bucket and nine more."""
    clock, probe, observer = task.Clock(), Probe(), Recorder()
    clock.advance(100.5)
    b = Breaker(BreakerConfig(0, window=10), clock, observer, probe=probe)  # never opens
    b.unreachable("connect")
    b.reachable()
    clock.advance(9)  # 109.5: bucket 109, the window's buckets are 100..109
    assert b.window_counts() == (2, 1)
    clock.advance(0.5)  # 110.0: bucket 100 has left the window
    assert b.window_counts() == (0, 0)
