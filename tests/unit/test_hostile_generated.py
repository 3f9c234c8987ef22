"""Generated hostile answers (issue 18): hypothesis builds the bytes the server answers with.

Status lines valid and not, 1xx responses, headers with and without colons, folded, with
contradicting framing, bodies framed by Content-Length (right, short, long), chunked (valid or
broken) or the connection's end; then a random cut, and a close, a reset or silence. Whatever
comes, the verdict is a documented outcome by the deadline plus a margin, with nothing raised
and nothing logged at ERROR.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import pytest
import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from synapse_http_antispam.catalogue import Kind
from tests.support.hostile import (
    TwistedErrors,
    assert_documented,
    assert_quiet,
    run,
    twisted_errors,
)
from tests.support.raw_server import CLOSE, HOLD, RESET, RawServer

__all__ = ["twisted_errors"]  # a fixture

TIMEOUT = 0.5  # short: a generated answer that stalls costs this much
# The same examples on every run, so CI cannot turn flaky; HOSTILE_EXAMPLES=500 explores
# that many fresh random ones instead.
EXPLORE = os.environ.get("HOSTILE_EXAMPLES")

VERSIONS = [b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2", b"HTTP/1.1.1", b"HTTP/x.y", b"http/1.1", b""]
CODES = [100, 101, 103, 200, 204, 299, 301, 304, 400, 401, 403, 404, 405, 407, 500, 501, 999]
HEADER_NAMES = [b"Content-Type", b"Content-Length", b"Transfer-Encoding", b"Connection", b"X-A"]
JSON_BODIES = [b"{}", b'{"errcode":"M_FORBIDDEN","error":"no"}', b'{"shadow_ban":true}', b"[]"]

# Bytes that matter to an HTTP parser, and some that do not.
NOISE = st.binary(max_size=24) | st.sampled_from([b"\r\n", b"\n", b"\r", b":", b" ", b"\x00"])


@st.composite
def status_line(draw: st.DrawFn) -> bytes:
    if draw(st.integers(0, 9)) == 0:
        return draw(NOISE) + b"\r\n"
    version = draw(st.sampled_from(VERSIONS))
    code = draw(
        st.sampled_from([str(c).encode() for c in CODES])
        | st.integers(-10, 10**6).map(lambda n: str(n).encode())
        | st.sampled_from([b"", b"abc", b"2OO", b" 200"])
    )
    reason = draw(st.sampled_from([b" OK", b"", b" ", b" Wh\x00t"]))
    return version + b" " + code + reason + draw(st.sampled_from([b"\r\n", b"\n"]))


@st.composite
def header_line(draw: st.DrawFn) -> bytes:
    name = draw(st.sampled_from(HEADER_NAMES) | st.binary(min_size=1, max_size=12))
    value = draw(
        st.sampled_from([b"chunked", b"gzip", b"identity", b"chunked, gzip", b"close", b"0"])
        | st.integers(-5, 10**12).map(lambda n: str(n).encode())
        | st.binary(max_size=16)
    )
    shape = draw(st.integers(0, 9))
    if shape == 0:
        return name + value + b"\r\n"  # no colon
    if shape == 1:
        return name + b": " + value + b"\r\n \t" + value + b"\r\n"  # folded
    return name + b": " + value + b"\r\n"


def chunked(body: bytes, broken: int) -> bytes:
    pieces = [body[i : i + 7] for i in range(0, len(body), 7)]
    out = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    if broken == 1:
        out = out.replace(b"\r\n", b"\n", 1)
    elif broken == 2:
        out = b"zz\r\n" + out
    elif broken == 3:
        out = b"ffffffff\r\n" + out
    elif broken == 4:
        out = out[:-5]  # no last chunk
    return out


@st.composite
def answer(draw: st.DrawFn) -> tuple[bytes, object]:
    informational = draw(
        st.lists(
            st.sampled_from(
                [b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 103 Early\r\nLink: </x>\r\n\r\n"]
            ),
            max_size=3,
        )
    )
    status = draw(status_line())
    headers = b"".join(draw(st.lists(header_line(), max_size=6)))
    body = draw(st.sampled_from(JSON_BODIES) | st.binary(max_size=200))
    framing = draw(st.sampled_from(["length", "short", "long", "chunked", "bad-chunked", "none"]))
    if framing in ("length", "short", "long"):
        declared = len(body) + {"length": 0, "short": -1, "long": 5}[framing]
        headers += b"Content-Length: %d\r\n" % max(declared, 0)
    elif framing == "chunked":
        headers += b"Transfer-Encoding: chunked\r\n"
        body = chunked(body, 0)
    elif framing == "bad-chunked":
        headers += b"Transfer-Encoding: chunked\r\n"
        body = chunked(body, draw(st.integers(1, 4)))
    stream = b"".join(informational) + status + headers + b"\r\n" + body
    if draw(st.booleans()):
        stream = stream[: draw(st.integers(0, len(stream)))]
    end = draw(st.sampled_from([CLOSE, CLOSE, CLOSE, RESET, HOLD]))
    return stream, end


@pytest.fixture(scope="module")
def raw_server() -> Iterator[RawServer]:
    with RawServer(give_up_after=TIMEOUT + 3) as server:
        yield server


@settings(
    max_examples=int(EXPLORE) if EXPLORE else 40,
    deadline=None,  # the bound checked is the forwarder's own (timeout + margin)
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
    derandomize=not EXPLORE,
)
@given(generated=answer(), registration=st.booleans())
@pytest_twisted.ensureDeferred
async def test_generated_answers(
    raw_server: RawServer,
    caplog: pytest.LogCaptureFixture,
    twisted_errors: TwistedErrors,
    generated: tuple[bytes, object],
    registration: bool,
) -> None:
    stream, end = generated
    raw_server.script = [stream, end]  # type: ignore[list-item]
    caplog.clear()
    twisted_errors.events.clear()
    with caplog.at_level(logging.INFO):
        name, kind = (
            ("check_registration_for_spam", Kind.REGISTRATION)
            if registration
            else ("user_may_invite", Kind.GATE)
        )
        verdict, seconds, _ = await run(raw_server.url(), TIMEOUT, name=name, kind=kind)
    assert_documented(verdict, seconds, TIMEOUT)
    assert_quiet(caplog.records, twisted_errors)
