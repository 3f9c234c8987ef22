"""The startup ping (`do_ping`) as an admin watches it in the log: when each attempt happens,
the backoff it keeps, the sentence each outcome leaves, and that it stops for good.

The schedule runs on a fake clock with scripted results, so every delay is exact and no test
waits; what one real ping sends and reports is checked against the real test server.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import pytest
import pytest_twisted

from twisted.internet import defer
from twisted.internet.task import Clock

from synapse_http_antispam.answers import PingResult
from synapse_http_antispam.catalogue import Kind
from synapse_http_antispam.config import parse_config
from synapse_http_antispam.endpoints import Endpoints
from synapse_http_antispam.forwarder import Forwarder
from synapse_http_antispam.pinger import Pinger
from synapse_http_antispam.wire import Answer
from tests.support.antispam_server import AntispamServer, Behaviour, free_port
from tests.support.waiting import until

URL = "http://antispam.test"
LOGGER = "tests.pinger"


class Scripted:
    """Stands in for the forwarder's ping: hands out the scripted results in turn and notes
    the fake time of each attempt."""

    def __init__(self, clock: Clock, *results: PingResult) -> None:
        self.clock = clock
        self.results = list(results)
        self.at: list[float] = []

    async def __call__(self) -> PingResult:
        self.at.append(self.clock.seconds())
        return self.results.pop(0)


def pinger(clock: Clock, secrets: tuple[str, ...] = ()) -> Pinger:
    # The sender and the endpoint memory serve only ping_once, which these tests replace.
    log = logging.getLogger(LOGGER)
    return Pinger(None, None, clock, URL, log, 5.0, lambda: secrets)  # type: ignore[arg-type]


def lines(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [(r.levelname, r.getMessage()) for r in caplog.records if r.name == LOGGER]


def run(clock: Clock, seconds: float) -> None:
    """Step the fake clock by half seconds (exact in binary, so due times are hit exactly)."""
    clock.advance(0)
    for _ in range(int(seconds * 2)):
        clock.advance(0.5)


def test_failures_back_off_from_1_s_doubling_to_60_s(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    clock = Clock()
    ping = Scripted(
        clock,
        *[PingResult("connect", "id") for _ in range(8)],
        PingResult("http_status", "id", 503),
        PingResult("ok", "AbCdEfGh"),
    )
    pinger(clock).start(ping)
    run(clock, 400)
    gaps = [b - a for a, b in zip(ping.at, ping.at[1:])]
    assert ping.at[0] == 0.0, "the first ping waits for nothing"
    assert gaps == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    said = lines(caplog)
    assert said[0] == (
        "WARNING",
        f"Ping to antispam server at {URL} failed: connect; retrying in 1s",
    )
    assert said[7][1].endswith("retrying in 60s")
    assert said[8] == (
        "WARNING",
        f"Ping to antispam server at {URL} failed: http_status (HTTP 503); retrying in 60s",
    )
    # 0.5.x's words: antispam servers' docs tell admins to look for this line.
    assert said[-1] == ("INFO", "Successfully pinged antispam server with request ID AbCdEfGh")
    assert len(said) == 10


def test_a_failed_startup_ping_says_why_with_the_tokens_masked(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The cause: the socket's words, or the start of what answered (a server may echo the
    token it was sent; the old token too, while a rotated one is still remembered)."""
    caplog.set_level(logging.INFO, LOGGER)
    clock = Clock()
    ping = Scripted(
        clock,
        PingResult("connect", "id", detail="Connection was refused by other side"),
        PingResult("http_status", "id", 401, detail="unknown token new-s3cret (was old-s3cret)"),
        PingResult("ok", "id"),
    )
    pinger(clock, ("new-s3cret", "old-s3cret")).start(ping)
    run(clock, 10)
    assert [text for _, text in lines(caplog)[:2]] == [
        f"Ping to antispam server at {URL} failed: connect (Connection was refused by other "
        "side); retrying in 1s",
        f"Ping to antispam server at {URL} failed: http_status (HTTP 401: unknown token <token> "
        "(was <token>)); retrying in 2s",
    ]


@pytest.mark.parametrize(
    "result, warning",
    [
        (
            PingResult("not_implemented", "id", 404),
            f"The antispam server at {URL} is reachable but has no ping endpoint (HTTP 404); "
            "not pinging it again (set do_ping: false to skip this)",
        ),
        (
            PingResult("unexpected_answer", "QwErTyUi", 200),
            f"The antispam server at {URL} answered the ping (request ID QwErTyUi) with HTTP "
            '200 but not the expected {"id": ..., "status": "ok"}; taking it as reachable',
        ),
    ],
    ids=["no-ping-endpoint", "unexpected-answer"],
)
def test_an_answer_that_proves_the_server_is_there_is_said_once_and_stops(
    caplog: pytest.LogCaptureFixture, result: PingResult, warning: str
) -> None:
    clock = Clock()
    ping = Scripted(clock, result)
    pinger(clock).start(ping)
    run(clock, 200)
    assert len(ping.at) == 1
    assert lines(caplog) == [("WARNING", warning)]


def test_stop_cancels_the_next_attempt_and_forbids_new_ones() -> None:
    clock = Clock()
    ping = Scripted(clock, *[PingResult("timeout", "id") for _ in range(3)])
    p = pinger(clock)
    p.start(ping)
    clock.advance(0)
    assert len(ping.at) == 1 and len(clock.getDelayedCalls()) == 1
    p.stop()
    assert clock.getDelayedCalls() == []
    run(clock, 100)
    assert len(ping.at) == 1
    p.start(ping)  # a stopped pinger stays stopped (Synapse is shutting down)
    assert clock.getDelayedCalls() == []
    p.stop()  # twice is fine


class Sender:
    """Stands in for the sender (the real one is tested with real servers below and in
    test_forwarder.py): notes what one ping asked of it, lets the fake clock run for the
    exchange, then answers by echoing the id (or raises)."""

    def __init__(self, clock: Clock, *, extra: dict[str, Any] | None = None) -> None:
        self.clock = clock
        self.extra = extra or {}
        self.asked: list[dict[str, Any]] = []
        self.raises: Exception | None = None

    async def send(
        self, name: str, body: bytes, request_id: str, kind: Any, deadline: float, *, limit: bool
    ) -> Answer:
        sent = json.loads(body)
        self.asked.append(
            {"name": name, "id": sent["id"], "request_id": request_id, "kind": kind}
            | {"deadline": deadline, "limit": limit}
        )
        self.clock.advance(1.5)
        if self.raises is not None:
            raise self.raises
        reply = {"id": sent["id"], "status": "ok", **self.extra}
        return Answer(200, json.dumps(reply).encode(), content_type="application/json")


def direct(clock: Clock, sender: Sender) -> Pinger:
    log = logging.getLogger(LOGGER)
    return Pinger(sender, Endpoints(clock, URL, log), clock, URL, log)  # type: ignore[arg-type]


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("limit", [True, False])
async def test_one_ping_by_its_deadline_through_the_limiter_or_past_it(limit: bool) -> None:
    clock = Clock()
    clock.advance(100)
    sender = Sender(clock)
    result = await direct(clock, sender).ping_once(limit=limit, timeout=3)
    [asked] = sender.asked
    assert asked == {
        "name": "ping",
        "id": result.ping_id,
        "request_id": result.ping_id,
        "kind": None,
        "deadline": 103,
        "limit": limit,
    }
    assert (result.outcome, result.http_status, result.seconds, result.detail) == (
        "ok",
        200,
        1.5,
        "",
    )


@pytest_twisted.ensureDeferred
async def test_an_ok_ping_carries_no_detail_whatever_else_the_server_adds() -> None:
    clock = Clock()
    result = await direct(clock, Sender(clock, extra={"error": "stray"})).ping_once(
        limit=True, timeout=3
    )
    assert (result.outcome, result.detail) == ("ok", "")


@pytest_twisted.ensureDeferred
async def test_a_ping_broken_inside_the_module_is_internal_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    sender = Sender(clock)
    sender.raises = RuntimeError("bug")
    result = await direct(clock, sender).ping_once(limit=True, timeout=3)
    assert (result.outcome, result.http_status, result.detail) == ("internal", None, "")
    assert not result.reachable
    [record] = [r for r in caplog.records if r.name == LOGGER]
    assert record.levelname == "ERROR" and record.exc_info is not None
    assert record.getMessage() == "Ping to the antispam server failed inside the module"


def forwarder(url: str) -> Forwarder:
    return Forwarder(parse_config({"base_url": url}))


@pytest_twisted.ensureDeferred
async def test_one_ping_sends_a_fresh_id_of_8_letters_and_reports_it(
    antispam: AntispamServer,
) -> None:
    f = forwarder(antispam.base_url)
    try:
        first = await f.ping_once(timeout=5)
        second = await f.ping_once(timeout=5)
    finally:
        await f.close()
    sent = [r.json["id"] for r in antispam.requests_for("ping")]
    assert all(re.fullmatch("[A-Za-z]{8}", i) for i in sent), sent
    assert [first.ping_id, second.ping_id] == sent and sent[0] != sent[1]
    assert (first.outcome, first.http_status, first.detail) == ("ok", 200, "")
    assert first.seconds >= 0


@pytest_twisted.ensureDeferred
async def test_a_ping_nobody_answers_has_no_status_and_the_sockets_words() -> None:
    """As a callback's failure does (test_failure_details.py): `check` and the health line
    show why nothing answered, not only that nothing did."""
    f = forwarder(f"http://127.0.0.1:{free_port()}")
    try:
        result = await f.ping_once(timeout=5)
    finally:
        await f.close()
    assert (result.outcome, result.http_status) == ("connect", None)
    assert "Connection refused" in result.detail, result.detail
    assert not result.reachable


@pytest_twisted.ensureDeferred
async def test_a_refused_ping_carries_the_servers_words(antispam: AntispamServer) -> None:
    antispam.set("ping", Behaviour(status=500, body={"errcode": "M_UNKNOWN", "error": "db down"}))
    f = forwarder(antispam.base_url)
    try:
        result = await f.ping_once(timeout=5)
    finally:
        await f.close()
    assert (result.outcome, result.http_status) == ("http_status", 500)
    assert "db down" in result.detail


@pytest_twisted.ensureDeferred
async def test_a_ping_waits_its_turn_unless_it_is_the_breakers_probe(
    antispam: AntispamServer,
) -> None:
    """`check` and the startup ping queue like any call (max_pending 0: no queue at all);
    only the breaker's probe may pass a limiter whose every slot hangs on a dead server."""
    antispam.set("user_may_invite", Behaviour(never_respond=True))
    config = {"base_url": antispam.base_url, "max_concurrency": 1, "max_pending": 0}
    f = Forwarder(parse_config({**config, "timeout": 2}))
    d = defer.ensureDeferred(f.check("user_may_invite", Kind.GATE, {"inviter": "@a:x"}))
    try:
        await until(lambda: antispam.requests_for("user_may_invite"))
        assert (await f.ping_once(timeout=1)).outcome == "overloaded"
        assert (await f.ping_once(limit=False, timeout=1)).outcome == "ok"
    finally:
        d.cancel()  # the check hangs until its deadline otherwise; its verdict is not the point
        d.addErrback(lambda failure: failure.trap(defer.CancelledError))
        await d
        await f.close()


@pytest_twisted.ensureDeferred
async def test_the_startup_ping_names_the_server_it_cannot_reach(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    f = Forwarder(parse_config({"base_url": url, "do_ping": True}))
    with caplog.at_level(logging.WARNING, logger="synapse_http_antispam"):
        f.start_ping()
        await until(lambda: any("Ping to" in r.getMessage() for r in caplog.records))
    await f.close()
    [first, *_] = [r.getMessage() for r in caplog.records if "Ping to" in r.getMessage()]
    # With the socket's words: nothing listens there.
    assert first.startswith(f"[{url}] Ping to antispam server at {url} failed: connect (")
    assert "refused" in first and first.endswith("); retrying in 1s")


# ---- the health ping: outside the limiter, by `timeout` at most ------------------------------


@pytest_twisted.ensureDeferred
async def test_the_health_ping_gets_through_while_every_slot_hangs(
    antispam: AntispamServer,
) -> None:
    """Calls hanging on a dead endpoint hold every slot: the health ping must not queue
    behind them (it would count a server that answers as down)."""
    antispam.set("user_may_invite", Behaviour(never_respond=True))
    config = {"base_url": antispam.base_url, "max_concurrency": 1, "max_pending": 0}
    f = Forwarder(parse_config({**config, "timeout": 2, "health_interval": 1}))
    d = defer.ensureDeferred(f.check("user_may_invite", Kind.GATE, {"inviter": "@a:x"}))
    try:
        await until(lambda: antispam.requests_for("user_may_invite"))
        await f.health.check()
        assert f.health.up is True
        assert len(antispam.requests_for("ping")) == 1
    finally:
        d.cancel()
        d.addErrback(lambda failure: failure.trap(defer.CancelledError))
        await d
        await f.close()


@pytest_twisted.ensureDeferred
async def test_a_health_ping_nobody_answers_is_a_timeout(
    antispam: AntispamServer, caplog: pytest.LogCaptureFixture
) -> None:
    antispam.set("ping", Behaviour(never_respond=True))
    f = Forwarder(parse_config({"base_url": antispam.base_url, "timeout": 0.3}))
    try:
        with caplog.at_level(logging.INFO, logger="synapse_http_antispam"):
            await f.health.check()
    finally:
        await f.close()
    assert f.health.up is False
    url = antispam.base_url
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        (
            "WARNING",
            f"[{url}] Health ping to the antispam server at {url} failed (timeout); it counts "
            "as down until a ping is answered (every 15s)",
        )
    ]


@pytest.mark.parametrize("ping", ["startup", "health"])
@pytest_twisted.ensureDeferred
async def test_a_ping_answer_echoing_the_token_is_logged_masked(
    antispam: AntispamServer, caplog: pytest.LogCaptureFixture, ping: str
) -> None:
    """Both lines a failed ping leaves show the server's words, and a server may echo the
    token it was sent: the forwarder hands both the tokens to mask."""
    token = "s3cret-ping-token"
    error = {"errcode": "M_UNKNOWN_TOKEN", "error": f"unknown token {token}"}
    antispam.set("ping", Behaviour(status=401, body=error))
    f = Forwarder(parse_config({"base_url": antispam.base_url, "authorization": token}))
    try:
        with caplog.at_level(logging.WARNING, logger="synapse_http_antispam"):
            if ping == "startup":
                f.start_ping()
                await until(lambda: any("Ping to" in r.getMessage() for r in caplog.records))
            else:
                await f.health.check()
    finally:
        await f.close()
    [line] = [r.getMessage() for r in caplog.records if "ing to" in r.getMessage()][:1]
    assert "unknown token <token>" in line and token not in line, line
