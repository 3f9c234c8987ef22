"""Issue 18's failures, each replayed: a hostile or absent antispam server, a proxy in front of
it, or a sloppy config must not hurt Synapse or silently turn a check off.

Each test failed on the code before its fix (noted in its docstring).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from twisted.internet import defer, task

from synapse_http_antispam import LegacyHTTPAntispam
from synapse_http_antispam.catalogue import Kind
from synapse_http_antispam.config import BreakerConfig, parse_config
from synapse_http_antispam.forwarder import Forwarder
from synapse_http_antispam.guards import Breaker
from synapse_http_antispam.metrics import NullObserver
from synapse_http_antispam.synapse_compat import ConfigError
from synapse_http_antispam.verdict import Failure, Outcome
from tests.support.antispam_server import AntispamServer, Behaviour, reject
from tests.support.module_api import FakeModuleApi
from tests.support.waiting import until

PROXY_404 = Behaviour(
    status=404,
    body=b"<html><body>404 Not Found</body></html>",
    headers={"Content-Type": "text/html"},
)
INVITE = {"inviter": "@a:x", "invitee": "@b:x", "room_id": "!r:x"}


def make(url: str, **extra: Any) -> Forwarder:
    return Forwarder(parse_config({"base_url": url, "timeout": 1.0, **extra}))


async def sent(server: AntispamServer, callback: str) -> None:
    """Until the server has received `callback` (never block the reactor)."""
    await until(lambda: server.requests_for(callback))


def messages(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == level]


# ---- 10: "no endpoint" needs evidence that the antispam server answered ---------------------


@pytest_twisted.ensureDeferred
async def test_a_proxys_404_does_not_silence_a_fail_closed_check(
    server: AntispamServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: the first plain 404 allowed the invite and silenced the callback for 10 minutes,
    so invites the healthy server would have refused went through without reaching it."""
    server.set(None, PROXY_404)  # every path, ping included: a proxy, the server restarting
    f = make(server.base_url)
    try:
        with caplog.at_level(logging.INFO, logger="synapse_http_antispam"):
            for _ in range(3):
                verdict = await f.check("user_may_invite", Kind.GATE, INVITE)
                assert verdict.outcome is Outcome.FAILED_CLOSED
                assert verdict.failure is Failure.NO_ANTISPAM_SERVER
                assert verdict.http_status == 404  # the callback's own answer, in its log line
        [error] = messages(caplog, logging.ERROR)
        # Named in the message itself, not only in the instance prefix every line carries.
        assert f"base_url {server.base_url} does not reach an antispam server:" in error
        assert "user_may_invite and ping were both answered with HTTP 404" in error
        server.reset_behaviours()
        server.set("user_may_invite", reject("M_FORBIDDEN", "no invites from mallory"))
        verdict = await f.check("user_may_invite", Kind.GATE, INVITE)
        assert (verdict.outcome, verdict.message) == (Outcome.REJECTED, "no invites from mallory")
        assert len(server.requests_for("user_may_invite")) == 4  # every invite was sent
    finally:
        await f.close()


@pytest_twisted.ensureDeferred
async def test_a_fail_open_callback_behind_a_proxys_404_fails_open(
    server: AntispamServer,
) -> None:
    server.set(None, PROXY_404)
    f = make(server.base_url)
    try:
        verdict = await f.check("check_event_for_spam", Kind.EVENT, {"event": {}})
        assert (verdict.outcome, verdict.failure) == (
            Outcome.FAILED_OPEN,
            Failure.NO_ANTISPAM_SERVER,
        )
    finally:
        await f.close()


@pytest_twisted.ensureDeferred
async def test_a_404_is_no_endpoint_once_the_server_showed_it_is_there(
    server: AntispamServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Draupnir with the default config: its ping answers, other callbacks 404."""
    server.set("user_may_create_room", PROXY_404)
    f = make(server.base_url)
    try:
        with caplog.at_level(logging.INFO, logger="synapse_http_antispam"):
            verdict = await f.check("user_may_create_room", Kind.GATE, {"user_id": "@a:x"})
        assert verdict.outcome is Outcome.NOT_IMPLEMENTED and verdict.allowed
        assert len(server.requests_for("ping")) == 1  # the evidence was asked for at once
        verdict = await f.check("user_may_create_room", Kind.GATE, {"user_id": "@a:x"})
        assert verdict.outcome is Outcome.NOT_IMPLEMENTED
        assert len(server.requests_for("ping")) == 1
    finally:
        await f.close()
    # The callback's own status, in the one warning that tells the admin what to leave out.
    assert messages(caplog, logging.WARNING) == [
        f"[{server.base_url}] The antispam server at {server.base_url} has no endpoint for "
        "user_may_create_room (HTTP 404): allowing it, and not sending it for 600s before "
        "asking again. To stop sending it, leave it out of enabled_callbacks."
    ]


# ---- 9: a cancelled check is cancelled, not a verdict ---------------------------------------


@pytest_twisted.ensureDeferred
async def test_cancelling_a_check_propagates_the_cancellation(
    server: AntispamServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: cancelling returned failed_closed (internal) and logged an ERROR traceback."""
    server.set(None, Behaviour(never_respond=True))
    f = make(server.base_url, timeout=5)
    try:
        with caplog.at_level(logging.INFO, logger="synapse_http_antispam"):
            d = defer.ensureDeferred(f.check("user_may_invite", Kind.GATE, INVITE))
            await sent(server, "user_may_invite")
            d.cancel()
            with pytest.raises(defer.CancelledError):
                await d
        assert messages(caplog, logging.ERROR) == []
        assert f.limiter.active == 0
    finally:
        await f.close()


# ---- 6: waiting for a slot is the module's queue, not the server's silence ------------------


@pytest_twisted.ensureDeferred
async def test_a_deadline_passing_in_the_queue_is_overloaded_and_not_counted_by_the_breaker(
    server: AntispamServer,
) -> None:
    """Before: invites queued behind a slow media scanner timed out as `timeout`, the breaker
    opened, and every fail-closed callback was refused although the server answered."""
    server.set("check_media_file_for_spam", Behaviour(never_respond=True))
    f = make(
        server.base_url,
        max_concurrency=1,
        timeouts={"check_media_file_for_spam": 3, "user_may_invite": 0.3},
        circuit_breaker={"failure_threshold": 2, "failure_rate": 0.5},
    )
    try:
        media = defer.ensureDeferred(f.check("check_media_file_for_spam", Kind.MEDIA, {}))
        await sent(server, "check_media_file_for_spam")
        verdicts = await defer.gatherResults(
            [defer.ensureDeferred(f.check("user_may_invite", Kind.GATE, INVITE)) for _ in range(5)]
        )
        assert {v.failure for v in verdicts} == {Failure.OVERLOADED}
        assert not f.breaker.is_open
        assert f.breaker.window_counts()[1] == 0
        media.cancel()  # it would hang until its 3 s deadline; its verdict is not the point
        media.addErrback(lambda failure: failure.trap(defer.CancelledError))
        await media
    finally:
        await f.close()


# ---- 5: one probe loop at most, and none after close ----------------------------------------


def opened_breaker_probing() -> tuple[task.Clock, list[defer.Deferred[bool]], Breaker]:
    """A breaker opened by one unanswered call, its first probe in flight and held there
    (each probe is a Deferred the test fires when it likes)."""
    clock = task.Clock()
    pending: list[defer.Deferred[bool]] = []

    def probe() -> defer.Deferred[bool]:
        pending.append(defer.Deferred())
        return pending[-1]

    b = Breaker(BreakerConfig(1, 1.0, 10, 1), clock, NullObserver(), probe=probe)
    b.unreachable("connect")
    clock.advance(1)
    return clock, pending, b


def test_breaker_flaps_while_a_probe_is_in_flight_leave_one_probe_loop() -> None:
    """Before: each close-and-reopen during a probe started another loop (6 after 5 flaps),
    and one ping was still sent after close()."""
    clock, pending, b = opened_breaker_probing()
    assert len(pending) == 1  # a probe is in flight
    for _ in range(5):  # real calls close and reopen it meanwhile
        b.reachable()
        b.unreachable("connect")
        clock.advance(1)
    assert len(pending) == 1
    pending[0].callback(False)
    for second in range(1, 4):
        clock.advance(1)
        assert len(pending) == 1 + second  # one loop: one probe a second
        pending[-1].callback(False)
    clock.advance(0.5)
    b.stop()
    clock.advance(10)
    assert len(pending) == 4


def test_a_probe_in_flight_at_close_schedules_no_more() -> None:
    clock, pending, b = opened_breaker_probing()
    b.stop()
    pending[0].callback(False)
    clock.advance(10)
    assert len(pending) == 1 and clock.getDelayedCalls() == []


# ---- 4: the secret never reaches an error text ----------------------------------------------


@pytest.mark.parametrize("secret", [804271995531442019, 3.25, True, ["s3cr3t-in-a-list"]])
def test_a_secret_of_the_wrong_type_is_not_echoed(secret: Any) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config({"base_url": "http://127.0.0.1:9", "authorization": secret})
    text = str(raised.value)
    assert "authorization" in text and "quotes" in text
    assert str(secret) not in text and "s3cr3t" not in text


# ---- 3: ca_file is every certificate in the file, and a file without one is an error --------


@pytest_twisted.ensureDeferred
async def test_a_ca_bundle_trusts_every_certificate_in_it(tmp_path: Path) -> None:
    """Before: only the first certificate of the file was trusted."""
    import ssl

    trustme = pytest.importorskip("trustme")
    signing, unrelated = trustme.CA(), trustme.CA()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    signing.issue_cert("127.0.0.1").configure_cert(context)
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(unrelated.cert_pem.bytes() + b"\n" + signing.cert_pem.bytes())
    with AntispamServer(tls=context) as tls_server:
        f = make(tls_server.base_url, ca_file=str(bundle))
        try:
            assert (await f.check("user_may_invite", Kind.GATE, INVITE)).outcome is (
                Outcome.ALLOWED
            )
        finally:
            await f.close()


@pytest.mark.parametrize(
    "content, problem",
    [
        (b"not a certificate at all\n", "no PEM certificate"),
        (b"", "no PEM certificate"),
        (
            b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n",
            "certificate number 1",
        ),
    ],
    ids=["text", "empty", "broken-pem"],
)
def test_a_ca_file_without_a_usable_certificate_is_a_config_error(
    tmp_path: Path, content: bytes, problem: str
) -> None:
    """Before: it passed validation and stopped Synapse with a raw OpenSSL traceback."""
    path = tmp_path / "ca.pem"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as raised:
        parse_config({"base_url": "https://127.0.0.1:9", "ca_file": str(path)})
    assert "ca_file" in str(raised.value) and problem in str(raised.value)


# ---- 8: the spam_checker: door says what it cannot carry ------------------------------------


@pytest.mark.parametrize("api", [None, FakeModuleApi(("user_may_invite", "user_may_join_room"))])
def test_the_legacy_door_warns_about_callbacks_it_cannot_carry(
    api: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: `user_may_join_room` in enabled_callbacks was dropped without a word."""
    config = {
        "base_url": "http://127.0.0.1:9",
        "enabled_callbacks": ["user_may_invite", "user_may_join_room"],
    }
    with caplog.at_level(logging.WARNING, logger="synapse_http_antispam"):
        LegacyHTTPAntispam(LegacyHTTPAntispam.parse_config(config), api)
    [warning] = messages(caplog, logging.WARNING)
    assert "user_may_join_room" in warning and "modules:" in warning


def test_the_legacy_door_warns_about_a_method_this_synapse_does_not_accept(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """federated_user_may_invite is a spam_checker: method, but Synapse before 1.134 does not
    register it: enabled, it never runs there, and the admin is told so."""
    before_1_134 = FakeModuleApi(("check_event_for_spam", "user_may_invite", "user_may_join_room"))
    config = {
        "base_url": "http://127.0.0.1:9",
        "enabled_callbacks": ["user_may_invite", "federated_user_may_invite"],
    }
    with caplog.at_level(logging.WARNING, logger="synapse_http_antispam"):
        LegacyHTTPAntispam(LegacyHTTPAntispam.parse_config(config), before_1_134)
    assert messages(caplog, logging.WARNING) == [
        "[http://127.0.0.1:9] Callback federated_user_may_invite cannot be carried by the "
        "spam_checker: door on this Synapse release; skipped (list the module under modules: "
        "to use it)"
    ]
