"""The forwarder against a real local HTTP server: every way the antispam server can answer.

Nothing here fakes HTTP: the server is `tests.support.antispam_server`, a real socket server
that can also stall, stream forever, close mid-response or never answer.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted

from twisted.internet import defer

from synapse_http_antispam.catalogue import Kind
from synapse_http_antispam.config import parse_config
from synapse_http_antispam.forwarder import Forwarder
from synapse_http_antispam.verdict import Failure, Outcome, Verdict
from tests.support.antispam_server import AntispamServer, Behaviour, allow, free_port, reject
from tests.support.peers import NO_POLICY_LIST
from tests.support.recorder import Recorder
from tests.support.waiting import sleep, until

TOKEN = "very-secret-token-123"


def make(url: str, **extra: Any) -> Forwarder:
    raw = {"base_url": url, "authorization": TOKEN, "timeout": 1.0, **extra}
    return Forwarder(parse_config(raw))


@pytest_twisted.async_yield_fixture
async def fwd(server: AntispamServer) -> AsyncIterator[Forwarder]:
    f = make(server.base_url)
    yield f
    await f.close()


async def check(f: Forwarder, name: str = "user_may_invite", **payload: Any) -> Verdict:
    return await f.check(name, Kind.GATE, payload or {"inviter": "@a:x", "invitee": "@b:x"})


@pytest_twisted.ensureDeferred
async def test_request_shape(server: AntispamServer, fwd: Forwarder) -> None:
    verdict = await check(fwd, inviter="@a:x", invitee="@b:x", room_id="!r:x")
    assert verdict.outcome is Outcome.ALLOWED
    [req] = server.requests
    assert req.path == "/user_may_invite"
    assert req.json == {"inviter": "@a:x", "invitee": "@b:x", "room_id": "!r:x"}
    assert req.headers["authorization"] == f"Bearer {TOKEN}"
    assert req.headers["content-type"] == "application/json"
    assert req.headers["accept"] == "application/json"
    assert req.headers["user-agent"].startswith("synapse-http-antispam/")
    assert req.headers["x-request-id"]


# (Trailing white space cannot survive any HTTP parser, so none is tried.)
@pytest.mark.parametrize("token", ["tok en", " leading-space", "Bearer-ish=="])
@pytest_twisted.ensureDeferred
async def test_inline_authorization_is_sent_byte_for_byte(
    server: AntispamServer, token: str
) -> None:
    """As 0.5.x sent it: servers compare the header exactly (Meowlnir hashes what follows
    "Bearer ", Draupnir matches `Bearer (.*)`), so trimming would lock a working setup out."""
    f = Forwarder(parse_config({"base_url": server.base_url, "authorization": token}))
    try:
        await check(f)
        assert server.requests[0].headers["authorization"] == f"Bearer {token}"
    finally:
        await f.close()


@pytest.mark.parametrize(
    "behaviour",
    [
        allow(),
        Behaviour(status=204, body=b""),
        Behaviour(status=200, body=b"not json at all", headers={"Content-Type": "text/plain"}),
        Behaviour(status=202, body=[1, 2]),
    ],
    ids=["200-json", "204-empty", "200-text", "202-list"],
)
@pytest_twisted.ensureDeferred
async def test_any_2xx_allows(
    server: AntispamServer, fwd: Forwarder, behaviour: Behaviour
) -> None:
    server.set(None, behaviour)
    assert (await check(fwd)).outcome is Outcome.ALLOWED


@pytest_twisted.ensureDeferred
async def test_4xx_json_rejects_with_errcode_message_and_fields(
    server: AntispamServer, fwd: Forwarder
) -> None:
    server.set(None, reject("ORG_EXAMPLE_BLOCKED", "You are on a list", policy="spam"))
    verdict = await check(fwd)
    assert verdict.outcome is Outcome.REJECTED
    assert (verdict.errcode, verdict.message) == ("ORG_EXAMPLE_BLOCKED", "You are on a list")
    assert verdict.fields == {"policy": "spam"}


@pytest_twisted.ensureDeferred
async def test_4xx_without_errcode_defaults_to_forbidden(
    server: AntispamServer, fwd: Forwarder
) -> None:
    server.set(None, Behaviour(status=403, body={}))
    verdict = await check(fwd)
    assert (verdict.outcome, verdict.errcode) == (Outcome.REJECTED, "M_FORBIDDEN")


@pytest.mark.parametrize(
    "behaviour, failure",
    [
        (Behaviour(status=500, body={"errcode": "M_FORBIDDEN"}), Failure.HTTP_STATUS),
        (Behaviour(status=503, body=b"<html>down</html>"), Failure.HTTP_STATUS),
        (Behaviour(status=401, body={"errcode": "M_UNKNOWN_TOKEN"}), Failure.AUTH),
        (Behaviour(status=401, body=b"Missing access token"), Failure.AUTH),
        (Behaviour(status=407, body={}), Failure.AUTH),
        (Behaviour(status=501, body={"errcode": "M_UNKNOWN", "error": "x"}), Failure.HTTP_STATUS),
        (Behaviour(status=302, headers={"Location": "http://127.0.0.1:9/x"}), Failure.HTTP_STATUS),
        (Behaviour(status=400, body=b"<html>bad</html>"), Failure.BAD_RESPONSE),
        (Behaviour(status=403, body=b"\xff\xfe{not utf-8"), Failure.BAD_RESPONSE),
        (Behaviour(status=403, body=[1]), Failure.BAD_RESPONSE),
        (Behaviour(never_respond=True), Failure.TIMEOUT),
        (Behaviour(status=403, stall_body=True, body={"x": 1}), Failure.TIMEOUT),
        (Behaviour(stall_body=True, body={"x": 1}), Failure.TIMEOUT),
        (Behaviour(status=403, endless_body=True), Failure.TOO_LARGE),
        (Behaviour(status=403, body=b"x" * 10_000_000), Failure.TOO_LARGE),
        (Behaviour(close_before_response=True), Failure.CONNECT),
        (Behaviour(status=403, close_mid_body=True, body={"pad": "x" * 1000}), Failure.CONNECT),
    ],
    ids=[
        "500-json",
        "503-html",
        "401-json-own-auth",
        "401-html-own-auth",
        "407-proxy-auth",
        "501-json-errcode",
        "302-redirect",
        "400-html",
        "403-invalid-utf8",
        "403-json-list",
        "never-answers",
        "headers-then-stall",
        "2xx-headers-then-stall",
        "endless-body",
        "10MB-body",
        "closed-before-response",
        "closed-mid-body",
    ],
)
@pytest_twisted.ensureDeferred
async def test_server_failures_go_through_the_failure_policy(
    server: AntispamServer, behaviour: Behaviour, failure: Failure
) -> None:
    server.set(None, behaviour)
    closed = make(server.base_url, timeout=0.5)
    opened = make(server.base_url, timeout=0.5, fail_open={"user_may_invite": True})
    try:
        verdict = await check(closed)
        assert (verdict.outcome, verdict.failure) == (Outcome.FAILED_CLOSED, failure)
        assert verdict.errcode == "M_UNKNOWN"
        assert verdict.message and "antispam server" in verdict.message
        verdict = await check(opened)
        assert (verdict.outcome, verdict.failure) == (Outcome.FAILED_OPEN, failure)
    finally:
        await closed.close()
        await opened.close()


@pytest_twisted.ensureDeferred
async def test_connection_refused() -> None:
    with AntispamServer() as gone:
        url = gone.base_url
    f = make(url)
    try:
        verdict = await check(f)
        assert (verdict.outcome, verdict.failure) == (Outcome.FAILED_CLOSED, Failure.CONNECT)
        # What the client reads names the antispam server, never the socket error or address.
        assert (verdict.errcode, verdict.message) == (
            "M_UNKNOWN",
            "The antispam server could not be reached",
        )
    finally:
        await f.close()


@pytest.mark.parametrize(
    "behaviour",
    [
        Behaviour(endless_body=True),
        Behaviour(body=b"x" * 10_000_000),
        Behaviour(close_mid_body=True, body={"pad": "x" * 1000}),
    ],
    ids=["endless-body", "10MB-body", "closed-mid-body"],
)
@pytest_twisted.ensureDeferred
async def test_any_2xx_allows_whatever_its_body_does(
    server: AntispamServer, fwd: Forwarder, behaviour: Behaviour
) -> None:
    """The wire protocol's rule (docs/wire-protocol.md): a 2xx allows. A body nobody needs cannot
    turn it into a failure, once it has ended (cut at the cap, or broken off); one that stalls
    past the deadline is a timeout (see test_server_failures_go_through_the_failure_policy)."""
    server.set(None, behaviour)
    verdict = await check(fwd)
    assert (verdict.outcome, verdict.failure) == (Outcome.ALLOWED, None)


@pytest_twisted.ensureDeferred
async def test_redirect_is_not_followed(server: AntispamServer, fwd: Forwarder) -> None:
    with AntispamServer() as elsewhere:
        server.set(None, Behaviour(status=307, headers={"Location": elsewhere.base_url + "/x"}))
        verdict = await check(fwd)
        assert verdict.failure is Failure.HTTP_STATUS
        assert elsewhere.requests == []


@pytest_twisted.ensureDeferred
async def test_stale_pooled_connection_is_retried_once(
    server: AntispamServer, fwd: Forwarder
) -> None:
    server.set(None, Behaviour(close_if_reused=True))
    assert (await check(fwd)).outcome is Outcome.ALLOWED
    # The second call goes out on the kept-alive connection, which the server drops unanswered.
    assert (await check(fwd)).outcome is Outcome.ALLOWED
    assert len(server.requests) == 3
    assert len({r.connection_id for r in server.requests}) == 2


@pytest_twisted.ensureDeferred
async def test_the_pool_keeps_no_more_idle_connections_than_max_concurrency(
    server: AntispamServer,
) -> None:
    """Two calls fill a limiter of two; the breaker's probe (a ping outside the limiter) opens
    a third connection beside them. Once all three are answered the module keeps two for
    reuse and closes the third, instead of holding it open for the pool's idle minute."""
    server.set("user_may_invite", Behaviour(delay=0.3))
    server.set("ping", lambda r: Behaviour(body={"id": r.json["id"], "status": "ok"}, delay=0.3))
    f = make(server.base_url, max_concurrency=2)
    try:
        calls = [defer.ensureDeferred(check(f, invitee=f"@{n}:x")) for n in (1, 2)]
        probe = defer.ensureDeferred(f.ping_once(limit=False))
        assert all(v.allowed for v in await defer.gatherResults(calls))
        assert (await probe).outcome == "ok"
        assert len({r.connection_id for r in server.requests}) == 3
        await until(lambda: server.closed_connections == 1, limit=5)
        # The two kept are reused: no new connection.
        await defer.gatherResults(
            [defer.ensureDeferred(check(f, invitee=f"@{n}:x")) for n in (3, 4)]
        )
        assert len({r.connection_id for r in server.requests}) == 3
        assert server.closed_connections == 1
    finally:
        await f.close()


@pytest_twisted.ensureDeferred
async def test_fresh_connection_closed_is_not_retried(server: AntispamServer) -> None:
    server.set(None, Behaviour(close_before_response=True))
    f = make(server.base_url)
    try:
        assert (await check(f)).failure is Failure.CONNECT
        assert len(server.requests) == 1
    finally:
        await f.close()


@pytest_twisted.ensureDeferred
async def test_oversized_request_is_not_sent(server: AntispamServer) -> None:
    f = make(server.base_url, max_request_bytes=1024)
    try:
        verdict = await f.check("check_event_for_spam", Kind.EVENT, {"event": "x" * 2000})
        assert (verdict.outcome, verdict.failure) == (
            Outcome.FAILED_OPEN,
            Failure.REQUEST_TOO_LARGE,
        )
        assert server.requests == []
    finally:
        await f.close()


@pytest_twisted.ensureDeferred
async def test_breaker_opens_on_a_dead_server_and_a_background_probe_closes_it() -> None:
    port = free_port()
    f = make(
        f"http://127.0.0.1:{port}",
        circuit_breaker={"failure_threshold": 3, "probe_interval": 0.1},
    )
    try:
        for _ in range(3):
            assert (await check(f)).failure is Failure.CONNECT
        assert f.breaker.is_open
        assert (await check(f)).failure is Failure.BREAKER_OPEN
        with AntispamServer(port=port) as back:
            # No user call is needed: the probe finds the server and closes the breaker.
            await until(lambda: not f.breaker.is_open)
            assert [r.callback for r in back.requests] == ["ping"]
            assert (await check(f)).outcome is Outcome.ALLOWED
    finally:
        await f.close()


@pytest_twisted.ensureDeferred
async def test_the_probe_gets_through_while_every_slot_hangs(server: AntispamServer) -> None:
    """A server that hangs on one endpoint holds every concurrency slot while the breaker is
    open (here: opened by calls that got no answer). The probe must not queue behind the hung
    calls, or the breaker would stay open although the server answers."""
    server.set("user_may_invite", Behaviour(never_respond=True))
    f = make(
        server.base_url,
        timeout=0.3,
        timeouts={"user_may_invite": 60},
        max_concurrency=1,
        max_pending=10,
        circuit_breaker={"failure_threshold": 3, "probe_interval": 0.1},
    )
    try:
        hung = defer.ensureDeferred(check(f))
        await until(lambda: len(server.requests_for("user_may_invite")) == 1)
        # Calls waiting for the one slot time out as `overloaded`, which the breaker does not
        # count (issue 18): the module's queue is not the server's silence.
        verdict = await f.check("user_may_create_room", Kind.GATE, {"user_id": "@a:x"})
        assert verdict.failure is Failure.OVERLOADED and not f.breaker.is_open
        for _ in range(3):  # three calls that got no answer, as from a server that hangs
            f.breaker.unreachable("timeout")
        assert f.breaker.is_open and f.limiter.active == 1
        await until(lambda: not f.breaker.is_open)
        assert server.requests_for("ping")
        assert server.requests_for("user_may_create_room") == []
        assert not hung.called  # the slot is still held all along
    finally:
        hung.cancel()
        # Handled: a cancelled Deferred collected unhandled is a Twisted error in whichever
        # test runs next (it made the hostile-server tests fail under mutmut's test order).
        hung.addErrback(lambda _: None)
        await f.close()


@pytest_twisted.ensureDeferred
async def test_a_response_declaring_more_than_the_cap_is_refused_before_its_body(
    server: AntispamServer,
) -> None:
    """Content-Length above max_response_bytes fails at once: the module neither waits for
    nor reads a body it would throw away. (This one promises 1124 bytes, sends 1024, stalls.)"""
    server.set(None, Behaviour(status=403, body=b"x" * 1024, stall_body=True))
    f = make(server.base_url, timeout=10.0, max_response_bytes=1100)
    try:
        verdict = await check(f)
        assert verdict.failure is Failure.TOO_LARGE
        assert verdict.seconds < 10.0
    finally:
        await f.close()


@pytest_twisted.ensureDeferred
async def test_one_broken_endpoint_does_not_take_the_others_down(server: AntispamServer) -> None:
    server.set("user_may_invite", Behaviour(status=500, body={"errcode": "M_UNKNOWN"}))
    f = make(server.base_url, circuit_breaker={"failure_threshold": 2})
    try:
        for _ in range(20):
            assert (await check(f)).failure is Failure.HTTP_STATUS
        assert not f.breaker.is_open
        verdict = await f.check("user_may_create_room", Kind.GATE, {"user_id": "@a:x"})
        assert verdict.outcome is Outcome.ALLOWED
    finally:
        await f.close()


NO_ENDPOINT = {
    "express-404-html": Behaviour(
        status=404,
        body=b"<!DOCTYPE html><pre>Cannot POST /api/1/spam_check/x</pre>",
        headers={"Content-Type": "text/html; charset=utf-8"},
    ),
    "go-405-text": Behaviour(
        status=405, body=b"Method Not Allowed", headers={"Content-Type": "text/plain"}
    ),
    "501-empty": Behaviour(status=501, body=b""),
    "404-json-without-errcode": Behaviour(status=404, body={"detail": "Not Found"}),
}


@pytest.mark.parametrize("behaviour", list(NO_ENDPOINT.values()), ids=list(NO_ENDPOINT))
@pytest_twisted.ensureDeferred
async def test_no_endpoint_allows_whatever_the_failure_policy_and_is_not_sent_again(
    server: AntispamServer, behaviour: Behaviour, caplog: pytest.LogCaptureFixture
) -> None:
    server.set("user_may_invite", behaviour)
    f = make(server.base_url, circuit_breaker={"failure_threshold": 1})
    try:
        with caplog.at_level(logging.INFO, logger="synapse_http_antispam"):
            for _ in range(5):
                verdict = await check(f)  # user_may_invite fails closed by default
                assert verdict.outcome is Outcome.NOT_IMPLEMENTED and verdict.allowed
        assert len(server.requests_for("user_may_invite")) == 1
        assert not f.breaker.is_open
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1, warnings
        assert "no endpoint for user_may_invite" in warnings[0]
        assert "enabled_callbacks" in warnings[0]
        # Other callbacks are still sent.
        verdict = await f.check("user_may_create_room", Kind.GATE, {"user_id": "@a:x"})
        assert verdict.outcome is Outcome.ALLOWED
    finally:
        await f.close()


@pytest_twisted.ensureDeferred
async def test_no_endpoint_is_asked_again_later_so_an_upgrade_is_picked_up(
    server: AntispamServer,
) -> None:
    server.set("user_may_invite", NO_ENDPOINT["express-404-html"])
    f = make(server.base_url)
    f.endpoints.RECHECK = 0.3
    try:
        assert (await check(f)).outcome is Outcome.NOT_IMPLEMENTED
        server.set("user_may_invite", reject("M_FORBIDDEN", "now served"))
        assert (await check(f)).outcome is Outcome.NOT_IMPLEMENTED  # not asked yet
        await sleep(0.35)
        verdict = await check(f)
        assert (verdict.outcome, verdict.message) == (Outcome.REJECTED, "now served")
        assert len(server.requests_for("user_may_invite")) == 2
    finally:
        await f.close()


@pytest_twisted.ensureDeferred
async def test_no_endpoint_from_an_endpoint_that_answered_before_is_a_glitch(
    server: AntispamServer, fwd: Forwarder
) -> None:
    """A flaky proxy's 404 must not silence a callback the server really has for minutes:
    with the server's ping answering just then, the call goes through, but it is asked again
    the next time."""
    assert (await check(fwd)).outcome is Outcome.ALLOWED
    server.set("user_may_invite", NO_ENDPOINT["express-404-html"])
    assert (await check(fwd)).outcome is Outcome.NOT_IMPLEMENTED
    server.set("user_may_invite", reject())
    assert (await check(fwd)).outcome is Outcome.REJECTED
    assert [r.callback for r in server.requests] == [
        "user_may_invite",
        "user_may_invite",
        "ping",  # the evidence for the 404, asked after it came
        "user_may_invite",
    ]


@pytest.mark.parametrize(
    "behaviour",
    [
        reject("M_NOT_FOUND", NO_POLICY_LIST, status=404),
        reject("M_UNRECOGNIZED", "Unrecognized request", status=405),
    ],
    ids=["meowlnir-unknown-room-404", "405-with-errcode"],
)
@pytest_twisted.ensureDeferred
async def test_a_deliberate_404_with_an_errcode_still_rejects(
    server: AntispamServer, fwd: Forwarder, behaviour: Behaviour
) -> None:
    """...when the server's own ping on the same base_url works, asked just then."""
    server.set("user_may_invite", behaviour)
    verdict = await check(fwd)
    assert verdict.outcome is Outcome.REJECTED
    assert isinstance(behaviour.body, dict) and verdict.errcode == behaviour.body["errcode"]
    assert len(server.requests_for("user_may_invite")) == len(server.requests_for("ping")) == 1
    await check(fwd)
    assert len(server.requests_for("user_may_invite")) == 2  # still asked every time
    assert len(server.requests_for("ping")) == 2  # and so is the evidence


@pytest_twisted.ensureDeferred
async def test_a_404_with_an_errcode_to_ping_too_means_base_url_is_wrong(
    server: AntispamServer, fwd: Forwarder, caplog: pytest.LogCaptureFixture
) -> None:
    """Meowlnir with a wrong management room: the user is not refused by the server, the
    module is misconfigured. A failure under the policy, and one ERROR naming base_url."""
    server.set(
        None,
        reject("M_NOT_FOUND", NO_POLICY_LIST, status=404),
    )
    with caplog.at_level(logging.WARNING):
        first, second = await check(fwd), await check(fwd)
    for verdict in (first, second):
        assert (verdict.outcome, verdict.failure) == (
            Outcome.FAILED_CLOSED,
            Failure.NO_ANTISPAM_SERVER,
        )
        assert verdict.message == "The antispam server could not be found"
        # The callback's own answer, for its WARNING line and `check`.
        assert (verdict.http_status, verdict.detail) == (
            404,
            "M_NOT_FOUND: Antispam configuration issue: policy list not found",
        )
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [
        f"[{server.base_url}] base_url {server.base_url} does not reach an antispam server: "
        "user_may_invite and ping were both answered with HTTP 404 (M_NOT_FOUND: Antispam "
        "configuration issue: policy list not found). Check base_url's host, port and path. "
        "Until the antispam server answers, calls fail under their failure policy."
    ]


@pytest_twisted.ensureDeferred
async def test_hung_server_bounds_concurrency_and_fails_fast_beyond_the_queue(
    server: AntispamServer,
) -> None:
    server.set(None, Behaviour(never_respond=True))
    raw = {
        "base_url": server.base_url,
        "timeout": 0.5,
        "max_concurrency": 4,
        "max_pending": 8,
        "circuit_breaker": {"failure_threshold": 0},
    }
    observer = Recorder()
    f = Forwarder(parse_config(raw), observer=observer)
    try:
        # Different calls: identical ones in flight would share one request (test_reuse.py).
        calls = [defer.ensureDeferred(check(f, inviter=f"@a{i}:x")) for i in range(300)]
        results = await defer.gatherResults(calls)
        reasons = [v.failure for v in results]
        assert reasons.count(Failure.OVERLOADED) == 300 - 12
        assert reasons.count(Failure.TIMEOUT) == 12
        # Never more than 4 at once; a waiter may inherit a slot freed by an expired call.
        assert observer.in_flight_most == 4 and observer.in_flight_now == 0
        # Twelve calls timed out waiting for an answer (none failed to connect or send), and
        # the server saw no more than they: on a loaded machine its thread may not read a
        # request before the call gives up and resets the connection, which drops what was
        # unread (CI saw 0 even after waiting), so how few it saw says nothing of the module.
        assert len(server.requests) <= 12
        assert f.limiter.active == 0 and f.limiter.waiting == 0
    finally:
        await f.close()


@pytest_twisted.ensureDeferred
async def test_background_calls_are_bounded_and_overflow_is_dropped(
    server: AntispamServer,
) -> None:
    server.set(None, Behaviour(never_respond=True))
    f = make(server.base_url, timeout=0.5, max_background=2)
    try:
        verdicts = [f.background("user_may_join_room", Kind.GATE, {"n": i}) for i in range(10)]
        assert all(v.outcome is Outcome.BACKGROUND and v.allowed for v in verdicts)
        assert f.background_running == 2
        await until(lambda: f.background_running == 0)
        assert len(server.requests) == 2
    finally:
        await f.close()


@pytest_twisted.ensureDeferred
async def test_token_and_bodies_never_logged_above_debug(
    server: AntispamServer, caplog: pytest.LogCaptureFixture
) -> None:
    f = make(server.base_url, timeout=0.3, fail_open={"check_login_for_spam": False})
    payload = {"user_id": "@a:x", "request_info": [["secret-agent", "203.0.113.9"]]}
    try:
        with caplog.at_level(logging.DEBUG, logger="synapse_http_antispam"):
            for behaviour in (
                Behaviour(status=500, body=b"boom"),
                Behaviour(never_respond=True),
                Behaviour(status=401, body={"error": TOKEN}),
            ):
                server.set(None, behaviour)
                await f.check("check_login_for_spam", Kind.LOGIN, payload)
        text = "\n".join(r.getMessage() for r in caplog.records)
        assert TOKEN not in text
        above_debug = [r.getMessage() for r in caplog.records if r.levelno > logging.DEBUG]
        assert above_debug, "failures must be logged"
        assert not any("203.0.113.9" in m or "secret-agent" in m for m in above_debug)
        assert all("check_login_for_spam" in m for m in above_debug)
    finally:
        await f.close()


def counted_pings(f: Forwarder) -> list[int]:
    """Counts every ping the forwarder starts, at the moment it starts (no network wait)."""
    count = [0]
    real = f.ping_once

    async def ping_once(**kwargs: Any) -> Any:
        count[0] += 1
        return await real(**kwargs)

    f.ping_once = ping_once  # type: ignore[method-assign]
    return count


@pytest_twisted.ensureDeferred
async def test_ping_retries_until_the_server_answers(
    server: AntispamServer, caplog: pytest.LogCaptureFixture
) -> None:
    server.set("ping", Behaviour(status=500))
    f = make(server.base_url, do_ping=True)
    try:
        with caplog.at_level(logging.INFO, logger="synapse_http_antispam"):
            f.start_ping()
            await until(lambda: len(server.requests_for("ping")) == 1)
            server.reset_behaviours()  # the retry (after 1 s of backoff) is answered
            await until(lambda: len(server.requests_for("ping")) == 2)
            await until(lambda: any("Successfully" in r.getMessage() for r in caplog.records))
        [line] = [r.getMessage() for r in caplog.records if "Successfully" in r.getMessage()]
        [_, answered] = server.requests_for("ping")
        # 0.5.x's wording, which antispam servers' docs tell admins to look for, after the
        # instance's name (its base_url), which every line of the module starts with.
        assert line == (
            f"[{server.base_url}] Successfully pinged antispam server with request ID "
            f"{answered.json['id']}"
        )
        assert len(server.requests_for("ping")) == 2
    finally:
        await f.close()


@pytest_twisted.ensureDeferred
async def test_ping_without_an_endpoint_stops_with_one_warning(
    server: AntispamServer, caplog: pytest.LogCaptureFixture
) -> None:
    server.set("ping", NO_ENDPOINT["express-404-html"])
    f = make(server.base_url, do_ping=True)
    pings = counted_pings(f)
    try:
        with caplog.at_level(logging.INFO, logger="synapse_http_antispam"):
            f.start_ping()
            await until(lambda: any("no ping endpoint" in r.getMessage() for r in caplog.records))
            # A retry would be due 1 s after that answer at the latest; the reactor runs timed
            # calls in order, so once this sleep is over a retry would have started.
            await sleep(1.0 + 0.05)
        assert pings == [1], "pinged again after learning there is no ping endpoint"
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "no ping endpoint" in warnings[0].getMessage()
    finally:
        await f.close()


@pytest_twisted.ensureDeferred
async def test_https_with_a_ca_file_and_not_without(tmp_path: Any) -> None:
    import ssl

    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    with AntispamServer(tls=context) as server:
        trusted = make(server.base_url, ca_file=str(ca_file))
        untrusted = make(server.base_url)
        try:
            assert server.base_url.startswith("https://")
            assert (await check(trusted)).outcome is Outcome.ALLOWED
            assert (await check(untrusted)).failure is Failure.TLS
            assert len(server.requests) == 1
        finally:
            await trusted.close()
            await untrusted.close()


@pytest_twisted.ensureDeferred
async def test_server_down_under_load_trips_the_breaker_and_memory_stays_flat() -> None:
    import gc
    import tracemalloc

    with AntispamServer() as gone:
        url = gone.base_url
    f = make(url, max_concurrency=8, max_pending=32)
    try:

        async def wave() -> list[Verdict]:
            calls = [defer.ensureDeferred(check(f, inviter=f"@a{i}:x")) for i in range(300)]
            return list(await defer.gatherResults(calls))

        first = await wave()
        # 8 in flight and 32 waiting at most, the rest refused at once. Twisted reports a
        # refused connection after ~0.3 s, so some of the waiting ones run out of time.
        reasons = [v.failure for v in first]
        assert set(reasons) <= {Failure.CONNECT, Failure.TIMEOUT, Failure.OVERLOADED}
        assert reasons.count(Failure.OVERLOADED) == 300 - 40
        assert f.breaker.is_open
        tracemalloc.start()
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(5):
            later = await wave()
            assert {v.failure for v in later} == {Failure.BREAKER_OPEN}
            assert all(v.outcome is Outcome.FAILED_CLOSED for v in later)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        assert grown < 256 * 1024, grown
        assert f.limiter.active == 0 and f.limiter.waiting == 0
    finally:
        await f.close()


@pytest_twisted.ensureDeferred
async def test_idle_keepalive_closed_by_the_server_is_not_a_failure(
    server: AntispamServer, fwd: Forwarder, caplog: pytest.LogCaptureFixture
) -> None:
    """The server closes a kept-alive connection for being idle, and the module sends its next
    call on it before it has read the close: that call is sent again on a new connection."""
    server.idle_timeout = 0.2
    caplog.set_level(logging.DEBUG, logger="synapse_http_antispam")
    for number in range(1, 4):
        assert (await check(fwd)).outcome is Outcome.ALLOWED
        # Blocking the reactor, so that the module cannot notice the close before its next
        # call (it would then open a new connection at once and never meet the closed one).
        assert server.wait_closed(number)
    assert len(server.requests) == 3
    assert len({r.connection_id for r in server.requests}) == 3
    retries = [r.getMessage() for r in caplog.records if "retrying once" in r.getMessage()]
    assert len(retries) == 2
