"""A generated adversary, checked by invariants (issue 27, item 3).

The hostile tests are a list of attacks already imagined, each against a fresh forwarder. Here
hypothesis drives one real `Forwarder` through a sequence of steps against one real socket
server (`tests.support.adversary`) that keeps connections alive and flips between phases: a
good antispam server, a reverse proxy's `404 page not found` for every path (ping included, as
Traefik answers while the backend restarts), a server without some endpoints, a server that is
down (close, reset, silence), and a hostile one whose answers come from a grammar of bad HTTP
(status lines, header names and values as arbitrary bytes, non-UTF-8, folds, duplicates, bodies
of any size and nesting, chunked framing, stalls and cuts at any byte, a connection kept, closed
or reset after each). The steps call gates that fail closed, a callback that fails open and
registration, ping, in bursts, identical calls that coalesce and answers the server lets be
reused (`Cache-Control: max-age`).

After every step, the invariants (each named in its failure message; `ADVERSARY_IGNORE=a,b`
turns named ones off while exploring past a known bug):

* `deadline`: each call ended by its deadline plus a margin;
* `escape`: nothing escaped a call (a cancellation only where the step cancelled);
* `sockets`: the server's live connections within the pool's bound (`max_concurrency` plus the
  breaker's probe), and none left after `close()`;
* `store-memory`: the reuse store's real memory (its objects, measured) within
  `reuse_max_bytes`;
* `logs`: no ERROR record or traceback (stdlib logging or Twisted's log), except the one the
  module means to write when base_url reaches no antispam server;
* `breaker`: no exchange whose answer came complete and well-formed, in time, was counted
  against the server;
* `fail-closed`: a fail-closed callback is allowed only on a 2xx the server sent for this call
  (or for the identical call it coalesced with), on an answer the server itself let be reused
  (until its max-age ends), or for "no such endpoint" on current evidence (a ping the server
  answered during the call); a skip from memory only after such evidence;
* `asked-again`: while the server is good, a call is sent to it (the server sees the request)
  unless its answer was reused or the breaker is open;
* `consistent`: a complete, well-formed answer sent in time is read as sent: no transport
  failure, allowed only on a 2xx, rejected only on a 4xx;
* `reuse`: a stored answer is reused only while its max-age lasts, and only an allow or a
  rejection is stored;
* `requests`: a request's head stays the module's own few headers, whatever answers set
  (cookies, for one);
* `ended`: an allow rests on a 2xx answer that had ended (its body complete) by the verdict;
  a 2xx whose body still arrives at the deadline is a timeout.

The default run is short and derandomised (the same steps every time); `ADVERSARY_EXAMPLES=200`
(optionally `ADVERSARY_STEPS=40`) explores that many fresh random runs (`tox -e adversary`).
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import gc
import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import attrs
import pytest
import pytest_twisted
from hypothesis import HealthCheck, settings
from hypothesis import Phase as Stage
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)

from twisted.internet import defer, reactor, task, threads
from twisted.internet.defer import CancelledError
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure as TwistedFailure

from synapse_http_antispam.catalogue import Kind
from synapse_http_antispam.config import parse_config
from synapse_http_antispam.forwarder import Forwarder
from synapse_http_antispam.metrics import NullObserver
from synapse_http_antispam.reuse import STORED
from synapse_http_antispam.sending import Sender
from synapse_http_antispam.verdict import Failure, Outcome, Verdict
from tests.support.adversary import (
    CLOSE,
    HOLD,
    KEEP,
    RESET,
    AdversaryServer,
    Exchange,
    Pause,
    Scripted,
)
from tests.support.hostile import TwistedErrors
from tests.support.raw_server import _Action
from tests.support.waiting import sleep

EXPLORE = os.environ.get("ADVERSARY_EXAMPLES")
STEPS = int(os.environ.get("ADVERSARY_STEPS", "0")) or (40 if EXPLORE else 20)
IGNORED = frozenset(filter(None, os.environ.get("ADVERSARY_IGNORE", "").split(",")))

TIMEOUT = 0.4  # every callback but one: stalls are cheap
# One gate gets a long deadline, so that a body that stalls for a second can still end in time.
SLOW = "user_may_publish_room"
SLOW_TIMEOUT = 1.5
MARGIN = 1.5  # what a loaded machine may add to a deadline
MAX_CONCURRENCY = 3
PROBES = 1  # the breaker's probe bypasses the limiter
REUSE_MAX_SECONDS = 5.0
REUSE_MAX_BYTES = 64 * 1024  # the smallest the config allows
RECHECK = 600.0  # Endpoints.RECHECK: how long a callback without an endpoint is skipped
SETTLE = 2.5  # how long the server may take to see connections the client closed
# What an answer's last byte must leave of the deadline to count as "in time" for the
# judgements that depend on it (a loaded machine delays the reactor, not the server threads).
IN_TIME = 0.25
# Statuses whose answer has no body, whatever its head says (RFC 9110, 6.4.1).
NO_BODY = frozenset({204, 304})
# The request head the module sends is its own few headers (about 300 bytes): whatever an
# answer says (a 3000-byte cookie, for one), the next request's head stays well under this.
MAX_REQUEST_HEAD = 2048

CONFIG: dict[str, Any] = {
    "timeout": TIMEOUT,
    "timeouts": {SLOW: SLOW_TIMEOUT},
    "max_concurrency": MAX_CONCURRENCY,
    "max_pending": 64,  # a burst never overflows the queue: overloaded is not the point
    "circuit_breaker": {"failure_threshold": 3, "window": 5.0, "probe_interval": 0.5},
    "reuse_max_seconds": REUSE_MAX_SECONDS,
    "reuse_max_bytes": REUSE_MAX_BYTES,
    "reuse_max_entries": 1000,
}

# (callback, kind, fails closed by default)
CALLS: list[tuple[str, Kind, bool]] = [
    ("user_may_invite", Kind.GATE, True),
    (SLOW, Kind.GATE, True),
    ("check_event_for_spam", Kind.EVENT, False),
    ("check_registration_for_spam", Kind.REGISTRATION, True),
]
KINDS = {name: (kind, closed) for name, kind, closed in CALLS}
NAMES = [name for name, _, _ in CALLS]
TRANSPORT = frozenset({Failure.CONNECT, Failure.TLS, Failure.TIMEOUT, Failure.INTERNAL})


def timeout_for(name: str) -> float:
    return SLOW_TIMEOUT if name == SLOW else TIMEOUT


def payload(name: str, n: int) -> dict[str, Any]:
    if name == "check_registration_for_spam":
        return {"username": f"u{n}", "request_info": []}
    return {"user_id": "@u:x", "room_id": f"!r{n}:x"}


# ---- the server's phases ----------------------------------------------------------------


def http(
    status: int,
    body: bytes,
    *,
    reason: bytes = b"X",
    headers: Sequence[bytes] = (),
    content_type: bytes = b"application/json",
    max_age: float = 0.0,
    errcode: bool = False,
    label: str = "",
) -> Scripted:
    """A well-formed answer, sent at once, the connection kept."""
    head = b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n" % (
        status,
        reason,
        content_type,
        len(body),
    )
    if max_age:
        head += b"Cache-Control: max-age=%d\r\n" % max_age
    head += b"".join(h + b"\r\n" for h in headers) + b"\r\n"
    return Scripted(
        [head + body],
        KEEP,
        status,
        len(head),
        clean=True,
        max_age=max_age,
        errcode=errcode,
        ends=True,
        label=label or f"{status}",
    )


FORBIDDEN = b'{"errcode":"M_FORBIDDEN","error":"no"}'


def wide_json(count: int) -> bytes:
    """Small JSON text, large in memory: every `[]` is 3 bytes of text, a list once parsed."""
    return b'{"errcode":"M_FORBIDDEN","error":"no","x":[' + b",".join([b"[]"] * count) + b"]}"


PROXY_404 = b"404 page not found\n"


def ping_answer(exchange: Exchange) -> Scripted:
    try:
        ping_id = json.loads(exchange.body)["id"]
    except (ValueError, KeyError, TypeError):
        ping_id = ""
    return http(200, json.dumps({"id": ping_id, "status": "ok"}).encode(), label="ping-ok")


class Phase:
    """What the server answers now; `good` phases are an antispam server working normally."""

    good = False

    def __call__(self, exchange: Exchange) -> Scripted:
        raise NotImplementedError


@dataclass(frozen=True)
class Good(Phase):
    """A working antispam server. Its rejections may carry extra fields of any size (small
    as JSON text, large in memory), and it may send a 2xx's head before its body is ready."""

    max_age: int = 0
    reject: bool = False
    extra: int = 0  # how many `[]` in the rejection's extra field
    deep: bool = False  # the extra field nested 30 000 deep instead (past the JSON parser)
    slow_body: bool = False  # the 2xx head at once, the body some seconds later

    @property
    def good(self) -> bool:  # type: ignore[override]
        # Slow bodies hold the limiter's slots: queued calls may time out unasked.
        return not self.slow_body

    def __call__(self, exchange: Exchange) -> Scripted:
        if exchange.path == "ping":
            return ping_answer(exchange)
        if self.reject:
            body = wide_json(self.extra) if self.extra else FORBIDDEN
            if self.deep:
                body = nested(30_000).data
            return http(403, body, max_age=self.max_age, errcode=True, label="good-403")
        answer = http(200, b"{}", max_age=self.max_age, label="good-200")
        if not self.slow_body:
            return answer
        data = answer.pieces[0]
        assert isinstance(data, bytes)
        cut = answer.head_bytes
        return dataclasses.replace(
            answer, pieces=[data[:cut], Pause(3.0), data[cut:]], clean=False
        )


@dataclass(frozen=True)
class Proxy404(Phase):
    """Traefik while the backend restarts: a plain-text 404 for every path, ping included."""

    def __call__(self, exchange: Exchange) -> Scripted:
        return http(404, PROXY_404, content_type=b"text/plain; charset=utf-8", label="proxy-404")


@dataclass(frozen=True)
class NoEndpoint(Phase):
    """A real antispam server without endpoints for some callbacks (a framework's 404)."""

    names: frozenset[str]

    def __call__(self, exchange: Exchange) -> Scripted:
        if exchange.path == "ping":
            return ping_answer(exchange)
        if exchange.path in self.names:
            return http(404, b"Not Found", content_type=b"text/plain", label="no-endpoint")
        return http(200, b"{}", label="good-200")


@dataclass(frozen=True)
class Down(Phase):
    how: _Action

    def __call__(self, exchange: Exchange) -> Scripted:
        return Scripted([], self.how, label=f"down-{self.how}")


@dataclass
class Hostile(Phase):
    """Each request (ping included) gets the next generated answer, round and round."""

    answers: list[Scripted]
    _next: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __call__(self, exchange: Exchange) -> Scripted:
        with self._lock:
            answer = self.answers[self._next % len(self.answers)]
            self._next += 1
        return answer

    def __repr__(self) -> str:
        return f"Hostile({[a.label for a in self.answers]})"


# ---- the grammar of hostile answers -----------------------------------------------------

CODES = [200, 204, 299, 400, 401, 403, 404, 405, 407, 418, 429, 500, 501, 502, 503]
REASONS = [b"OK", b"", b"Not Found", b"\xff\xfe", b"Wh\x00t"]
NON_UTF8 = b"\xe9\xff\xfe"
CONTENT_TYPES = [
    b"application/json",
    b"text/plain; charset=utf-8",
    b"application/json; charset=" + NON_UTF8,
    NON_UTF8,
    b"",
]
CACHE_CONTROLS = [
    b"max-age=1",
    b"max-age=2",
    b"max-age=1, max-age=2",
    b"no-store, max-age=2",
    b'max-age="2"',
    b"max-age=" + NON_UTF8,
    NON_UTF8 + b", max-age=1",
    b"max-age=99999999999999999999",
    b"private, max-age=2",
]
MAX_AGE = re.compile(rb'max-age\s*=\s*"?([0-9]+)', re.IGNORECASE)
TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


@dataclass(frozen=True)
class Body:
    data: bytes
    errcode: bool = False  # a JSON object with a string errcode, parsed by any JSON reader
    label: str = ""


def nested(depth: int) -> Body:
    data = b'{"errcode":"M_FORBIDDEN","x":' + b"[" * depth + b"]" * depth + b"}"
    return Body(data, errcode=depth < 500, label=f"nested-{depth}")


def wide(count: int) -> Body:
    return Body(wide_json(count), errcode=True, label=f"wide-{count}")


BODIES = st.sampled_from(
    [
        Body(b"{}", label="{}"),
        Body(FORBIDDEN, errcode=True, label="forbidden"),
        Body(b'{"shadow_ban":true}', label="shadow-ban"),
        Body(b"[]", label="[]"),
        Body(PROXY_404, label="404-text"),
        nested(50),
        nested(30_000),
        wide(15_000),
        Body(b"a" * 70_000, label="oversized"),
    ]
) | st.binary(max_size=40).map(lambda b: Body(b, label="noise"))


@st.composite
def header_lines(draw: st.DrawFn) -> tuple[bytes, bool]:
    """Header lines (without the framing ones), and whether all are well-formed. The two
    headers the module reads, Content-Type and Cache-Control, come in most answers, in any
    bytes; the others are noise, folds and duplicates around them."""
    lines: list[bytes] = []
    clean = True
    content_type = draw(st.sampled_from([*CONTENT_TYPES, None]))
    if content_type is not None:
        lines.append(b"Content-Type: " + content_type)
    cache_control = draw(st.sampled_from([*CACHE_CONTROLS, None, None]))
    if cache_control is not None:
        lines.append(b"Cache-Control: " + cache_control)
    for _ in range(draw(st.integers(0, 3))):
        what = draw(st.sampled_from(["type", "cache", "cookie", "cookie", "junk", "fold"]))
        if what == "type":
            line = b"Content-Type: " + draw(st.sampled_from(CONTENT_TYPES))
        elif what == "cache":
            line = b"Cache-Control: " + draw(st.sampled_from(CACHE_CONTROLS))
        elif what == "cookie":  # a cookie under a new name: small, big, or not ASCII
            name = draw(st.integers(0, 10**6))
            value = draw(st.sampled_from([b"v" * 8, b"v" * 3000, NON_UTF8]))
            line = b"Set-Cookie: c%d=%s; Max-Age=86400; Path=/" % (name, value)
        elif what == "junk":
            name = draw(
                st.sampled_from([b"X-A", b"Set-Cookie", b"X-\xff"])
                | st.binary(min_size=1, max_size=8)
            )
            value = draw(st.binary(max_size=16))
            line = name + b": " + value
            value_ok = all(c >= 0x20 or c == 0x09 for c in value) and 0x7F not in value
            clean = clean and TOKEN.fullmatch(name) is not None and value_ok
        else:
            line = b"Cache-Control: max-age=1\r\n " + draw(st.sampled_from([b"no-store", b"x"]))
            clean = False  # obs-fold: obsolete, a client may refuse it
        lines += [line] * draw(st.integers(1, 3))  # duplicates
    return b"".join(line + b"\r\n" for line in lines), clean


# What a hostile answer starts from: a status and a body an antispam server (or something in
# its place) might send; the rest of the grammar then bends the bytes around them.
SHAPES = [
    (200, Body(b"{}", label="{}")),
    (200, Body(b'{"shadow_ban":true}', label="shadow-ban")),
    (403, Body(FORBIDDEN, errcode=True, label="forbidden")),
    (403, wide(15_000)),
    (403, nested(30_000)),
    (400, nested(50)),
    (200, nested(30_000)),
    (404, Body(PROXY_404, label="404-text")),
    (500, Body(b"Internal Server Error", label="500-text")),
    (401, Body(b"{}", label="{}")),
]


@st.composite
def hostile_answer(draw: st.DrawFn) -> Scripted:
    code, body = draw(st.sampled_from(SHAPES))
    if draw(st.integers(0, 3)) == 0:  # now and then, any status and body at all
        code = draw(st.sampled_from([*CODES, 99, 999, 2000]))
        body = draw(BODIES)
    interim = draw(st.sampled_from([b"", b"", b"HTTP/1.1 100 Continue\r\n\r\n"]))
    version = draw(st.sampled_from([b"HTTP/1.1"] * 8 + [b"HTTP/1.0", b"HTTP/2", b"HTP/1.1"]))
    reason = draw(st.sampled_from(REASONS))
    headers, headers_clean = draw(header_lines())
    if draw(st.booleans()):
        headers += b"Cache-Control: max-age=%d\r\n" % draw(st.integers(1, 3))
    data = b"" if code == 204 else body.data
    framing = draw(st.sampled_from(["length"] * 4 + ["chunked"] * 2 + ["short", "long", "none"]))
    if framing == "chunked":
        headers += b"Transfer-Encoding: chunked\r\n"
        pieces = [data[i : i + 4096] for i in range(0, len(data), 4096)]
        data = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    elif framing in ("length", "short", "long"):
        extra = {"length": 0, "short": -1, "long": 5}[framing]
        headers += b"Content-Length: %d\r\n" % max(len(data) + extra, 0)
    status_line = b"%s %d %s\r\n" % (version, code, reason)
    head = interim + status_line + headers + b"\r\n"
    stream = head + data
    delivery = draw(st.sampled_from(["at-once"] * 4 + ["stall-head", "stall-body", "cut"]))
    stream_pieces: list[bytes | Pause] = [stream]
    end = draw(st.sampled_from([KEEP, KEEP, KEEP, CLOSE, RESET, HOLD]))
    if delivery == "stall-head":
        at = draw(st.integers(0, len(head)))
        pause = Pause(draw(st.sampled_from([0.2, 0.8, 3.0])))
        stream_pieces = [stream[:at], pause, stream[at:]]
    elif delivery == "stall-body":
        at = draw(st.integers(len(head), len(stream)))
        pause = Pause(draw(st.sampled_from([0.2, 0.8, 3.0])))
        stream_pieces = [stream[:at], pause, stream[at:]]
    elif delivery == "cut":
        stream_pieces = [stream[: draw(st.integers(0, len(stream)))]]
        end = draw(st.sampled_from([CLOSE, RESET, HOLD]))
    # An HTTP/1.x status line: anything else ("HTP/1.1", "HTTP/2") is not an HTTP answer,
    # whatever a lenient parser makes of it. (A NUL in the reason phrase is the server's
    # mistake in its own answer: its status stands, but the answer is not clean.)
    valid_head = version in (b"HTTP/1.1", b"HTTP/1.0") and 100 <= code <= 599
    complete = framing in ("length", "chunked") or (framing == "none" and end is CLOSE)
    # Where the client's reading may end: the framing's end ("short" ends a byte early), or
    # its cap on bodies (max_response_bytes, 64 KiB by default).
    capped = len(body.data) > 64 * 1024
    ends = delivery != "cut" and (complete or framing == "short" or capped)
    clean = (
        valid_head
        and b"\x00" not in reason
        and headers_clean
        and complete
        and delivery == "at-once"
        and end is not RESET
        and not (framing == "none" and 200 <= code < 300)  # may be cut off as unneeded
    )
    ages = [int(m) for m in MAX_AGE.findall(head)]
    label = f"{version.decode('latin-1')} {code} {body.label} {framing} {delivery} {end}"
    return Scripted(
        stream_pieces,
        end,
        code if valid_head else None,
        len(head),
        clean=clean,
        max_age=min(max(ages), REUSE_MAX_SECONDS) if ages else 0.0,
        errcode=body.errcode and valid_head and complete and delivery != "cut",
        ends=ends,
        capped=capped,
        label=label,
    )


HOSTILE = st.builds(Hostile, answers=st.lists(hostile_answer(), min_size=1, max_size=4))
# Each branch about as likely: a short run meets every kind of phase several times.
PHASES = st.one_of(
    st.builds(Good, max_age=st.sampled_from([0, 1, 2]), reject=st.booleans()),
    # Rejections whose extra field is small as JSON text and large in memory, reusable, or
    # nested deeper than the JSON parser goes.
    st.builds(
        Good,
        max_age=st.sampled_from([1, 2]),
        reject=st.just(True),
        extra=st.just(15_000),
        deep=st.booleans(),
    ),
    # 2xx heads at once, bodies seconds later: the verdict is known from the head.
    st.builds(Good, max_age=st.sampled_from([0, 2]), slow_body=st.just(True)),
    HOSTILE,
    HOSTILE,
    st.just(Proxy404()),
    st.builds(NoEndpoint, names=st.frozensets(st.sampled_from(NAMES), min_size=1)),
    st.builds(Down, how=st.sampled_from([CLOSE, RESET, HOLD])),
)


# Calls made together: a callback and which of three payloads (identical ones coalesce).
CALL_LISTS = st.lists(st.tuples(st.sampled_from(NAMES), st.integers(0, 2)), min_size=1, max_size=6)


# ---- watching the forwarder -------------------------------------------------------------


@dataclass
class Call:
    name: str
    start: float
    phase: Phase
    phase_number: int
    breaker_open: bool
    end: float = 0.0
    verdict: Optional[Verdict] = None
    how: Optional[str] = None
    error: Optional[str] = None
    cancelled: bool = False
    may_cancel: bool = False


class Watcher(NullObserver):
    """Learns how each verdict was had (sent, coalesced, stored): `reused` follows `decided`
    for the same verdict, synchronously, inside `check`."""

    def __init__(self) -> None:
        self.how: dict[int, str] = {}
        self._last: Verdict | None = None

    def decided(self, callback: str, verdict: Verdict) -> None:
        self._last = verdict
        self.how.pop(id(verdict), None)  # a collected verdict's id may be used again

    def reused(self, callback: str, how: str) -> None:
        if self._last is not None:
            self.how[id(self._last)] = how


@dataclass
class Told:
    """What one exchange told the breaker, and when it started and its deadline was
    (monotonic)."""

    deadline: float
    start: float = 0.0
    said: list[str] = field(default_factory=list)


class Heartbeat:
    """Beats on the reactor every 20 ms. A gap says the reactor itself was late (a loaded
    machine starves it, not the server's threads): a judgement of what the module did by its
    deadline means nothing for a moment the reactor did not run, and is not made."""

    EVERY = 0.02
    LATE = 0.1

    def __init__(self) -> None:
        self.beats: list[float] = []
        self._loop = task.LoopingCall(lambda: self.beats.append(time.monotonic()))

    def start(self) -> None:
        # Not the loop's Deferred: it fires only when the loop stops, and would be waited for.
        on_reactor(lambda: self._loop.start(self.EVERY) and None)

    def stop(self) -> None:
        on_reactor(lambda: self._loop.running and self._loop.stop())

    def late(self, start: float, end: float) -> bool:
        """Whether the reactor went more than LATE without a beat anywhere in [start, end]
        (end: the deadline, or now if that is sooner)."""
        end = min(end, time.monotonic())
        points = [start, *(b for b in self.beats if start < b < end), end]
        return any(later - earlier > self.LATE for earlier, later in zip(points, points[1:]))


class _Tap:
    """The forwarder's breaker as one exchange sees it: what it is told is kept per request."""

    def __init__(self, breaker: Any, told: Told) -> None:
        self._breaker = breaker
        self._told = told

    def reachable(self) -> None:
        self._told.said.append("reachable")
        self._breaker.reachable()

    def unreachable(self, reason: str) -> None:
        self._told.said.append(reason)
        self._breaker.unreachable(reason)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._breaker, name)


def tap_breaker(forwarder: Forwarder, told: dict[str, Told]) -> None:
    """Makes every exchange (calls, pings, probes) report what it tells the breaker, by its
    X-Request-ID. Reaches into the forwarder: it fails loudly if the core was rearranged."""
    sender: Sender = forwarder._sender
    assert isinstance(sender, Sender) and hasattr(sender, "_breaker"), "core rearranged"

    def send(
        name: str, body: bytes, request_id: str, kind: Any, deadline: float, **kw: Any
    ) -> Any:
        now = time.monotonic()
        entry = told[request_id] = Told(now + deadline - forwarder_now(), now)
        tapped = copy.copy(sender)
        tapped._breaker = _Tap(sender._breaker, entry)  # type: ignore[assignment]
        return Sender.send(tapped, name, body, request_id, kind, deadline, **kw)

    sender.send = send  # type: ignore[method-assign]


def forwarder_now() -> float:
    return float(reactor.seconds())  # type: ignore[attr-defined]


def real_size(root: object) -> int:
    """Bytes held by `root` and everything it reaches (shared singletons left out)."""
    seen: set[int] = set()
    stack = [root]
    total = 0
    while stack:
        obj = stack.pop()
        if obj is None or isinstance(obj, (bool, enum.Enum, type)) or id(obj) in seen:
            continue
        if isinstance(obj, int) and -5 <= obj <= 256:
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        if isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend(obj)
        elif attrs.has(type(obj)):
            stack.extend(getattr(obj, f.name) for f in attrs.fields(type(obj)))
        elif hasattr(obj, "__dict__"):
            stack.append(vars(obj))
    return total


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR or record.exc_info:
            self.records.append(record)


def block(async_fn: Callable[[], Any]) -> Any:
    """Runs `async_fn()` (a coroutine or a Deferred) on the reactor, from hypothesis's thread,
    and waits for its result. The machine runs outside the reactor (hypothesis's stateful
    runner is synchronous); everything that touches the forwarder happens on the reactor."""
    return threads.blockingCallFromThread(reactor, lambda: defer.ensureDeferred(async_fn()))


def on_reactor(fn: Callable[[], Any]) -> Any:
    """Runs the plain function `fn` on the reactor, from hypothesis's thread."""
    return threads.blockingCallFromThread(reactor, fn)


# ---- the machine ------------------------------------------------------------------------


class Adversary(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.phase: Phase = Good()
        self.phase_number = 0
        self.server = AdversaryServer(self._answer, give_up_after=SLOW_TIMEOUT + 3)
        self.watcher = Watcher()
        self.told: dict[str, Told] = {}
        self.heartbeat = Heartbeat()
        self.heartbeat.start()
        self.forwarder: Forwarder = on_reactor(self._make_forwarder)
        self.calls: list[Call] = []
        self.heads_checked = 0
        self.unchecked: list[Call] = []
        # callback -> when the server was shown (current evidence) to have no endpoint for it.
        self.no_endpoint_shown: dict[str, float] = {}
        self.records = Records()
        logging.getLogger().addHandler(self.records)
        self.twisted = TwistedErrors()
        globalLogPublisher.addObserver(self.twisted)
        self.closed = False

    def _make_forwarder(self) -> Forwarder:
        config = parse_config({"base_url": self.server.url(), **CONFIG})
        forwarder = Forwarder(config, observer=self.watcher)
        tap_breaker(forwarder, self.told)
        return forwarder

    def _answer(self, exchange: Exchange) -> Scripted:
        return self.phase(exchange)

    # ---- rules --------------------------------------------------------------------------

    @rule(phase=PHASES, calls=CALL_LISTS)
    def set_phase(self, phase: Phase, calls: list[tuple[str, int]]) -> None:
        """The server flips to another phase, and some calls meet it at once (otherwise a
        short run flips phases more often than it calls into them)."""
        self.phase = phase
        self.phase_number += 1
        self.burst(calls)

    @rule(name=st.sampled_from(NAMES), n=st.integers(0, 2))
    def call(self, name: str, n: int) -> None:
        block(lambda: self._call(name, n))

    @rule(calls=CALL_LISTS)
    def burst(self, calls: list[tuple[str, int]]) -> None:
        """Concurrent calls, more than the limiter lets through; identical ones coalesce."""
        block(lambda: defer.gatherResults([defer.ensureDeferred(self._call(*c)) for c in calls]))

    @rule(name=st.sampled_from(NAMES), n=st.integers(0, 2), delivered=st.booleans())
    def cancel_waiter(self, name: str, n: int, delivered: bool) -> None:
        """Two identical calls; Synapse gives up on the second, either while both wait or at
        the moment the first receives the shared answer."""

        def both() -> defer.Deferred[Any]:
            first = defer.ensureDeferred(self._call(name, n))
            second_call: list[Call] = []
            second = defer.ensureDeferred(self._call(name, n, record=second_call, may_cancel=True))

            def cancel(_: object) -> object:
                try:
                    second.cancel()
                except Exception as e:
                    second_call[0].error = f"cancelling it raised {type(e).__name__}: {e}"
                return _

            def settled(result: object) -> None:
                # A cancellation may also break the Deferred itself, outside the coroutine.
                if isinstance(result, TwistedFailure) and not result.check(CancelledError):
                    call = second_call[0]
                    call.error = f"cancelling it broke it: {result.getErrorMessage()!r}"
                    if call not in self.unchecked:
                        call.end = time.monotonic()
                        self.unchecked.append(call)

            if delivered:
                first.addBoth(cancel)
            else:
                reactor.callLater(0.05, cancel, None)  # type: ignore[attr-defined]
            return defer.gatherResults([first, second.addBoth(settled)])

        block(both)

    @rule()
    def ping(self) -> None:
        async def go() -> None:
            start = time.monotonic()
            await self.forwarder.ping_once()
            seconds = time.monotonic() - start
            self.check("deadline", seconds <= TIMEOUT + MARGIN, f"ping took {seconds:.2f}s")

        block(go)

    @rule(seconds=st.sampled_from([0.2, 1.0]))
    def wait(self, seconds: float) -> None:
        """Real time passes: stored answers expire, the breaker probes."""
        block(lambda: sleep(seconds))

    async def _call(
        self, name: str, n: int, *, record: list[Call] | None = None, may_cancel: bool = False
    ) -> None:
        kind, _ = KINDS[name]
        call = Call(
            name,
            time.monotonic(),
            self.phase,
            self.phase_number,
            self.forwarder.breaker.is_open,
            may_cancel=may_cancel,
        )
        if record is not None:
            record.append(call)
        self.calls.append(call)
        try:
            call.verdict = await self.forwarder.check(name, kind, payload(name, n))
            call.how = self.watcher.how.get(id(call.verdict))
        except CancelledError:
            call.cancelled = True
        except Exception as e:
            call.error = f"{type(e).__name__}: {e}"
        call.end = time.monotonic()
        self.unchecked.append(call)

    # ---- invariants ---------------------------------------------------------------------

    def check(self, name: str, holds: bool, detail: str) -> None:
        if not holds and name not in IGNORED:
            raise AssertionError(f"[{name}] {detail}")

    @invariant()
    def after_each_step(self) -> None:
        on_reactor(self._invariants)

    def _invariants(self) -> None:
        self.requests_unchanged()
        self.calls_judged()
        self.breaker_moved_by_faults()
        self.store_within_budget()
        self.logs_quiet()

    def requests_unchanged(self) -> None:
        with self.server._lock:
            new = self.server.exchanges[self.heads_checked :]
            self.heads_checked += len(new)
        big = [(e.path, e.head_size) for e in new if e.head_size > MAX_REQUEST_HEAD]
        self.check(
            "requests",
            not big,
            f"request heads grew past {MAX_REQUEST_HEAD} bytes (the module sends back "
            f"what answers set?): {big[:3]}",
        )

    def calls_judged(self) -> None:
        calls, self.unchecked = self.unchecked, []
        for call in calls:
            self.judge(call)

    def breaker_moved_by_faults(self) -> None:
        for request_id, told in list(self.told.items()):
            faults = [s for s in told.said if s != "reachable"]
            if not faults:
                continue
            exchanges = self.server.by_id(request_id)
            last = exchanges[-1] if exchanges else None
            if self.heartbeat.late(told.start, told.deadline):
                continue  # the reactor itself was late: nothing to judge the module by
            if last is not None and last.answer is not None and last.answer.clean:
                in_time = last.all_sent is not None and last.all_sent <= told.deadline - IN_TIME
                self.check(
                    "breaker",
                    not in_time,
                    f"{request_id} counted {faults} against the server for a complete answer "
                    f"{last.answer.label!r} sent {told.deadline - (last.all_sent or 0):.2f}s "
                    "before its deadline",
                )

    @invariant()
    def sockets_bounded(self) -> None:
        bound = MAX_CONCURRENCY + PROBES
        if self.server.live > bound:
            block(lambda: self._settle(lambda: self.server.live <= bound))
        self.check(
            "sockets",
            self.server.live <= bound,
            f"{self.server.live} connections open, the pool's bound is {bound}",
        )

    def store_within_budget(self) -> None:
        store = self.forwarder.reuse.store
        entries = getattr(store, "_entries", None)
        assert entries is not None, "core rearranged: Store._entries"
        size = real_size(entries)
        self.check(
            "store-memory",
            size <= REUSE_MAX_BYTES,
            f"the reuse store holds {size} bytes in {len(entries)} entries (counted "
            f"{store.bytes}); reuse_max_bytes is {REUSE_MAX_BYTES}",
        )

    def logs_quiet(self) -> None:
        gc.collect(1)  # an unhandled error in a dropped Deferred is logged when collected
        errors = [
            f"{r.levelname} {r.getMessage()}"
            + (f" ({r.exc_info[0].__name__})" if r.exc_info and r.exc_info[0] else "")
            for r in self.records.records
            if "does not reach an antispam server" not in r.getMessage()
        ]
        self.records.records.clear()
        twisted = [str(e.get("log_failure") or e.get("log_format")) for e in self.twisted.events]
        self.twisted.events.clear()
        self.check("logs", not errors and not twisted, f"logged: {errors + twisted}")

    async def _settle(self, condition: Callable[[], bool]) -> None:
        end = time.monotonic() + SETTLE
        while not condition() and time.monotonic() < end:
            await sleep(0.05)

    # ---- judging one call ---------------------------------------------------------------

    def judge(self, call: Call) -> None:
        where = f"{call.name} in phase {call.phase!r}: {call.verdict} ({call.how})"
        seconds = call.end - call.start
        self.check(
            "deadline",
            seconds <= timeout_for(call.name) + MARGIN,
            f"{call.name} took {seconds:.2f}s",
        )
        self.check("escape", call.error is None, f"{call.name}: {call.error}")
        if call.cancelled:
            self.check("escape", call.may_cancel, f"{call.name} cancelled, nobody cancelled it")
        verdict = call.verdict
        if verdict is None:
            return
        exchanges = self.server.by_id(verdict.request_id)
        if (
            verdict.outcome is Outcome.NOT_IMPLEMENTED
            and exchanges
            and self.current_evidence(call)
        ):
            self.no_endpoint_shown[call.name] = call.end  # the server's own word: remembered
        self.judge_fail_closed(call, verdict, exchanges, where)
        self.judge_consistent(call, verdict, exchanges, where)
        self.judge_asked_again(call, verdict, exchanges, where)
        self.judge_ended(call, verdict, exchanges, where)
        self.judge_reused(call, verdict, exchanges, where)

    def current_evidence(self, call: Call) -> bool:
        """Whether the antispam server itself answered a ping while the call ran (a 2xx, or
        an error of its own with an errcode): only that makes a 404 "no such endpoint"."""
        start = call.start - (0.05 if call.how is None else timeout_for(call.name))
        return any(
            e.answer is not None
            and e.head_sent is not None
            and e.head_sent <= call.end + 0.05
            and (
                (e.answer.status is not None and 200 <= e.answer.status < 300) or e.answer.errcode
            )
            for e in self.server.between("ping", start, call.end + 0.05)
        )

    def judge_fail_closed(
        self, call: Call, verdict: Verdict, exchanges: list[Exchange], where: str
    ) -> None:
        _, fails_closed = KINDS[call.name]
        if not fails_closed:
            self.check(
                "fail-closed",
                verdict.outcome is not Outcome.FAILED_CLOSED,
                f"a fail-open callback failed closed: {where}",
            )
            return
        if not verdict.allowed:
            return
        if verdict.outcome is Outcome.ALLOWED:
            flight = TIMEOUT if call.name != SLOW else SLOW_TIMEOUT
            earliest = {
                None: call.start - 0.05,
                "coalesced": call.start - flight - MARGIN,
            }.get(call.how, float("-inf"))
            said_yes = [
                e
                for e in exchanges
                if e.answer is not None
                and e.answer.status is not None
                and 200 <= e.answer.status < 300
                and e.head_sent is not None
                and e.head_sent <= call.end + 0.05
                and e.received >= earliest
                and (call.how != STORED or call.start <= e.received + e.answer.max_age + 0.5)
            ]
            self.check(
                "fail-closed",
                bool(said_yes),
                f"allowed without the server's 2xx for it: {where}; the server got "
                f"{[(e.path, e.answer.label if e.answer else None) for e in exchanges]}",
            )
            return
        if verdict.outcome is Outcome.NOT_IMPLEMENTED:
            if exchanges:
                self.check(
                    "fail-closed",
                    self.current_evidence(call),
                    f"'no such endpoint' allowed without current evidence that the antispam "
                    f"server is there (no ping answered during the call): {where}; the "
                    f"callback got {[e.answer.label for e in exchanges if e.answer]}",
                )
                return
            shown = self.no_endpoint_shown.get(call.name)
            self.check(
                "fail-closed",
                shown is not None and call.start - shown <= RECHECK,
                f"skipped from memory without the server ever shown to lack it: {where}",
            )
            return
        self.check("fail-closed", False, f"a fail-closed callback was let through: {where}")

    def judge_consistent(
        self, call: Call, verdict: Verdict, exchanges: list[Exchange], where: str
    ) -> None:
        if not exchanges or call.how is not None:
            return
        last = exchanges[-1]
        told = self.told.get(verdict.request_id or "")
        if last.answer is None or not last.answer.clean or told is None:
            return
        if last.all_sent is None or last.all_sent > told.deadline - IN_TIME:
            return
        if self.heartbeat.late(told.start, told.deadline):
            return  # the reactor itself was late: nothing to judge the module by
        status = last.answer.status or 0
        problem = ""
        if verdict.failure in TRANSPORT:
            problem = "a transport failure"
        elif verdict.outcome is Outcome.ALLOWED and not 200 <= status < 300:
            problem = "allowed"
        elif verdict.outcome is Outcome.REJECTED and not 400 <= status < 500:
            problem = "rejected"
        self.check(
            "consistent",
            not problem,
            f"{problem} for a complete answer {last.answer.label!r}: {where}",
        )

    def judge_asked_again(
        self, call: Call, verdict: Verdict, exchanges: list[Exchange], where: str
    ) -> None:
        if not call.phase.good or call.how is not None or call.breaker_open:
            return
        if call.phase_number != self.phase_number:
            return  # the phase changed meanwhile
        shown = self.no_endpoint_shown.get(call.name)
        if verdict.outcome is Outcome.NOT_IMPLEMENTED and shown is not None:
            return  # the server's own word, within RECHECK
        self.check(
            "asked-again",
            bool(exchanges),
            f"the server is good again but never saw this call: {where}",
        )

    def judge_ended(
        self, call: Call, verdict: Verdict, exchanges: list[Exchange], where: str
    ) -> None:
        """An answer is one once it has ended: a 2xx whose body still arrives at the deadline
        is a timeout, not an allow (a body over the cap ends where the module cuts it). A 204
        or 304 ends with its head (RFC 9110: it has no body, whatever its Content-Length
        says; bytes after the head are not its body)."""
        if verdict.outcome is not Outcome.ALLOWED or call.how is not None:
            return
        ended = [
            e
            for e in exchanges
            if e.answer is not None
            and (
                (e.answer.status in NO_BODY and e.head_sent is not None)
                or (
                    e.answer.ends
                    and (
                        e.answer.capped
                        or (e.all_sent is not None and e.all_sent <= call.end + 0.05)
                    )
                )
            )
        ]
        self.check(
            "ended",
            bool(ended),
            f"allowed before the 2xx answer ended: {where}; the server got "
            f"{[e.answer.label for e in exchanges if e.answer]}",
        )

    def judge_reused(
        self, call: Call, verdict: Verdict, exchanges: list[Exchange], where: str
    ) -> None:
        """A stored answer is the server's own word only until its max-age ends, and only an
        allow or a rejection is ever stored (never a failure)."""
        if call.how != STORED:
            return
        fresh = [
            e for e in exchanges if e.answer and call.start <= e.received + e.answer.max_age + 0.5
        ]
        self.check(
            "reuse",
            bool(fresh) and verdict.outcome in (Outcome.ALLOWED, Outcome.REJECTED),
            f"reused without the server's max-age for it: {where}; the server got "
            f"{[(e.answer.label, e.answer.max_age) for e in exchanges if e.answer]}",
        )

    def teardown(self) -> None:
        try:
            if not self.closed:
                self.closed = True
                block(self.forwarder.close)
                block(lambda: self._settle(lambda: self.server.live == 0))
                self.check(
                    "sockets",
                    self.server.live == 0,
                    f"{self.server.live} connections still open after close()",
                )
        finally:
            self.heartbeat.stop()
            logging.getLogger().removeHandler(self.records)
            globalLogPublisher.removeObserver(self.twisted)
            self.server.close()


@pytest.fixture
def quiet_logs() -> Iterator[None]:
    """The module logs warnings for every phase it notices; they are not the point here."""
    logger = logging.getLogger("synapse_http_antispam")
    level = logger.level
    logger.setLevel(logging.ERROR)
    yield
    logger.setLevel(level)


# A long exploration runs past pytest's usual 300 s limit (pyproject.toml).
@pytest.mark.timeout(0 if EXPLORE else 300)
@pytest_twisted.ensureDeferred
async def test_adversary(quiet_logs: None) -> None:
    # Hypothesis runs the machine in a thread of its own; each step runs on the reactor.
    await threads.deferToThread(
        run_state_machine_as_test,
        Adversary,
        settings=settings(
            max_examples=int(EXPLORE) if EXPLORE else 12,
            stateful_step_count=STEPS,
            deadline=None,
            database=None,
            derandomize=not EXPLORE,
            suppress_health_check=list(HealthCheck),
            # Shrinking replays steps against real time: minutes, and a failure that depends
            # on timing may not come back. The default run reports the steps as they came.
            phases=[Stage.explicit, Stage.reuse, Stage.generate]
            + ([Stage.shrink] if EXPLORE else []),
            print_blob=True,
        ),
    )
