"""Circuit breaker and limiter on a controlled clock: deterministic, no sockets needed."""

from __future__ import annotations

import pytest

from twisted.internet import defer, task

from synapse_http_antispam.config import BreakerConfig
from synapse_http_antispam.forwarder import Breaker, Limiter, NullObserver, _Fail
from synapse_http_antispam.verdict import Failure


def breaker(clock: task.Clock, threshold: int = 3) -> Breaker:
    return Breaker(BreakerConfig(threshold, cooldown=10, max_cooldown=40), clock, NullObserver())


def test_opens_after_threshold_and_probes_once_per_cooldown() -> None:
    clock = task.Clock()
    b = breaker(clock)
    for _ in range(3):
        assert b.allow()
        b.failure()
    assert b.is_open and not b.allow()
    clock.advance(9.9)
    assert not b.allow()
    clock.advance(0.1)
    assert b.allow()  # the probe
    assert not b.allow()  # only one probe at a time
    b.failure()  # probe failed: cooldown doubles to 20
    clock.advance(19)
    assert not b.allow()
    clock.advance(1)
    assert b.allow()
    b.success()
    assert not b.is_open and b.allow() and b.allow()


def test_cooldown_doubling_is_capped() -> None:
    clock = task.Clock()
    b = breaker(clock, threshold=1)
    b.failure()
    waits = []
    for _ in range(4):
        start = clock.seconds()
        while not b.allow():
            clock.advance(1)
        waits.append(clock.seconds() - start)
        b.failure()
    assert waits == [10, 20, 40, 40]


def test_abandoned_probe_frees_the_slot() -> None:
    clock = task.Clock()
    b = breaker(clock, threshold=1)
    b.failure()
    clock.advance(10)
    assert b.allow()
    b.abandon()
    assert b.allow()


def test_zero_threshold_never_opens() -> None:
    b = breaker(task.Clock(), threshold=0)
    for _ in range(100):
        b.failure()
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
    assert isinstance(failure.value, _Fail) and failure.value.failure is Failure.OVERLOADED
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


@pytest.mark.parametrize("threshold", [1, 5])
def test_success_resets_the_failure_count(threshold: int) -> None:
    b = breaker(task.Clock(), threshold=threshold)
    for _ in range(threshold - 1):
        b.failure()
    b.success()
    for _ in range(threshold - 1):
        b.failure()
    assert not b.is_open
