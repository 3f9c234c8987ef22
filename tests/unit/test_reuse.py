"""Identical calls share one answer: Cache-Control parsing, the store, coalescing on a fake
clock, then both mechanisms in the forwarder against a real local HTTP server."""

from __future__ import annotations

import gc
import json
import logging
import string
import sys
import tracemalloc
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st

from twisted.internet import defer, task
from twisted.internet.defer import CancelledError, Deferred

from synapse_http_antispam.catalogue import Kind
from synapse_http_antispam.config import parse_config
from synapse_http_antispam.forwarder import Forwarder
from synapse_http_antispam.reuse import (
    COALESCED,
    STORED,
    Reuse,
    Shared,
    Store,
    max_age,
    size_of,
)
from synapse_http_antispam.verdict import (
    ALLOW,
    NOT_IMPLEMENTED,
    Failure,
    Outcome,
    Verdict,
    failed,
    rejection,
)
from tests.support.antispam_server import AntispamServer, Behaviour, allow, reject
from tests.support.recorder import Recorder
from tests.support.waiting import sleep, until

CAP = 300.0

# ---- Cache-Control: untrusted input ------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("", 0),
        ("max-age=60", 60),
        ("MAX-AGE=60", 60),
        ("  private ,  max-age = 60 ", 60),
        ('max-age="60"', 60),
        ('max-age="6\\0"', 60),  # a quoted-pair stands for the character it quotes
        ("max-age=0", 0),
        ("max-age=007", 7),
        ("max-age=" + "0" * 20 + "60", 60),  # leading zeros never make a number huge
        ("public, max-age=60, must-revalidate", 60),
        ("max-age=60, no-store", 0),
        ("no-cache, max-age=60", 0),
        ('no-cache="set-cookie", max-age=60', 0),
        ("No-Store", 0),
        ("max-age=60, max-age=60", 0),  # duplicates: treat as stale (RFC 9111, 4.2.1)
        ("max-age=60, max-age=30", 0),
        ("max-age", 0),
        ("max-age=", 0),
        ("max-age=-5", 0),
        ("max-age=1.5", 0),
        ("max-age=1e3", 0),
        ("max-age=٣", 0),  # a digit, but not an ASCII one
        ("max-age=60 garbage", 0),
        ("max-age=60;", 0),
        ('max-age="60', 0),
        ("s-maxage=60", 0),
        (",,max-age=60,,", 60),
        ("max-age=31536000", CAP),  # a year: capped
        ("max-age=" + "9" * 400, CAP),  # huge: capped, never a huge int
    ],
)
def test_max_age(header: str, seconds: float) -> None:
    assert max_age(header, CAP) == seconds


@given(st.text())
def test_max_age_never_fails_on_any_text(header: str) -> None:
    assert 0 <= max_age(header, CAP) <= CAP


TOKEN = st.text(alphabet=string.ascii_letters + string.digits + "-", min_size=1, max_size=8)
OTHER = st.sampled_from(["private", "public", "must-revalidate", "immutable", "x-foo=bar"])
SPACE = st.text(alphabet=" \t", max_size=3)


def _case(draw: Any, word: str) -> str:
    flips = draw(st.lists(st.booleans(), min_size=len(word), max_size=len(word)))
    return "".join(c.upper() if f else c for c, f in zip(word, flips))


@st.composite
def headers(draw: Any, *, forbid: bool) -> tuple[str, int]:
    seconds = draw(st.integers(min_value=0, max_value=10**30))
    value = str(seconds)
    if draw(st.booleans()):
        value = f'"{value}"'
    parts = [f"{_case(draw, 'max-age')}{draw(SPACE)}={draw(SPACE)}{value}"]
    parts += draw(st.lists(OTHER, max_size=3))
    if forbid:
        parts.append(_case(draw, draw(st.sampled_from(["no-store", "no-cache"]))))
    parts = draw(st.permutations(parts))
    joined = ",".join(f"{draw(SPACE)}{p}{draw(SPACE)}" for p in parts)
    return joined, seconds


@given(headers(forbid=False))
def test_max_age_is_read_in_any_case_spacing_order_and_quoting(case: tuple[str, int]) -> None:
    header, seconds = case
    assert max_age(header, CAP) == min(seconds, CAP)


@given(headers(forbid=True))
def test_no_store_or_no_cache_anywhere_means_no_reuse(case: tuple[str, int]) -> None:
    assert max_age(case[0], CAP) == 0


@given(headers(forbid=False), st.text(max_size=20))
def test_garbage_appended_never_lengthens_reuse(case: tuple[str, int], junk: str) -> None:
    assert max_age(case[0] + junk, CAP) in (0, min(case[1], CAP))


# ---- the store ------------------------------------------------------------------------------


def shared(verdict: Verdict = ALLOW, seconds: float = 60, rid: str = "r-1") -> Shared:
    return Shared(verdict, 200 if verdict.outcome is Outcome.ALLOWED else 403, rid, seconds)


def test_store_expires_entries() -> None:
    store = Store(10, 1 << 20)
    assert store.put(b"k", shared(), expires=10, now=0)
    assert store.get(b"k", 9.99) is not None
    assert store.get(b"k", 10) is None
    assert len(store) == 0 and store.bytes == 0


def test_store_drops_the_least_recently_used_first() -> None:
    store = Store(3, 1 << 20)
    for key in (b"a", b"b", b"c"):
        store.put(key, shared(), 100, 0)
    assert store.get(b"a", 1) is not None  # a is now the most recently used
    store.put(b"d", shared(), 100, 1)
    assert [k for k in (b"a", b"b", b"c", b"d") if store.get(k, 2)] == [b"a", b"c", b"d"]


def test_store_is_bounded_in_bytes_whatever_the_server_sends() -> None:
    big = rejection({"errcode": "M_FORBIDDEN", "error": "no", "blob": "x" * 20_000})
    store = Store(10_000, 64 * 1024)
    for i in range(100):
        store.put(str(i).encode(), shared(big), 100, 0)
        assert store.bytes <= 64 * 1024
    assert 1 <= len(store) <= 3
    assert store.bytes == sum(size_of(shared(big)) for _ in range(len(store)))
    assert not store.put(b"huge", shared(rejection({"blob": "x" * 70_000})), 100, 0)


def test_store_drops_expired_entries_before_live_ones() -> None:
    store = Store(2, 1 << 20)
    store.put(b"old", shared(), 5, 0)
    store.put(b"live", shared(), 100, 0)
    store.put(b"new", shared(), 100, 6)  # full: the expired one goes, not the live one
    assert store.get(b"live", 7) is not None and store.get(b"new", 7) is not None


def test_an_entry_is_counted_for_its_overhead_and_every_object_it_holds() -> None:
    """The byte budget is what keeps a hostile server from growing Synapse's memory: every
    part an entry holds counts, as the memory Python holds for it."""
    verdict = Verdict(Outcome.REJECTED, "M_X", "msg", {"a": 1}, detail="dd")
    texts = sum(sys.getsizeof(t) for t in ("M_X", "msg", "dd", "rid"))
    fields = sys.getsizeof({"a": 1}) + sys.getsizeof("a") + sys.getsizeof(1)
    assert size_of(Shared(verdict, 403, "rid", 60)) == 512 + fields + texts
    empty = sys.getsizeof("")
    allow = 512 + sys.getsizeof(ALLOW.errcode) + 2 * empty + sys.getsizeof("r")
    assert size_of(Shared(ALLOW, 200, "r", 60)) == allow


def test_the_byte_budget_bounds_real_memory_whatever_the_json_shape() -> None:
    """A rejection made of nested empty arrays is ~20 times bigger as Python objects than as
    JSON text: counting the text let 300 of them grow Synapse by 145 MiB under an 8 MiB budget.
    Measured with tracemalloc, the store holds no more than its budget (and no less than
    half of it: the count is not wildly pessimistic either)."""
    budget = 1024 * 1024
    store = Store(10_000, budget)
    pad = ",".join(["[" * 50 + "]" * 50] * 30)
    text = f'{{"errcode":"M_FORBIDDEN","pad":[{pad}]}}'
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(300):
            shared = Shared(rejection(json.loads(text)), 403, f"r-{i}", 60)
            store.put(b"%d" % i, shared, 100, 0)
        del shared
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert store.bytes <= budget
    assert held <= budget, f"{held} bytes held for a {budget}-byte budget"
    assert held >= budget / 2


def test_each_sharer_gets_its_own_copy_with_its_own_wait() -> None:
    """A coalesced or stored answer is logged with the time this caller waited (0 ms for a
    stored one), the request the server saw, and a dict of its own (Synapse may change it)."""
    one = Shared(rejection({"errcode": "M_X", "error": "no", "k": 1}), 403, "rid-9", 60)
    mine, yours = one.verdict_for(1.25), one.verdict_for(0.0)
    assert (mine.seconds, yours.seconds) == (1.25, 0.0)
    assert (mine.request_id, mine.http_status) == ("rid-9", 403)
    assert mine.fields == {"k": 1} and mine.fields is not yours.fields
    assert mine.fields is not one.verdict.fields


def test_store_limits_are_inclusive() -> None:
    entry = shared()
    size = size_of(entry)
    exact = Store(1, size)  # one entry, exactly its size: it fits
    assert exact.put(b"k", entry, expires=1, now=0)
    assert exact.get(b"k", 0.5) is not None
    two = Store(2, 2 * size)  # two entries fill the budget exactly: neither goes
    two.put(b"a", entry, 100, 0)
    two.put(b"b", entry, 100, 0)
    assert len(two) == 2 and two.bytes == 2 * size
    assert not Store(1, size - 1).put(b"k", entry, 100, 0)
    assert not Store(0, 1 << 20).put(b"k", entry, 100, 0)
    # An answer already expired when it would be stored is not stored.
    assert not Store(10, 1 << 20).put(b"k", entry, expires=5, now=5)


def test_a_cleared_store_counts_from_nothing() -> None:
    store = Store(10, 1 << 20)
    store.put(b"a", shared(), 100, 0)
    store.clear()
    assert len(store) == 0 and store.bytes == 0 and store.get(b"a", 1) is None
    store.put(b"b", shared(), 100, 1)
    assert store.bytes == size_of(shared())


def test_storing_a_key_again_replaces_it_and_counts_it_once() -> None:
    store = Store(10, 1 << 20)
    store.put(b"k", shared(rid="first"), 100, 0)
    store.put(b"k", shared(rid="again"), 100, 1)
    entry = store.get(b"k", 2)
    assert entry is not None and entry.shared.request_id == "again"
    assert len(store) == 1 and store.bytes == size_of(shared(rid="again"))


def test_an_entry_expiring_now_goes_when_the_next_answer_is_stored() -> None:
    store = Store(10, 1 << 20)
    store.put(b"old", shared(), 5, 0)
    store.put(b"live", shared(), 100, 0)
    store.put(b"new", shared(), 100, 5)  # not full, but "old" expires at t=5: it goes now
    assert len(store) == 2 and store.bytes == 2 * size_of(shared())


# ---- coalescing and the store, on a fake clock -----------------------------------------------


def configured(clock: Any, log: str = "synapse_http_antispam.reuse", **config: Any) -> Reuse:
    """The Reuse a Forwarder gets from this config: its defaults where a key is left out."""
    raw = {"base_url": "http://127.0.0.1:1", **config}
    return Reuse.configured(clock, parse_config(raw), logging.getLogger(log))


class Calls:
    """A call whose answer the test gives: `pending[i].callback(shared)`."""

    def __init__(self) -> None:
        self.pending: list[Deferred[Shared]] = []
        self.cancelled = 0

    def __call__(self) -> Deferred[Shared]:
        def cancel(_: Deferred[Shared]) -> None:
            self.cancelled += 1

        d: Deferred[Shared] = Deferred(cancel)
        self.pending.append(d)
        return d

    async def call(self) -> Shared:
        return await self()


def ask(reuse: Reuse, calls: Calls, body: bytes = b"{}", **kw: Any) -> Deferred[Any]:
    return defer.ensureDeferred(reuse.answer("user_may_invite", body, calls.call, **kw))


def test_identical_calls_in_flight_share_one_call() -> None:
    clock, calls = task.Clock(), Calls()
    reuse = configured(clock)
    first, second, other = ask(reuse, calls), ask(reuse, calls), ask(reuse, calls, b'{"x":1}')
    assert len(calls.pending) == 2  # the identical two share one, the other body has its own
    answer = shared(seconds=0)
    calls.pending[0].callback(answer)
    assert first.result == (answer, None)
    assert second.result == (answer, COALESCED)
    assert not other.called
    assert reuse.in_flight == 1
    # Over, and not storable (no max-age): the next identical call is a new call.
    ask(reuse, calls)
    assert len(calls.pending) == 3


def test_a_fault_in_storing_never_keeps_the_answer_from_its_callers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Storing is a saving, not a step of the decision: if it breaks (a bug), every caller
    still gets the answer, and the fault is logged, instead of the check waiting forever."""
    clock, calls = task.Clock(), Calls()
    reuse = configured(clock)

    def broken(*_: Any) -> bool:
        raise RuntimeError("store bug")

    reuse.store.put = broken  # type: ignore[method-assign]
    first, second = ask(reuse, calls), ask(reuse, calls)
    answer = shared(seconds=60)
    calls.pending[0].callback(answer)
    assert first.result == (answer, None) and second.result == (answer, COALESCED)
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert record.getMessage() == "Antispam answer could not be stored for reuse"
    assert record.exc_info is not None


def test_one_waiter_giving_up_does_not_cancel_the_call_for_the_others() -> None:
    clock, calls = task.Clock(), Calls()
    reuse = configured(clock)
    first, second, third = ask(reuse, calls), ask(reuse, calls), ask(reuse, calls)
    first.cancel()
    second.cancel()
    assert calls.cancelled == 0
    calls.pending[0].callback(shared(seconds=0))
    assert third.result[1] is COALESCED
    for d in (first, second):
        assert isinstance(d.result.value, CancelledError)
        d.addErrback(lambda _: None)


def test_a_waiter_cancelled_during_the_handout_leaves_the_next_ones_answered() -> None:
    """Handing the answer to one caller may run code that cancels another's check (Synapse
    giving up on a request): the callers after that one still get the answer, not a hang."""
    clock, calls = task.Clock(), Calls()
    reuse = configured(clock)
    first, second, third = ask(reuse, calls), ask(reuse, calls), ask(reuse, calls)
    first.addCallback(lambda r: (second.cancel(), r)[1])
    second.addErrback(lambda f: f.trap(CancelledError))
    answer = shared(seconds=0)
    calls.pending[0].callback(answer)
    assert first.result == (answer, None)
    assert third.result == (answer, COALESCED)


def test_the_call_is_cancelled_when_every_waiter_has_gone() -> None:
    clock, calls = task.Clock(), Calls()
    reuse = configured(clock)
    waiters = [ask(reuse, calls) for _ in range(3)]
    for d in waiters:
        d.cancel()
        d.addErrback(lambda _: None)
    assert calls.cancelled == 1 and reuse.in_flight == 0
    ask(reuse, calls)  # a later identical call is sent afresh
    assert len(calls.pending) == 2


def test_an_error_reaches_every_waiter() -> None:
    clock, calls = task.Clock(), Calls()
    reuse = configured(clock)
    waiters = [ask(reuse, calls) for _ in range(3)]
    calls.pending[0].errback(ValueError("inside the module"))
    for d in waiters:
        assert d.result.check(ValueError)
        d.addErrback(lambda _: None)


def test_stored_answers_are_reused_until_max_age_counted_from_sending() -> None:
    clock, calls = task.Clock(), Calls()
    reuse = configured(clock)
    first = ask(reuse, calls)
    clock.advance(2)  # the server takes 2 s: they count against its max-age
    calls.pending[0].callback(shared(seconds=10))
    assert first.result[1] is None
    clock.advance(7.9)
    assert ask(reuse, calls).result[1] is STORED
    assert len(calls.pending) == 1
    clock.advance(0.1)  # 10 s after the call was sent
    ask(reuse, calls)
    assert len(calls.pending) == 2


def test_max_age_is_capped_by_config() -> None:
    clock, calls = task.Clock(), Calls()
    reuse = configured(clock, reuse_max_seconds=5)
    ask(reuse, calls)
    calls.pending[0].callback(shared(seconds=31_536_000))
    clock.advance(4.9)
    assert ask(reuse, calls).result[1] is STORED
    clock.advance(0.1)
    ask(reuse, calls)
    assert len(calls.pending) == 2


@pytest.mark.parametrize(
    "verdict",
    [
        failed(Failure.TIMEOUT, True),
        failed(Failure.BREAKER_OPEN, False),
        failed(Failure.HTTP_STATUS, True),
        NOT_IMPLEMENTED,
    ],
    ids=["timeout", "breaker", "5xx", "not-implemented"],
)
def test_failures_and_not_implemented_are_never_stored(verdict: Verdict) -> None:
    clock, calls = task.Clock(), Calls()
    reuse = configured(clock)
    ask(reuse, calls)
    calls.pending[0].callback(shared(verdict, seconds=60))
    ask(reuse, calls)
    assert len(calls.pending) == 2 and len(reuse.store) == 0


def test_rejections_are_stored() -> None:
    clock, calls = task.Clock(), Calls()
    reuse = configured(clock)
    ask(reuse, calls)
    calls.pending[0].callback(shared(rejection({"errcode": "M_FORBIDDEN"}), seconds=60))
    result, how = ask(reuse, calls).result
    assert how is STORED and result.verdict.outcome is Outcome.REJECTED


@pytest.mark.parametrize("off", ["config", "call"])
def test_store_off_still_coalesces(off: str) -> None:
    clock, calls = task.Clock(), Calls()
    reuse = configured(clock, reuse_answers=off != "config")
    kw = {"store": False} if off == "call" else {}
    assert reuse.max_age("max-age=60") == (0 if off == "config" else 60)
    first, second = ask(reuse, calls, **kw), ask(reuse, calls, **kw)
    calls.pending[0].callback(shared(seconds=60))
    assert second.result[1] is COALESCED and first.called
    ask(reuse, calls, **kw)
    assert len(calls.pending) == 2


# ---- the forwarder against a real server -------------------------------------------------------


@pytest_twisted.async_yield_fixture
async def observed(server: AntispamServer) -> AsyncIterator[tuple[Forwarder, Recorder]]:
    observer = Recorder()
    f = Forwarder(parse_config({"base_url": server.base_url, "timeout": 2}), observer=observer)
    yield f, observer
    await f.close()


USERNAME = "check_username_for_spam"


async def username(f: Forwarder, user: str = "@u:x") -> Verdict:
    payload = {"user_profile": {"user_id": user, "display_name": "U"}, "requester_id": "@s:x"}
    return await f.check(USERNAME, Kind.FLAG, payload)


@pytest_twisted.ensureDeferred
async def test_concurrent_identical_checks_send_one_request(
    server: AntispamServer, observed: tuple[Forwarder, Recorder]
) -> None:
    f, observer = observed
    server.set(None, Behaviour(status=200, delay=0.3))
    verdicts = await defer.gatherResults([defer.ensureDeferred(username(f)) for _ in range(10)])
    assert len(server.requests) == 1
    assert all(v.outcome is Outcome.ALLOWED for v in verdicts)
    # Each its own copy, naming the one request the server saw.
    assert {v.request_id for v in verdicts} == {server.requests[0].headers["x-request-id"]}
    assert observer.reuses == [(USERNAME, COALESCED)] * 9
    assert [v.outcome.value for _, v in observer.decisions] == ["allowed"] * 10


@pytest_twisted.ensureDeferred
async def test_cancelling_one_coalesced_check_leaves_the_others(
    server: AntispamServer, observed: tuple[Forwarder, Recorder]
) -> None:
    f, _ = observed
    server.set(None, Behaviour(status=200, delay=0.3))
    first = defer.ensureDeferred(username(f))
    await until(lambda: len(server.requests) == 1)
    second = defer.ensureDeferred(username(f))
    first.cancel()
    first.addErrback(lambda _: None)
    assert (await second).outcome is Outcome.ALLOWED
    assert len(server.requests) == 1


@pytest_twisted.ensureDeferred
async def test_max_age_answers_identical_checks_from_the_store(
    server: AntispamServer, observed: tuple[Forwarder, Recorder]
) -> None:
    f, observer = observed
    server.set(USERNAME, Behaviour(status=200, headers={"Cache-Control": "private, max-age=1"}))
    first = await username(f)
    again = await username(f)
    other = await username(f, "@other:x")
    assert len(server.requests) == 2  # `again` was answered from the store
    assert again.outcome is Outcome.ALLOWED and again.request_id == first.request_id
    assert other.request_id != first.request_id
    assert observer.reuses == [(USERNAME, STORED)]
    # Answered from the store is still a decision.
    assert [v.outcome.value for _, v in observer.decisions] == ["allowed"] * 3
    await sleep(1.1)
    await username(f)
    assert len(server.requests) == 3  # expired


@pytest_twisted.ensureDeferred
async def test_rejections_with_max_age_are_reused_with_their_fields(
    server: AntispamServer, observed: tuple[Forwarder, Recorder]
) -> None:
    f, _ = observed
    denial = reject("ORG_X", "Go away", policy="spam")
    denial.headers = {"Cache-Control": "max-age=60"}
    server.set(None, denial)
    first, again = await username(f), await username(f)
    assert len(server.requests) == 1
    assert again.outcome is Outcome.REJECTED
    assert (again.errcode, again.message, again.fields) == ("ORG_X", "Go away", {"policy": "spam"})
    assert first.fields == again.fields and first.fields is not again.fields


@pytest.mark.parametrize(
    "behaviour",
    [
        allow(),  # no Cache-Control: Meowlnir and Draupnir
        Behaviour(status=200, headers={"Cache-Control": "no-store, max-age=60"}),
        Behaviour(status=200, headers={"Cache-Control": "max-age=0"}),
        Behaviour(status=500, headers={"Cache-Control": "max-age=60"}),
        Behaviour(status=401, body={"errcode": "M_X"}, headers={"Cache-Control": "max-age=60"}),
        Behaviour(status=404, body=b"nope", headers={"Cache-Control": "max-age=60"}),
    ],
    ids=["absent", "no-store", "zero", "5xx", "401", "no-endpoint"],
)
@pytest_twisted.ensureDeferred
async def test_answers_not_marked_reusable_or_failing_are_asked_every_time(
    server: AntispamServer, observed: tuple[Forwarder, Recorder], behaviour: Behaviour
) -> None:
    f, _ = observed
    server.set(USERNAME, behaviour)
    for _ in range(3):
        await username(f)
        f.endpoints.answered(USERNAME)  # forget a "no such endpoint", to ask again
    assert len(server.requests_for(USERNAME)) == 3


@pytest_twisted.ensureDeferred
async def test_reuse_answers_false_turns_the_store_off(server: AntispamServer) -> None:
    server.set(None, Behaviour(status=200, headers={"Cache-Control": "max-age=60"}))
    f = Forwarder(parse_config({"base_url": server.base_url, "reuse_answers": False}))
    try:
        for _ in range(3):
            await username(f)
        assert len(server.requests) == 3
    finally:
        await f.close()


@pytest_twisted.ensureDeferred
async def test_background_checks_are_not_stored(
    server: AntispamServer, observed: tuple[Forwarder, Recorder]
) -> None:
    f, _ = observed
    server.set(None, Behaviour(status=200, headers={"Cache-Control": "max-age=60"}))
    for _ in range(3):
        f.background(USERNAME, Kind.FLAG, {"user_profile": {"user_id": "@u:x"}})
        await until(lambda: f.background_running == 0)
    assert len(server.requests) == 3


@pytest_twisted.ensureDeferred
async def test_a_background_answer_is_not_there_for_a_foreground_check(
    server: AntispamServer, observed: tuple[Forwarder, Recorder]
) -> None:
    """The server allowed its answer to a background check to be reused: a later identical
    check that Synapse waits for still asks the server."""
    f, _ = observed
    server.set(None, Behaviour(status=200, headers={"Cache-Control": "max-age=60"}))
    f.background(USERNAME, Kind.FLAG, {"user_profile": {"user_id": "@u:x"}})
    await until(lambda: f.background_running == 0)
    await f.check(USERNAME, Kind.FLAG, {"user_profile": {"user_id": "@u:x"}})
    assert len(server.requests) == 2


@pytest_twisted.ensureDeferred
async def test_background_answers_do_not_push_stored_ones_out(server: AntispamServer) -> None:
    """A store with room for one answer: background checks of other users leave the stored
    answer where it is, so the identical check after them is answered from the store."""
    server.set(None, Behaviour(status=200, headers={"Cache-Control": "max-age=60"}))
    f = Forwarder(parse_config({"base_url": server.base_url, "reuse_max_entries": 1}))
    try:
        await username(f, "@a:x")
        for user in ("@b:x", "@c:x"):
            f.background(USERNAME, Kind.FLAG, {"user_profile": {"user_id": user}})
            await until(lambda: f.background_running == 0)
        assert (await username(f, "@a:x")).outcome is Outcome.ALLOWED
        assert len(server.requests) == 3  # @a once, @b, @c; not @a again
    finally:
        await f.close()


@pytest_twisted.ensureDeferred
async def test_one_body_for_two_callbacks_is_two_calls(
    server: AntispamServer, observed: tuple[Forwarder, Recorder]
) -> None:
    """Stored or in flight, an answer is the answer to one callback: the same body sent to
    another callback is that callback's own question."""
    f, _ = observed
    reusable = {"Cache-Control": "max-age=60"}
    server.set("user_may_invite", Behaviour(status=200, headers=reusable, delay=0.3))
    refusal = reject("M_FORBIDDEN", "no 3pid invites")
    refusal.headers, refusal.delay = reusable, 0.3
    server.set("user_may_send_3pid_invite", refusal)
    body = {"inviter": "@a:x", "invitee": "@b:x", "room_id": "!r:x"}

    def ask(name: str) -> Deferred[Verdict]:
        return defer.ensureDeferred(f.check(name, Kind.GATE, body))

    # In flight together: not coalesced.
    together = await defer.gatherResults(
        [ask("user_may_invite"), ask("user_may_send_3pid_invite")]
    )
    assert [v.outcome for v in together] == [Outcome.ALLOWED, Outcome.REJECTED]
    # Both answers stored now, each for its own callback.
    assert (await ask("user_may_send_3pid_invite")).outcome is Outcome.REJECTED
    assert (await ask("user_may_invite")).outcome is Outcome.ALLOWED
    assert len(server.requests) == 2


@pytest_twisted.ensureDeferred
async def test_a_debug_line_says_when_an_answer_was_reused(
    server: AntispamServer,
    observed: tuple[Forwarder, Recorder],
    caplog: pytest.LogCaptureFixture,
) -> None:
    f, _ = observed
    server.set(None, Behaviour(status=200, headers={"Cache-Control": "max-age=60"}))
    with caplog.at_level(logging.DEBUG, logger="synapse_http_antispam"):
        first = await username(f)
        await username(f)
    [line] = [r.getMessage() for r in caplog.records if "reused" in r.getMessage()]
    assert line == (
        f"[{server.base_url}] Antispam {USERNAME}: answer reused from the store "
        f"(allowed, X-Request-ID {first.request_id}, 60 s left)"
    )
    assert "@u:x" not in line  # bodies stay out of log lines


def test_a_debug_line_says_when_a_call_was_coalesced(caplog: pytest.LogCaptureFixture) -> None:
    clock, calls = task.Clock(), Calls()
    reuse = configured(clock, log="tests.reuse")
    with caplog.at_level(logging.DEBUG, logger="tests.reuse"):
        ask(reuse, calls)
        ask(reuse, calls)
    assert [r.getMessage() for r in caplog.records if r.name == "tests.reuse"] == [
        "Antispam user_may_invite: coalesced with an identical call in flight"
    ]


# Two rejections of about 40 KB each: two entries fit the default store, not 64 KiB of it.
LONG_REFUSAL = Behaviour(
    status=403,
    body={"errcode": "M_FORBIDDEN", "error": "x" * 40_000},
    headers={"Cache-Control": "max-age=60"},
)


@pytest.mark.parametrize(
    ("limits", "asked"),
    [
        ({}, 2),  # the third check, @a again, is answered from the store
        ({"reuse_max_entries": 1}, 3),  # storing @b pushed @a out
        ({"reuse_max_bytes": 64 * 1024}, 3),  # both do not fit at once
    ],
)
@pytest_twisted.ensureDeferred
async def test_the_configured_store_limits_apply(
    server: AntispamServer, limits: dict[str, int], asked: int
) -> None:
    server.set(USERNAME, LONG_REFUSAL)
    f = Forwarder(parse_config({"base_url": server.base_url, "timeout": 2, **limits}))
    try:
        for user in ("@a:x", "@b:x", "@a:x"):
            assert (await username(f, user)).outcome is Outcome.REJECTED
        assert len(server.requests) == asked
    finally:
        await f.close()


@pytest_twisted.ensureDeferred
async def test_reuse_max_seconds_caps_the_servers_max_age(server: AntispamServer) -> None:
    server.set(USERNAME, Behaviour(status=200, headers={"Cache-Control": "max-age=60"}))
    f = Forwarder(parse_config({"base_url": server.base_url, "reuse_max_seconds": 1}))
    try:
        await username(f)
        await username(f)
        assert len(server.requests) == 1  # stored
        await sleep(1.1)
        await username(f)
        assert len(server.requests) == 2  # kept for 1 s, not the 60 the server allowed
    finally:
        await f.close()
