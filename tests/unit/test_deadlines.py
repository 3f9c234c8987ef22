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
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure as TwistedFailure

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
    assert reminders()[0].startswith(
        f"[{UNANSWERED}] Circuit breaker still open after 60s: {UNANSWERED} has not answered "
    )
    # The breaker's lines have a logger of their own, for log configs that single it out.
    breaker = [r for r in caplog.records if "Circuit breaker" in r.getMessage()]
    assert breaker and {r.name for r in breaker} == {"synapse_http_antispam.guards"}


def probes_started(clock: MemoryReactorClock) -> int:
    """Connection attempts to the antispam server so far: each request makes one here, since
    the memory reactor never completes a connection for the pool to keep."""
    return len(clock.tcpClients)


def probes_at(clock: MemoryReactorClock, timeout: float, times: list[float]) -> list[int]:
    """Open the breaker with one call that times out, then count the probes started by each
    of `times` (seconds after it opened). The clock moves in quarter seconds, exact in binary:
    what a timer schedules runs relative to the end of the step it fired in."""
    f = forwarder(clock, timeout=timeout, circuit_breaker={"failure_threshold": 1})
    d = start(f, "user_may_invite")
    clock.advance(timeout)
    assert d.called and f.breaker.is_open
    before, now, seen = probes_started(clock), 0.0, []
    for t in times:
        while now < t:
            clock.advance(0.25)
            now += 0.25
        seen.append(probes_started(clock) - before)
    return seen


def test_the_breakers_probe_gives_up_after_2_seconds_however_long_the_timeout(
    clock: MemoryReactorClock,
) -> None:
    """A probe is a liveness question: with a 5 s timeout it still gives up at 2 s, so an
    outage is asked about every 3 s (1 s interval, then a 2 s probe), not every 6 s."""
    # First probe at 1 s; it gives up at 3 s; the next one starts at 4 s.
    assert probes_at(clock, 5.0, [0.5, 1.0, 3.5, 4.0]) == [0, 1, 1, 2]


def test_the_probe_never_outlasts_a_shorter_timeout(clock: MemoryReactorClock) -> None:
    # First probe at 1 s; with a 0.5 s timeout it gives up at 1.5 s; the next starts at 2.5 s.
    assert probes_at(clock, 0.5, [1.0, 2.25, 2.5]) == [1, 1, 2]


def test_an_evidence_ping_keeps_to_the_calls_own_deadline(clock: MemoryReactorClock) -> None:
    """When a callback's 404 needs the ping's word (is an antispam server there at all?), the
    ping gets what is left of the call's deadline (3 s here), not a fresh 5 s timeout."""
    f = forwarder(clock, timeout=5.0)
    d = defer.ensureDeferred(f.endpoints.server_is_there("user_may_invite", 404, 3.0, f._ping))
    clock.advance(2.999)
    assert not d.called, "the ping gave up before the call's deadline"
    clock.advance(0.001)
    assert d.called and d.result is False  # no answer: no evidence of an antispam server


def test_a_ping_without_its_own_timeout_has_the_configured_one(
    clock: MemoryReactorClock,
) -> None:
    f = forwarder(clock, timeout=3.0)
    d = defer.ensureDeferred(f.ping_once())
    clock.advance(2.5)
    assert not d.called
    clock.advance(0.5)
    assert d.called and d.result.outcome == "timeout"


@pytest.mark.parametrize(
    "extra, longest",
    [
        ({}, 30.0),  # the media check's default deadline, the longest of the defaults
        ({"timeout": 3, "timeouts": {"check_media_file_for_spam": 4}}, 4.0),
        ({"timeout": 3, "timeouts": {"check_media_file_for_spam": 2, "user_may_invite": 7}}, 7.0),
        ({"timeout": 45}, 45.0),
    ],
    ids=["defaults", "media-4", "invite-7", "timeout-45"],
)
def test_a_connect_attempt_is_given_a_second_past_the_longest_deadline(
    clock: MemoryReactorClock, extra: dict[str, Any], longest: float
) -> None:
    """What the reactor is asked for: a connect timeout a second past every call's deadline,
    so that a slow connect ends as that call's timeout, never as a connect failure (one pool
    serves every callback; a media check waits 30 s by default where `timeout` is 5). Equal to
    the longest, a reactor stalled past both ran the connect timeout first (it was set first):
    `connect` where the check expected `timeout`, under a loaded mutation run."""
    f = forwarder(clock, **extra)
    d = start(f, "user_may_invite")
    [(host, port, _, timeout, _)] = clock.tcpClients
    assert (host, port) == ("127.0.0.1", 9)
    assert timeout == longest + 1
    d.cancel()
    d.addErrback(lambda _: None)


def test_a_host_names_connect_attempts_are_given_the_same_connect_timeout(
    clock: MemoryReactorClock,
) -> None:
    """A name in base_url goes through HostnameEndpoint, which passes its own timeout to each
    address it tries: the same second past the longest deadline, not Twisted's 30 s."""
    timeouts = {"check_media_file_for_spam": 2, "user_may_invite": 7}
    f = forwarder(clock, base_url="http://localhost:9", timeout=3, timeouts=timeouts)
    d = start(f, "user_may_invite")
    clock.advance(0)
    assert clock.tcpClients, "no connect attempt"
    assert {(port, timeout) for (_, port, _, timeout, _) in clock.tcpClients} == {(9, 8.0)}
    d.cancel()
    d.addErrback(lambda _: None)


def test_a_refused_connection_to_an_address_fails_the_call_at_once(
    clock: MemoryReactorClock,
) -> None:
    """With the server down, each check fails as soon as the connection is refused. Twisted's
    HostnameEndpoint noticed a refusal only at its next 0.3 s attempt tick, which every call
    waited for until the breaker opened; an address in base_url is connected to directly."""
    f = forwarder(clock)
    d = start(f, "user_may_invite")
    [(address, port, factory, _, _)] = clock.tcpClients
    assert (address, port) == ("127.0.0.1", 9)
    factory.clientConnectionFailed(None, TwistedFailure(ConnectionRefusedError()))
    assert d.called, "the refusal waited for the clock"
    verdict: Verdict = d.result
    assert verdict.failure is Failure.CONNECT
    assert "refused" in verdict.detail


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"


def connect(clock: MemoryReactorClock, connection: int) -> tuple[Any, StringTransport]:
    """Completes the `connection`th connect attempt the reactor recorded."""
    protocol = clock.tcpClients[connection][2].buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    clock.advance(0)
    return protocol, transport


def test_an_idle_connection_is_kept_for_a_minute(clock: MemoryReactorClock) -> None:
    """After an answer the connection stays open for the next call, and is closed once it has
    been idle for 60 s."""
    f = forwarder(clock)
    first = start(f, "user_may_invite")
    protocol, transport = connect(clock, 0)
    assert transport.value().startswith(b"POST /user_may_invite HTTP/1.1\r\n")
    protocol.dataReceived(OK)
    assert first.called and first.result.allowed
    clock.advance(30)
    transport.clear()
    second = start(f, "user_may_invite")
    clock.advance(0)
    assert len(clock.tcpClients) == 1, "a new connection instead of the idle one"
    assert transport.value().startswith(b"POST /user_may_invite HTTP/1.1\r\n")
    protocol.dataReceived(OK)
    assert second.called and second.result.allowed
    clock.advance(59.999)
    assert not transport.disconnecting
    clock.advance(0.001)
    assert transport.disconnecting, "still open after a minute idle"


def test_a_body_stalled_past_the_deadline_is_a_timeout_and_its_connection_is_dropped(
    clock: MemoryReactorClock,
) -> None:
    """The head came, then a tenth of the body, then nothing: at the deadline the call is a
    timeout and the connection is dropped (its producer stopped), not left to the server, which
    would otherwise hold it, and its place in the pool, for as long as it likes."""
    f = forwarder(clock, timeout=1.0)
    d = start(f, "user_may_invite")
    protocol, transport = connect(clock, 0)
    protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{" + b" " * 9)
    clock.advance(0.999)
    assert not d.called and transport.producerState == "producing"
    clock.advance(0.001)
    assert d.called and d.result.failure is Failure.TIMEOUT
    assert transport.producerState == "stopped", "the stalled connection was left open"
