"""The caps on what the antispam server sends back hold to the byte, cut a body at exactly the
right place, drop the connection they cut, and TLS trouble (a certificate for another host, a
stream broken mid-answer) is a TLS failure.

Every case talks to `tests.support.raw_server` over a real local connection: the header caps
(64 KiB and 100 lines for the status line and headers, 1xx answers included), the body cap
(`max_response_bytes`), the 2 KiB of a request shown at DEBUG and the host-name check are
judged at their exact boundaries.
"""

from __future__ import annotations

import json
import logging
import socket
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import trustme

from twisted.internet import defer, reactor
from twisted.internet.defer import CancelledError, Deferred
from twisted.web._newclient import HTTPParser

from synapse_http_antispam.catalogue import Kind
from synapse_http_antispam.config import parse_config
from synapse_http_antispam.forwarder import Forwarder
from synapse_http_antispam.synapse_compat import ConfigError
from synapse_http_antispam.verdict import CallFailed, Failure, Outcome, Verdict
from synapse_http_antispam.wire import MAX_HEADER_BYTES, MAX_HEADER_LINES, Wire, encode
from tests.support.antispam_server import AntispamServer, Behaviour, free_port
from tests.support.raw_server import (
    CLOSE,
    HOLD,
    Pause,
    RawServer,
    Step,
    chunked_forever,
    endless,
)
from tests.support.waiting import sleep

TIMEOUT = 3.0
INVITE = {"inviter": "@a:x", "invitee": "@b:x", "room_id": "!r:x"}
OK = b"HTTP/1.1 200 OK\r\n"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
BODY_CAP = 1024  # the smallest max_response_bytes the config takes
# Error answers without a Content-Length: only the bytes as they come tell the body's size.
UNTIL_CLOSE_403 = b"HTTP/1.0 403 Forbidden\r\n\r\n"
CHUNKED_403 = b"HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\n\r\n"


async def check(url: str, payload: dict[str, Any] = INVITE, **config: Any) -> Verdict:
    """One user_may_invite (which fails closed) through a fresh Forwarder."""
    raw = {"base_url": url, "timeout": TIMEOUT, "circuit_breaker": {"failure_threshold": 0}}
    f = Forwarder(parse_config({**raw, **config}))
    try:
        return await f.check("user_may_invite", Kind.GATE, payload)
    finally:
        await f.close()


async def answered(script: Sequence[Step], **config: Any) -> Verdict:
    with RawServer(script, give_up_after=TIMEOUT + 4) as server:
        return await check(server.url(), **config)


def too_large(verdict: Verdict) -> bool:
    return verdict.outcome is Outcome.FAILED_CLOSED and verdict.failure is Failure.TOO_LARGE


# ---- the status line and headers: 64 KiB and 100 lines, each line with its CRLF ------------


def header_block(lines: int, size: int, start: bytes = OK) -> bytes:
    """`start` (a status line, maybe after 1xx answers), header lines, and the blank line that
    ends them: `lines` lines of `size` bytes in all, every CRLF counted."""
    fixed = start + b"Content-Length: 2\r\n" + b"\r\n"
    fillers = lines - fixed.count(b"\r\n")
    room = size - len(fixed)
    widths = [room // fillers] * fillers
    widths[-1] += room % fillers
    block = [start, b"Content-Length: 2\r\n"]
    for number, width in enumerate(widths):
        name = b"X-Fill-%03d: " % number
        value = width - len(name) - 2
        assert value >= 0, "too many lines for that size"
        # Twisted refuses a longer line by itself: that would be another cap.
        assert len(name) + value + 1 <= HTTPParser.MAX_LENGTH
        block.append(name + b"v" * value + b"\r\n")
    block.append(b"\r\n")
    head = b"".join(block)
    assert (len(head), head.count(b"\r\n")) == (size, lines)
    return head


@pytest.mark.parametrize("start", [OK, CONTINUE + OK], ids=["plain", "after-100-continue"])
@pytest_twisted.ensureDeferred
async def test_headers_of_exactly_64_kib_are_accepted_one_byte_more_is_too_large(
    start: bytes,
) -> None:
    at_cap = header_block(10, MAX_HEADER_BYTES, start)
    over_cap = header_block(10, MAX_HEADER_BYTES + 1, start)
    assert (await answered([at_cap + b"{}", CLOSE])).outcome is Outcome.ALLOWED
    assert too_large(await answered([over_cap + b"{}", CLOSE]))


@pytest_twisted.ensureDeferred
async def test_100_lines_of_status_and_headers_are_accepted_101_are_too_large() -> None:
    at_cap = header_block(MAX_HEADER_LINES, 40 * MAX_HEADER_LINES)
    over_cap = header_block(MAX_HEADER_LINES + 1, 40 * MAX_HEADER_LINES)
    assert (await answered([at_cap + b"{}", CLOSE])).outcome is Outcome.ALLOWED
    assert too_large(await answered([over_cap + b"{}", CLOSE]))


# ---- the body: read whole up to max_response_bytes, cut one byte past it -------------------


def rejection_of_size(size: int) -> bytes:
    """A Matrix rejection, padded to exactly `size` bytes of JSON."""
    bare = {"errcode": "M_FORBIDDEN", "error": "no", "pad": ""}
    pad = size - len(json.dumps(bare).encode())
    body = json.dumps({**bare, "pad": "p" * pad}).encode()
    assert len(body) == size
    return body


def chunked(body: bytes, piece: int = 300) -> bytes:
    chunks = [body[i : i + piece] for i in range(0, len(body), piece)]
    return b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"


UNSIZED: dict[str, Callable[[bytes], list[Step]]] = {
    "until-close": lambda body: [UNTIL_CLOSE_403 + body, CLOSE],
    "chunked": lambda body: [CHUNKED_403 + chunked(body), CLOSE],
}
FRAMINGS: dict[str, Callable[[bytes], list[Step]]] = {
    **UNSIZED,
    # Announced: a body declared at the cap is read, one declared a byte longer not at all.
    "content-length": lambda body: [
        b"HTTP/1.1 403 Forbidden\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body),
        CLOSE,
    ],
    # Read in two pieces, a pause apart, cut inside the errcode: the rejection is put together
    # from both as sent.
    "in-two-pieces": lambda body: [
        UNTIL_CLOSE_403 + body[: body.index(b"FORBIDDEN")],
        Pause(0.2),
        body[body.index(b"FORBIDDEN") :],
        CLOSE,
    ],
}


@pytest.mark.parametrize("framing", list(FRAMINGS))
@pytest_twisted.ensureDeferred
async def test_a_rejection_of_exactly_max_response_bytes_rejects_one_byte_more_is_too_large(
    framing: str,
) -> None:
    script = FRAMINGS[framing]
    at_cap = await answered(script(rejection_of_size(BODY_CAP)), max_response_bytes=BODY_CAP)
    assert at_cap.outcome is Outcome.REJECTED, at_cap
    assert at_cap.errcode == "M_FORBIDDEN" and at_cap.message == "no"
    over = await answered(script(rejection_of_size(BODY_CAP + 1)), max_response_bytes=BODY_CAP)
    assert too_large(over), over


@pytest_twisted.ensureDeferred
async def test_a_long_error_page_sent_in_pieces_shows_its_first_words_as_sent() -> None:
    """The server's words in logs and `check` are the start of its page, byte for byte, even
    when the page passed the cap and came in several pieces."""
    pieces = [b"%c" % letter * 70 for letter in b"abcd"]
    script: list[Step] = [b"HTTP/1.1 500 Oops\r\nContent-Type: text/plain\r\n\r\n"]
    for piece in pieces:
        script += [piece, Pause(0.1)]
    script += [b"e" * (2 * BODY_CAP), CLOSE]
    verdict = await answered(script, max_response_bytes=BODY_CAP)
    assert verdict.failure is Failure.HTTP_STATUS, verdict
    assert verdict.detail == b"".join(pieces)[:200].decode()


# ---- a body past the cap: the connection is dropped, not read to its end -------------------


@pytest.mark.parametrize(
    "script",
    [
        [UNTIL_CLOSE_403, endless(b"x" * 8192)],
        [CHUNKED_403, chunked_forever(b"x" * 8192)],
    ],
    ids=["until-close", "chunked"],
)
@pytest_twisted.ensureDeferred
async def test_an_endless_error_body_is_cut_and_the_server_stops_sending(
    script: list[Step],
) -> None:
    would_send = 256 * 1024 * 1024  # read on, the module would take all of it in seconds
    with RawServer(script, give_up_after=30, max_bytes=would_send) as server:
        verdict = await check(server.url())
        assert too_large(verdict), verdict
        # Until the server's sending has stopped: a dropped connection, or all of it read.
        seen = -1
        while server.sent != seen:
            seen = server.sent
            await sleep(0.3)
        # What the socket buffers took before the drop: a few MB, not what was on offer.
        assert server.sent < would_send // 8, server.sent


# ---- what the module takes from an answer besides its status ---------------------------------


@pytest_twisted.ensureDeferred
async def test_cache_control_over_two_header_lines_is_read_as_one() -> None:
    head = b"Cache-Control: private\r\nCache-Control: max-age=60\r\nContent-Length: 2\r\n"
    with RawServer([OK + head + b"\r\n{}", CLOSE]) as server:
        f = Forwarder(parse_config({"base_url": server.url(), "timeout": TIMEOUT}))
        try:
            for _ in range(2):
                verdict = await f.check("user_may_invite", Kind.GATE, INVITE)
                assert verdict.outcome is Outcome.ALLOWED
        finally:
            await f.close()
        assert len(server.requests) == 1  # the second answer came from the store


@pytest.mark.parametrize(
    "content_type, detail",
    [(b"application/json", ""), (b"text/plain", '"the server broke"')],
    ids=["declared-json", "plain-text"],
)
@pytest_twisted.ensureDeferred
async def test_a_server_error_declared_json_never_shows_its_raw_text(
    content_type: bytes, detail: str
) -> None:
    """Only a JSON object's `errcode` and `error` are the server's words: other JSON is not
    shown raw, which only its Content-Type tells here (it starts like plain text)."""
    body = b'"the server broke"'
    head = b"Content-Type: %s\r\nContent-Length: %d\r\n\r\n" % (content_type, len(body))
    verdict = await answered([b"HTTP/1.1 500 Oops\r\n" + head + body, CLOSE])
    assert verdict.failure is Failure.HTTP_STATUS, verdict
    assert verdict.detail == detail


def wire(url: str) -> Wire:
    return Wire(
        reactor,
        base_url=url,
        headers={},
        max_connections=1,
        connect_timeout=TIMEOUT,
        max_response_bytes=BODY_CAP,
    )


async def unneeded_body(w: Wire) -> Deferred[Any]:
    """An answer whose body nobody needs comes at once: its `rest`, the body still arriving."""
    answer = await Deferred.fromCoroutine(w.post("x", b"{}", "id", lambda status: False))
    assert answer.status == 200 and answer.rest is not None
    return answer.rest


@pytest_twisted.ensureDeferred
async def test_an_unneeded_body_broken_off_ends_with_nothing_to_report() -> None:
    with RawServer([OK + b"Content-Length: 100\r\n\r\n{}", CLOSE]) as server:
        w = wire(server.url())
        try:
            assert await (await unneeded_body(w)) is None
        finally:
            await w.close()


@pytest_twisted.ensureDeferred
async def test_giving_up_on_an_unneeded_body_is_a_cancellation() -> None:
    with RawServer([OK + b"Content-Length: 100\r\n\r\n{}", HOLD]) as server:
        w = wire(server.url())
        try:
            rest = await unneeded_body(w)
            rest.cancel()
            with pytest.raises(CancelledError):
                await rest
        finally:
            await w.close()


@pytest_twisted.ensureDeferred
async def test_a_bug_reading_an_answer_is_an_internal_failure_logged_with_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(status: int) -> bool:
        raise RuntimeError("a bug")

    caplog.set_level(logging.INFO, logger="synapse_http_antispam")
    with RawServer([OK + b"Content-Length: 100\r\n\r\n{}", HOLD]) as server:
        w = wire(server.url())
        try:
            with pytest.raises(CallFailed) as raised:
                await Deferred.fromCoroutine(w.post("user_may_invite", b"{}", "id", broken))
        finally:
            await w.close()
    assert raised.value.failure is Failure.INTERNAL
    [record] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert record.levelno == logging.ERROR
    assert record.getMessage() == "Antispam answer to user_may_invite could not be read"
    assert record.exc_info is not None and "a bug" in str(record.exc_info[1])


# ---- a pooled connection the server closed: retried once, and only once ---------------------


def invite(number: int) -> dict[str, Any]:
    return {**INVITE, "invitee": f"@b{number}:x"}  # a call of its own, never a reused answer


@pytest_twisted.ensureDeferred
async def test_a_dead_pooled_connection_is_retried_once_and_says_so_at_debug(
    antispam: AntispamServer, caplog: pytest.LogCaptureFixture
) -> None:
    antispam.set(None, Behaviour(close_if_reused=True))
    caplog.set_level(logging.DEBUG, logger="synapse_http_antispam")
    config = {"base_url": antispam.base_url, "timeout": TIMEOUT, "authorization": "s3cret"}
    f = Forwarder(parse_config(config))
    try:
        for number in range(2):
            assert (await f.check("user_may_invite", Kind.GATE, invite(number))).allowed
    finally:
        await f.close()
    # The request sent again is the same request: its token and its X-Request-ID too.
    *_, resent = antispam.requests
    assert resent.headers["authorization"] == "Bearer s3cret"
    assert resent.headers["x-request-id"] == antispam.requests[-2].headers["x-request-id"]
    retries = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
    assert retries == [
        f"[{antispam.base_url}] Pooled connection to antispam server was closed; retrying once"
    ]


@pytest_twisted.ensureDeferred
async def test_a_retry_that_meets_another_dead_pooled_connection_is_a_connect_failure(
    antispam: AntispamServer,
) -> None:
    antispam.set(None, Behaviour(close_if_reused=True))
    f = Forwarder(parse_config({"base_url": antispam.base_url, "timeout": TIMEOUT}))
    try:
        # Two calls at once: two connections, both kept in the pool.
        first = [
            defer.ensureDeferred(f.check("user_may_invite", Kind.GATE, invite(n))) for n in (1, 2)
        ]
        assert all(v.allowed for v in await defer.gatherResults(first))
        assert len({r.connection_id for r in antispam.requests}) == 2
        # The server drops both when they are used again: the call and its one retry.
        verdict = await f.check("user_may_invite", Kind.GATE, invite(3))
    finally:
        await f.close()
    assert verdict.failure is Failure.CONNECT, verdict
    assert len(antispam.requests) == 4


@pytest_twisted.ensureDeferred
async def test_an_answer_cut_on_a_pooled_connection_is_not_sent_again(
    antispam: AntispamServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Once the server has begun to answer, it has the request: sending it again would make it
    judge one call twice."""
    caplog.set_level(logging.DEBUG, logger="synapse_http_antispam")
    f = Forwarder(parse_config({"base_url": antispam.base_url, "timeout": TIMEOUT}))
    try:
        assert (await f.check("user_may_invite", Kind.GATE, invite(1))).allowed
        antispam.set(None, Behaviour(close_mid_head=True))
        verdict = await f.check("user_may_invite", Kind.GATE, invite(2))
    finally:
        await f.close()
    assert verdict.failure is Failure.CONNECT, verdict
    assert len(antispam.requests) == 2
    assert len({r.connection_id for r in antispam.requests}) == 1  # the pooled one
    assert not [r for r in caplog.records if "retrying" in r.getMessage()]


@pytest_twisted.ensureDeferred
async def test_a_connection_refused_is_not_retried(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="synapse_http_antispam")
    verdict = await check(f"http://127.0.0.1:{free_port()}")
    assert verdict.failure is Failure.CONNECT, verdict
    assert not [r for r in caplog.records if "retrying" in r.getMessage()]


# ---- the request: compact JSON, byte for byte ------------------------------------------------


@pytest.mark.parametrize(
    "inviter, sent",
    [
        # UTF-8 as it is, as 0.5.x sent it: servers may hash or log the exact bytes.
        ("@\u00e9:x", b'{"inviter":"@\xc3\xa9:x","invitee":"@b:x","via":["v"]}'),
        # A lone surrogate cannot be UTF-8: the whole body is ASCII, every escape JSON's own.
        ("@\u00e9\ud800:x", b'{"inviter":"@\\u00e9\\ud800:x","invitee":"@b:x","via":["v"]}'),
    ],
    ids=["utf-8", "lone-surrogate"],
)
@pytest_twisted.ensureDeferred
async def test_the_request_body_is_compact_json_byte_for_byte(inviter: str, sent: bytes) -> None:
    payload = {"inviter": inviter, "invitee": "@b:x", "via": frozenset({"v"})}
    with RawServer([OK + b"Content-Length: 2\r\n\r\n{}", CLOSE]) as server:
        assert (await check(server.url(), payload)).outcome is Outcome.ALLOWED
        [request] = server.requests
    head, _, body = request.partition(b"\r\n\r\n")
    assert body == sent
    assert b"\r\nContent-Length: %d\r\n" % len(sent) in head


# ---- DEBUG: the request as sent, its first 2 KiB --------------------------------------------

DEBUG_BYTES = 2048


@pytest_twisted.ensureDeferred
async def test_debug_shows_the_first_2_kib_of_a_request_a_character_cut_there_replaced(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A three-byte character whose first two bytes are the last two shown.
    room = {**INVITE, "room_id": "!", "reason": ""}
    before = DEBUG_BYTES - 2 - len(encode(room)) + len(b'"}')
    payload = {**room, "reason": "r" * before + "\u20ac" + "r" * 100}
    body = encode(payload)
    assert body[DEBUG_BYTES - 2 : DEBUG_BYTES + 1] == "\u20ac".encode()
    shown = body[:DEBUG_BYTES].decode("utf-8", "replace")
    assert shown.endswith("r\ufffd")
    caplog.set_level(logging.DEBUG, logger="synapse_http_antispam")
    with RawServer([OK + b"Content-Length: 2\r\n\r\n{}", CLOSE]) as server:
        url = server.url()
        assert (await check(url, payload)).outcome is Outcome.ALLOWED
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert f"[{url}] POST {url}/user_may_invite {shown}" in lines


# ---- TLS: a certificate for another host name, a stream broken mid-answer ---------------------


def tls_for(host: str, tmp_path: Path) -> tuple[ssl.SSLContext, str]:
    """A server context with a certificate for `host`, and the ca_file that trusts it."""
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(host).configure_cert(context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return context, str(ca_file)


@pytest_twisted.ensureDeferred
async def test_a_trusted_certificate_for_another_host_is_a_tls_failure(tmp_path: Path) -> None:
    context, ca_file = tls_for("other.example", tmp_path)
    # A client that took the certificate would be allowed.
    script: list[Step] = [OK + b"Content-Length: 2\r\n\r\n{}", CLOSE]
    with RawServer(script, tls=context, give_up_after=TIMEOUT + 4) as server:
        verdict = await check(server.url("https"), ca_file=ca_file)
    assert verdict.outcome is Outcome.FAILED_CLOSED, verdict
    assert verdict.failure is Failure.TLS, verdict


def test_a_ca_file_without_a_certificate_stops_startup_saying_what_it_lacks(
    tmp_path: Path,
) -> None:
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text("not a certificate\n")
    with pytest.raises(ConfigError) as raised:
        parse_config({"base_url": "https://127.0.0.1:1", "ca_file": str(ca_file)})
    words = f"ca_file: {str(ca_file)!r} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
    assert words in str(raised.value)


@dataclass(frozen=True)
class OutsideTls:
    """Bytes written on the TCP connection under the TLS session: not a TLS record."""

    data: bytes


class TlsBreakingServer(RawServer):
    def _play(self, sock: socket.socket, step: Any, give_up_at: float) -> bool:
        if isinstance(step, OutsideTls):
            socket.socket.send(sock, step.data)
            return False
        return super()._play(sock, step, give_up_at)


@pytest_twisted.ensureDeferred
async def test_a_tls_stream_broken_in_the_middle_of_an_answer_is_a_tls_failure(
    tmp_path: Path,
) -> None:
    context, ca_file = tls_for("127.0.0.1", tmp_path)
    script: list[Any] = [OK, Pause(0.2), OutsideTls(b"not a TLS record" * 4), HOLD]
    with TlsBreakingServer(script, tls=context, give_up_after=TIMEOUT + 4) as server:
        verdict = await check(server.url("https"), ca_file=ca_file)
    assert verdict.outcome is Outcome.FAILED_CLOSED, verdict
    assert verdict.failure is Failure.TLS, verdict
