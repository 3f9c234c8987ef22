"""What a failure verdict tells the logs and `check`: the HTTP status seen and the server's own
error text, and nothing made up where there was no answer."""

from __future__ import annotations

import json
import logging
import ssl

import pytest
import pytest_twisted

from synapse_http_antispam.catalogue import Kind
from synapse_http_antispam.config import parse_config
from synapse_http_antispam.forwarder import Forwarder
from synapse_http_antispam.verdict import Failure, Outcome, Verdict
from tests.support.antispam_server import AntispamServer, Behaviour, free_port

INVITE = {"inviter": "@a:x", "invitee": "@b:x", "room_id": "!r:x"}


async def invite(url: str) -> Verdict:
    # No test here waits for the deadline: it is generous, so that a loaded machine (tox runs
    # environments side by side) cannot turn an answer into a timeout.
    f = Forwarder(parse_config({"base_url": url, "timeout": 5.0}))
    try:
        return await f.check("user_may_invite", Kind.GATE, INVITE)
    finally:
        await f.close()


@pytest_twisted.ensureDeferred
async def test_a_server_error_keeps_its_status_and_words(server: AntispamServer) -> None:
    body = json.dumps({"errcode": "M_UNKNOWN", "error": "database is down"}).encode()
    server.set("user_may_invite", Behaviour(status=503, body=body))
    verdict = await invite(server.base_url)
    assert (verdict.outcome, verdict.failure) == (Outcome.FAILED_CLOSED, Failure.HTTP_STATUS)
    assert (verdict.http_status, verdict.detail) == (503, "M_UNKNOWN: database is down")


@pytest_twisted.ensureDeferred
async def test_no_answer_has_no_status_and_the_sockets_words() -> None:
    """No HTTP status, and the cause in the operating system's words (issue 29: a closed port
    and a host name that does not resolve read alike before)."""
    verdict = await invite(f"http://127.0.0.1:{free_port()}")
    assert verdict.failure is Failure.CONNECT
    assert verdict.http_status is None
    assert "Connection refused" in verdict.detail
    # Twisted's own sentence, not the bare errno and text of the exception's args.
    assert verdict.detail.startswith("Connection was refused by other side"), verdict.detail


@pytest_twisted.ensureDeferred
async def test_a_host_name_that_does_not_resolve_says_so() -> None:
    verdict = await invite("http://no-such-host.invalid:8080")
    assert verdict.failure is Failure.CONNECT
    assert verdict.detail.startswith("DNS lookup failed"), verdict.detail
    assert "no-such-host.invalid" in verdict.detail


@pytest_twisted.ensureDeferred
async def test_a_long_cause_is_cut_at_200_characters() -> None:
    host = ".".join(label * 60 for label in "abc") + ".invalid"  # a valid name, 190 characters
    verdict = await invite(f"http://{host}:8080")
    assert verdict.failure is Failure.CONNECT
    assert verdict.detail.startswith("DNS lookup failed"), verdict.detail
    assert len(verdict.detail) == 200


@pytest_twisted.ensureDeferred
async def test_a_redirect_names_its_target_in_one_safe_line(server: AntispamServer) -> None:
    target = "https://antispam.example/api\x1b[31m"
    server.set(None, Behaviour(status=308, headers={"Location": target}))
    verdict = await invite(server.base_url)
    assert (verdict.failure, verdict.http_status) == (Failure.HTTP_STATUS, 308)
    assert verdict.detail == "redirect to https://antispam.example/api?[31m"


@pytest.mark.parametrize(
    "status, detail",
    [
        (300, "redirect to https://antispam.example/api"),  # a 3xx: its target
        (400, "the server's own words"),  # not a redirect: its words
        (503, "the server's own words"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_a_location_is_the_detail_of_a_3xx_only(
    server: AntispamServer, status: int, detail: str
) -> None:
    headers = {"Location": "https://antispam.example/api", "Content-Type": "text/plain"}
    server.set(None, Behaviour(status=status, body="the server's own words", headers=headers))
    verdict = await invite(server.base_url)
    assert verdict.http_status == status
    assert verdict.detail == detail


@pytest_twisted.ensureDeferred
async def test_an_untrusted_certificate_gives_the_tls_librarys_reason() -> None:
    trustme = pytest.importorskip("trustme")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    trustme.CA().issue_cert("127.0.0.1").configure_cert(context)
    with AntispamServer(tls=context) as server:
        verdict = await invite(server.base_url)
    assert verdict.failure is Failure.TLS
    assert "certificate verify failed" in verdict.detail
    # pyOpenSSL's nested error tuples, flattened into the library's words: "SSL routines;
    # certificate verify failed" (OpenSSL 1.1 names the function in between).
    words = verdict.detail.split("; ")
    assert words[0] == "SSL routines" and words[-1] == "certificate verify failed", words


@pytest_twisted.ensureDeferred
async def test_the_warning_line_says_what_the_server_said_but_not_the_token(
    server: AntispamServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Meowlnir's answer to a wrong secret, through the real client: the log line quotes it;
    the token the module sent (echoed back here) is masked."""
    caplog.set_level(logging.WARNING, "synapse_http_antispam")
    body = {"errcode": "M_UNKNOWN_TOKEN", "error": "Invalid authorization token wrong-secret"}
    server.set("user_may_invite", Behaviour(status=401, body=json.dumps(body).encode()))
    config = {"base_url": server.base_url, "timeout": 1.0, "authorization": "wrong-secret"}
    f = Forwarder(parse_config(config))
    try:
        await f.check("user_may_invite", Kind.GATE, INVITE)
    finally:
        await f.close()
    [line] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "failed_closed (auth)" in line and ", HTTP 401: " in line
    assert "'M_UNKNOWN_TOKEN: Invalid authorization token <token>'" in line
    assert "wrong-secret" not in line


@pytest.mark.parametrize(
    "rotated_to, shown",
    [
        (["new-secret"], "a, <token>, <token>"),
        (["mid-secret", "new-secret"], "a, first-secret, <token>, <token>"),
    ],
    ids=["once", "twice"],
)
@pytest_twisted.ensureDeferred
async def test_a_rotated_token_is_masked_too(
    server: AntispamServer, caplog: pytest.LogCaptureFixture, rotated_to: list[str], shown: str
) -> None:
    """After `authorization_path` rotates, the new token and the one before it (a request in
    flight may carry it) stay out of the log line. The module keeps no more than those two: a
    token rotated out twice can be on no request of its, is not held, and so is not masked."""
    caplog.set_level(logging.WARNING, "synapse_http_antispam")
    words = ", ".join(["a", "first-secret", *rotated_to])
    body = {"errcode": "M_UNKNOWN_TOKEN", "error": words}
    server.set("user_may_invite", Behaviour(status=401, body=json.dumps(body).encode()))
    config = {"base_url": server.base_url, "timeout": 1.0, "authorization": "first-secret"}
    f = Forwarder(parse_config(config))
    try:
        for token in rotated_to:
            f.use_token(token)
        await f.check("user_may_invite", Kind.GATE, INVITE)
    finally:
        await f.close()
    [line] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert f"'M_UNKNOWN_TOKEN: {shown}'" in line
