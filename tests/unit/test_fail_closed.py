"""Fail-closed means closed (issue 27): each hole a reading found, pinned by a test that fails
when it comes back. The forwarder runs against real local servers: `AntispamServer` for a
server that flips between answering and a reverse proxy's 404, `RawServer` for bytes no HTTP
library would send."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted

from twisted.internet import defer
from twisted.internet.defer import CancelledError

from synapse_http_antispam.catalogue import Kind
from synapse_http_antispam.config import parse_config
from synapse_http_antispam.forwarder import Forwarder
from synapse_http_antispam.reuse import Shared
from synapse_http_antispam.verdict import ALLOW, Failure, Outcome, Verdict
from tests.support.antispam_server import AntispamServer, Behaviour, allow, reject
from tests.support.hostile import TwistedErrors, assert_quiet, twisted_errors
from tests.support.raw_server import CLOSE, HOLD, RawServer
from tests.support.waiting import sleep
from tests.unit.test_reuse import configured

__all__ = ["twisted_errors"]  # a fixture

INVITE = {"inviter": "@a:x", "invitee": "@b:x", "room_id": "!r:x"}
# What Traefik answers for every path while the container behind it restarts.
PROXY_404 = Behaviour(
    status=404, body=b"404 page not found\n", headers={"Content-Type": "text/plain"}
)
# And while the container behind it is down but still routed.
PROXY_502 = Behaviour(status=502, body=b"Bad Gateway", headers={"Content-Type": "text/plain"})


def make(url: str, **extra: Any) -> Forwarder:
    return Forwarder(parse_config({"base_url": url, "timeout": 1.0, **extra}))


@pytest_twisted.async_yield_fixture
async def fwd(server: AntispamServer) -> AsyncIterator[Forwarder]:
    f = make(server.base_url)
    yield f
    await f.close()


async def ask(f: Forwarder, name: str = "user_may_invite") -> Verdict:
    return await f.check(name, Kind.GATE, INVITE)


@pytest_twisted.ensureDeferred
async def test_a_proxy_404_after_first_contact_fails_closed_checks_closed(
    server: AntispamServer, fwd: Forwarder, caplog: pytest.LogCaptureFixture
) -> None:
    """The server answers; then every path, ping included, is the proxy's 404; then the
    server is back. During the 404 phase neither a callback it had answered nor one it never
    answered is allowed; once it is back, both are asked again at once; the outage is logged,
    and the next one is logged again."""
    assert (await ask(fwd)).outcome is Outcome.ALLOWED
    with caplog.at_level(logging.INFO):
        for outage in (1, 2):
            server.set(None, PROXY_404)
            for name in ("user_may_invite", "user_may_publish_room"):
                verdict = await ask(fwd, name)
                assert (verdict.outcome, verdict.failure) == (
                    Outcome.FAILED_CLOSED,
                    Failure.NO_ANTISPAM_SERVER,
                ), (outage, name)
            server.set(None, allow())
            before = len(server.requests_for("user_may_publish_room"))
            assert (await ask(fwd, "user_may_publish_room")).outcome is Outcome.ALLOWED
            assert len(server.requests_for("user_may_publish_room")) == before + 1
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 2 and all("does not reach an antispam server" in e for e in errors)


@pytest_twisted.ensureDeferred
async def test_a_callback_marked_unserved_is_asked_again_once_the_server_is_back(
    server: AntispamServer,
) -> None:
    """The server (its ping answering) has no endpoint for a callback: not sent for 10
    minutes. It goes away (nothing listening) and comes back with the endpoint: asked again at
    once, not 10 minutes later."""
    f = make(server.base_url, circuit_breaker={"failure_threshold": 0})
    try:
        server.set("user_may_publish_room", PROXY_404)
        assert (await ask(f, "user_may_publish_room")).outcome is Outcome.NOT_IMPLEMENTED
        assert f.known_unimplemented("user_may_publish_room")
        server.set(None, Behaviour(close_before_response=True))  # gone (a restart)
        assert (await ask(f)).failure is Failure.CONNECT
        server.reset_behaviours()  # back, with the endpoint
        assert (await ask(f, "user_may_publish_room")).outcome is Outcome.ALLOWED
    finally:
        await f.close()


@pytest.mark.parametrize("header", [b"Cache-Control", b"Content-Type"])
@pytest_twisted.ensureDeferred
async def test_header_bytes_that_are_not_utf8_are_read_not_raised(
    header: bytes, caplog: pytest.LogCaptureFixture, twisted_errors: TwistedErrors
) -> None:
    """A 200 with `Cache-Control: max-age=\\xff` allows; nothing raises, nothing is logged at
    ERROR, and 30 such calls leave no connection open behind them."""
    answer = b"HTTP/1.1 200 OK\r\n%s: max-age=\xff\xfe\r\nContent-Length: 2\r\n\r\n{}" % header
    with RawServer([answer, CLOSE]) as raw:
        f = make(raw.url(), circuit_breaker={"failure_threshold": 0})
        before = len(os.listdir("/proc/self/fd"))
        try:
            with caplog.at_level(logging.INFO):
                verdicts = [await ask(f) for _ in range(30)]
            assert {v.outcome for v in verdicts} == {Outcome.ALLOWED}
        finally:
            await f.close()
        await sleep(0.2)
        assert len(os.listdir("/proc/self/fd")) <= before + 1
    assert_quiet(caplog.records, twisted_errors)


@pytest_twisted.ensureDeferred
async def test_deeply_nested_json_is_a_bad_response(
    caplog: pytest.LogCaptureFixture, twisted_errors: TwistedErrors
) -> None:
    body = b"[" * 30_000
    answer = b"HTTP/1.1 403 Forbidden\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    with RawServer([answer, CLOSE]) as raw:
        f = make(raw.url(), max_response_bytes=64 * 1024)
        try:
            with caplog.at_level(logging.INFO):
                verdict = await ask(f)
        finally:
            await f.close()
    assert (verdict.outcome, verdict.failure) == (Outcome.FAILED_CLOSED, Failure.BAD_RESPONSE)
    assert_quiet(caplog.records, twisted_errors)


@pytest_twisted.ensureDeferred
async def test_a_2xx_whose_body_stalls_is_a_timeout_not_an_allow(server: AntispamServer) -> None:
    server.set(None, Behaviour(stall_body=True, body={"x": 1}))
    f = make(server.base_url, timeout=0.3)
    try:
        verdict = await ask(f, "user_may_publish_room")
    finally:
        await f.close()
    assert (verdict.outcome, verdict.failure) == (Outcome.FAILED_CLOSED, Failure.TIMEOUT)


@pytest_twisted.ensureDeferred
async def test_giving_up_after_part_of_the_headers_is_no_server_fault() -> None:
    """Synapse cancelling a check while the status line has come but not the headers: the
    cancellation goes back to Synapse; the breaker learns nothing about the server."""
    with RawServer([b"HTTP/1.1 200 OK\r\nX-Slow: 1\r\n", HOLD]) as raw:
        f = make(raw.url(), timeout=5.0, circuit_breaker={"failure_threshold": 1})
        try:
            d = defer.ensureDeferred(ask(f))
            await sleep(0.3)
            d.cancel()
            with pytest.raises(CancelledError):
                await d
            assert not f.breaker.is_open
            assert f.breaker.allow()
        finally:
            await f.close()


def test_a_waiter_giving_up_while_the_answer_is_handed_out_is_no_error() -> None:
    """Two identical calls share one; when the first is answered, its caller gives up on the
    second (as Synapse may when one of two requests ends). No ValueError, no AlreadyCalled."""
    from twisted.internet.task import Clock

    reuse = configured(Clock())
    call: defer.Deferred[Shared] = defer.Deferred()
    first = defer.ensureDeferred(reuse.answer("user_may_invite", b"{}", lambda: call))
    second = defer.ensureDeferred(reuse.answer("user_may_invite", b"{}", lambda: call))
    results: list[object] = []
    first.addCallback(lambda r: (results.append(r), second.cancel()))
    second.addErrback(lambda f: results.append(f.type))
    call.callback(Shared(ALLOW, 200, "rid"))
    assert results[1] is CancelledError
    assert isinstance(results[0], tuple) and results[0][1] is None


@pytest.mark.parametrize(
    "ping_answer, outcome, forgotten",
    [
        (PROXY_404, "not_implemented", True),
        (PROXY_502, "http_status", True),
        # The server itself, in trouble: what it said of its endpoints still stands.
        (reject("M_UNKNOWN", "database is down", 500), "http_status", False),
    ],
    ids=["proxy-404", "proxy-502", "the-servers-own-500"],
)
@pytest_twisted.ensureDeferred
async def test_a_ping_answered_by_a_proxy_drops_what_the_server_said(
    server: AntispamServer, fwd: Forwarder, ping_answer: Behaviour, outcome: str, forgotten: bool
) -> None:
    """The health ping (or any ping) meeting a proxy's page where the server was (its 404, or
    its 502 while the server restarts): the callbacks the server said it has no endpoint for
    are asked again once it is back (found by mutation: only the 404 did it, though the docs
    said any page that is not the server's)."""
    server.set("user_may_publish_room", PROXY_404)
    assert (await ask(fwd, "user_may_publish_room")).outcome is Outcome.NOT_IMPLEMENTED
    assert fwd.known_unimplemented("user_may_publish_room")
    server.set(None, ping_answer)
    assert (await fwd.ping_once()).outcome == outcome
    assert fwd.known_unimplemented("user_may_publish_room") is not forgotten


@pytest.mark.parametrize("version", [b"HTP/1.1", b"RTSP/1.0", b"SIP/2.0", b"ICY"])
@pytest_twisted.ensureDeferred
async def test_a_status_line_that_is_not_http_allows_nothing(
    version: bytes, caplog: pytest.LogCaptureFixture, twisted_errors: TwistedErrors
) -> None:
    """Found by the generated adversary: Twisted reads any "X/a.b 200" as an HTTP 200."""
    answer = version + b" 200 OK\r\nContent-Length: 2\r\n\r\n{}"
    with RawServer([answer, CLOSE]) as raw:
        f = make(raw.url(), circuit_breaker={"failure_threshold": 1})
        try:
            with caplog.at_level(logging.INFO):
                verdict = await ask(f)
            assert not f.breaker.is_open  # an answer, just not a usable one
        finally:
            await f.close()
    assert (verdict.outcome, verdict.failure) == (Outcome.FAILED_CLOSED, Failure.BAD_RESPONSE)
    assert_quiet(caplog.records, twisted_errors)


@pytest_twisted.ensureDeferred
async def test_the_servers_cookies_are_neither_kept_nor_sent_nor_a_failure(
    caplog: pytest.LogCaptureFixture, twisted_errors: TwistedErrors
) -> None:
    """Found by the generated adversary: treq's jar kept every cookie without bound and sent
    them all back, and a Set-Cookie that is not ASCII turned a 200 into a `connect` failure."""
    cookies = b"".join(b"Set-Cookie: c%d=%s; Path=/\r\n" % (i, b"x" * 500) for i in range(20))
    answer = b"HTTP/1.1 200 OK\r\n%sSet-Cookie: a\xd5b\r\nContent-Length: 2\r\n\r\n{}" % cookies
    with RawServer([answer, CLOSE]) as raw:
        f = make(raw.url(), circuit_breaker={"failure_threshold": 1})
        try:
            with caplog.at_level(logging.INFO):
                verdicts = [await ask(f) for _ in range(3)]
        finally:
            await f.close()
        heads = raw.requests
    assert [v.outcome for v in verdicts] == [Outcome.ALLOWED] * 3
    assert heads and all(b"cookie" not in head.lower() for head in heads)
    assert_quiet(caplog.records, twisted_errors)
