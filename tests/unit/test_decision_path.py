"""The forwarder's own decision path, beyond what the server answers: `async` callbacks (allowed
at once, asked in the background within `max_background`, recorded as what the answer would
have done), request identifiers, the request size cap, and a fault inside the module."""

from __future__ import annotations

import logging
import re

import pytest
import pytest_twisted

from synapse_http_antispam.catalogue import Kind
from synapse_http_antispam.config import parse_config
from synapse_http_antispam.forwarder import Forwarder
from synapse_http_antispam.verdict import Failure, Outcome
from tests.support.antispam_server import AntispamServer, Behaviour
from tests.support.recorder import Recorder
from tests.support.waiting import until

JOIN = "user_may_join_room"
REGISTER = "check_registration_for_spam"


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
    [(name, recorded)] = recorder.decisions
    assert name == REGISTER and recorded.would_shadow_ban and not recorded.shadow_ban
    assert any(
        f"Antispam {REGISTER} would shadow-ban (async, not enforced)" in r.getMessage()
        for r in caplog.records
    )


# ---- the rest of the decision path: identifiers, the request cap, a fault inside -------------


@pytest_twisted.ensureDeferred
async def test_request_ids_count_up_under_one_prefix_per_module(server: AntispamServer) -> None:
    """X-Request-ID is how an admin finds one call in both logs: unique, and in order."""
    f, _ = forwarder(server)
    verdicts = [await f.check("user_may_invite", Kind.GATE, {"n": n}) for n in range(3)]
    await f.close()
    sent = [r.headers["x-request-id"] for r in server.requests_for("user_may_invite")]
    assert sent == [v.request_id for v in verdicts]
    prefix = sent[0].rsplit("-", 1)[0]
    assert re.fullmatch("[0-9a-f]{8}", prefix)
    assert sent == [f"{prefix}-1", f"{prefix}-2", f"{prefix}-3"]
    # Built without a worker's name, the module speaks for the main process.
    assert {r.headers["x-synapse-instance"] for r in server.requests} == {"master"}


@pytest_twisted.ensureDeferred
async def test_a_failed_call_names_the_request_the_server_saw(server: AntispamServer) -> None:
    """The WARNING for a failure carries the X-Request-ID, so the server's own log can be
    searched for the same call."""
    server.set("user_may_invite", Behaviour(status=503, body=b"down"))
    f, _ = forwarder(server)
    verdict = await f.check("user_may_invite", Kind.GATE, {"n": 1})
    await f.close()
    [request] = server.requests_for("user_may_invite")
    assert verdict.failure is Failure.HTTP_STATUS
    assert verdict.request_id == request.headers["x-request-id"]


@pytest_twisted.ensureDeferred
async def test_a_request_of_exactly_max_request_bytes_is_sent(server: AntispamServer) -> None:
    f, _ = forwarder(server, max_request_bytes=1024)
    fits = {"x": "a" * (1024 - len(b'{"x":""}'))}  # encodes to exactly 1024 bytes
    too_big = {"x": fits["x"] + "a"}
    try:
        assert (await f.check("user_may_invite", Kind.GATE, fits)).outcome is Outcome.ALLOWED
        refused = await f.check("user_may_invite", Kind.GATE, too_big)
    finally:
        await f.close()
    assert refused.failure is Failure.REQUEST_TOO_LARGE
    assert [len(r.body) for r in server.requests_for("user_may_invite")] == [1024]


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize(
    "name, outcome",
    [("user_may_invite", Outcome.FAILED_CLOSED), ("check_event_for_spam", Outcome.FAILED_OPEN)],
)
async def test_a_fault_inside_the_module_goes_through_the_failure_policy(
    server: AntispamServer, caplog: pytest.LogCaptureFixture, name: str, outcome: Outcome
) -> None:
    """A payload that cannot be sent (here a key JSON cannot carry) is a fault of the module,
    not of the server: an ERROR with its traceback, and the callback's failure policy."""
    f, recorder = forwarder(server)
    with caplog.at_level(logging.INFO, logger="synapse_http_antispam"):
        verdict = await f.check(name, Kind.GATE, {("not", "a", "string"): 1})
    await f.close()
    assert (verdict.outcome, verdict.failure) == (outcome, Failure.INTERNAL)
    assert verdict.request_id is not None and verdict.request_id.endswith("-1")
    assert recorder.decisions == [(name, verdict)]
    assert recorder.reuses == []  # made, not reused: nothing to count there
    [error] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert (
        error.getMessage() == f"[{server.base_url}] Antispam check {name} failed inside the module"
    )
    assert error.exc_info is not None
    assert not server.requests
