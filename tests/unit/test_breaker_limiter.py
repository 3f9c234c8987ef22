"""Circuit breaker and limiter on a controlled clock: deterministic, no sockets needed."""

from __future__ import annotations

import logging

import pytest

from twisted.internet import defer, task

from synapse_http_antispam.config import BreakerConfig
from synapse_http_antispam.guards import Breaker, Limiter
from synapse_http_antispam.metrics import NullObserver
from synapse_http_antispam.verdict import CallFailed, Failure
from tests.support.recorder import Recorder


class Probe:
    """Stands in for the forwarder's ping: answers as `answering` says, counts the calls."""

    def __init__(self) -> None:
        self.answering = False
        self.calls = 0

    def __call__(self) -> defer.Deferred[bool]:
        self.calls += 1
        return defer.succeed(self.answering)


def breaker(
    clock: task.Clock,
    threshold: int = 3,
    rate: float = 0.8,
    window: float = 10,
    probe: Probe | None = None,
) -> Breaker:
    config = BreakerConfig(threshold, failure_rate=rate, window=window, probe_interval=1)
    return Breaker(config, clock, NullObserver(), probe=probe)


def test_a_dead_server_opens_it_and_calls_fail_at_once() -> None:
    clock = task.Clock()
    b = breaker(clock)
    for _ in range(3):
        assert b.allow()
        b.unreachable("connect")
    assert b.is_open and not b.allow()


def test_http_answers_never_open_it() -> None:
    """A 500 from one broken handler is an answer: the server is up and costs no waiting."""
    clock = task.Clock()
    b = breaker(clock, threshold=1)
    for _ in range(1000):
        b.reachable()
    assert not b.is_open


def test_a_flaky_server_keeps_getting_calls() -> None:
    """Half the calls unanswered is a flaky server, not a dead one: consecutive failures
    would open the breaker here (runs of 3 and more), the failure rate does not."""
    clock = task.Clock()
    b = breaker(clock)
    pattern = [True, True, True, False, False, False]  # runs of three failures
    for i in range(600):
        clock.advance(0.05)
        if pattern[i % len(pattern)]:
            b.reachable()
        else:
            b.unreachable("connect")
        assert not b.is_open, i


def test_rate_over_the_window_opens_it_when_the_server_goes_down() -> None:
    clock = task.Clock()
    b = breaker(clock, threshold=5, window=10)
    for _ in range(50):  # healthy for 5 s
        clock.advance(0.1)
        b.reachable()
    failures = 0
    while not b.is_open:
        clock.advance(0.1)
        b.unreachable("timeout")
        failures += 1
    # Opens once the window is at least 80 % failures: the old answers have to age out.
    calls, failed = b.window_counts()
    assert failed >= 0.8 * calls
    assert 30 <= failures <= 100


def test_old_failures_age_out_of_the_window() -> None:
    clock = task.Clock()
    b = breaker(clock, threshold=3, window=10)
    b.unreachable("connect")
    b.unreachable("connect")
    clock.advance(11)
    b.unreachable("connect")
    assert not b.is_open
    assert b.window_counts() == (1, 1)


def test_a_window_of_a_fraction_of_a_second_counts_by_exact_buckets() -> None:
    """The window is ten buckets of window/10 seconds, a time falling in bucket
    floor(time / width). With window=1 the width is the float 0.1, a little more than 0.1, so
    time 1.0 still falls in bucket 9 (1.0 // 0.1 == 9.0), and a failure at 0.0 is 1.0 s old,
    inside the window (ten widths, a little more than 1 s): two failures open the breaker.
    Rounding the quotient first (int(1.0 / 0.1) == 10) would put 1.0 in bucket 10, where the
    failure at 0.0 has left the window, whether for recording or for counting."""
    clock = task.Clock()
    b = breaker(clock, threshold=2, rate=0, window=1)
    b.unreachable("connect")
    clock.advance(1.0)
    assert b.window_counts() == (1, 1)
    b.unreachable("connect")
    assert b.window_counts() == (2, 2)
    assert b.is_open


def test_opening_names_the_server_and_the_last_reason(caplog: pytest.LogCaptureFixture) -> None:
    """A breaker given no description speaks of "the antispam server"; one whose last failure
    came without a reason counts the opening as "unreachable"."""
    clock, observer = task.Clock(), Recorder()
    b = Breaker(BreakerConfig(2, window=10), clock, observer)
    with caplog.at_level(logging.WARNING, logger="synapse_http_antispam"):
        b.unreachable("connect")
        b.unreachable("")
    assert b.is_open
    assert observer.breaker == [("changed", True, "unreachable")]
    [line] = [r.getMessage() for r in caplog.records]
    assert line.startswith("Circuit breaker open: 2 of 2 calls to the antispam server in the")
    assert "the antispam server is probed every 1s" in line


def test_background_probe_closes_it_without_spending_a_users_call() -> None:
    clock = task.Clock()
    probe = Probe()
    b = breaker(clock, threshold=1, probe=probe)
    b.unreachable("connect")
    assert b.is_open
    for second in range(1, 300):  # probes go on at the same pace however long it is down
        clock.advance(1)
        assert probe.calls == second
        assert not b.allow()
    probe.answering = True
    clock.advance(1)
    assert not b.is_open and b.allow()
    clock.advance(5)
    assert probe.calls == 300  # no probing while closed


def test_closing_starts_a_fresh_window() -> None:
    clock = task.Clock()
    b = breaker(clock, threshold=3, probe=Probe())
    for _ in range(3):
        b.unreachable("connect")
    b.reachable()
    assert not b.is_open
    b.unreachable("connect")
    assert not b.is_open  # the three before the outage ended do not count any more


def test_zero_threshold_never_opens() -> None:
    b = breaker(task.Clock(), threshold=0)
    for _ in range(100):
        b.unreachable("connect")
    assert b.allow()


def test_limiter_queues_up_to_the_bound_then_refuses() -> None:
    limiter = Limiter(limit=2, max_waiting=1)
    holders = [defer.ensureDeferred(limiter.acquire()) for _ in range(2)]
    assert all(d.called for d in holders)
    waiter = defer.ensureDeferred(limiter.acquire())
    assert not waiter.called
    refused = defer.ensureDeferred(limiter.acquire())
    failure = refused.result
    refused.addErrback(lambda _: None)
    assert isinstance(failure.value, CallFailed) and failure.value.failure is Failure.OVERLOADED
    limiter.release()
    assert waiter.called and limiter.active == 2
    limiter.release()
    limiter.release()
    assert limiter.active == 0


def test_cancelled_waiter_leaves_the_queue() -> None:
    limiter = Limiter(limit=1, max_waiting=5)
    defer.ensureDeferred(limiter.acquire())
    waiter = defer.ensureDeferred(limiter.acquire())
    waiter.cancel()
    waiter.addErrback(lambda _: None)
    assert limiter.waiting == 0
    limiter.release()
    assert limiter.active == 0
