"""The forwarder against a hostile antispam server (issue 18): raw bytes, not HTTP.

`tests.support.raw_server` answers each request with a scripted byte stream that misbehaves at
every point of an HTTP answer: the status line, the headers, 1xx responses, the framing of the
body, the pace, the connection, the TLS handshake. `test_generated_answers` (hypothesis) builds
such streams at random.

For every case: the verdict arrives by the deadline plus a small margin, it is one of the
documented outcomes (a failure names a Failure), nothing escapes `check`, nothing is logged at
ERROR (stdlib or Twisted log), and for the big inputs memory stays bounded while the server
sends far more.
"""

from __future__ import annotations

import json
import logging
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import trustme

from synapse_http_antispam.catalogue import Kind
from synapse_http_antispam.verdict import Failure, Outcome
from tests.support.hostile import (
    FAILED,
    TwistedErrors,
    assert_documented,
    assert_quiet,
    run,
    twisted_errors,
)
from tests.support.raw_server import (
    CLOSE,
    HOLD,
    RESET,
    Pause,
    RawServer,
    Step,
    Trickle,
    chunked_forever,
    endless,
)

__all__ = ["twisted_errors"]  # a fixture

TIMEOUT = 0.6  # the forwarder's deadline in the cases that may run into it
# Cases that must be decided promptly (a cap cuts the stream, the connection drops) get a
# longer deadline and must beat half of it: robust on a loaded machine, and they cost only
# the time they take.
QUICK_TIMEOUT = 2.0
QUICK = QUICK_TIMEOUT / 2
MEMORY_CAP = 4 * 1024 * 1024  # what one call may allocate (the body cap is 64 KiB)

ANY_FAILURE = frozenset(Failure)
# What a connection-level mess may be called: dropped, unparseable, cut by a cap, too slow.
# (Today an answer Twisted cannot parse is `connect`, and counts for the breaker as no answer.)
BROKEN = frozenset({Failure.CONNECT, Failure.BAD_RESPONSE, Failure.TOO_LARGE, Failure.TIMEOUT})

OK = b"HTTP/1.1 200 OK\r\n"
JSON_403 = json.dumps({"errcode": "M_FORBIDDEN", "error": "no"}).encode()
BIG = 70_000  # over the default 64 KiB max_response_bytes


# ---- the scripted cases --------------------------------------------------------------------


@dataclass
class Case:
    script: Sequence[Step]
    outcomes: frozenset[Outcome]
    failures: frozenset[Failure] = ANY_FAILURE  # when the outcome is a failure
    quick: bool = False  # must be decided well before the deadline
    memory: bool = False  # a big input: measure the allocation peak
    name: str = "user_may_invite"
    kind: Kind = Kind.GATE
    xfail: str | None = None
    # "tls-stall": an https URL, a server that plays the script instead of a TLS handshake;
    # "tls": a real TLS server (certificate trusted through ca_file), the script inside it.
    transport: str = "tcp"


def fails(*failures: Failure, **kw: Any) -> Case:
    """A failure verdict (user_may_invite fails closed) for one of `failures`."""
    script = kw.pop("script")
    return Case(script, frozenset({Outcome.FAILED_CLOSED}), frozenset(failures), **kw)


def outcome(*outcomes: Outcome, **kw: Any) -> Case:
    failures = kw.pop("failures", ANY_FAILURE)
    return Case(kw.pop("script"), frozenset(outcomes), frozenset(failures), **kw)


def answer(status: bytes, headers: bytes = b"", body: bytes = b"") -> bytes:
    return status + headers + b"\r\n" + body


def sized(status: bytes, body: bytes, ctype: bytes = b"application/json") -> bytes:
    head = b"Content-Type: %s\r\nContent-Length: %d\r\n" % (ctype, len(body))
    return answer(status, head, body)


CHUNKED = b"Transfer-Encoding: chunked\r\n"
HEADER_LINE = b"X-Filler: " + b"a" * 70 + b"\r\n"

CASES: dict[str, Case] = {
    # -- the baseline: a well-formed answer passes through the raw server ------------------
    "well-formed-200": outcome(Outcome.ALLOWED, script=[sized(OK, b"{}"), CLOSE]),
    "well-formed-403": outcome(
        Outcome.REJECTED, script=[sized(b"HTTP/1.1 403 Forbidden\r\n", JSON_403), CLOSE]
    ),
    # -- nothing, or a connection that goes away ---------------------------------------------
    "silent": fails(Failure.TIMEOUT, script=[HOLD]),
    "close-at-once": fails(Failure.CONNECT, script=[CLOSE], quick=True),
    "reset-at-once": fails(Failure.CONNECT, script=[RESET], quick=True),
    "close-mid-status-line": fails(Failure.CONNECT, script=[b"HTTP/1.1 20", CLOSE], quick=True),
    "close-mid-headers": fails(
        Failure.CONNECT, script=[OK + b"Content-Length: 2\r\nX-A", CLOSE], quick=True
    ),
    "reset-mid-headers": fails(Failure.CONNECT, script=[OK + b"X-A: b\r\n", RESET], quick=True),
    "headers-never-end": fails(Failure.TIMEOUT, script=[OK + b"Content-Length: 2\r\n", HOLD]),
    # -- pace -----------------------------------------------------------------------------
    "one-byte-a-second": fails(Failure.TIMEOUT, script=[Trickle(sized(OK, b"{}"), 1.0)]),
    "one-byte-per-50ms": fails(Failure.TIMEOUT, script=[Trickle(sized(OK, b"{}"), 0.05)]),
    "answer-after-deadline": fails(Failure.TIMEOUT, script=[Pause(2.0), sized(OK, b"{}")]),
    "body-after-deadline": fails(
        Failure.TIMEOUT,
        script=[b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\n", Pause(2.0), b"{}"],
    ),
    # -- invalid status lines -------------------------------------------------------------
    "status-garbage": fails(*BROKEN, script=[b"GARBAGE\r\n\r\n", CLOSE], quick=True),
    "status-empty-line": fails(*BROKEN, script=[b"\r\n\r\n", CLOSE], quick=True),
    "status-non-numeric": fails(*BROKEN, script=[b"HTTP/1.1 abc OK\r\n\r\n", CLOSE], quick=True),
    "status-bad-version": fails(
        *BROKEN, script=[b"HTTP/x.y 200 OK\r\nContent-Length: 0\r\n\r\n", CLOSE], quick=True
    ),
    "status-negative-version": fails(
        *BROKEN, script=[b"HTTP/-1.1 200 OK\r\nContent-Length: 0\r\n\r\n", CLOSE], quick=True
    ),
    "status-icy": fails(*BROKEN, script=[b"ICY 200 OK\r\n\r\n", CLOSE], quick=True),
    "status-nul-bytes": fails(*BROKEN, script=[b"HTTP/1.1 \x00\x00\x00\r\n\r\n", CLOSE]),
    "status-code-99999": fails(
        Failure.HTTP_STATUS,
        *BROKEN,
        script=[b"HTTP/1.1 99999 Huge\r\nContent-Length: 0\r\n\r\n", CLOSE],
        quick=True,
    ),
    "status-code-negative": fails(
        Failure.HTTP_STATUS,
        *BROKEN,
        script=[b"HTTP/1.1 -200 OK\r\nContent-Length: 0\r\n\r\n", CLOSE],
        quick=True,
    ),
    "status-without-reason": outcome(
        Outcome.ALLOWED, script=[b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n", CLOSE]
    ),
    "status-line-endless": fails(
        *BROKEN, script=[b"HTTP/1.1 200 ", endless(b"O" * 4096)], quick=True, memory=True
    ),
    "binary-noise-endless": fails(
        *BROKEN, script=[endless(bytes(range(256)) * 16)], quick=True, memory=True
    ),
    # -- invalid headers ------------------------------------------------------------------
    "header-without-colon": fails(
        *BROKEN, script=[OK + b"NoColonHere\r\nContent-Length: 2\r\n\r\n{}", CLOSE], quick=True
    ),
    "header-folded": outcome(
        Outcome.ALLOWED,
        script=[OK + b"X-A: b\r\n c\r\n\tc\r\nContent-Length: 2\r\n\r\n{}", CLOSE],
    ),
    "header-line-endless": fails(
        *BROKEN, script=[OK + b"X-Long: ", endless(b"a" * 4096)], quick=True, memory=True
    ),
    "header-lines-endless": fails(
        Failure.TOO_LARGE,
        script=[OK, endless(HEADER_LINE)],
        quick=True,
        memory=True,
    ),
    "header-folded-endless": fails(
        Failure.TOO_LARGE,
        script=[OK + b"X-Folded: a\r\n", endless(b" " + b"b" * 70 + b"\r\n")],
        quick=True,
        memory=True,
    ),
    "header-lines-over-count-cap": fails(
        Failure.TOO_LARGE,
        script=[sized(OK + b"X-N: 1\r\n" * 200, b"{}"), CLOSE],
        quick=True,
    ),
    "header-bytes-over-cap": fails(
        Failure.TOO_LARGE,
        script=[sized(OK + (b"X-Big: " + b"v" * 8000 + b"\r\n") * 9, b"{}"), CLOSE],
        quick=True,
    ),
    # What any sane cap must still let through: 60 header lines, 30 KB.
    "header-lines-under-caps": outcome(
        Outcome.ALLOWED,
        script=[sized(OK + (b"X-Some: " + b"v" * 490 + b"\r\n") * 60, b"{}"), CLOSE],
    ),
    "content-length-junk": outcome(
        Outcome.ALLOWED,
        *FAILED,
        failures=BROKEN,
        script=[OK + b"Content-Length: abc\r\n\r\n{}", CLOSE],
    ),
    "content-length-negative": outcome(
        Outcome.ALLOWED,
        *FAILED,
        failures=BROKEN,
        script=[OK + b"Content-Length: -5\r\n\r\n{}", CLOSE],
    ),
    "content-length-conflicting": fails(
        *BROKEN,
        script=[b"HTTP/1.1 403 No\r\nContent-Length: 2\r\nContent-Length: 9\r\n\r\n{}", CLOSE],
    ),
    "transfer-encoding-unknown": outcome(
        Outcome.ALLOWED,
        *FAILED,
        failures=BROKEN,
        script=[OK + b"Transfer-Encoding: gzip\r\n\r\n{}", CLOSE],
    ),
    # -- 1xx informational responses ------------------------------------------------------
    "1xx-a-few-then-200": outcome(
        Outcome.ALLOWED,
        script=[
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\n\r\n"
            b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n" + sized(OK, b"{}"),
            CLOSE,
        ],
    ),
    "1xx-then-close": fails(
        Failure.CONNECT, script=[b"HTTP/1.1 100 Continue\r\n\r\n", CLOSE], quick=True
    ),
    "1xx-flood": fails(
        Failure.TOO_LARGE,
        script=[endless(b"HTTP/1.1 100 Continue\r\n\r\n")],
        quick=True,
        memory=True,
    ),
    "1xx-with-endless-headers": fails(
        Failure.TOO_LARGE,
        script=[b"HTTP/1.1 103 Early Hints\r\n", endless(HEADER_LINE)],
        quick=True,
        memory=True,
    ),
    # Twisted takes a 101 for an informational answer and waits for the real one.
    "101-switching-protocols": outcome(
        *FAILED,
        Outcome.ALLOWED,
        failures=BROKEN,
        script=[b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n", HOLD],
    ),
    # -- Content-Length shorter and longer than the body ----------------------------------
    "content-length-short-200": outcome(
        Outcome.ALLOWED, script=[OK + b"Content-Length: 2\r\n\r\n{}trailing garbage", CLOSE]
    ),
    "content-length-short-403": outcome(
        Outcome.REJECTED,
        script=[b"HTTP/1.1 403 No\r\nContent-Length: 2\r\n\r\n{}" + JSON_403, CLOSE],
    ),
    "content-length-long-then-close-200": outcome(
        Outcome.ALLOWED,
        *FAILED,
        failures={Failure.CONNECT},
        script=[OK + b"Content-Length: 100\r\n\r\n{}", CLOSE],
        quick=True,
    ),
    "content-length-long-then-close-403": fails(
        Failure.CONNECT,
        script=[b"HTTP/1.1 403 No\r\nContent-Length: 100\r\n\r\n" + JSON_403, CLOSE],
        quick=True,
    ),
    "content-length-long-then-hold-200": outcome(
        Outcome.ALLOWED,
        *FAILED,
        failures={Failure.TIMEOUT},
        script=[OK + b"Content-Length: 100\r\n\r\n{}", HOLD],
    ),
    "content-length-long-then-hold-403": fails(
        Failure.TIMEOUT,
        script=[b"HTTP/1.1 403 No\r\nContent-Length: 100\r\n\r\n" + JSON_403, HOLD],
    ),
    # -- big bodies -----------------------------------------------------------------------
    "2xx-body-over-cap": outcome(
        Outcome.ALLOWED,
        script=[sized(OK, b" " * BIG + b"{}"), CLOSE],
        quick=True,
        memory=True,
    ),
    "2xx-body-endless-chunked": outcome(
        Outcome.ALLOWED,
        script=[OK + CHUNKED + b"\r\n", chunked_forever(b"x" * 8192)],
        quick=True,
        memory=True,
    ),
    "2xx-body-endless-until-close": outcome(
        Outcome.ALLOWED,
        script=[b"HTTP/1.0 200 OK\r\n\r\n", endless(b"x" * 8192)],
        quick=True,
        memory=True,
    ),
    "2xx-body-declared-huge": outcome(
        Outcome.ALLOWED,
        script=[OK + b"Content-Length: 99999999999\r\n\r\n", endless(b"x" * 8192)],
        quick=True,
        memory=True,
    ),
    "registration-2xx-body-over-cap": outcome(
        Outcome.ALLOWED,
        *FAILED,
        failures={Failure.TOO_LARGE},
        name="check_registration_for_spam",
        kind=Kind.REGISTRATION,
        script=[sized(OK, b" " * BIG + b"{}"), CLOSE],
        quick=True,
        memory=True,
    ),
    # Read as "no such endpoint", not as too large. The raw server answers `ping` with the
    # same page, so the evidence rule (issue 18) makes it a failure: no antispam server there.
    "404-html-over-cap": fails(
        Failure.NO_ANTISPAM_SERVER,
        script=[sized(b"HTTP/1.1 404 Not Found\r\n", b"<html>" * 12_000, b"text/html"), CLOSE],
        quick=True,
        memory=True,
    ),
    "403-json-over-cap": fails(
        Failure.TOO_LARGE,
        script=[sized(b"HTTP/1.1 403 No\r\n", JSON_403[:-1] + b',"x":"' + b"y" * BIG + b'"}')],
        quick=True,
        memory=True,
    ),
    "403-endless-chunked": fails(
        Failure.TOO_LARGE,
        script=[b"HTTP/1.1 403 No\r\n" + CHUNKED + b"\r\n", chunked_forever(b"x" * 8192)],
        quick=True,
        memory=True,
    ),
    "403-endless-until-close": fails(
        Failure.TOO_LARGE,
        script=[b"HTTP/1.0 403 No\r\n\r\n", endless(b"x" * 8192)],
        quick=True,
        memory=True,
    ),
    # -- bad or endless chunked encoding --------------------------------------------------
    "chunked-valid-403": outcome(
        Outcome.REJECTED,
        script=[
            b"HTTP/1.1 403 No\r\n" + CHUNKED + b"\r\n"
            b"%x\r\n%s\r\n0\r\n\r\n" % (len(JSON_403), JSON_403),
            CLOSE,
        ],
    ),
    "chunked-bad-size-403": fails(
        *BROKEN,
        script=[b"HTTP/1.1 403 No\r\n" + CHUNKED + b"\r\nzz\r\n{}\r\n0\r\n\r\n", CLOSE],
        quick=True,
    ),
    "chunked-bad-size-200": outcome(
        Outcome.ALLOWED,
        *FAILED,
        failures=BROKEN,
        script=[OK + CHUNKED + b"\r\nzz\r\n{}\r\n0\r\n\r\n", CLOSE],
        quick=True,
    ),
    "chunked-huge-size-403": fails(
        *BROKEN,
        script=[b"HTTP/1.1 403 No\r\n" + CHUNKED + b"\r\nFFFFFFFFFFFFFFFF\r\n{}", CLOSE],
        quick=True,
    ),
    "chunked-missing-crlf-403": fails(
        *BROKEN,
        script=[b"HTTP/1.1 403 No\r\n" + CHUNKED + b"\r\n2\r\n{}XX0\r\n\r\n", CLOSE],
        quick=True,
    ),
    "chunked-no-last-chunk-403": fails(
        Failure.TIMEOUT,
        script=[b"HTTP/1.1 403 No\r\n" + CHUNKED + b"\r\n2\r\n{}\r\n", HOLD],
    ),
    "chunked-size-line-endless-403": fails(
        *BROKEN,
        script=[b"HTTP/1.1 403 No\r\n" + CHUNKED + b"\r\n5;ext=", endless(b"a" * 4096)],
        quick=True,
        memory=True,
    ),
    "chunked-trailers-endless-403": fails(
        *BROKEN,
        script=[b"HTTP/1.1 403 No\r\n" + CHUNKED + b"\r\n0\r\n", endless(HEADER_LINE)],
        quick=True,
        memory=True,
    ),
    "chunked-trailers-endless-200": outcome(
        Outcome.ALLOWED,
        *FAILED,
        failures=BROKEN,
        script=[OK + CHUNKED + b"\r\n0\r\n", endless(HEADER_LINE)],
        quick=True,
        memory=True,
    ),
    # One-byte chunks cost ~15 us each to decode (untraced): reaching the 64 KiB cap takes
    # about a second of reactor time, so with this deadline the call times out instead, a read
    # late (see TRACED_MARGIN).
    "chunked-empty-chunks-endless-403": fails(
        Failure.TOO_LARGE,
        Failure.TIMEOUT,
        script=[b"HTTP/1.1 403 No\r\n" + CHUNKED + b"\r\n", endless(b"1\r\n \r\n")],
        memory=True,
    ),
    # -- TLS: a handshake that never completes, or is not TLS at all ------------------------
    "tls-handshake-stall": fails(Failure.TIMEOUT, script=[HOLD], transport="tls-stall"),
    "tls-never-reads": fails(Failure.TIMEOUT, script=[Pause(10.0)], transport="tls-stall"),
    "tls-record-one-byte-a-second": fails(
        Failure.TIMEOUT,
        script=[Trickle(b"\x16\x03\x03\x00\x7a\x02\x00\x00\x76\x03\x03", 1.0)],
        transport="tls-stall",
    ),
    "tls-close-in-handshake": fails(
        Failure.CONNECT, script=[CLOSE], transport="tls-stall", quick=True
    ),
    "tls-plain-http-answer": fails(
        Failure.TLS, script=[sized(OK, b"{}"), CLOSE], transport="tls-stall", quick=True
    ),
    "tls-garbage-endless": fails(
        Failure.TLS,
        script=[endless(bytes(range(256)) * 16)],
        transport="tls-stall",
        quick=True,
        memory=True,
    ),
    # -- TLS completed, then a hostile answer inside it -----------------------------------
    "tls-ok-then-silent": fails(Failure.TIMEOUT, script=[HOLD], transport="tls"),
    "tls-ok-then-well-formed-403": outcome(
        Outcome.REJECTED,
        script=[sized(b"HTTP/1.1 403 Forbidden\r\n", JSON_403), CLOSE],
        transport="tls",
    ),
    "tls-ok-then-close-mid-headers": fails(
        Failure.CONNECT, script=[OK + b"X-A: b\r\n", CLOSE], transport="tls", quick=True
    ),
    "tls-ok-then-403-endless-chunked": fails(
        Failure.TOO_LARGE,
        script=[b"HTTP/1.1 403 No\r\n" + CHUNKED + b"\r\n", chunked_forever(b"x" * 8192)],
        transport="tls",
        quick=True,
        memory=True,
    ),
    "tls-ok-then-header-lines-endless": fails(
        Failure.TOO_LARGE,
        script=[OK, endless(HEADER_LINE)],
        transport="tls",
        quick=True,
        memory=True,
    ),
}


@dataclass
class Tls:
    server: ssl.SSLContext
    ca_file: str


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    ca_file = Path(tmp_path_factory.mktemp("tls")) / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return Tls(context, str(ca_file))


def _params() -> list[Any]:
    params = []
    for case_id, case in CASES.items():
        marks = [pytest.mark.xfail(strict=True, reason=case.xfail)] if case.xfail else []
        params.append(pytest.param(case, id=case_id, marks=marks))
    return params


@pytest.mark.parametrize("case", _params())
@pytest_twisted.ensureDeferred
async def test_hostile_answer(
    case: Case, caplog: pytest.LogCaptureFixture, twisted_errors: TwistedErrors, tls: Tls
) -> None:
    caplog.set_level(logging.INFO)
    timeout = QUICK_TIMEOUT if case.quick else TIMEOUT
    server = RawServer(
        case.script,
        give_up_after=timeout + 4,
        read_request=case.transport != "tls-stall",
        tls=tls.server if case.transport == "tls" else None,
    )
    with server:
        verdict, seconds, peak = await run(
            server.url("http" if case.transport == "tcp" else "https"),
            timeout,
            name=case.name,
            kind=case.kind,
            measure_memory=case.memory,
            ca_file=tls.ca_file if case.transport == "tls" else None,
        )
        sent = server.sent
    assert_documented(verdict, seconds, timeout, traced=case.memory)
    assert verdict.outcome in case.outcomes, verdict
    if verdict.outcome in FAILED:
        assert verdict.failure in case.failures, verdict
    if case.quick:
        assert seconds < QUICK, f"decided after {seconds:.2f}s: {verdict}"
    if case.memory:
        assert peak < MEMORY_CAP, f"{peak} bytes allocated while the server sent {sent}"
    assert_quiet(caplog.records, twisted_errors)
