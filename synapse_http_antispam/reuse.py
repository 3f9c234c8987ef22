"""Identical calls share one answer: the cheapest call is the one not made.

Two mechanisms, both keyed on (callback name, exact request body bytes), hashed with SHA-256:

* Coalescing (always on): a call identical to one still in flight waits for that one's answer
  instead of sending its own. It cannot change a verdict: the server would have been asked the
  same question at the same moment. One waiter giving up (Synapse cancelling its check) never
  cancels the call for the others; the call is cancelled only when every waiter has gone.
* The store (server-directed): an answer carrying `Cache-Control: max-age=N` answers identical
  calls for N seconds (capped by `reuse_max_seconds`), counted from when the call was sent.
  Only allow and reject verdicts are stored: never a failure of any kind (timeouts, answers
  under the breaker), never "no such endpoint", never an answer without a positive max-age or
  with `no-store` / `no-cache`. The store is bounded in entries and bytes, least recently used
  out first.

Pure logic over an injected clock (anything with `seconds()`), so that it can be tested on
`twisted.internet.task.Clock`.
"""

from __future__ import annotations

import hashlib
import logging
import re
import sys
from collections import OrderedDict
from collections.abc import Awaitable
from typing import Any, Callable, Protocol, Union

import attrs

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure as TwistedFailure

from synapse_http_antispam.config import Config
from synapse_http_antispam.verdict import Outcome, Verdict

# The outcomes an antispam server decides; everything else is about the call, not the user.
STORABLE = frozenset({Outcome.ALLOWED, Outcome.REJECTED})
# What one stored entry is counted for beyond its variable parts (the key, the OrderedDict
# slot, the entry, Shared and Verdict objects). bench/reuse.py measures a whole allow entry
# with tracemalloc at about 480 bytes; counting more keeps the byte budget on the safe side.
ENTRY_OVERHEAD = 512

COALESCED = "coalesced"
STORED = "stored"

_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_QUOTED = r'"(?:[^"\\]|\\.)*"'
_ELEMENT = re.compile(
    rf"[ \t]*(?:({_TOKEN})[ \t]*(?:=[ \t]*({_TOKEN}|{_QUOTED}))?)?[ \t]*(,|\Z)", re.DOTALL
)
_DIGITS = re.compile(r"[0-9]+")


class Clock(Protocol):
    def seconds(self) -> float: ...


def _directives(header: str) -> list[tuple[str, str | None]] | None:
    """The directives of a Cache-Control value (names lower-cased, quotes removed), or None
    when it does not parse as one."""
    found: list[tuple[str, str | None]] = []
    pos = 0
    while pos < len(header):
        m = _ELEMENT.match(header, pos)
        if m is None:
            return None
        name, value = m.group(1), m.group(2)
        if name is not None:
            if value is not None and value.startswith('"'):
                value = re.sub(r"\\(.)", r"\1", value[1:-1], flags=re.DOTALL)
            found.append((name.lower(), value))
        pos = m.end()
        if not m.group(3):
            break
    return found


def max_age(header: str, cap: float) -> float:
    """How many seconds (at most `cap`) a server's Cache-Control lets an answer be reused.

    The header is untrusted input: 0 (no reuse) when it is absent, does not parse, says
    `no-store` or `no-cache`, has no max-age, or has more than one (RFC 9111, 4.2.1: treat as
    stale); a max-age that is not a plain number is 0, a huge one is `cap`. `private` and the
    rest are fine: the module is its one Synapse's private cache.
    """
    directives = _directives(header) if header else None
    if not directives:
        return 0.0
    names = {name for name, _ in directives}
    if "no-store" in names or "no-cache" in names:
        return 0.0
    ages = [value for name, value in directives if name == "max-age"]
    if len(ages) != 1 or ages[0] is None or not _DIGITS.fullmatch(ages[0]):
        return 0.0
    digits = ages[0].lstrip("0") or "0"
    return float(cap) if len(digits) > 12 else min(float(int(digits)), float(cap))


def key_of(name: str, body: bytes) -> bytes:
    """The identity of a call: its callback and its exact body, in 32 bytes."""
    return hashlib.sha256(name.encode() + b"\0" + body).digest()


@attrs.frozen
class Shared:
    """One call's result, as every caller who shares it receives it (each makes its own copy
    with its own timing): the verdict, the HTTP status, the X-Request-ID the server saw, and
    how long the server allows the answer to be reused (0: not at all)."""

    verdict: Verdict
    status: int | None
    request_id: str
    max_age: float = 0.0

    def verdict_for(self, seconds: float) -> Verdict:
        """One caller's own copy: the request the server saw, the caller's own wait, and its
        own dict of extra fields (Synapse may hold on to it or change it)."""
        return attrs.evolve(
            self.verdict,
            fields=dict(self.verdict.fields),
            request_id=self.request_id,
            http_status=self.status,
            seconds=seconds,
        )


def deep_size(value: object) -> int:
    """The memory Python holds for a parsed JSON value, every container and string in it
    counted (the JSON text can be 20 times smaller: `[[[]]]` is 6 bytes, three lists). Walked
    without recursion, so that nesting cannot exhaust the stack."""
    total = 0
    stack = [value]
    while stack:
        item = stack.pop()
        total += sys.getsizeof(item)
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return total


def size_of(shared: Shared) -> int:
    """The bytes one stored entry is counted for: a fixed overhead plus the real size of its
    variable parts (the server's extra fields, its texts)."""
    v = shared.verdict
    fields = deep_size(v.fields) if v.fields else 0
    texts = (v.errcode, v.message or "", v.detail, shared.request_id)
    return ENTRY_OVERHEAD + fields + sum(sys.getsizeof(t) for t in texts)


@attrs.define
class _Entry:
    shared: Shared
    expires: float
    size: int


class Store:
    """Answers the server allowed to be reused, until they expire; least recently used out
    first when `max_entries` or `max_bytes` would be passed."""

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes, now: float) -> _Entry | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires <= now:
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return entry

    def put(self, key: bytes, shared: Shared, expires: float, now: float) -> bool:
        size = size_of(shared)
        if expires <= now or size > self.max_bytes or self.max_entries < 1:
            return False
        if key in self._entries:
            self._drop(key)
        # Expired entries at the old end go first, then the least recently used.
        while self._entries and (
            len(self._entries) >= self.max_entries
            or self.bytes + size > self.max_bytes
            or next(iter(self._entries.values())).expires <= now
        ):
            self._drop(next(iter(self._entries)))
        self._entries[key] = _Entry(shared, expires, size)
        self.bytes += size
        return True

    def _drop(self, key: bytes) -> None:
        self.bytes -= self._entries.pop(key).size

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0


class _Flight:
    """A call in flight and the callers waiting for its result."""

    def __init__(self) -> None:
        self.waiters: list[Deferred[Shared]] = []
        self.call: Deferred[Shared] | None = None


class Reuse:
    """Where a Forwarder asks for a call's result: from the store, from an identical call in
    flight, or by making the call."""

    def __init__(
        self,
        clock: Clock,
        *,
        store: bool,
        max_seconds: float,
        max_entries: int,
        max_bytes: int,
        log: logging.Logger | logging.LoggerAdapter[Any],
    ) -> None:
        """Every limit from the config (`configured`), whose defaults are the only ones."""
        self._clock = clock
        self.storing = store
        self.max_seconds = max_seconds
        self.store = Store(max_entries, max_bytes)
        self._flights: dict[bytes, _Flight] = {}
        self._log = log

    @classmethod
    def configured(
        cls, clock: Clock, config: Config, log: logging.Logger | logging.LoggerAdapter[Any]
    ) -> Reuse:
        return cls(
            clock,
            store=config.reuse_answers,
            max_seconds=config.reuse_max_seconds,
            max_entries=config.reuse_max_entries,
            max_bytes=config.reuse_max_bytes,
            log=log,
        )

    @property
    def in_flight(self) -> int:
        return len(self._flights)

    def max_age(self, cache_control: str) -> float:
        return max_age(cache_control, self.max_seconds) if self.storing else 0.0

    async def answer(
        self,
        name: str,
        body: bytes,
        call: Callable[[], Awaitable[Shared]],
        *,
        store: bool = True,
    ) -> tuple[Shared, str | None]:
        """The result of `call()` or of an identical one, and how it was had: STORED,
        COALESCED, or None (this call made it). store=False: neither read nor fill the store
        (background checks). Raises only what `call` raises (a cancellation)."""
        key = key_of(name, body)
        store = store and self.storing
        now = self._clock.seconds()
        if store:
            entry = self.store.get(key, now)
            if entry is not None:
                self._log.debug(
                    "Antispam %s: answer reused from the store (%s, X-Request-ID %s, %.0f s left)",
                    name,
                    entry.shared.verdict.outcome.value,
                    entry.shared.request_id,
                    entry.expires - now,
                )
                return entry.shared, STORED
        flight = self._flights.get(key)
        if flight is not None:
            self._log.debug("Antispam %s: coalesced with an identical call in flight", name)
            return await self._wait(flight), COALESCED
        flight = self._flights[key] = _Flight()
        waiting = self._wait(flight)
        flight.call = defer.ensureDeferred(call())  # type: ignore[arg-type]
        flight.call.addBoth(self._landed, key, flight, now, store)
        return await waiting, None

    def _wait(self, flight: _Flight) -> Deferred[Shared]:
        def give_up(waiter: Deferred[Shared]) -> None:
            # A waiter may give up while the answer is being handed out (`_landed` has taken
            # the list already): then there is nothing to take it out of, nor to cancel.
            if waiter in flight.waiters:
                flight.waiters.remove(waiter)
            if not flight.waiters and flight.call is not None and not flight.call.called:
                flight.call.cancel()  # nobody is left waiting for it

        waiter: Deferred[Shared] = Deferred(give_up)
        flight.waiters.append(waiter)
        return waiter

    def _landed(
        self,
        result: Union[Shared, TwistedFailure],
        key: bytes,
        flight: _Flight,
        sent: float,
        store: bool,
    ) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
        if store and isinstance(result, Shared):
            try:
                self._keep(key, result, sent)
            except Exception:  # a fault in storing must never keep the answer from its callers
                self._log.exception("Antispam answer could not be stored for reuse")
        waiters, flight.waiters = flight.waiters, []
        for waiter in waiters:
            if waiter.called:  # gave up while an earlier waiter was being answered
                continue
            if isinstance(result, Shared):
                waiter.callback(result)
            else:
                waiter.errback(result)

    def _keep(self, key: bytes, shared: Shared, sent: float) -> None:
        verdict = shared.verdict
        if shared.max_age <= 0 or verdict.outcome not in STORABLE or verdict.failure is not None:
            return
        seconds = min(shared.max_age, self.max_seconds)
        self.store.put(key, shared, sent + seconds, self._clock.seconds())

    def clear(self) -> None:
        self.store.clear()
