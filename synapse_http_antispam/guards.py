"""How much the antispam server is asked at once, and whether it is worth asking at all.

The limiter bounds calls in flight and waiting; the circuit breaker stops waiting on a server
that does not answer and finds out, in the background, when it is back. Neither sends HTTP
itself: the breaker is handed a probe to call, so both run on a fake clock in tests.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable
from typing import Any, Callable

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from synapse_http_antispam.config import BreakerConfig
from synapse_http_antispam.metrics import Observer
from synapse_http_antispam.verdict import CallFailed, Failure

logger = logging.getLogger(__name__)


class Limiter:
    """At most `limit` holders and `max_waiting` waiters; anyone beyond that is refused at once."""

    def __init__(self, limit: int, max_waiting: int) -> None:
        self.limit = limit
        self.max_waiting = max_waiting
        self.active = 0
        self._waiting: deque[Deferred[None]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    async def acquire(self) -> None:
        if self.active < self.limit:
            self.active += 1
            return
        if len(self._waiting) >= self.max_waiting:
            raise CallFailed(Failure.OVERLOADED)
        d: Deferred[None] = Deferred(lambda d: self._waiting.remove(d))
        self._waiting.append(d)
        await d  # the slot is handed over by release(), so `active` already counts us

    def release(self) -> None:
        if self._waiting:
            self._waiting.popleft().callback(None)
        else:
            self.active -= 1


class Breaker:
    """Stops waiting on an antispam server that cannot be reached, and notices when it is back.

    What it counts: only calls that never got an HTTP answer (refused or dropped connections,
    deadlines passing). Any HTTP answer, even a 500 from one broken handler, proves the server
    is up and costs the user no waiting, so it counts as reachable; one bad endpoint cannot take
    the others down with it.

    When it opens: a failure rate over a sliding window, not a run of consecutive failures, so
    a server that answers half the calls keeps getting them. Once open, calls fail at once
    under their failure policy and no user's action is spent on finding out whether the server
    is back: a background probe (`probe`) asks every `probe_interval` seconds and the first
    answer closes the breaker.
    """

    _BUCKETS = 10
    # While open, repeat the "still open" warning this often, so the log shows an outage's end.
    REMIND_EVERY = 60.0

    def __init__(
        self,
        config: BreakerConfig,
        clock: IReactorTime,
        observer: Observer,
        probe: Callable[[], Awaitable[bool]] | None = None,
        describe: str = "the antispam server",
        log: logging.Logger | logging.LoggerAdapter[Any] = logger,
    ) -> None:
        self._config = config
        self._clock = clock
        self._observer = observer
        self._probe = probe
        self._describe = describe
        self._log = log
        self._width = config.window / self._BUCKETS
        # Ring of [bucket index, calls, unreachable] for the sliding window.
        self._buckets: list[list[int]] = [[-1, 0, 0] for _ in range(self._BUCKETS)]
        self._opened_at: float | None = None
        self._last_reason: str | None = None
        self._probe_call: IDelayedCall | None = None
        # One probe loop at most: a probe in flight when the breaker closes and reopens
        # carries on as the new opening's loop instead of a second one starting beside it.
        self._probing = False
        self._probes_failed = 0
        self._reminded_at = 0.0
        self._stopped = False

    @property
    def is_open(self) -> bool:
        return self._opened_at is not None

    def allow(self) -> bool:
        return self._opened_at is None

    def _bucket(self) -> list[int]:
        index = int(self._clock.seconds() // self._width)
        bucket = self._buckets[index % self._BUCKETS]
        if bucket[0] != index:
            bucket[:] = [index, 0, 0]
        return bucket

    def window_counts(self) -> tuple[int, int]:
        """(calls, unreachable) within the window."""
        oldest = int(self._clock.seconds() // self._width) - self._BUCKETS + 1
        live = [b for b in self._buckets if b[0] >= oldest]
        return sum(b[1] for b in live), sum(b[2] for b in live)

    def reachable(self) -> None:
        """A call got an HTTP answer (of any kind)."""
        self._bucket()[1] += 1
        if self._opened_at is not None:
            self._close("answered")

    def unreachable(self, reason: str) -> None:
        """A call got no HTTP answer: connection refused or dropped, or the deadline passed."""
        bucket = self._bucket()
        bucket[1] += 1
        bucket[2] += 1
        self._last_reason = reason
        threshold = self._config.failure_threshold
        if not threshold or self._opened_at is not None:
            return
        calls, failed = self.window_counts()
        if failed >= threshold and failed >= self._config.failure_rate * calls:
            self._open(calls, failed)

    def _open(self, calls: int, failed: int) -> None:
        now = self._clock.seconds()
        self._opened_at = self._reminded_at = now
        self._probes_failed = 0
        self._log.warning(
            "Circuit breaker open: %d of %d calls to %s in the last %gs got no answer "
            "(last: %s); calls now fail at once under their failure policy, and %s is "
            "probed every %gs in the background",
            failed,
            calls,
            self._describe,
            self._config.window,
            self._last_reason,
            self._describe,
            self._config.probe_interval,
        )
        self._observer.breaker_changed(True, self._last_reason or "unreachable")
        self._schedule_probe()

    def _close(self, why: str) -> None:
        assert self._opened_at is not None
        seconds = self._clock.seconds() - self._opened_at
        self._opened_at = None
        for bucket in self._buckets:  # start afresh: old failures must not reopen it
            bucket[:] = [-1, 0, 0]
        if self._probe_call is not None and self._probe_call.active():
            self._probe_call.cancel()
        self._probe_call = None
        self._log.warning(
            "Circuit breaker closed: %s %s again after %.1fs open; calls are forwarded again",
            self._describe,
            why,
            seconds,
        )
        self._observer.breaker_changed(False, why)

    def _schedule_probe(self) -> None:
        if self._probe is None or self._stopped or self._opened_at is None:
            return
        if self._probing or (self._probe_call is not None and self._probe_call.active()):
            return
        self._probe_call = self._clock.callLater(
            self._config.probe_interval, lambda: defer.ensureDeferred(self._run_probe())
        )

    def _wants_probe(self) -> bool:
        return self._opened_at is not None and not self._stopped

    async def _run_probe(self) -> None:
        assert self._probe is not None
        self._probe_call = None
        if not self._wants_probe():
            return
        self._probing = True
        try:
            answered = await self._probe()
        except Exception:  # pragma: no cover - defensive: the probe loop must go on
            self._log.exception("Circuit breaker probe failed inside the module")
            answered = False
        finally:
            self._probing = False
        self._observer.breaker_probed(answered)
        opened_at = self._opened_at
        if opened_at is None or not self._wants_probe():
            return  # a real call closed it meanwhile, or the module is shutting down
        if answered:  # (the forwarder's own probe has closed it already, through reachable)
            self._close("answered a probe")
            return
        self._probes_failed += 1
        now = self._clock.seconds()
        if now - self._reminded_at >= self.REMIND_EVERY:
            self._reminded_at = now
            self._log.warning(
                "Circuit breaker still open after %.0fs: %s has not answered %d probes",
                now - opened_at,
                self._describe,
                self._probes_failed,
            )
        self._schedule_probe()

    def stop(self) -> None:
        self._stopped = True
        if self._probe_call is not None and self._probe_call.active():
            self._probe_call.cancel()
