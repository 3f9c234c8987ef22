"""`async` callbacks: allowed at once, asked in the background within `max_background`, and
recorded (counted and logged) as what the answer would have done, with the callback's own
meaning: a registration's shadow-ban is still read, an overflow is still counted by name."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import pytest_twisted

from synapse_http_antispam.catalogue import Kind
from synapse_http_antispam.config import parse_config
from synapse_http_antispam.forwarder import Forwarder
from synapse_http_antispam.metrics import NullObserver
from synapse_http_antispam.verdict import Outcome, Verdict
from tests.support.antispam_server import AntispamServer, Behaviour
from tests.support.waiting import until

JOIN = "user_may_join_room"
REGISTER = "check_registration_for_spam"


class Recorder(NullObserver):
    def __init__(self) -> None:
        self.decided_: list[tuple[str, Verdict]] = []
        self.dropped: list[str] = []

    def decided(self, callback: str, verdict: Verdict) -> None:
        self.decided_.append((callback, verdict))

    def background_dropped(self, callback: str) -> None:
        self.dropped.append(callback)


@pytest.fixture
def server() -> Iterator[AntispamServer]:
    with AntispamServer() as s:
        yield s


def forwarder(server: AntispamServer, **extra: object) -> tuple[Forwarder, Recorder]:
    recorder = Recorder()
    config = parse_config({"base_url": server.base_url, "timeout": 1.0, **extra})
    return Forwarder(config, observer=recorder), recorder


@pytest_twisted.ensureDeferred
async def test_an_overflowing_background_call_is_counted_by_name_and_said_at_debug(
    server: AntispamServer, caplog: pytest.LogCaptureFixture
) -> None:
    server.set(JOIN, Behaviour(never_respond=True))
    f, recorder = forwarder(server, max_background=1, timeout=0.5)
    with caplog.at_level(logging.DEBUG, logger="synapse_http_antispam"):
        first = f.background(JOIN, Kind.GATE, {"n": 1})
        second = f.background(JOIN, Kind.GATE, {"n": 2})
    assert first.outcome is second.outcome is Outcome.BACKGROUND
    assert recorder.dropped == [JOIN]
    dropped = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert dropped == [f"[{server.base_url}] Background antispam {JOIN} dropped: 1 running"]
    await until(lambda: f.background_running == 0)
    await f.close()
    f.background(JOIN, Kind.GATE, {"n": 3})  # after shutdown: dropped, never sent
    assert recorder.dropped == [JOIN, JOIN]
    assert len(server.requests_for(JOIN)) == 1


@pytest_twisted.ensureDeferred
async def test_a_background_registration_still_reads_the_shadow_ban(
    server: AntispamServer, caplog: pytest.LogCaptureFixture
) -> None:
    server.set(REGISTER, Behaviour(status=200, body={"shadow_ban": True}))
    f, recorder = forwarder(server, **{"async": {REGISTER: True}})
    with caplog.at_level(logging.INFO, logger="synapse_http_antispam"):
        verdict = f.background(REGISTER, Kind.REGISTRATION, {"username": "spammer"})
        assert verdict.outcome is Outcome.BACKGROUND and not verdict.shadow_ban
        await until(lambda: f.background_running == 0)
    await f.close()
    [(name, recorded)] = recorder.decided_
    assert name == REGISTER and recorded.would_shadow_ban and not recorded.shadow_ban
    assert any(
        f"Antispam {REGISTER} would shadow-ban (async, not enforced)" in r.getMessage()
        for r in caplog.records
    )
