"""What every hostile-server case checks (issue 18), for the scripted and the generated cases.

One call through a fresh Forwarder against a `RawServer`; then: the verdict came by the
deadline plus a margin, it is a documented outcome (a failure names a Failure), nothing
escaped `check`, nothing was logged at ERROR or with a traceback (stdlib or Twisted log), and,
when asked, how much memory the call allocated at its peak.
"""

from __future__ import annotations

import gc
import logging
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest

from twisted.internet import reactor
from twisted.logger import LogLevel, globalLogPublisher

from synapse_http_antispam.catalogue import Kind
from synapse_http_antispam.config import parse_config
from synapse_http_antispam.forwarder import Forwarder
from synapse_http_antispam.verdict import Failure, Outcome, Verdict

MARGIN = 1.5  # what a loaded CI machine may add on top of the deadline
# ...and with tracemalloc on. The deadline can fire only between two reads of the socket, and
# the parser takes a whole read (up to 64 KiB) at once: 64 KiB of one-byte chunks took 0.15 s
# untraced and 1.2 s traced on a quiet 2-core machine, and up to 2.1 s over the deadline in the
# test command on a slower one (2026-12-06). It stays below the raw server's give-up
# (test_hostile.py: the deadline + 4 s), so that a call that waits for the server to give up
# still fails.
TRACED_MARGIN = 3.5

DOCUMENTED = frozenset(
    {
        Outcome.ALLOWED,
        Outcome.REJECTED,
        Outcome.FAILED_OPEN,
        Outcome.FAILED_CLOSED,
        Outcome.NOT_IMPLEMENTED,
    }
)
FAILED = frozenset({Outcome.FAILED_OPEN, Outcome.FAILED_CLOSED})


class TwistedErrors:
    """Every Twisted log event at ERROR or above, or carrying a failure (a traceback)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def __call__(self, event: dict[str, Any]) -> None:
        level = event.get("log_level")
        if "log_failure" in event or (level is not None and level >= LogLevel.error):
            self.events.append(event)


@pytest.fixture
def twisted_errors() -> Iterator[TwistedErrors]:
    errors = TwistedErrors()
    globalLogPublisher.addObserver(errors)
    yield errors
    globalLogPublisher.removeObserver(errors)


def make(url: str, timeout: float, ca_file: str | None = None) -> Forwarder:
    raw: dict[str, Any] = {
        "base_url": url,
        "timeout": timeout,
        # Each case is one call on a fresh Forwarder: the breaker is not the point here.
        "circuit_breaker": {"failure_threshold": 0},
    }
    if ca_file:
        raw["ca_file"] = ca_file
    return Forwarder(parse_config(raw))


async def run(
    url: str,
    timeout: float,
    *,
    name: str = "user_may_invite",
    kind: Kind = Kind.GATE,
    measure_memory: bool = False,
    ca_file: str | None = None,
) -> tuple[Verdict, float, int]:
    """One call through a fresh Forwarder: (verdict, seconds by the reactor's clock, peak
    bytes allocated during the call, or 0 when not measured)."""
    f = make(url, timeout, ca_file)
    payload: dict[str, Any] = {"inviter": "@a:x", "invitee": "@b:x", "room_id": "!r:x"}
    if kind is Kind.REGISTRATION:
        payload = {"username": "a", "request_info": []}
    base = 0
    if measure_memory:
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
    start = reactor.seconds()  # type: ignore[attr-defined]
    try:
        verdict = await f.check(name, kind, payload)
        seconds = reactor.seconds() - start  # type: ignore[attr-defined]
    finally:
        peak = 0
        if measure_memory:
            peak = tracemalloc.get_traced_memory()[1] - base
            tracemalloc.stop()
        await f.close()
    return verdict, seconds, peak


def assert_documented(
    verdict: Verdict, seconds: float, timeout: float, *, traced: bool = False
) -> None:
    assert verdict.outcome in DOCUMENTED, verdict
    if verdict.outcome in FAILED:
        assert isinstance(verdict.failure, Failure), verdict
    else:
        assert verdict.failure is None, verdict
    margin = TRACED_MARGIN if traced else MARGIN
    assert seconds <= timeout + margin, f"verdict after {seconds:.2f}s: {verdict}"


def assert_quiet(records: list[logging.LogRecord], twisted_errors: TwistedErrors) -> None:
    # An unhandled error in a dropped Deferred is logged when it is collected; the young
    # generations hold this call's objects (a full collection costs ~0.3 s per case).
    gc.collect(1)
    # The one ERROR the module means to write: base_url answers "no such route" to the
    # callback and to ping alike, so it does not reach an antispam server (issue 18).
    errors = [
        r
        for r in records
        if (r.levelno >= logging.ERROR or r.exc_info)
        and "does not reach an antispam server" not in r.getMessage()
    ]
    assert not errors, [r.getMessage() for r in errors]
    assert not twisted_errors.events, twisted_errors.events
